"""`aptune train` as a function: data -> model -> method -> loop -> final model -> artifacts.

A method's prerequisite run (the LoRA run LoRA+Prune prunes, the FT teacher CoFi distils from) is
declared on the method class; this module loads it, or trains it first with the same function,
and hands the method the model and its measured cost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from .arch import ModelShape, get_spec
from .config import TrainConfig
from .counting import parameter_summary
from .efficiency import compare_inference
from .env_info import hardware, versions
from .errors import AptuneError
from .fields import flag
from .defaults import resolve_learning_rates
from .export import load_pruned, save_pruned
from .lora import count_parameters
from .methods import METHODS, Cost, Method, PrerequisiteRun, get_method
from .methods.base import Prerequisite, size_target
from .models import load_config, load_task_model, load_tokenizer, resolve_model_path
from .report import format_report
from .tasks.metrics import format_per_class
from .structure import recorded_structure
from .tasks import Task, for_model, get_task, resolve_data_dir, task_options
from .train.context import RunContext
from .train.data import EncodedDataset, encode, make_loader
from .train.checkpoint import read_checkpoint, read_checkpoint_state, restore_trainer, write_checkpoint
from .train.loop import LoopConfig, RunInterrupted, Trainer, TrainResult, steps_per_epoch, total_steps
from .train.run_dir import RunDir, unfinished_folder


def _say(accelerator, text: str) -> None:
    if accelerator.is_main_process:
        print(text, flush=True)


def run_training(cfg: TrainConfig, show_progress: bool = True, resume: bool = False,
                 checkpoints: bool = True) -> dict[str, Any]:
    """Train, select the best dev checkpoint, finalize, save. Returns the metrics dict.

    With `resume`, continue the unfinished run in cfg.output_dir from its last checkpoint
    (resume_config builds that run's config). `checkpoints=False` for a run trained inline as
    another method's prerequisite: that method's run is what a user resumes or interrupts."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bar is the one that matters
    wall_start = time.perf_counter()
    method = get_method(cfg.method)
    # Masked-out sub-layers leave some adapter weights without gradients under DDP.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=method.has_unused_parameters)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=[ddp])
    if resume and not method.resumable:
        raise AptuneError(f"--resume is not supported for --method {method.name} yet",
                          "resumable so far: " + ", ".join(m.name for m in METHODS.values() if m.resumable)
                          + "; start the run again")
    run_dir = RunDir(cfg.output_dir, cfg.overwrite, resume) if accelerator.is_main_process else None
    try:
        metrics = _run(cfg, method, accelerator, run_dir, wall_start, show_progress, resume, checkpoints)
    except RunInterrupted as stop:
        if run_dir is not None:
            run_dir.abandon()  # keeps the folder: it holds the checkpoint
        raise AptuneError(f"interrupted after step {stop.step}; its checkpoint is in "
                          f"{unfinished_folder(cfg.output_dir)}",
                          f"continue with: aptune train --resume {cfg.output_dir}"
                          + (" (under the same launcher and process count)"
                             if accelerator.num_processes > 1 else "")) from None
    except BaseException:
        if run_dir is not None:
            run_dir.abandon()
        raise
    return metrics


@dataclass
class RunData:
    task: Any
    tokenizer: Any
    model_path: str
    train: Any  # the loaded split (examples and its report)
    dev: Any
    train_ds: EncodedDataset
    dev_ds: EncodedDataset
    max_length: int


def _run(cfg: TrainConfig, method: Method, accelerator, run_dir: RunDir | None, wall_start: float,
         show_progress: bool, resume: bool = False, checkpoints: bool = True) -> dict[str, Any]:
    from accelerate.utils import set_seed

    run_versions = versions()  # read at the start: the commit that the run's code came from
    say = lambda text: _say(accelerator, text)  # noqa: E731
    data = load_data(cfg, say)
    if data.task.head == "text-to-text" and not method.text_to_text:
        able = ", ".join(m.name for m in METHODS.values() if m.text_to_text)
        raise AptuneError(f"--method {method.name} does not train encoder-decoder models yet",
                          f"use --method {able} with this model, or a BERT/RoBERTa model for "
                          f"{method.name} (docs/architectures.md)")
    reference = _tta_reference(cfg, data.task)  # checked before training, not after
    # before anything trains, with the loop's own count of steps per epoch
    per_epoch = steps_per_epoch(len(data.train_ds), cfg.batch_size, accelerator.num_processes)
    method.check_plan(cfg, per_epoch)

    set_seed(cfg.seed, deterministic=True)
    model = load_task_model(data.model_path, data.task)
    spec = get_spec(model)
    dense_shape, dense_params = spec.shape(model), parameter_summary(model)
    steps = total_steps(method.loop_epochs(cfg), per_epoch)
    for chosen in (resolve_learning_rates(cfg, method.paper_learning_rates(), dense_shape.hidden, steps),
                   method.resolve_defaults(cfg, steps)):
        if chosen:
            say(chosen)

    scratch = run_dir.tmp if run_dir is not None else Path(cfg.output_dir)
    needed = prerequisite_run(cfg, method, data.task, accelerator, scratch, show_progress, say, resume)
    if needed is not None:
        check_prerequisite_learned(cfg, method, data.task, data.dev_ds.examples, needed.summary)
    # Every process reads a kept stage on resume; the main process writes it.
    context = RunContext(cfg, data.task, data.tokenizer, data.train_ds, data.dev_ds, accelerator, say,
                         stages=unfinished_folder(cfg.output_dir) / "stages" if checkpoints else None,
                         resuming=resume)
    model, cost = method.start(model, spec, context, needed)
    started_from = needed.summary if needed is not None else None
    del needed  # the method keeps what it needs (CoFi's teacher); the rest can be freed
    set_seed(cfg.seed, deterministic=True)  # the same stream whatever ran before
    if getattr(cfg, "max_inference_cost", None) and not cfg.inference_lengths:
        cfg.inference_lengths = default_inference_lengths(data.task)
        say(f"inference-cost budget: {cfg.max_inference_cost:g} of the dense model's, at "
            f"--inference-lengths {cfg.inference_lengths} tokens")
    model = method.prepare(model, spec, cfg)
    trainable, total = count_parameters(model)
    say(f"model: {cfg.model} ({model.config.model_type}, {dense_params['non_embedding']:,} non-embedding "
        f"params) | method: {method.name} | trainable params: {trainable:,} || all params: {total:,} || "
        f"trainable%: {100 * trainable / total:.4f}")

    for note in (ignored_epochs_note(cfg, method), ignored_options_note(cfg, method)):
        if note:
            say(note)
    trainer = _trainer(cfg, method, model, spec, data, accelerator, cost, run_dir, show_progress)
    say(f"training {trainer.total_steps:,} steps ({trainer.cfg.epochs:g} epochs of "
        f"{trainer.steps_per_epoch:,}), batch {cfg.batch_size}, lr {cfg.lr:.3g}, "
        f"eval every {cfg.eval_every} steps")
    # Every process takes part (they stop at the same step and gather their random states); the
    # main process writes (docs/protocol.md#checkpoints).
    checkpointed = checkpoints and method.resumable
    if checkpointed:
        _wire_checkpoints(trainer, cfg, run_dir, resume, say, started_from)
    elif cfg.checkpoint_every is not None and checkpoints:
        say(f"note: --checkpoint-every is ignored: {method.name} runs do not write checkpoints yet")
    with stop_on_signals(trainer, enabled=checkpointed):
        result = trainer.train()

    accelerator.wait_for_everyone()
    final = method.finalize(accelerator.unwrap_model(trainer.model), spec, cfg)
    scored = data.task.evaluate(final, trainer.eval_loader, accelerator)
    final_eval = scored.metrics
    for name, value in data.task.resolved_options().items():  # e.g. a threshold chosen on held-out rows
        setattr(cfg, name, value)
    inference = _report_pruning(cfg, method, final, data, dense_shape, dense_params, accelerator)
    metrics = build_metrics(cfg, method, data, final, final_eval, result, cost, trainable, total,
                            dense_params, inference, accelerator, run_versions,
                            method.describe(accelerator.unwrap_model(trainer.model), cfg))
    metrics["per_class"] = scored.per_class
    if reference is not None:
        metrics["tta"] = _tta_against(*reference, metrics["history"])
    if run_dir is not None:
        _save(run_dir, final, data.tokenizer, cfg, metrics, wall_start)
        metrics["output_dir"] = str(run_dir.final)
        _print_summary(metrics)
    return metrics


def _wire_checkpoints(trainer: Trainer, cfg: TrainConfig, run_dir: RunDir | None, resume: bool, say,
                      started_from: dict[str, Any] | None) -> None:
    """Checkpoints every cfg.checkpoint_every steps (default: at each evaluation); with `resume`,
    the trainer continues from the last one. `started_from` summarises the prerequisite run (the
    LoRA run pruned, the FT teacher): a resumed run must find it unchanged."""
    prerequisite = json.loads(json.dumps(started_from, default=float)) if started_from else None
    trainer.checkpoint_every = cfg.checkpoint_every
    folder = unfinished_folder(cfg.output_dir)  # run_dir.tmp on the main process, None elsewhere
    trainer.save_checkpoint = lambda t: write_checkpoint(folder, t, cfg.to_dict(), prerequisite)
    if not resume:
        return
    tensors, meta = read_checkpoint(folder)
    if meta.get("prerequisite") != prerequisite:
        raise AptuneError(f"the run this one started from ({(prerequisite or {}).get('run')}) changed after "
                          "the checkpoint was written (its selected step, dev scores or timing differ)",
                          "start the run again with --overwrite, so that it uses that run throughout")
    restore_trainer(trainer, tensors, meta)
    if run_dir is not None:  # the log is the checkpoint's history: later evaluations run again
        log, tmp = run_dir.path("log.jsonl"), run_dir.path("log.jsonl.tmp")
        tmp.write_text("".join(json.dumps(record) + "\n" for record in trainer.history))
        os.replace(tmp, log)
    say(f"resumed from the checkpoint at step {trainer.step:,} (epoch {trainer.epoch}, "
        f"{trainer.train_seconds:.1f} s of training so far)")


@contextlib.contextmanager
def stop_on_signals(trainer: Trainer, enabled: bool):
    """The first SIGINT or SIGTERM asks the loop to finish its step, write a checkpoint and stop;
    a second one acts as usual (stops at once)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def request_stop(signum, frame) -> None:  # no printing here: it may interrupt a print
        trainer.stop_requested = True
        restore()

    for sig in previous:
        signal.signal(sig, request_stop)
    try:
        yield
    finally:
        restore()


def resume_config(output_dir: str, given: dict[str, Any]) -> TrainConfig:
    """The config of the unfinished run in `output_dir`, as its checkpoint recorded it. Flags
    given again must agree with it: a resumed run is the same run."""
    saved = read_checkpoint_state(unfinished_folder(output_dir))["config"]
    differ = sorted(k for k, v in given.items() if v is not None and k in saved and saved[k] != v
                    and k not in ("output_dir", "overwrite"))
    if differ:
        listed = ", ".join(f"{k} ({saved[k]!r} in the checkpoint, {given[k]!r} now)" for k in differ)
        raise AptuneError(f"--resume continues the same run, but these settings differ: {listed}",
                          "drop those flags (the checkpoint's settings are used), or start a new run")
    return TrainConfig(**{**saved, "output_dir": str(output_dir)})


def load_data(cfg: TrainConfig, say) -> RunData:
    """The task's train and dev splits, checked and tokenised for the model's family."""
    options = task_options(cfg.to_dict())
    task = get_task(cfg.task, options)
    data_dir = resolve_data_dir(cfg.data_dir)
    model_path = resolve_model_path(cfg.model)
    model_config = load_config(model_path)  # unsupported families fail before any data work
    tokenizer = load_tokenizer(model_path)
    task = for_model(task, tokenizer, model_config)  # text to text for an encoder-decoder
    train = task.load("train", data_dir, cfg.max_train_samples, cfg.data_seed, options)
    dev = task.load("dev", data_dir, cfg.max_eval_samples, cfg.data_seed, options)
    for name, value in task.resolved_options().items():  # config.yaml records what was found
        setattr(cfg, name, value)
    if task.describe():
        say(task.describe())
    say(f"train: {train.report.summary()}")
    say(f"dev:   {dev.report.summary()}")
    max_length = cfg.max_length or task.default_max_length
    dev_ds = encode(task, dev.examples, tokenizer, max_length, model_config)
    held_out = task.held_out_examples()
    if held_out:  # scored beside dev at every evaluation (QA: they choose the null threshold)
        dev_ds.held_out = encode(task, held_out, tokenizer, max_length, model_config)
    return RunData(task, tokenizer, model_path, train, dev,
                   encode(task, train.examples, tokenizer, max_length, model_config, keep_meta=False),
                   dev_ds, max_length)


def _trainer(cfg: TrainConfig, method: Method, model, spec, data: RunData, accelerator, cost: Cost,
             run_dir: RunDir | None, show_progress: bool) -> Trainer:
    train_loader = make_loader(data.train_ds, data.tokenizer, cfg.batch_size, shuffle=True, seed=cfg.seed,
                               group_by_length=cfg.group_by_length)
    dev_loader = make_loader(data.dev_ds, data.tokenizer, cfg.eval_batch_size, shuffle=False, seed=cfg.seed)
    loop_cfg = LoopConfig(epochs=method.loop_epochs(cfg), lr=cfg.lr, batch_size=cfg.batch_size,
                          eval_every=cfg.eval_every, warmup_ratio=cfg.warmup_ratio,
                          weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
                          seed=cfg.seed, log_every=cfg.log_every, time_offset=cost.seconds)
    log_path = run_dir.path("log.jsonl") if run_dir is not None else None
    return Trainer(model, data.task, train_loader, dev_loader, loop_cfg, accelerator,
                   callbacks=method.callbacks(model, spec, cfg), log_path=log_path,
                   show_progress=show_progress)


def default_inference_lengths(task: Task) -> str:
    """The tokens per example that the run's own inference measurement uses: the task's input
    length, and for an encoder-decoder its target tokens (2 teacher-forced tokens for a label,
    the generated tokens for a summary)."""
    source = task.inference_shape[0]
    if task.head != "text-to-text":
        return str(source)
    return f"{source},{task.generation_benchmark_tokens or 2}"


def ignored_epochs_note(cfg: TrainConfig, method: Method) -> str | None:
    """A method whose loop length comes from its own stage options (CoFi) says so when --epochs
    was set to something else than the default, instead of ignoring it silently."""
    default = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == "epochs")
    if cfg.epochs == default or method.loop_epochs(cfg) == cfg.epochs:
        return None
    return (f"note: --epochs {cfg.epochs:g} is ignored: {method.name} trains {method.loop_epochs(cfg):g} "
            "epochs, set by its stage options (see `aptune train --help`)")


# Filled in by validation from the task when not given (APT's λ_pred): differs from its default
# without having been set.
_DERIVED_OPTIONS = frozenset({"lambda_pred"})


def _as_flag(name: str, value: Any) -> str:
    """How the command line spells `name` set to `value` (booleans as --x / --no-x)."""
    if isinstance(value, bool):
        return flag(name) if value else "--no-" + flag(name)[2:]
    return f"{flag(name)} {value}"


def ignored_options_note(cfg: TrainConfig, method: Method) -> str | None:
    """Options of other methods that were set (recipe or flag, away from their defaults) but do
    not change this method's run: named, instead of being ignored silently."""
    from .apt.config import ADAPTERS, APTConfig
    from .config import SECTIONS

    adapter_options = frozenset(f.name for f in dataclasses.fields(APTConfig)
                                if f.metadata.get("panel") == ADAPTERS)
    ignored = []
    for section in SECTIONS:
        for f in dataclasses.fields(section):
            if f.name in _DERIVED_OPTIONS or method.uses_option(f.name, adapter_options):
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            value = getattr(cfg, f.name)
            if value != default:
                ignored.append(_as_flag(f.name, value))
    if not ignored:
        return None
    return (f"note: {method.name} ignores {', '.join(dict.fromkeys(ignored))} (options that only other "
            f"methods use; see `aptune train --method {method.name} --help`)")


# -- prerequisite runs ---------------------------------------------------------------------------
def prerequisite_run(cfg: TrainConfig, method: Method, task: Task, accelerator, scratch: Path,
                     show_progress: bool, say, resume: bool = False) -> PrerequisiteRun | None:
    """The finished run the method declares it needs: the folder the user gave, or one trained
    inline into this run's folder first (a resumed run reuses the inline run it finished). None
    when the method needs none."""
    need = method.prerequisite
    if need is None:
        return None
    folder = getattr(cfg, need.folder_field)
    if folder is None:
        if accelerator.num_processes > 1:
            raise AptuneError(f"{cfg.method} cannot train {need.role} inline under several processes "
                              "(each would need the main process's files)",
                              f"train it first with `aptune train --method {need.method}` and pass "
                              f"{need.flag}")
        out = scratch / f"base-{need.method}"
        if resume and (out / "metrics.json").is_file():
            say(f"{cfg.method}: reusing its finished {need.method} run in {out}")
            return _load_prerequisite(out, need, cfg, task, accelerator)
        cleared = {m.prerequisite.folder_field: None for m in METHODS.values() if m.prerequisite}
        inline = {field: getattr(cfg, source) for field, source in need.inline.items()}
        # weight_decay None: the inline run takes its own method's default (FT's 0.1 for CoFi's
        # teacher, not CoFi's 0.0).
        sub_cfg = dataclasses.replace(cfg, method=need.method, output_dir=str(out), overwrite=True,
                                      weight_decay=None, **cleared, **inline)
        say(f"{cfg.method}: training its {need.method} run inline into {out} "
            f"({sub_cfg.epochs:g} epochs, lr {'its default' if sub_cfg.lr is None else f'{sub_cfg.lr:g}'})")
        run_training(sub_cfg, show_progress=show_progress, checkpoints=False)
        folder = str(out)
    return _load_prerequisite(Path(folder).expanduser(), need, cfg, task, accelerator)


def check_prerequisite_learned(cfg: TrainConfig, method: Method, task: Task, dev_examples: list,
                               summary: dict) -> None:
    """Stop when the prerequisite scored no better (within one dev row) than a constant answer:
    it learned nothing, so distilling from it (CoFi) or pruning it (LoRA+Prune) cannot give a
    useful model, and training on would only hide that."""
    floor = task.constant_floor(dev_examples)
    value = (summary.get("dev") or {}).get(task.metric)
    if cfg.allow_untrained_prerequisite or floor is None or value is None:
        return
    if not task.no_better_than(value, floor, len(dev_examples)):
        return
    need = method.prerequisite
    knobs = " and ".join(flag(mine) for mine in need.inline.values())
    raise AptuneError(
        f"{need.role} ({summary['run']}) scored dev {task.metric} {value:.4f}, no better than one "
        f"constant answer ({floor:.4f}: the most frequent label, or 'no answer' on SQuAD): it "
        f"learned nothing, and {cfg.method} "
        f"would start from it",
        f"train it longer or at a higher learning rate ({knobs}), pass a better run with {need.flag}, "
        f"or --allow-untrained-prerequisite to go on anyway")


def _load_prerequisite(path: Path, need, cfg: TrainConfig, task: Task, accelerator) -> PrerequisiteRun:
    metrics = _finished_run(path, need, cfg, task.name, task.label_names)
    summary = {"run": str(path), "dev": metrics["eval"], "selected_step": metrics["selection"]["step"],
               "train_seconds_to_selected": seconds_to_selected(metrics),
               "peak_train_memory_bytes": metrics.get("peak_train_memory_bytes", 0)}
    cost = Cost(seconds=summary["train_seconds_to_selected"],
                peak_memory_bytes=summary["peak_train_memory_bytes"])
    return PrerequisiteRun(load_pruned(path / "model", accelerator.device), summary, cost)


def _finished_run(path: Path, need, cfg: TrainConfig, task: str, label_names: tuple[str, ...]) -> dict:
    """The metrics of a finished run of the needed method, task and model, or one clear error."""
    metrics_path = path / "metrics.json"
    if not metrics_path.is_file() or not (path / "model").is_dir():
        raise AptuneError(f"{need.flag} {path} is not a finished aptune run (no metrics.json or model/)",
                          f"pass the folder of an `aptune train --method {need.method}` run")
    metrics = json.loads(metrics_path.read_text())
    if metrics.get("method") != need.method or metrics.get("task") != task:
        raise AptuneError(
            f"{need.flag} {path} is a {metrics.get('method')} run on {metrics.get('task')}; "
            f"{cfg.method} needs a {need.method} run on {task}",
            f"train one with `aptune train --method {need.method}`, or leave {need.flag} out")
    if metrics.get("model") != cfg.model:
        raise AptuneError(f"{need.flag} {path} was trained from --model {metrics.get('model')}, this run "
                          f"uses --model {cfg.model}",
                          f"pass the same --model, or a {need.method} run of {cfg.model}")
    # Own data: the same labels in the same order, from the same rows.
    labels = json.loads((path / "model" / "config.json").read_text()).get("id2label", {})
    theirs = [labels[k] for k in sorted(labels, key=int)]
    if labels and theirs != list(label_names):
        raise AptuneError(f"{need.flag} {path} has the labels {', '.join(theirs)}; this run's are "
                          f"{', '.join(label_names)}",
                          f"pass a {need.method} run trained on the same data, or leave {need.flag} out")
    config = path / "config.yaml"
    earlier = (yaml.safe_load(config.read_text()) if config.is_file() else None) or {}
    moved = [k for k in ("train_file", "dataset", "dataset_config") if earlier.get(k) != getattr(cfg, k)]
    if moved:
        raise AptuneError(f"{need.flag} {path} was trained on other data ({', '.join(moved)} differ)",
                          f"pass a {need.method} run trained on the same rows, or leave {need.flag} out")
    return metrics


# -- time to accuracy against an FT run -----------------------------------------------------------
def _tta_reference(cfg: TrainConfig, task: Task) -> tuple[Path, dict] | None:
    """The FT run of --tta-reference, checked like a prerequisite (same task, model, labels, data)."""
    if cfg.tta_reference is None:
        return None
    path = Path(cfg.tta_reference).expanduser().resolve()
    need = Prerequisite("ft", "tta_reference", role="the FT run to measure TTA against")
    return path, _finished_run(path, need, cfg, task.name, task.label_names)


def _tta_against(path: Path, ft: dict, history: list[dict]) -> dict[str, Any]:
    """TTA of this run and of the FT run at 97% of FT's best dev score (docs/protocol.md#time-to-accuracy)."""
    from .bench.tta import TTA_FRACTION, threshold_from, time_to_accuracy

    threshold = threshold_from(ft["history"])
    return {"reference": str(path), "fraction": TTA_FRACTION, "threshold": threshold,
            "ft_best": max(r["value"] for r in ft["history"]),
            "run": time_to_accuracy(history, threshold), "ft": time_to_accuracy(ft["history"], threshold)}


def _tta_line(tta: dict[str, Any], metric: str) -> str:
    head = (f"TTA: dev {metric} >= {tta['threshold']:.4f} ({tta['fraction']:.0%} of the FT run's best "
            f"{tta['ft_best']:.4f})")
    ft = tta["ft"]["seconds"]
    if not tta["run"]["reached"]:
        return f"{head}: not reached (best at the final size {tta['run']['best']:.4f}); FT took {ft:.1f} s"
    mine = tta["run"]["seconds"]
    return (f"{head}: {mine:.1f} s (step {tta['run']['step']}), FT {ft:.1f} s "
            f"({mine / ft:.2f}x FT's)" if ft else f"{head}: {mine:.1f} s")


def seconds_to_selected(metrics: dict) -> float:
    """Training seconds of a run up to its selected checkpoint (evaluations excluded)."""
    step = metrics.get("selection", {}).get("step")
    for record in metrics.get("history", []):
        if record["step"] == step:
            return float(record.get("total_train_seconds", record["train_seconds"]))
    return float(metrics.get("total_train_seconds", metrics.get("train_seconds", 0.0)))


# -- after training ------------------------------------------------------------------------------
def _report_pruning(cfg: TrainConfig, method: Method, final, data: RunData, dense_shape: ModelShape,
                    dense_params: dict, accelerator) -> dict | None:
    """For a pruned model: dense against pruned inference, and the before -> after report."""
    structure = recorded_structure(final)
    if structure is None or not accelerator.is_main_process:
        return None
    seq_len, batch_sizes = data.task.inference_shape
    seq_len = min(seq_len, get_spec(final).max_positions(final))  # a small model has fewer positions
    _say(accelerator, f"measuring inference: dense vs pruned, batch {' and '.join(map(str, batch_sizes))} "
         f"x {seq_len} tokens ...")
    dense = load_task_model(data.model_path, data.task).to(accelerator.device)
    inference = compare_inference(dense, final, batch_sizes, seq_len)
    del dense
    ranks = method.describe(final, cfg).get("final_ranks")
    print(format_report(final, structure, dense_shape, dense_params["non_embedding"], ranks, inference,
                        title=method.name.upper()), flush=True)
    return inference


def build_metrics(cfg: TrainConfig, method: Method, data: RunData, final, final_eval: dict,
                  result: TrainResult, cost: Cost, trainable: int, total: int, dense_params: dict,
                  inference: dict | None, accelerator, run_versions: dict,
                  settings: dict) -> dict[str, Any]:
    """metrics.json: what was trained, how well, how fast, with how much memory, and on what."""
    metrics = {
        "task": data.task.name,
        "head": data.task.head,
        "method": method.name,
        "model": cfg.model,
        "model_path": data.model_path,
        "eval": final_eval,
        "selection": {"metric": data.task.metric, "rule": "best dev score over the evaluations",
                      "step": result.best_step,
                      # None when the loop never evaluated (lora-prune with --epochs 0)
                      "value_during_training": result.best_metric
                      if math.isfinite(result.best_metric) else None},
        "params": {**parameter_summary(final), "trainable": trainable,
                   "total_during_training": total,
                   "dense_non_embedding": dense_params["non_embedding"]},
        "steps": result.steps,
        "epochs": method.loop_epochs(cfg),
        "samples_seen": result.samples_seen,
        "train_seconds": round(result.train_seconds, 3),
        # What TTA charges: time spent before this loop (a base run, Mask Tuning) plus the loop.
        "seconds_before_training": round(cost.seconds, 3),
        "total_train_seconds": round(cost.seconds + result.train_seconds, 3),
        "seconds_per_step": round(result.train_seconds / max(1, result.steps), 4),
        "samples_per_second": round(result.samples_seen / max(result.train_seconds, 1e-9), 2),
        "seconds_per_step_by_phase": phase_step_seconds(result.phase_seconds),
        "peak_train_memory_bytes": max(result.peak_train_memory_bytes + cost.resident_bytes,
                                       cost.peak_memory_bytes),
        "peak_train_memory_method": result.memory_method,
        "data": {"train": data.train.report.summary(), "dev": data.dev.report.summary(),
                 "train_rows": len(data.train_ds), "dev_rows": len(data.dev_ds),
                 "max_length": data.max_length, "train_mean_tokens": round(data.train_ds.mean_length(), 2)},
        "method_settings": settings,
        "inference": inference,
        "history": result.history,
        "hardware": {**hardware(), "num_processes": accelerator.num_processes,
                     "device": str(accelerator.device)},
        "versions": run_versions,
    }
    structure = recorded_structure(final)
    if structure is not None:
        metrics["params"]["kept_ratio"] = metrics["params"]["non_embedding"] / dense_params["non_embedding"]
        metrics["structure"] = structure.summary()
    if method.promises_parameter_count(cfg):
        metrics["size_target"] = size_target(cfg.sparsity, metrics["params"].get("kept_ratio", 1.0))
        metrics["on_size_miss"] = cfg.on_size_miss
    return metrics


def missed_size_line(m: dict) -> str | None:
    """What ends the summary of a pruning run whose model is bigger than asked, or None."""
    size = m.get("size_target")
    if size is None or size["met"]:
        return None
    line = (f"{m['method']} kept {size['kept']:.2%} of the non-embedding parameters, not the "
            f"{size['kept_target']:.2%} that --sparsity asked for (metrics.json: size_target.met false); "
            "its dev score is that of a bigger model")
    method = METHODS.get(m["method"])
    if method is not None and method.missed_size_hint:
        line += "; " + method.missed_size_hint
    return line


def fail_on_missed_size(cfg: TrainConfig, metrics: dict) -> None:
    """--on-size-miss error: a saved run whose model is bigger than asked still fails the command
    (exit 3), so that a script or a pipeline cannot take it for the size it asked for."""
    missed = missed_size_line(metrics)
    if missed is None or cfg.on_size_miss != "error":
        return
    if "output_dir" in metrics:  # the main process: one message
        print(f"aptune: error: {missed}", file=sys.stderr, flush=True)
        print(f"  fix: the run is saved in {metrics['output_dir']}; give the pruning more steps, or "
              "pass --on-size-miss warn to accept a bigger model with exit status 0",
              file=sys.stderr, flush=True)
    raise SystemExit(3)


def phase_step_seconds(phase_seconds: dict[str, list]) -> dict[str, dict]:
    """{phase: steps, seconds, seconds_per_step} in the order the phases began (LoopControl.phase)."""
    return {name: {"steps": steps, "seconds": round(seconds, 3),
                   "seconds_per_step": round(seconds / max(1, steps), 4)}
            for name, (steps, seconds) in phase_seconds.items()}


def _save(run_dir: RunDir, model, tokenizer, cfg: TrainConfig, metrics: dict, wall_start: float) -> None:
    save_pruned(model, run_dir.path("model"), tokenizer)
    (run_dir.path("config.yaml")).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    metrics["wall_seconds"] = round(time.perf_counter() - wall_start, 3)
    run_dir.write_json("metrics.json", metrics)
    run_dir.finish({"kind": "train", "task": cfg.task, "method": cfg.method,
                    "aptune": metrics["versions"].get("aptune")})


def _print_summary(m: dict) -> None:
    mem = m["peak_train_memory_bytes"] / 2**20
    if m.get("per_class"):
        print(f"dev per class ({m['data']['dev_rows']:,} rows):", flush=True)
        print(format_per_class(m["per_class"]), flush=True)
    print(f"result: {m['task']} {m['method']} dev {m['selection']['metric']} "
          f"{m['eval'][m['selection']['metric']]:.4f} (selected step {m['selection']['step']}) | "
          f"train {m['train_seconds'] / 60:.1f} min, {m['seconds_per_step']:.3f} s/step, "
          f"{m['samples_per_second']:.1f} samples/s | peak train memory {mem:,.0f} MiB | "
          f"wall {m['wall_seconds'] / 60:.1f} min", flush=True)
    phases = m.get("seconds_per_step_by_phase") or {}
    if len(phases) > 1:
        print("s/step by phase: " + ", ".join(f"{name} {p['seconds_per_step']:.3f} ({p['steps']} steps)"
                                             for name, p in phases.items()), flush=True)
    if "tta" in m:
        print(_tta_line(m["tta"], m["selection"]["metric"]), flush=True)
    print(f"saved: {m['output_dir']}", flush=True)
    # a pruned model: what to run next (export takes classifiers so far; predict takes every head)
    head = m.get("head", "sequence-classification")
    if "structure" in m and head == "sequence-classification":
        print(f"next: aptune export --model-dir {m['output_dir']} --format onnx   "
              f"(or aptune predict --model-dir {m['output_dir']} --text ...)", flush=True)
    elif "structure" in m:
        inputs = "--question ... --context ..." if head == "question-answering" else "--text ..."
        print(f"next: aptune predict --model-dir {m['output_dir']} {inputs}", flush=True)
    from .tasks import task_class

    found = task_class(m["task"])
    if found is not None and "test" in found.splits:  # dev selected the checkpoint; test scores it
        print(f"next: aptune eval --model-dir {m['output_dir']} --split test", flush=True)
    missed = missed_size_line(m)
    if missed and m.get("on_size_miss") == "warn":  # last, where it is seen ("error": fail_on_missed_size)
        print(f"warning: {missed}", flush=True)
