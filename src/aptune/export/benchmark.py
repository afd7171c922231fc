"""`aptune export --benchmark`: the exported model against its dense counterpart in PyTorch eager,
ONNX Runtime fp32 and ONNX Runtime int8 (aptune.bench.backends), written beside the export as
benchmark.json, benchmark.md and benchmark.png.

The dense counterpart is `--dense`: a trained run (its dev accuracy is then reported too), or a
pretrained model, by default the one the run started from, given a fresh head (speed does not
depend on the head's weights, so only its accuracy goes unreported).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import AptuneError
from ..models import load_classifier, resolve_model_path
from ..predict import run_config
from .pruned import load_for_inference

FILES = ("benchmark.json", "benchmark.md", "benchmark.png")


def _is_run(path: Path) -> bool:
    return (path / "config.yaml").is_file() or (path / "model" / "config.json").is_file() \
        or (path.parent / "config.yaml").is_file()


def dense_model(dense: str | None, run: Path, pruned: nn.Module) -> tuple[nn.Module, bool, str]:
    """(the dense model, whether its head is trained, how to name it)."""
    if dense is None:
        dense = run_config(run).get("model")
        if not dense:
            raise AptuneError(f"{run} does not say which model it started from (no config.yaml)",
                              "name the dense model to compare with: --dense MODEL_OR_RUN")
    path = Path(dense).expanduser()
    if path.is_dir() and _is_run(path):
        model, _, folder = load_for_inference(path)
        if dict(model.config.id2label) != dict(pruned.config.id2label):
            raise AptuneError(f"the dense run {folder} has other labels ({dict(model.config.id2label)}) "
                              f"than the exported model ({dict(pruned.config.id2label)})",
                              "pass --dense a run trained on the same task, or a pretrained model")
        return model, True, f"the trained run {folder}"
    torch.manual_seed(0)
    config = pruned.config
    model = load_classifier(resolve_model_path(dense), config.num_labels, dict(config.id2label)).eval()
    return model, False, f"{dense} (pretrained, fresh head)"


def benchmark_runtimes(model: nn.Module, run: Path, dense: str | None, batches: list[dict], source: str,
                       folder: Path, rounds: int, say: Callable[[str], None]) -> dict[str, Any]:
    """Time the model against the dense one; write FILES into `folder`; return a summary.
    `batches` (from `source`) are the dev rows whose labels give each runtime's accuracy."""
    from ..bench import plots
    from ..bench.backends import Subject, markdown, measure_runtimes

    reference, trained, dense_label = dense_model(dense, run, model)
    if reference.config.vocab_size != model.config.vocab_size:
        raise AptuneError(f"the dense model {dense_label} has another vocabulary than the exported one",
                          "pass --dense the model the run started from")
    labelled = [b for b in batches if "labels" in b]
    graphs = Path(tempfile.mkdtemp(prefix="aptune-benchmark-"))
    try:
        result = measure_runtimes([Subject("dense", reference, trained), Subject("pruned", model, True)],
                                  graphs, labelled or None, rounds=rounds, say=say)
    finally:
        shutil.rmtree(graphs, ignore_errors=True)
    result.update(dense=dense_label, pruned=str(run), accuracy_on=source if labelled else None)
    table = markdown(result, dense_label, f"this export ({run.name})")
    (folder / "benchmark.json").write_text(json.dumps(result, indent=2) + "\n")
    (folder / "benchmark.md").write_text(table)
    plots.runtimes(result, folder / "benchmark.png")
    say(table.rstrip())
    by = {(r["runtime"], r["batch_size"]): r["speedup_vs_dense"] for r in result["rows"]
          if r["model"] == "pruned"}
    return {"files": list(FILES), "dense": dense_label, "torch_threads": torch.get_num_threads(),
            "speedup_vs_dense": {f"{rt}@{bs}": round(v, 3) for (rt, bs), v in by.items()}}
