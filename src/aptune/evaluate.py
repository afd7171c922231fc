"""Evaluating a saved model on a task's dev split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import AptuneError
from .export import load_for_inference
from .tasks import get_task, resolve_data_dir
from .train.data import encode, make_loader
from .train.loop import evaluate_model


def evaluate_saved(model_dir: str | Path, task_name: str, data_dir: str | None = None,
                   max_eval_samples: int | None = None, data_seed: int = 0, batch_size: int = 128,
                   max_length: int | None = None) -> dict[str, Any]:
    task = get_task(task_name)
    if batch_size <= 0:
        raise AptuneError(f"--batch-size must be positive, got {batch_size}", "pass --batch-size 128")
    model, tokenizer, path = load_for_inference(model_dir)
    if model.config.num_labels != task.num_labels:
        raise AptuneError(f"the model in {path} has {model.config.num_labels} labels but {task.name} "
                          f"has {task.num_labels}", "pass the --task the model was trained on")
    dev = task.load("dev", resolve_data_dir(data_dir), max_eval_samples, data_seed, {})
    ds = encode(task, dev.examples, tokenizer, max_length or task.default_max_length, model.config)
    scores = evaluate_model(model, make_loader(ds, tokenizer, batch_size, False, 0), task)
    return {"task": task.name, "model_dir": str(path), "rows": len(ds), "eval": scores}
