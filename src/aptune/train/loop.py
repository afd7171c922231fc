"""The training loop, on Hugging Face Accelerate so that `accelerate launch` scales it out.

Methods never copy this loop; they add Callbacks (events.py, which states what a callback may
change and call) and choose what is trainable.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..tasks import Task
from .control import LoopControl
from .events import Callback
from .memory import PeakMemoryMeter, release_freed_memory, trims_each_step
from .optim import LinearWarmupDecay, Survivors, build_optimizer, rebuild_optimizer, set_lr


class RunInterrupted(Exception):
    """SIGINT or SIGTERM stopped the loop after a step whose checkpoint was written."""

    def __init__(self, step: int) -> None:
        super().__init__(f"interrupted after step {step}")
        self.step = step


@dataclass
class LoopConfig:
    epochs: float
    lr: float
    batch_size: int
    eval_every: int
    warmup_ratio: float = 0.06
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 128
    log_every: int = 10
    time_offset: float = 0.0  # training seconds charged before this loop (logged as total_train_seconds)


@dataclass
class TrainResult:
    steps: int
    samples_seen: int
    train_seconds: float
    wall_seconds: float
    best_metric: float
    best_step: int
    best_eval: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    peak_train_memory_bytes: int = 0
    memory_method: str = ""
    # phase -> [steps, seconds], in the order the phases began (LoopControl.phase)
    phase_seconds: dict[str, list] = field(default_factory=dict)


class Trainer:
    def __init__(self, model: nn.Module, task: Task, train_loader, eval_loader, cfg: LoopConfig,
                 accelerator, callbacks: Sequence[Callback] = (), log_path: Path | None = None,
                 show_progress: bool = True) -> None:
        self.task = task
        self.cfg = cfg
        self.accelerator = accelerator
        self.callbacks = list(callbacks)
        self.log_path = log_path
        self.show_progress = show_progress
        self.steps_per_epoch = steps_per_epoch(len(train_loader.dataset), cfg.batch_size,
                                               accelerator.num_processes)
        # 0 epochs is allowed for methods whose work happens before the loop (lora-prune).
        self.total_steps = total_steps(cfg.epochs, self.steps_per_epoch)
        self.control = LoopControl(LinearWarmupDecay.from_ratio(cfg.lr, self.total_steps, cfg.warmup_ratio))
        optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
        self.model, self.optimizer, self.train_loader, self.eval_loader = accelerator.prepare(
            model, optimizer, train_loader, eval_loader)
        self.step = 0
        self.samples_seen = 0
        self.train_seconds = 0.0
        self.phase_seconds: dict[str, list] = {}  # phase -> [steps, seconds] (LoopControl.phase)
        self.history: list[dict[str, Any]] = []
        self.best_metric = -math.inf
        self.best_step = -1
        self.best_eval: dict[str, float] = {}
        self._best_state: dict[str, torch.Tensor] | None = None
        self._untimed = 0.0
        self._extra_params: list = []
        self.memory = PeakMemoryMeter(accelerator.device)
        self._trim_each_step = trims_each_step(accelerator.device)  # the default heap only
        # Where the data stream stands, and the running loss, so that a checkpoint can resume it.
        self.epoch = 0
        self.batches_in_epoch = 0
        self.loss_window: dict[str, Any] = {"sum": 0.0, "count": 0, "smoothed": None}
        # Losses of the steps since the window was last brought up to date, still on the device:
        # reading each step's loss would make every GPU step wait for the device.
        self._unread_losses: list[torch.Tensor] = []
        # Checkpoints (train/checkpoint.py): `save_checkpoint(trainer)` runs every
        # `checkpoint_every` steps and when a stop is requested (SIGINT/SIGTERM), after which the
        # loop raises RunInterrupted.
        self.checkpoint_every: int | None = None
        self.save_checkpoint = None
        self.stop_requested = False
        self.resumed_wall_seconds = 0.0
        self.resumed_peak_bytes = 0
        self.pending_rng = None
        self._wall_start = time.perf_counter()
        self._fault = _fault_injection()

    # -- helpers that callbacks use --------------------------------------------------------------
    @property
    def unwrapped_model(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    @property
    def lr(self) -> float:
        return self.control.lr_schedule(self.step)

    def rebuild_optimizer(self, survivors: Survivors, extra_params=None) -> None:
        """Call after trainable parameters change shape or number; keeps surviving state.

        `extra_params` are trainable tensors outside the model (e.g. APT's layer transform).
        """
        if extra_params is not None:
            self._extra_params = list(extra_params)
        old = self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer
        new = rebuild_optimizer(old, self.unwrapped_model, self.cfg.weight_decay, survivors,
                                self._extra_params)
        acc = self.accelerator
        if acc.num_processes > 1:
            # DDP holds the old parameters: wrap the changed model again (this also re-syncs it).
            old_model, self.model = self.model, acc.prepare_model(self.unwrapped_model)
            _forget(acc, "_models", old_model)
        old_optimizer, self.optimizer = self.optimizer, acc.prepare_optimizer(new)
        # Accelerate keeps every prepared object in a list it never prunes: without this, each old
        # optimizer (and its moments) would stay alive for the rest of the run and be charged to
        # the training memory (APT rebuilds at every shape change).
        _forget(acc, "_optimizers", old_optimizer)
        self._trainable = self._trainable_params()

    def average_gradients(self, params) -> None:
        """Average the gradients of trainable tensors that live outside the DDP-wrapped model
        (APT's Tr, CoFi's W_tr and gates) across processes; DDP averages the model's own."""
        if self.accelerator.num_processes == 1:
            return
        for p in params:
            if p.grad is not None:
                p.grad = self.accelerator.reduce(p.grad, "mean")

    def _trainable_params(self) -> list:
        """What gradient clipping covers; refreshed only when the parameter set changes."""
        return [p for p in self.model.parameters() if p.requires_grad] + [
            p for p in self._extra_params if p.requires_grad]

    def say(self, text: str) -> None:
        if self.accelerator.is_main_process:
            tqdm.write(text)

    def wall_seconds(self) -> float:
        """Wall time of the loop, earlier sessions of a resumed run included (not the downtime)."""
        return self.resumed_wall_seconds + time.perf_counter() - self._wall_start

    def peak_so_far(self) -> int:
        return max(self.memory.peak_bytes(), self.resumed_peak_bytes)

    def _replay_data_order(self) -> None:
        """A resumed run draws the same batches: iterate the loader through the epochs and batches
        already trained (the loader's own generator advances exactly as it did), then put back the
        global RNG states that dropout draws from."""
        for epoch in range(self.epoch + 1):
            if hasattr(self.train_loader, "set_epoch"):
                self.train_loader.set_epoch(epoch)
            if epoch < self.epoch:
                for _ in self.train_loader:
                    pass
        if self.pending_rng is not None:
            from .checkpoint import set_rng

            set_rng(self.pending_rng)
            self.pending_rng = None

    def evaluate_untimed(self) -> dict[str, float]:
        """A dev evaluation whose time is excluded from training time (TTA's definition)."""
        _wait_for_device(self.accelerator.device)  # training work still queued is training time
        t0 = time.perf_counter()
        metrics = self.evaluate()
        self._untimed += time.perf_counter() - t0
        return metrics

    def restore_best(self) -> None:
        if self._best_state is not None:
            self.restore(self._best_state)

    def reset_best_to_current(self) -> None:
        """After a change of shapes, the current (best) weights become the best snapshot."""
        self._best_state = self.snapshot_trainable()

    def snapshot_trainable(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.unwrapped_model.named_parameters()
                if p.requires_grad}

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.unwrapped_model.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    # -- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        return evaluate_model(self.model, self.eval_loader, self.task, self.accelerator)

    # -- training --------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        acc = self.accelerator
        self._wall_start = wall_start = time.perf_counter() - self.resumed_wall_seconds
        self.resumed_wall_seconds = 0.0
        self.memory.start()
        resuming = self.step > 0
        for cb in self.callbacks:
            cb.on_train_begin(self)
        bar = tqdm(total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True,
                   mininterval=0.2 if sys.stderr.isatty() else 30.0,
                   disable=not (self.show_progress and acc.is_local_main_process))
        self._trainable = self._trainable_params()
        skip = 0
        if resuming:
            self._replay_data_order()
            skip = self.batches_in_epoch
        while self.step < self.total_steps:
            if hasattr(self.train_loader, "set_epoch") and not resuming:
                self.train_loader.set_epoch(self.epoch)
            resuming = False
            for index, batch in enumerate(self.train_loader):
                if index < skip:  # trained before the restart
                    continue
                t0 = time.perf_counter()
                self._untimed = 0.0
                for cb in self.callbacks:
                    cb.on_step_begin(self, batch)  # may evaluate (eval mode) or reshape the model
                self.model.train()
                set_lr(self.optimizer, self.control.lr_schedule(self.step))
                extra_kwargs = {}
                for cb in self.callbacks:
                    extra_kwargs.update(cb.forward_kwargs(self))
                outputs = self.model(**batch, **extra_kwargs)
                loss = outputs.loss
                for cb in self.callbacks:
                    loss = cb.compute_loss(self, batch, outputs, loss)
                acc.backward(loss)
                for cb in self.callbacks:
                    cb.after_backward(self)
                if self.cfg.max_grad_norm > 0:
                    acc.clip_grad_norm_(self._trainable, self.cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self._trim_each_step:
                    release_freed_memory()
                self.step += 1
                self.batches_in_epoch = index + 1
                self.samples_seen += batch["input_ids"].shape[0] * acc.num_processes
                for cb in self.callbacks:
                    cb.after_step(self)
                self._unread_losses.append(loss.detach().float().reshape(()))
                logged = self.step % self.cfg.log_every == 0 or self.step == self.total_steps
                evaluated = self.step % self.cfg.eval_every == 0 or self.step == self.total_steps
                if logged or evaluated:
                    self._read_losses()  # waits for the device: inside the step's time, as it is training
                step_seconds = time.perf_counter() - t0 - self._untimed
                self.train_seconds += step_seconds
                tally = self.phase_seconds.setdefault(self.control.phase, [0, 0.0])
                tally[0], tally[1] = tally[0] + 1, tally[1] + step_seconds
                bar.update(1)
                window = self.loss_window
                if logged:
                    bar.set_postfix(loss=f"{window['smoothed']:.4f}", lr=f"{self.lr:.2e}",
                                    samples_s=f"{self.samples_seen / self.train_seconds:.1f}", refresh=False)
                if evaluated:
                    self._evaluate_and_log(window["sum"] / max(1, window["count"]), wall_start, bar)
                    window["sum"], window["count"] = 0.0, 0
                self._checkpoint_if_due(evaluated)
                if self.step >= self.total_steps:
                    break
            else:
                self.epoch, self.batches_in_epoch, skip = self.epoch + 1, 0, 0
                continue
            break
        bar.close()
        self._read_losses()
        peak = self.peak_so_far()
        for cb in self.callbacks:
            cb.on_train_end(self)
        if self._best_state is not None:
            self.restore(self._best_state)
        elif self.best_step < 0:  # selection never opened (e.g. too few evaluations): keep the last
            self.best_metric = self.history[-1]["value"] if self.history else float("nan")
            self.best_step = self.step
            self.best_eval = self.history[-1]["eval"] if self.history else {}
        return TrainResult(
            steps=self.step, samples_seen=self.samples_seen, train_seconds=self.train_seconds,
            wall_seconds=time.perf_counter() - wall_start, best_metric=self.best_metric,
            best_step=self.best_step, best_eval=self.best_eval, history=self.history,
            peak_train_memory_bytes=peak, memory_method=self.memory.method,
            phase_seconds=self.phase_seconds,
        )

    def _read_losses(self) -> None:
        """Bring the running loss window up to date with the losses still on the device: one read
        for all of them, then the same per-step sums as before, in step order."""
        if not self._unread_losses:
            return
        values = torch.stack(self._unread_losses).tolist()  # (n,) float32, read as .item() would
        self._unread_losses.clear()
        window = self.loss_window
        for value in values:
            window["sum"], window["count"] = window["sum"] + value, window["count"] + 1
            window["smoothed"] = value if window["smoothed"] is None else \
                0.9 * window["smoothed"] + 0.1 * value

    def _checkpoint_if_due(self, evaluated: bool) -> None:
        if self.save_checkpoint is None or self.step >= self.total_steps:
            return
        due = evaluated if self.checkpoint_every is None else self.step % self.checkpoint_every == 0
        stop = self._stop_agreed()
        if stop:
            self.say(f"stopping after step {self.step}: writing a checkpoint")
        if due or stop:
            self._read_losses()  # the checkpoint records the loss window
            with self.memory.excluded():  # writing a checkpoint is not training
                self.save_checkpoint(self)
        if stop:
            raise RunInterrupted(self.step)
        if self._fault and self._fault[0] == self.step:  # tests: a kill or a signal after this step
            os.kill(os.getpid(), self._fault[1])


    def _stop_agreed(self) -> bool:
        """Whether any process was asked to stop: every process stops after the same step, so
        that they write one checkpoint together (a signal may reach them a step apart)."""
        if self.accelerator.num_processes == 1:
            return self.stop_requested
        flag = torch.tensor([float(self.stop_requested)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, "sum").item() > 0)

    def _evaluate_and_log(self, mean_loss: float, wall_start: float, bar) -> None:
        control = self.control
        control.at_final_size = control.selection_open
        for cb in self.callbacks:
            cb.on_evaluate_begin(self)
        metrics = self.evaluate()
        value = metrics[self.task.metric]
        improved = control.selection_open and value > self.best_metric
        if improved:
            self.best_metric, self.best_step, self.best_eval = value, self.step, dict(metrics)
            self._best_state = self.snapshot_trainable()
        record = {
            "step": self.step,
            "epoch": round(self.step / self.steps_per_epoch, 4),
            "samples_seen": self.samples_seen,
            "train_seconds": round(self.train_seconds, 3),
            "total_train_seconds": round(self.cfg.time_offset + self.train_seconds, 3),
            "wall_seconds": round(time.perf_counter() - wall_start, 3),
            "loss": round(mean_loss, 6),
            "lr": self.lr,
            "metric": self.task.metric,
            "value": value,
            "at_final_size": control.at_final_size,
            "eval": metrics,
        }
        self.history.append(record)
        if self.accelerator.is_main_process and self.log_path is not None:
            with open(self.log_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        for cb in self.callbacks:
            cb.on_evaluate(self, metrics)
        step_s = self.train_seconds / self.step
        line = (f"step {self.step}/{self.total_steps}: loss {mean_loss:.4f}, lr {self.lr:.2e}, "
                f"dev {self.task.metric} {value:.4f} "
                + (f"(best {self.best_metric:.4f} @ {self.best_step}), " if self.best_step >= 0
                   else "(selection not open yet), ") +
                f"{self.samples_seen / self.train_seconds:.1f} samples/s, {step_s:.3f} s/step")
        if self.accelerator.is_main_process:
            (bar.write if not bar.disable else print)(line)


def steps_per_epoch(rows: int, batch_size: int, processes: int) -> int:
    """Optimizer steps in one pass over `rows` training rows (at least 1)."""
    return max(1, math.ceil(rows / (batch_size * processes)))


def total_steps(epochs: float, per_epoch: int) -> int:
    """Optimizer steps of a loop of `epochs` (fractions allowed; 0: no loop)."""
    return math.ceil(epochs * per_epoch) if epochs > 0 else 0


def evaluate_model(model: nn.Module, loader, task: Task, accelerator=None) -> dict[str, float]:
    """Predictions over the whole loader, gathered across processes, scored by the task."""
    return task.evaluate(model, loader, accelerator).metrics


def _wait_for_device(device: torch.device) -> None:
    """Let the device finish the work queued so far (the host runs ahead of it between reads)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forget(accelerator, registry: str, obj) -> None:
    """Drop `obj` from one of Accelerate's internal registries (`_models`, `_optimizers`)."""
    held = getattr(accelerator, registry, None)
    if isinstance(held, list):
        held[:] = [o for o in held if o is not obj]


def _fault_injection() -> tuple[int, int] | None:
    """APTUNE_FAULT_AT_STEP="17:KILL" (or INT, TERM) sends this process that signal after step 17:
    how the resume tests stop a run at a chosen point. Unset in normal use."""
    spec = os.environ.get("APTUNE_FAULT_AT_STEP")
    if not spec:
        return None
    step, name = spec.split(":")
    return int(step), int(getattr(signal, f"SIG{name}"))
