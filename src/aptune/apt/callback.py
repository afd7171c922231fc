"""APT in the training loop: the pruner (A_P), the ranks (A_T) and self-distillation (D_S) wired
into the loop's events in the order of docs/method.md#step-order.

    on_train_begin   the schedule, the LR segments, selection closed until the last pruning point
    on_step_begin    distillation starts; teacher refreshes at window starts; taps on or off
    compute_loss     μ·L_distill + (1 − μ)·L_ft while distilling
    after_backward   salience EMA and adapter importance (gradients averaged across processes)
    after_step       mask steps inside decay windows; pruning points; distillation ends
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..arch import ArchSpec
from ..lora import inject_lora, merge_and_unload
from ..structure import record_structure
from ..train.events import Callback
from ..train.optim import Survivors
from .pruner import Pruner
from .ranks import Ranks, growth_factor
from .schedule import PruningSchedule, SegmentedSchedule, build_schedule, settings_for
from .teacher import SelfDistillation


def attach_apt(model: nn.Module, spec: ArchSpec, cfg: Any, seed: int = 128) -> APTCallback:
    """Add APT's adapters (q, v and the FFN up-projection by default; the task head trains) and
    its masks and salience taps to `model`; returns the callback that runs APT in the loop."""
    targets = cfg.target_modules or list(spec.apt_target_modules)
    inject_lora(model, cfg.r, cfg.lora_alpha, targets, trainable_modules=spec.head_modules)
    return APTCallback(model, spec, cfg, seed)


class APTCallback(Callback):
    def __init__(self, model: nn.Module, spec: ArchSpec, cfg: Any, seed: int = 128) -> None:
        self.spec, self.cfg = spec, cfg
        # One random stream for new adapter rows, Tr's growth and the teacher layers sampled.
        generator = torch.Generator().manual_seed(seed)
        self.pruner = Pruner(model, spec, cfg)
        self.ranks = Ranks(model, spec, cfg, self.pruner.head_dim, generator)
        self.distillation = SelfDistillation(cfg, generator)
        self.schedule: PruningSchedule | None = None
        self.consistency: list[dict] = []
        self.resumed_selection_open: bool | None = None  # set when a checkpoint was restored
        self._teacher_targets = None  # this step's TeacherTargets, from on_step_begin to compute_loss

    # -- events --------------------------------------------------------------------------------
    def on_train_begin(self, trainer) -> None:
        cfg, control = self.cfg, trainer.control
        self.schedule = build_schedule(settings_for(cfg, trainer.total_steps, trainer.steps_per_epoch))
        resumed = self.resumed_selection_open is not None
        if not resumed:
            self.ranks.history.append({"step": 0, "ranks": self.ranks.table(),
                                       "delta": self.ranks.delta(self.pruner.masks)})
        self.schedule.set_tuning_budget(self.ranks.history[0]["delta"], cfg.tuning_budget_ratio)
        segmented = cfg.lr_schedule == "segmented"  # single: no segment boundaries at all
        control.lr_schedule = SegmentedSchedule(trainer.cfg.lr, trainer.total_steps, trainer.cfg.warmup_ratio,
                                                self.schedule.distill_start if segmented else None,
                                                self.schedule.distill_end if segmented else None,
                                                cfg.post_distill_lr_factor)
        # Checkpoints count once structure and ranks are final (the last pruning point).
        control.selection_open = bool(self.resumed_selection_open)
        trainer.say(self.schedule.describe())

    def on_step_begin(self, trainer, batch) -> None:
        t, sched = trainer.step, self.schedule
        if sched.distill_start is not None and t == sched.distill_start:
            self._start_distillation(trainer)
        if t in sched.window_starts():
            self._maybe_refresh_teacher(trainer)
        in_window = sched.start <= t <= sched.end
        trainer.control.phase = self._phase(t)
        self.pruner.salience.active = self.cfg.prune and in_window
        self.ranks.collecting = self.cfg.grow_ranks and in_window
        # The teacher runs before the student's forward, not inside compute_loss: its activations
        # then never coexist with the student's, and only its logits and sampled layers wait.
        self._teacher_targets = None
        if self.schedule.in_distillation(t) and self.distillation.teacher is not None:
            self._teacher_targets = self.distillation.targets(
                trainer.unwrapped_model, batch, self.pruner.masks, self.pruner.salience, self.spec)

    def _phase(self, t: int) -> str:
        """Where step t stands, for the seconds per step that the run reports by phase."""
        sched = self.schedule
        if not self.cfg.prune or t < sched.start:
            return "before_pruning" if self.cfg.prune else "training"
        if t < sched.points[-1]:
            return "pruning"
        if sched.distill_end is not None and t < sched.distill_end and self.distillation.teacher is not None:
            return "distilling_pruned"
        return "tuning_pruned"

    def forward_kwargs(self, trainer) -> dict:
        return {"output_hidden_states": True} if self.schedule.in_distillation(trainer.step) else {}

    def compute_loss(self, trainer, batch, outputs, loss: torch.Tensor) -> torch.Tensor:
        t = trainer.step
        if not self.schedule.in_distillation(t) or self.distillation.teacher is None:
            return loss
        masks = self.pruner.masks  # its alive layers are read from the device only when masks change
        model = trainer.unwrapped_model
        targets, self._teacher_targets = self._teacher_targets, None
        distill = self.distillation.loss(model, batch, outputs, masks, self.pruner.salience,
                                         masks.alive_layers(self.spec.stacks(model)), self.spec, targets)
        # μ·L_distill + (1 − μ)·L_ft (docs/method.md#distillation-weight), as L_ft + μ·(L_distill − L_ft).
        return loss + self.schedule.mu(t) * (distill - loss)

    def after_backward(self, trainer) -> None:
        salience = self.pruner.salience
        if salience.active:
            reduce = (lambda x: trainer.accelerator.reduce(x, "sum")) \
                if trainer.accelerator.num_processes > 1 else None
            salience.update_ema(salience.step_scores(reduce, alive=self.pruner.masks.alive()))
        self.ranks.observe()  # DDP has averaged W_B's gradients: identical on every process
        trainer.average_gradients(self.distillation.trainable())  # Tr lives outside DDP

    def after_step(self, trainer) -> None:
        t, step, sched = trainer.step - 1, trainer.step, self.schedule
        k = sched.window_of(t)
        # Soft steps until p_k - 2, exact 0/1 there, then frozen until the next window
        # (docs/method.md#mask-updates).
        if k is not None and self.cfg.prune and t <= sched.points[k] - 2:
            self.pruner.step_masks(k + 1, sched.kept[k], sched.mask_steps[k],
                                   binarise=(t == sched.points[k] - 2))
        point = sched.point_index(step)
        if point is not None:
            self._pruning_point(trainer, point)
        ends = sched.distill_end is not None and step == sched.distill_end
        if ends and self.distillation.teacher is not None:
            self._end_distillation(trainer)

    # -- pruning points ------------------------------------------------------------------------
    def _pruning_point(self, trainer, k: int) -> None:
        sched, cfg = self.schedule, self.cfg
        survivors: Survivors = {}
        if cfg.grow_ranks:
            prev = sched.budgets[k - 1] if k > 0 else self.ranks.history[0]["delta"]
            survivors.update(self.ranks.grow(prev, sched.budgets[k], self.pruner.masks))
            survivors.update(self.distillation.grow_transform(growth_factor(prev, sched.budgets[k])))
        self.ranks.importance.reset()
        last = k == len(sched.points) - 1
        shrink = cfg.shrink_student and (last or cfg.compact_every_point)
        if cfg.prune and (sched.distill_start is None or shrink):  # without a teacher, at every point
            survivors = self._shrink_student(trainer, survivors)
        self._rebuild_optimizer(trainer, survivors)
        self.ranks.history.append({"step": trainer.step, "ranks": self.ranks.table(),
                                   "delta": self.ranks.delta(self.pruner.masks), "budget": sched.budgets[k],
                                   "kept_ratio": self.pruner.kept_ratio()})
        self._check_processes_agree(trainer, k)
        if last:
            self.pruner.salience.active = False
            trainer.control.selection_open = True
            cost = self.pruner.kept_inference_cost()
            trainer.say(f"pruning complete at step {trainer.step}: kept ratio "
                        f"{self.pruner.kept_ratio():.4f} (target {1 - cfg.sparsity:.4f})"
                        + (f", inference cost {cost:.4f} (at most {cfg.max_inference_cost:.4f})"
                           if cost is not None else ""))

    def _shrink_student(self, trainer, survivors: Survivors) -> Survivors:
        """At a pruning point: the student is compacted to its masks, and a teacher that shares
        its backbone, which must stay what it was, first gets a frozen copy of the backbone as it
        stood (docs/method.md#a-student-as-small-as-its-masks). Tr then reads the student's dims
        and writes the teacher's. With nothing to cut, nothing is copied."""
        model, teacher, tr = trainer.unwrapped_model, self.distillation.teacher, self.distillation.transform
        if self.pruner.masks.all_kept():
            return survivors
        before = sum(p.numel() for p in model.parameters())
        copied = teacher is not None and teacher.backbone is None
        if copied:
            teacher.own_backbone(self.pruner.frozen_copy(model), self.pruner.structure)
            if tr is not None:
                self.pruner.hidden_followers.remove(tr)
                self.pruner.hidden_readers.append(tr)
        survivors = self._compact(model, survivors)
        after = sum(p.numel() for p in model.parameters())
        # The copy is the student as the last teacher refresh compacted it: its size is what
        # each distillation step's teacher forward costs until the next refresh.
        trainer.say(f"step {trainer.step}: the student is compacted to its masks ({before:,} -> {after:,} "
                    "parameters)" + (f"; the teacher keeps its own copy ({teacher.numel():,}, its size "
                                     "at the last refresh)" if copied else ""))
        return survivors

    def _compact(self, model: nn.Module, survivors: Survivors) -> Survivors:
        changed, survivors = self.pruner.compact_keeping_state(model, survivors)
        if changed:
            self.ranks.refresh(model)
        return survivors

    def _rebuild_optimizer(self, trainer, survivors: Survivors) -> None:
        """A new AdamW after a change of shapes; unchanged tensors keep their state
        (docs/method.md#optimizer-state-after-a-shape-change)."""
        if self.cfg.optimizer_reset == "reset":
            survivors = {}
        extra = self.distillation.trainable()
        for p in [*trainer.unwrapped_model.parameters(), *extra]:
            if p.requires_grad and p not in survivors:
                survivors[p] = (p, None)
        trainer.rebuild_optimizer(survivors, extra_params=extra)

    def _check_processes_agree(self, trainer, k: int) -> None:
        """Pruning decisions must be identical on every process; stop loudly if they are not."""
        acc = trainer.accelerator
        if acc.num_processes == 1:
            return
        prints = acc.gather(self.pruner.fingerprint().to(acc.device).unsqueeze(0)).cpu()  # (P, 2)
        self.consistency.append({"point": k + 1, "fingerprints": prints[:, 0].tolist()})
        if not torch.allclose(prints, prints[0].expand_as(prints)):
            raise RuntimeError(f"processes disagree on the masks at pruning point {k + 1}: "
                               f"{prints[:, 0].tolist()}")

    # -- distillation --------------------------------------------------------------------------
    def _maybe_refresh_teacher(self, trainer) -> None:
        if not self.distillation.wants_snapshot():
            return
        value = trainer.evaluate_untimed()[trainer.task.metric]
        floor = self._constant_floor(trainer)
        gated = floor is not None and trainer.task.no_better_than(
            value, floor, len(trainer.eval_loader.dataset.examples))
        improves = not gated and self.distillation.improves(value)
        # What each window start decided, in metrics.json: which snapshots the run distilled from.
        self.distillation.log.append({"step": trainer.step, "value": float(value),
                                      "decision": "gated" if gated else "snapshot" if improves else "kept"})
        if gated:
            trainer.say(f"step {trainer.step}: no teacher snapshot: dev {trainer.task.metric} {value:.4f} "
                        f"is no better than a constant answer's ({floor:.4f} and one dev row); "
                        "nothing to distil from until a window start beats it")
            return
        if improves:
            survivors = self._compact(trainer.unwrapped_model, {})
            survivors = self._transform_follows_student(survivors)
            self.distillation.snapshot(trainer.unwrapped_model, value)
            self._rebuild_optimizer(trainer, survivors)
            trainer.say(f"step {trainer.step}: teacher snapshot (dev {trainer.task.metric} {value:.4f})")

    def _constant_floor(self, trainer) -> float | None:
        """What one constant answer scores on dev (docs/method.md#teacher-gate): a teacher must beat
        it by more than one dev row (as the prerequisite check counts "learned nothing"). None with
        --no-teacher-gate or where the task has no such figure."""
        examples = getattr(trainer.eval_loader.dataset, "examples", None)
        return trainer.task.constant_floor(examples) if self.cfg.teacher_gate and examples else None

    def _transform_follows_student(self, survivors: Survivors) -> Survivors:
        """Before a new snapshot replaces a teacher that had its own backbone: the new teacher
        shares the student's, so Tr writes the student's dims again. Its output rows are cut to
        them (its frozen 0/1 W becomes the identity) and it follows both axes from then on."""
        tr, teacher = self.distillation.transform, self.distillation.teacher
        if tr is None or teacher is None or teacher.backbone is None:
            return survivors
        rows = self.distillation.student_dims_in_teacher(self.pruner.structure.hidden)
        survivors = self.pruner.cut_outputs_keeping_state(tr, rows.to(tr.weight.device), survivors)
        self.pruner.hidden_readers.remove(tr)
        self.pruner.hidden_followers.append(tr)
        return survivors

    def _start_distillation(self, trainer) -> None:
        self._new_transform(trainer.unwrapped_model)
        self._rebuild_optimizer(trainer, {})
        trainer.say(f"step {trainer.step}: self-distillation starts (μ {self.schedule.mu(trainer.step):.2f})")

    def _new_transform(self, model: nn.Module):
        """Tr from the student's hidden dims to the teacher's: square while they share a
        backbone (it then follows every compaction on both axes), else reading only the
        student's dims (it then follows them on its input alone)."""
        w = next(model.parameters())
        reads = self.distillation.student_dims_in_teacher(self.pruner.structure.hidden)
        if reads is None:
            transform = self.distillation.start(int(self.pruner.masks.hidden.numel()), w.device, w.dtype)
            self.pruner.hidden_followers.append(transform)
        else:
            width = len(self.distillation.teacher.structure.hidden)
            transform = self.distillation.start(width, w.device, w.dtype, reads=reads.to(w.device))
            self.pruner.hidden_readers.append(transform)
        return transform

    def _end_distillation(self, trainer) -> None:
        trainer.restore_best()
        self._compact(trainer.unwrapped_model, {})
        self.pruner.hidden_followers.clear()
        self.pruner.hidden_readers.clear()
        self.distillation.end()
        trainer.rebuild_optimizer({}, extra_params=[])  # a fresh optimizer for phase 2
        trainer.reset_best_to_current()
        trainer.say(f"step {trainer.step}: distillation ends; fine-tuning the pruned model"
                    + (f" at {self.cfg.post_distill_lr_factor:g}x LR" if self.cfg.lr_schedule == "segmented"
                       else " on the same learning-rate schedule"))

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint_state(self, trainer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        from .checkpoint import apt_state

        return apt_state(self, trainer)

    def restore_checkpoint_state(self, trainer, tensors: dict[str, torch.Tensor],
                                 state: dict[str, Any]) -> None:
        from .checkpoint import restore_apt

        restore_apt(self, trainer, tensors, state)

    # -- the end of the run --------------------------------------------------------------------
    def finalize(self, model: nn.Module) -> nn.Module:
        """Remove what the masks cut, drop the hooks, merge the adapters: a plain smaller model."""
        self.ranks.final = self.ranks.table()
        self.pruner.compact(model)  # masks are binary once pruning is done
        self.pruner.detach()
        merge_and_unload(model)
        record_structure(model, self.pruner.structure)
        return model

    def describe(self) -> dict[str, Any]:
        """What metrics.json records of the run."""
        return {"schedule": self.schedule.as_dict() if self.schedule else None,
                "rank_history": self.ranks.history, "pruning_log": self.pruner.pruning_log,
                "teacher_log": self.distillation.log,
                "final_ranks": self.ranks.final, "structure": self.pruner.structure.to_dict(),
                "optimizer_reset": self.cfg.optimizer_reset, "use_kurtosis": self.cfg.use_kurtosis,
                "kurtosis_scale": self.cfg.kurtosis_scale, "kurtosis_weight": self.cfg.kurtosis_weight,
                "shrink_student": self.cfg.shrink_student,
                "compact_every_point": self.cfg.compact_every_point,
                "process_consistency": self.consistency}
