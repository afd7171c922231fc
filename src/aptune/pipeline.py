"""`aptune train` as a function: data -> model -> method -> loop -> final model -> artifacts."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from .arch import get_spec
from .config import TrainConfig
from .counting import parameter_summary
from .env_info import hardware, versions
from .errors import AptuneError
from .lora import count_parameters
from .methods import get_method
from .methods.base import RunContext
from .models import load_classifier, load_config, load_tokenizer, resolve_model_path
from .tasks import get_task, resolve_data_dir
from .train.data import encode, make_loader
from .train.loop import LoopConfig, Trainer, evaluate_model
from .efficiency import compare_inference
from .export import load_pruned, save_pruned
from .report import format_report
from .train.run_dir import RunDir


def _say(accelerator, text: str) -> None:
    if accelerator.is_main_process:
        print(text, flush=True)


def run_training(cfg: TrainConfig, show_progress: bool = True) -> dict[str, Any]:
    """Train, select the best dev checkpoint, finalize, save. Returns the metrics dict."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bar is the one that matters
    wall_start = time.perf_counter()
    task = get_task(cfg.task)
    method = get_method(cfg.method)
    from accelerate.utils import DistributedDataParallelKwargs

    # Masked-out sub-layers leave some adapter weights without gradients under DDP.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=method.has_unused_parameters)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=[ddp])
    run_dir = RunDir(cfg.output_dir, cfg.overwrite) if accelerator.is_main_process else None
    try:
        metrics = _run(cfg, task, method, accelerator, run_dir, wall_start, show_progress, set_seed)
    except BaseException:
        if run_dir is not None:
            run_dir.abandon()
        raise
    return metrics


def _run(cfg, task, method, accelerator, run_dir, wall_start, show_progress, set_seed):
    run_versions = versions()  # read at the start: the commit that the run's code came from
    data_dir = resolve_data_dir(cfg.data_dir)
    model_path = resolve_model_path(cfg.model)
    model_config = load_config(model_path)  # unsupported families fail before any data work
    tokenizer = load_tokenizer(model_path)
    options = {"strip_trailing_periods": cfg.strip_trailing_periods}
    train_split = task.load("train", data_dir, cfg.max_train_samples, cfg.data_seed, options)
    dev_split = task.load("dev", data_dir, cfg.max_eval_samples, cfg.data_seed, options)
    _say(accelerator, f"train: {train_split.report.summary()}")
    _say(accelerator, f"dev:   {dev_split.report.summary()}")
    max_length = cfg.max_length or task.default_max_length
    train_ds = encode(task, train_split.examples, tokenizer, max_length, model_config)
    dev_ds = encode(task, dev_split.examples, tokenizer, max_length, model_config)

    set_seed(cfg.seed, deterministic=True)
    model = load_classifier(model_path, task.num_labels, task.id2label)
    spec = get_spec(model)
    dense_params = parameter_summary(model)
    scratch = run_dir.tmp if run_dir is not None else Path(cfg.output_dir)
    context = RunContext(cfg, task, tokenizer, train_ds, dev_ds, accelerator, scratch,
                         show_progress, lambda text: _say(accelerator, text))
    model = method.start_model(model, spec, context)
    set_seed(cfg.seed, deterministic=True)  # the same stream whatever ran before
    model = method.prepare(model, spec, cfg)
    trainable, total = count_parameters(model)
    _say(accelerator, f"model: {cfg.model} ({model.config.model_type}, "
         f"{dense_params['non_embedding']:,} non-embedding params) | method: {method.name} | "
         f"trainable params: {trainable:,} || all params: {total:,} || "
         f"trainable%: {100 * trainable / total:.4f}")

    train_loader = make_loader(train_ds, tokenizer, cfg.batch_size, shuffle=True, seed=cfg.seed)
    dev_loader = make_loader(dev_ds, tokenizer, cfg.eval_batch_size, shuffle=False, seed=cfg.seed)
    epochs = method.loop_epochs(cfg)
    loop_cfg = LoopConfig(epochs=epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                          eval_every=cfg.eval_every, warmup_ratio=cfg.warmup_ratio,
                          weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
                          seed=cfg.seed, log_every=cfg.log_every,
                          time_offset=method.seconds_before_training)
    log_path = run_dir.path("log.jsonl") if run_dir is not None else None
    trainer = Trainer(model, task, train_loader, dev_loader, loop_cfg, accelerator,
                      callbacks=method.callbacks(model, spec, cfg), log_path=log_path,
                      show_progress=show_progress)
    _say(accelerator, f"training {trainer.total_steps:,} steps ({epochs:g} epochs of "
         f"{trainer.steps_per_epoch:,}), batch {cfg.batch_size}, lr {cfg.lr:g}, "
         f"eval every {cfg.eval_every} steps")
    result = trainer.train()

    accelerator.wait_for_everyone()
    final = method.finalize(accelerator.unwrap_model(trainer.model), spec, cfg)
    final_eval = evaluate_model(final, trainer.eval_loader, task, accelerator)
    structure = getattr(final.config, "aptune_structure", None)
    inference = report = None
    if structure is not None and accelerator.is_main_process:
        _say(accelerator, "measuring inference: dense vs pruned, batch 32 and 128 x 128 tokens ...")
        dense = load_classifier(model_path, task.num_labels, task.id2label).to(accelerator.device)
        inference = compare_inference(dense, final)
        del dense
        ranks = method.describe(final, cfg).get("final_ranks")
        report = format_report(final, structure, dense_params["non_embedding"], ranks, inference,
                               title=method.name.upper())
    metrics = {
        "task": task.name,
        "method": method.name,
        "model": cfg.model,
        "model_path": model_path,
        "eval": final_eval,
        "selection": {"metric": task.metric, "rule": "best dev score over the evaluations",
                      "step": result.best_step,
                      # None when the loop never evaluated (lora-prune with --epochs 0)
                      "value_during_training": result.best_metric
                      if math.isfinite(result.best_metric) else None},
        "params": {**parameter_summary(final), "trainable": trainable,
                   "total_during_training": total,
                   "dense_non_embedding": dense_params["non_embedding"]},
        "steps": result.steps,
        "epochs": epochs,
        "samples_seen": result.samples_seen,
        "train_seconds": round(result.train_seconds, 3),
        # What TTA charges: time spent before this loop (a base run, Mask Tuning) plus the loop.
        "seconds_before_training": round(method.seconds_before_training, 3),
        "total_train_seconds": round(method.seconds_before_training + result.train_seconds, 3),
        "seconds_per_step": round(result.train_seconds / max(1, result.steps), 4),
        "samples_per_second": round(result.samples_seen / max(result.train_seconds, 1e-9), 2),
        "peak_train_memory_bytes": max(result.peak_train_memory_bytes + method.extra_resident_bytes,
                                       method.peak_memory_before_training),
        "peak_train_memory_method": result.memory_method,
        "data": {"train": train_split.report.summary(), "dev": dev_split.report.summary(),
                 "train_rows": len(train_ds), "dev_rows": len(dev_ds), "max_length": max_length,
                 "train_mean_tokens": round(train_ds.mean_length(), 2)},
        "method_settings": method.describe(accelerator.unwrap_model(trainer.model), cfg),
        "inference": inference,
        "history": result.history,
        "hardware": {**hardware(), "num_processes": accelerator.num_processes,
                     "device": str(accelerator.device)},
        "versions": run_versions,
    }
    if structure is not None:
        metrics["params"]["kept_ratio"] = (metrics["params"]["non_embedding"]
                                           / dense_params["non_embedding"])
        metrics["structure"] = {"hidden": len(structure["hidden"]),
                                "heads": [len(h) for h in structure["heads"]],
                                "neurons": [len(n) for n in structure["neurons"]]}
    if report is not None:
        print(report, flush=True)
    if run_dir is not None:
        _save(run_dir, final, tokenizer, cfg, metrics, wall_start)
        metrics["output_dir"] = str(run_dir.final)
        _print_summary(metrics)
    return metrics


def _save(run_dir: RunDir, model, tokenizer, cfg: TrainConfig, metrics: dict, wall_start: float) -> None:
    save_pruned(model, run_dir.path("model"), tokenizer)
    (run_dir.path("config.yaml")).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    metrics["wall_seconds"] = round(time.perf_counter() - wall_start, 3)
    run_dir.write_json("metrics.json", metrics)
    run_dir.finish({"kind": "train", "task": cfg.task, "method": cfg.method,
                    "aptune": metrics["versions"].get("aptune")})


def _print_summary(m: dict) -> None:
    mem = m["peak_train_memory_bytes"] / 2**20
    print(f"result: {m['task']} {m['method']} dev {m['selection']['metric']} "
          f"{m['eval'][m['selection']['metric']]:.4f} (selected step {m['selection']['step']}) | "
          f"train {m['train_seconds'] / 60:.1f} min, {m['seconds_per_step']:.3f} s/step, "
          f"{m['samples_per_second']:.1f} samples/s | peak train memory {mem:,.0f} MiB | "
          f"wall {m['wall_seconds'] / 60:.1f} min", flush=True)
    print(f"saved: {m['output_dir']}", flush=True)


def load_for_inference(model_dir: str | Path):
    """A saved aptune model (a run folder or its model/ folder), loaded from safetensors only."""
    path = Path(model_dir).expanduser()
    if (path / "model" / "config.json").is_file():
        path = path / "model"
    if not (path / "config.json").is_file():
        raise AptuneError(f"{model_dir} holds no saved model (no config.json)",
                          "pass an aptune run folder or the model/ folder inside it")
    if not any(path.glob("*.safetensors")):
        raise AptuneError(f"{path} has no .safetensors weights",
                          "aptune loads safetensors only; re-save the model with save_pretrained")
    load_config(str(path))
    try:
        model = load_pruned(path)
    except AptuneError:
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt files surface as many exception types
        raise AptuneError(f"cannot load the model in {path}: it looks corrupt "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                          "re-run training, or restore the folder from a good copy") from None
    return model, load_tokenizer(str(path)), path
