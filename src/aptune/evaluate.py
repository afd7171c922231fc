"""Evaluating a saved model on a task's dev split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import AptuneError
from .export import load_for_inference
from .predict import write_jsonl
from .tasks import get_task, resolve_data_dir
from .train.data import encode, make_loader
from .train.loop import predict_labels


def evaluate_saved(model_dir: str | Path, task_name: str, data_dir: str | None = None,
                   max_eval_samples: int | None = None, data_seed: int = 0, batch_size: int = 128,
                   max_length: int | None = None, save_predictions: str | None = None) -> dict[str, Any]:
    """Score a saved model on the task's dev split; with `save_predictions`, also write one JSON
    line per dev row (predicted and gold label names, in file order)."""
    task = get_task(task_name)
    if batch_size <= 0:
        raise AptuneError(f"--batch-size must be positive, got {batch_size}", "pass --batch-size 128")
    model, tokenizer, path = load_for_inference(model_dir)
    if model.config.num_labels != task.num_labels:
        raise AptuneError(f"the model in {path} has {model.config.num_labels} labels but {task.name} "
                          f"has {task.num_labels}", "pass the --task the model was trained on")
    dev = task.load("dev", resolve_data_dir(data_dir), max_eval_samples, data_seed, {})
    ds = encode(task, dev.examples, tokenizer, max_length or task.default_max_length, model.config)
    preds, gold = predict_labels(model, make_loader(ds, tokenizer, batch_size, False, 0))
    result = {"task": task.name, "model_dir": str(path), "rows": len(ds),
              "eval": task.compute_metrics(preds, gold)}
    if save_predictions:
        names = task.id2label
        rows = [{"label": names[int(p)], "gold": names[int(g)]} for p, g in zip(preds, gold)]
        result["predictions"] = str(write_jsonl(rows, save_predictions))
    return result
