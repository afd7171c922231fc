"""Runs that a method needs first: LoRA+Prune prunes a LoRA run; CoFi distils from an FT run.

Either a finished run folder is given, or the run is trained inline into this run's folder. Its
training time up to its selected checkpoint is charged to the method that needs it (protocol.md).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import AptuneError
from .base import RunContext


def seconds_to_selected(metrics: dict) -> float:
    """Training seconds of a run up to its selected checkpoint (evaluations excluded)."""
    step = metrics.get("selection", {}).get("step")
    for record in metrics.get("history", []):
        if record["step"] == step:
            return float(record.get("total_train_seconds", record["train_seconds"]))
    return float(metrics.get("total_train_seconds", metrics.get("train_seconds", 0.0)))


def prerequisite_model(ctx: RunContext, folder: str | None, method: str, flag: str,
                       inline: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """Load the final model of a finished `method` run, training one inline when `folder` is None.

    `inline` holds the config overrides of the inline run (epochs, lr, ...). Returns the model and
    a summary: folder, dev score, selected step, charged seconds and peak memory.
    """
    from ..export import load_pruned

    if folder is None:
        from ..pipeline import run_training

        if ctx.accelerator.num_processes > 1:
            raise AptuneError(f"{ctx.cfg.method} cannot train its {method} run inline under "
                              "several processes (each would need the main process's files)",
                              f"train it first with `aptune train --method {method}` and pass {flag}")
        out = ctx.scratch(f"base-{method}")
        cfg = dataclasses.replace(ctx.cfg, method=method, output_dir=str(out), overwrite=True,
                                  base_run=None, cofi_teacher_path=None, **inline)
        ctx.say(f"{ctx.cfg.method}: training its {method} run inline into {out} "
                f"({cfg.epochs:g} epochs, lr {cfg.lr:g})")
        run_training(cfg, show_progress=ctx.show_progress)
        folder = str(out)
    path = Path(folder).expanduser()
    metrics_path = path / "metrics.json"
    if not metrics_path.is_file() or not (path / "model").is_dir():
        raise AptuneError(f"{flag} {path} is not a finished aptune run (no metrics.json or model/)",
                          f"pass the folder of an `aptune train --method {method}` run")
    metrics = json.loads(metrics_path.read_text())
    if metrics.get("method") != method or metrics.get("task") != ctx.task.name:
        raise AptuneError(
            f"{flag} {path} is a {metrics.get('method')} run on {metrics.get('task')}; "
            f"{ctx.cfg.method} needs a {method} run on {ctx.task.name}",
            f"train one with `aptune train --method {method}`, or leave {flag} out")
    if metrics.get("model") != ctx.cfg.model:
        raise AptuneError(f"{flag} {path} was trained from --model {metrics.get('model')}, this run "
                          f"uses --model {ctx.cfg.model}",
                          f"pass the same --model, or a {method} run of {ctx.cfg.model}")
    summary = {"run": str(path), "dev": metrics["eval"], "selected_step": metrics["selection"]["step"],
               "train_seconds_to_selected": seconds_to_selected(metrics),
               "peak_train_memory_bytes": metrics.get("peak_train_memory_bytes", 0)}
    return load_pruned(path / "model", ctx.accelerator.device), summary
