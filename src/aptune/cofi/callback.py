"""CoFi in the training loop (docs/baselines.md#cofi): one loop, two stages.

    pruning stage  [0, N_p)  distillation from a frozen FT teacher; after the pre-pruning steps
                             the hard-concrete gates are sampled every step and a Lagrangian
                             steers the expected sparsity to the (warmed-up) target
    compaction     at N_p    the best qualifying pruning-stage checkpoint (deterministic gates,
                             ŝ >= target - ε) is folded and sliced into a smaller dense model
    fine-tuning    [N_p, T)  task cross-entropy only, constant LR; the final model is its best
The teacher is a finished FT run (the method's prerequisite, aptune.methods.cofi); the callback
owns it until compaction and then lets it go.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import AptuneError
from ..lora import inject_lora
from ..train.events import Callback
from .apply import apply_gates
from .compaction import compact_with_gates
from .distill import CoFiDistillLoss
from .expected_size import SizeModel, deterministic_sparsity, expected_sparsity
from .gates import L0Gates
from .lagrangian import LagrangianControl, build_l0_optimizers


class CoFiSchedule:
    """Main LR: linear decay without warm-up over the pruning stage, re-created when pruning
    starts (decay over the remaining pruning steps); then constant in the fine-tuning stage."""

    def __init__(self, lr: float, prepruning: int, pruning_end: int, ft_lr: float) -> None:
        self.lr, self.prepruning, self.pruning_end, self.ft_lr = lr, prepruning, pruning_end, ft_lr

    def __call__(self, step: int) -> float:
        if step >= self.pruning_end:
            return self.ft_lr
        start, length = (0, self.pruning_end) if step < self.prepruning else (
            self.prepruning, self.pruning_end - self.prepruning)
        return self.lr * max(0.0, (length - (step - start)) / max(1, length))


@dataclass(frozen=True)
class CoFiStages:
    """Where CoFi's stages fall in a loop of `total` steps of `steps_per_epoch`."""

    prepruning: int  # the gates switch on here
    pruning_end: int  # compaction; fine-tuning after it
    warmup: int  # steps over which the target sparsity rises from 0, from `prepruning` on
    prepruning_asked: int  # before capping at the stage's end (what the messages name)

    @classmethod
    def of(cls, cfg, steps_per_epoch: int, total: int) -> "CoFiStages":
        pruning_end = min(total, math.ceil(cfg.cofi_pruning_epochs * steps_per_epoch))
        pre = cfg.cofi_prepruning_steps if cfg.cofi_prepruning == "100steps" else steps_per_epoch
        return cls(min(pre, pruning_end), pruning_end,
                   math.ceil(cfg.lagrangian_warmup_epochs * steps_per_epoch), pre)

    def check_reaches_target(self, cfg, steps_per_epoch: int) -> None:
        """Refuse a plan whose target sparsity is still rising when the pruning stage ends: the
        Lagrangian would steer to a fraction of --sparsity and the run would keep far more."""
        pre = self.prepruning_asked
        need = pre + self.warmup
        if need <= self.pruning_end:
            return
        reached = cfg.sparsity * max(0, self.pruning_end - pre) / max(1, self.warmup)
        epochs = math.ceil(need / steps_per_epoch * 10) / 10
        raise AptuneError(
            f"CoFi cannot reach --sparsity {cfg.sparsity:g} in this run: its pruning stage ends at step "
            f"{self.pruning_end} ({steps_per_epoch} steps per epoch), but the gates switch on after "
            f"{pre} pre-pruning steps and the target then rises over {self.warmup} steps "
            f"(--lagrangian-warmup-epochs {cfg.lagrangian_warmup_epochs:g}), so it would stop at a "
            f"target of {reached:.2f}",
            f"give the pruning stage at least {need} steps (--cofi-pruning-epochs {epochs:g} or more), "
            f"or shorten --cofi-prepruning-steps or --lagrangian-warmup-epochs")


def train_all_but_embeddings(model: nn.Module, spec) -> None:
    """Full CoFi trains every weight except the embeddings, which CoFi always freezes."""
    model.requires_grad_(True)
    for module in spec.embedding_modules(model):
        module.requires_grad_(False)


class CoFiCallback(Callback):
    def __init__(self, teacher: nn.Module, spec, cfg, lora: bool) -> None:
        self.teacher, self.spec, self.cfg, self.lora = teacher, spec, cfg, lora
        self.history: list[dict] = []
        self.compaction: dict[str, Any] = {}
        self.stages: dict[str, int] = {}
        self._best_pruned: tuple[float, dict] | None = None
        self._built = False  # by on_train_begin, or earlier by a checkpoint's restore

    # -- set-up ----------------------------------------------------------------------------------
    def on_train_begin(self, trainer) -> None:
        if not self._built:
            self._build(trainer)
        trainer.say(f"CoFi: pre-pruning until step {self.prepruning}, pruning stage until "
                    f"{self.pruning_end} (target sparsity {self.cfg.sparsity:g}, Lagrangian warm-up "
                    f"{self.control.warmup_steps} steps), then {trainer.total_steps - self.pruning_end} "
                    "fine-tuning steps")

    def _build(self, trainer) -> None:
        """The gates, the Lagrangian, the distillation loss and the stages, on the dense student."""
        cfg, model = self.cfg, trainer.unwrapped_model
        device = next(model.parameters()).device
        E = trainer.steps_per_epoch
        stages = CoFiStages.of(cfg, E, trainer.total_steps)
        self.pruning_end, self.prepruning = stages.pruning_end, stages.prepruning
        self.stages = {"prepruning_end": self.prepruning, "pruning_end": self.pruning_end,
                       "total": trainer.total_steps}
        shape = self.spec.shape(model)
        self.gates = L0Gates.for_shape(shape).to(device)
        self.shape = SizeModel.from_shape(shape)
        self.control = LagrangianControl(cfg.sparsity, stages.warmup).to(device)
        self.descent, self.ascent = build_l0_optimizers(self.gates, self.control, cfg.reg_lr)
        tr_mode = cfg.cofi_lora_tr if self.lora else "full"
        self.distill = CoFiDistillLoss(
            self.shape.n_layers, self.shape.d_model, cfg.cofi_distill_temperature,
            cfg.cofi_alpha_layer, cfg.cofi_alpha_pred, cfg.cofi_layer_distill_version,
            cfg.cofi_existing_layers, tr_mode).to(device)
        self.hooks = apply_gates(model, self.spec, None)
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)
        self.teacher.to(device)
        trainer.control.lr_schedule = CoFiSchedule(trainer.cfg.lr, self.prepruning, self.pruning_end,
                                                   cfg.cofi_ft_lr)
        trainer.control.selection_open = False  # the final model is the fine-tuning stage's best
        trainer.rebuild_optimizer({}, extra_params=self._tr_params())
        self._built = True

    def _tr_params(self) -> list[nn.Parameter]:
        return [p for p in self.distill.transform.parameters() if p.requires_grad]

    def _pruning(self, step: int) -> bool:
        return self.prepruning <= step < self.pruning_end

    # -- each step -------------------------------------------------------------------------------
    def on_step_begin(self, trainer, batch) -> None:
        step = trainer.step
        if step == self.prepruning and 0 < step < self.pruning_end:
            trainer.rebuild_optimizer({}, extra_params=self._tr_params())  # re-created at pruning start
        if step < self.pruning_end:
            self.hooks.gates = self.gates.sample(self.generator) if self._pruning(step) else None

    def forward_kwargs(self, trainer) -> dict:
        return {"output_hidden_states": True} if trainer.step < self.pruning_end else {}

    def compute_loss(self, trainer, batch, outputs, loss: torch.Tensor) -> torch.Tensor:
        step = trainer.step
        if step >= self.pruning_end:
            return loss  # fine-tuning stage: the task loss alone
        with torch.no_grad():
            teacher_out = self.teacher(**batch, output_hidden_states=True)
        total = self.distill(teacher_out, outputs, self.hooks.gates).total
        if self._pruning(step):
            s_hat = expected_sparsity(self.gates, self.shape)
            target = self.control.target_at(step - self.prepruning)
            total = total + self.control(s_hat, target)
        return total  # replaces the task loss: no hard-label cross-entropy in this stage

    def after_backward(self, trainer) -> None:
        if trainer.step < self.pruning_end:
            trainer.average_gradients(self._tr_params())  # W_tr lives outside DDP
        if self._pruning(trainer.step):
            # The gates live outside DDP too: identical gates on every process.
            trainer.average_gradients([*self.gates.parameters(), *self.control.parameters()])
            self.descent.step()
            self.ascent.step()
            self.descent.zero_grad(set_to_none=True)
            self.ascent.zero_grad(set_to_none=True)
        self.gates.clamp_()

    def after_step(self, trainer) -> None:
        if trainer.step == self.pruning_end:
            self._compact(trainer)

    # -- evaluation and selection ----------------------------------------------------------------
    def on_evaluate_begin(self, trainer) -> None:
        if trainer.step < self.pruning_end:  # deterministic gates at evaluation
            self.hooks.gates = self.gates.deterministic() if trainer.step > self.prepruning else None
            # TTA counts pruning-stage evaluations once the expected sparsity reaches the target.
            trainer.control.at_final_size = False
            if trainer.step > self.prepruning:
                with torch.no_grad():
                    s_hat = float(expected_sparsity(self.gates, self.shape))
                trainer.control.at_final_size = self._reached_target(s_hat)

    def _reached_target(self, s_hat: float) -> bool:
        return s_hat >= self.cfg.sparsity - self.cfg.sparsity_epsilon

    def on_evaluate(self, trainer, metrics: dict[str, float]) -> None:
        step = trainer.step
        if step >= self.pruning_end or not step > self.prepruning:
            return  # at pruning_end the model was just compacted: that is a fine-tuning candidate
        with torch.no_grad():
            s_hat = float(expected_sparsity(self.gates, self.shape))
            det = deterministic_sparsity(self.gates.deterministic(), self.shape)
        value = metrics[trainer.task.metric]
        record = {"step": step, "expected_sparsity": round(s_hat, 5), "deterministic_sparsity": round(det, 5),
                  "target": round(self.control.target_at(step - self.prepruning), 5),
                  "lambda_1": self.control.lambda_1.item(), "lambda_2": self.control.lambda_2.item(),
                  "dev": value}
        self.history.append(record)
        trainer.say(f"CoFi step {step}: expected sparsity {s_hat:.4f} (target {record['target']:.4f}), "
                    f"deterministic {det:.4f}, λ1 {record['lambda_1']:.3f}, λ2 {record['lambda_2']:.3f}")
        qualifies = self._reached_target(s_hat)
        better = self._best_pruned is None or value > self._best_pruned[0]
        if step < self.pruning_end and qualifies and better:
            self._best_pruned = (value, self._snapshot(trainer))

    def _to_fine_tuning(self, trainer):
        """Compact the student with the deterministic gates and make it trainable for the
        fine-tuning stage (also how a resumed run rebuilds that student's shapes)."""
        model = trainer.unwrapped_model
        self.hooks.remove()
        # "exact" folds z_hid into the LayerNorms, so the compacted model equals the gated one that
        # selection evaluated; CoFi's own fold ("cofi", --cofi-hidden-fold) is exact only for z = 1.
        result = compact_with_gates(model, self.spec, self.gates.deterministic(),
                                    hidden_fold=self.cfg.cofi_hidden_fold)
        if self.lora:  # fresh LoRA for the fine-tuning stage
            heads = self.spec.head_modules if self.cfg.cofi_lora_head == "trainable" else ()
            inject_lora(model, self.cfg.r, self.cfg.lora_alpha,
                        self.cfg.target_modules or list(self.spec.lora_target_modules), heads)
        else:
            train_all_but_embeddings(model, self.spec)
        self.teacher = None  # not needed after the pruning stage: free its memory
        trainer.rebuild_optimizer({}, extra_params=[])
        trainer.control.selection_open = True
        return result

    # -- checkpoints -----------------------------------------------------------------------------
    def checkpoint_state(self, trainer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        from .checkpoint import cofi_state

        return cofi_state(self, trainer)

    def restore_checkpoint_state(self, trainer, tensors: dict[str, torch.Tensor],
                                 state: dict[str, Any]) -> None:
        from .checkpoint import restore_cofi

        restore_cofi(self, trainer, tensors, state)

    def _snapshot(self, trainer) -> dict:
        return {"model": trainer.snapshot_trainable(),
                "gates": {k: v.detach().clone() for k, v in self.gates.state_dict().items()}}

    # -- compaction, then the fine-tuning stage --------------------------------------------------
    def _compact(self, trainer) -> None:
        with torch.no_grad():  # where the Lagrangian left ŝ, before a snapshot is restored
            stage_end = float(expected_sparsity(self.gates, self.shape))
        if self._best_pruned is not None:
            value, state = self._best_pruned
            trainer.restore(state["model"])
            self.gates.load_state_dict(state["gates"])
            source = f"the best qualifying pruning-stage checkpoint (dev {value:.4f})"
        else:
            source = "the last pruning-stage state: no evaluation reached the target sparsity"
        gates = self.gates.deterministic()
        with torch.no_grad():
            s_hat = float(expected_sparsity(self.gates, self.shape))
        result = self._to_fine_tuning(trainer)
        summary = result.structure.summary()
        self.compaction = {"source": source, "expected_sparsity": s_hat,
                           "expected_sparsity_at_pruning_end": stage_end,
                           "deterministic_sparsity": deterministic_sparsity(gates, self.shape),
                           "empty_unit_sublayers": result.empty_unit_sublayers,
                           "kept_heads": summary["heads"], "kept_neurons": summary["neurons"],
                           "kept_hidden": summary["hidden"]}
        trainer.say(f"CoFi: pruning stage ended at expected sparsity {stage_end:.4f} (target "
                    f"{self.cfg.sparsity:g})")
        trainer.say(f"CoFi: compacted {source}; expected sparsity {s_hat:.4f}; fine-tuning the "
                    f"compacted model at a constant lr {self.cfg.cofi_ft_lr:g}")
