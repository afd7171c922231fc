"""Evaluating a saved model: on its task's dev split, or on any labelled file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import AptuneError
from .export import load_for_inference
from .predict import run_config, write_jsonl
from .tasks import OWN_DATA_TASK, for_model, get_task, resolve_data_dir, same_task, task_options
from .train.data import encode, make_loader


def evaluate_saved(model_dir: str | Path, task_name: str | None = None, data_dir: str | None = None,
                   max_eval_samples: int | None = None, data_seed: int | None = None,
                   batch_size: int = 128, max_length: int | None = None,
                   save_predictions: str | None = None, split: str = "dev",
                   **data_options: Any) -> dict[str, Any]:
    """Score a saved model on a dev split (or `split`, for a task with a test split: cnn_dailymail);
    with `save_predictions`, also write one JSON line per row (predicted and gold label names, in
    file order; for QA the question id, the answer given, the best span and the gold answers; for
    summaries the generated and the reference summary).

    The task, data seed, maximum length and data options default to the training run's; any of
    OwnDataOptions' names in `data_options` (validation_file, text_column, ...) overrides them,
    so a model can be scored on any labelled file with `task_name="text-classification"`.
    """
    if batch_size <= 0:
        raise AptuneError(f"--batch-size must be positive, got {batch_size}", "pass --batch-size 128")
    model, tokenizer, path = load_for_inference(model_dir)
    run = run_config(path)
    task_name = task_name or run.get("task")
    if not task_name:
        raise AptuneError(f"{model_dir} does not say which task it was trained on (no config.yaml)",
                          "pass --task")
    given = {k: v for k, v in data_options.items() if v is not None}
    if given.get("validation_file") and not same_task(task_name, OWN_DATA_TASK):
        raise AptuneError(f"--validation-file needs --task {OWN_DATA_TASK} (got --task {task_name})",
                          f"pass --task {OWN_DATA_TASK} to score the model on a file")
    run_task = bool(run.get("task")) and same_task(task_name, run["task"])  # the run's options apply
    options = task_options({**(run if run_task else {}), **given})
    task = for_model(get_task(task_name, options), tokenizer, model.config)
    task.adopt_labels(model.config)
    seed = data_seed if data_seed is not None else (run.get("data_seed", 0) if run_task else 0)
    if data_dir is None and run.get("data_dir") and Path(run["data_dir"]).expanduser().is_dir():
        data_dir = run["data_dir"]  # where the run read its data, while it is still there
    if split not in task.splits or split == "train":
        scored_splits = [s for s in task.splits if s != "train"] or ["dev"]
        raise AptuneError(f"{task.name} has no '{split}' split to score",
                          f"pass --split {' or --split '.join(scored_splits)}")
    dev = task.load(split, resolve_data_dir(data_dir), max_eval_samples, seed, options)
    # The length the model was trained at, whatever the task it is scored on now (as predict does).
    length = max_length or run.get("max_length") or task.default_max_length
    ds = encode(task, dev.examples, tokenizer, length, model.config)
    scored = task.evaluate(model, make_loader(ds, tokenizer, batch_size, False, 0))
    result = {"task": task.name, "split": split, "model_dir": str(path), "rows": len(dev.examples),
              "data": dev.report.summary(), "eval": scored.metrics, "per_class": scored.per_class}
    if save_predictions:
        result["predictions"] = str(write_jsonl(scored.rows, save_predictions))
    return result
