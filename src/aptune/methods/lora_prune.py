"""LoRA+Prune (baselines.md §3): a LoRA run, merged; Mask Tuning; then LoRA retraining.

The base LoRA model comes from `--base-run DIR` or is trained inline first. Mask Tuning prunes it
(heads and FFN neurons; never hidden dimensions) and folds the tuned scales into the weights.
This run's own training loop is the retraining: fresh LoRA (r 8, α 16 on query and value) on the
compacted model. Every second spent before the loop (the LoRA run up to its selected checkpoint,
plus Mask Tuning) is charged to this method's training time.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import AptuneError
from ..mask_tuning import MaskTuningConfig, run_mask_tuning
from ..mask_tuning.materialize import materialize
from ..train.memory import PeakMemoryMeter
from .base import Method, RunContext
from .lora import LoRA


def _base_seconds(metrics: dict) -> float:
    """Training seconds of a run up to its selected checkpoint (evaluations excluded)."""
    step = metrics.get("selection", {}).get("step")
    for record in metrics.get("history", []):
        if record["step"] == step:
            return float(record.get("total_train_seconds", record["train_seconds"]))
    return float(metrics.get("train_seconds", 0.0))


class LoRAPrune(LoRA):
    name = "lora-prune"
    description = "LoRA, then Mask Tuning (Kwon et al.) on the merged model, then LoRA retraining"

    def __init__(self) -> None:
        self.base: dict[str, Any] = {}
        self.mask_tuning: dict[str, Any] = {}
        self.seconds_before_training = 0.0
        self.peak_memory_before_training = 0

    # -- 1. the LoRA-tuned starting point --------------------------------------------------------
    def _base_folder(self, ctx: RunContext) -> Path:
        cfg = ctx.cfg
        if cfg.base_run:
            return Path(cfg.base_run).expanduser()
        from ..pipeline import run_training  # inline: a full LoRA run of its own

        base_cfg = dataclasses.replace(
            cfg, method="lora", epochs=cfg.base_epochs, lr=cfg.base_lr, base_run=None,
            output_dir=str(ctx.scratch("base-lora")), overwrite=True)
        ctx.say(f"lora-prune: training the LoRA base inline ({cfg.base_epochs:g} epochs, "
                f"lr {cfg.base_lr:g}) into {base_cfg.output_dir}")
        run_training(base_cfg, show_progress=ctx.show_progress)
        return Path(base_cfg.output_dir)

    def _load_base(self, ctx: RunContext) -> nn.Module:
        from ..export import load_pruned

        folder = self._base_folder(ctx)
        metrics_path = folder / "metrics.json"
        if not metrics_path.is_file() or not (folder / "model").is_dir():
            raise AptuneError(f"--base-run {folder} is not a finished aptune run (no metrics.json "
                              "or model/)", "pass the folder of an `aptune train --method lora` run")
        metrics = json.loads(metrics_path.read_text())
        if metrics.get("method") != "lora" or metrics.get("task") != ctx.task.name:
            raise AptuneError(
                f"--base-run {folder} is a {metrics.get('method')} run on {metrics.get('task')}; "
                f"lora-prune needs a lora run on {ctx.task.name}",
                "train one with `aptune train --method lora`, or leave --base-run out")
        self.base = {"run": str(folder), "dev": metrics["eval"], "selected_step": metrics["selection"]["step"],
                     "train_seconds_to_selected": _base_seconds(metrics),
                     "peak_train_memory_bytes": metrics.get("peak_train_memory_bytes", 0)}
        return load_pruned(folder / "model", ctx.accelerator.device)

    # -- 2. Mask Tuning --------------------------------------------------------------------------
    def start_model(self, model: nn.Module, spec, ctx: RunContext) -> nn.Module:
        del model  # the pretrained weights are not used: the LoRA run is the starting point
        base = self._load_base(ctx)
        cfg = ctx.cfg
        batches = ctx.calibration_batches(cfg.mt_num_samples, cfg.mt_batch_size,
                                          cfg.mt_sample_with_replacement)
        base_eval = ctx.evaluate(base)
        mt_cfg = MaskTuningConfig(kept=1 - cfg.sparsity, constraint=cfg.mt_constraint,
                                  seq_len=ctx.dev_mean_tokens, teacher=cfg.mt_teacher,
                                  rescale=cfg.mt_rescale, classification=True)
        meter = PeakMemoryMeter(ctx.accelerator.device)
        meter.start()
        t0 = time.perf_counter()
        result = run_mask_tuning(base, spec, batches, mt_cfg, log=ctx.say)
        structure = materialize(base, spec, result.head, result.neuron)
        seconds = time.perf_counter() - t0
        pruned_eval = ctx.evaluate(base)
        metric = ctx.task.metric
        self.mask_tuning = {**result.summary(), "seconds_with_materialize": round(seconds, 3),
                            "peak_memory_bytes": meter.peak_bytes(),
                            "dev_before": base_eval, "dev_after": pruned_eval,
                            "drop": base_eval[metric] - pruned_eval[metric],
                            "kept_heads_per_layer": [len(h) for h in structure["heads"]],
                            "kept_neurons_per_layer": [len(n) for n in structure["neurons"]]}
        ctx.say(f"mask tuning: {seconds:.1f} s in all; dev {metric} {base_eval[metric]:.4f} (LoRA, "
                f"merged) -> {pruned_eval[metric]:.4f} (pruned, before retraining)")
        self.seconds_before_training = self.base["train_seconds_to_selected"] + seconds
        self.peak_memory_before_training = max(self.base["peak_train_memory_bytes"],
                                               self.mask_tuning["peak_memory_bytes"])
        return base

    # -- 3. retraining: plain LoRA on the compacted model (inherited prepare/finalize) -----------
    def describe(self, model: nn.Module, cfg) -> dict:
        return {**super().describe(model, cfg), "base": self.base, "mask_tuning": self.mask_tuning,
                "retrain_epochs": cfg.epochs, "retrain_lr": cfg.lr}
