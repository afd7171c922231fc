"""Prune+Distill (CoFi) and LoRA+Prune+Distill (CoFi with only LoRA and L0 trained), baselines.md §4-§5.

One training loop, two stages:
    pruning stage  [0, N_p)  distillation from a frozen FT teacher; after the pre-pruning steps
                             the hard-concrete gates are sampled every step and a Lagrangian
                             steers the expected sparsity to the (warmed-up) target
    compaction     at N_p    the best qualifying pruning-stage checkpoint (deterministic gates,
                             ŝ >= target - ε) is folded and sliced into a smaller dense model
    fine-tuning    [N_p, T)  task cross-entropy only, constant LR; the final model is its best
The teacher is an FT run of our own (--cofi-teacher-path, or trained inline); its training time
up to its selected checkpoint is charged to this method, and its weights, resident during
training, are added to the peak training memory.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..cofi import (CoFiDistillLoss, L0Gates, LagrangianControl, ModelShape, apply_gates,
                    build_l0_optimizers, compact_with_gates, deterministic_sparsity,
                    expected_sparsity)
from ..lora import inject_lora, merge_and_unload
from ..train.events import Callback
from .base import Method, RunContext
from .prerequisite import prerequisite_model


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


class CoFi(Method):
    name = "cofi"
    description = "CoFi: L0 gates on heads, layers, neurons and hidden dims, distilled from an FT teacher"
    has_unused_parameters = True
    lora = False

    def __init__(self) -> None:
        self.teacher: nn.Module | None = None
        self.teacher_run: dict[str, Any] = {}
        self.callback: CoFiCallback | None = None
        self.seconds_before_training = 0.0
        self.extra_resident_bytes = 0

    def loop_epochs(self, cfg) -> float:
        return cfg.cofi_pruning_epochs + cfg.cofi_ft_epochs

    def start_model(self, model: nn.Module, spec, ctx: RunContext) -> nn.Module:
        cfg = ctx.cfg
        teacher, self.teacher_run = prerequisite_model(
            ctx, cfg.cofi_teacher_path, "ft", "--cofi-teacher-path",
            {"epochs": cfg.cofi_teacher_epochs, "lr": cfg.cofi_teacher_lr})
        self.teacher = teacher.eval().requires_grad_(False)
        self.seconds_before_training = self.teacher_run["train_seconds_to_selected"]
        # On CPU the teacher is loaded before the memory baseline is taken, yet it is resident
        # while the student trains (§4.11): count its tensors explicitly. (CUDA's
        # max_memory_allocated is absolute and already includes it.)
        if ctx.accelerator.device.type == "cpu":
            self.extra_resident_bytes = sum(p.numel() * p.element_size() for p in self.teacher.parameters())
        return model  # the student starts from the pretrained model with a new head (CoFi's way)

    def prepare(self, model: nn.Module, spec, cfg) -> nn.Module:
        if self.lora:
            heads = spec.head_modules if cfg.cofi_lora_head == "trainable" else ()
            inject_lora(model, cfg.r, cfg.lora_alpha, cfg.target_modules or list(spec.lora_target_modules),
                        trainable_modules=heads)
        else:
            _train_all_but_embeddings(model, spec)
        return model

    def callbacks(self, model: nn.Module, spec, cfg) -> list[Callback]:
        self.callback = CoFiCallback(self, spec, cfg)
        return [self.callback]

    def finalize(self, model: nn.Module, spec, cfg) -> nn.Module:
        return merge_and_unload(model)

    def describe(self, model: nn.Module, cfg) -> dict:
        cb = self.callback
        return {"teacher": self.teacher_run, "lora": self.lora,
                "stages": cb.stages if cb else {}, "sparsity_history": cb.history if cb else [],
                "compaction": cb.compaction if cb else {}}


class CoFiLoRA(CoFi):
    name = "cofi-lora"
    description = "CoFi where only LoRA (r 8, α 16 on query and value), the L0 gates and the head train"
    lora = True


def _train_all_but_embeddings(model: nn.Module, spec) -> None:
    """Full CoFi trains every weight except the embeddings, which CoFi always freezes."""
    model.requires_grad_(True)
    spec.embeddings(model).requires_grad_(False)


class CoFiCallback(Callback):
    def __init__(self, method: CoFi, spec, cfg) -> None:
        self.method, self.spec, self.cfg = method, spec, cfg
        self.history: list[dict] = []
        self.compaction: dict[str, Any] = {}
        self.stages: dict[str, int] = {}
        self._best_pruned: tuple[float, dict] | None = None

    # -- set-up ----------------------------------------------------------------------------------
    def on_train_begin(self, trainer) -> None:
        cfg, model = self.cfg, trainer.unwrapped_model
        device = next(model.parameters()).device
        E = trainer.steps_per_epoch
        self.pruning_end = min(trainer.total_steps, math.ceil(cfg.cofi_pruning_epochs * E))
        pre = cfg.cofi_prepruning_steps if cfg.cofi_prepruning == "100steps" else E
        self.prepruning = min(pre, self.pruning_end)
        self.stages = {"prepruning_end": self.prepruning, "pruning_end": self.pruning_end,
                       "total": trainer.total_steps}
        self.gates = L0Gates.for_model(model).to(device)
        self.shape = ModelShape.from_config(model.config)
        warmup = math.ceil(cfg.lagrangian_warmup_epochs * E)
        self.control = LagrangianControl(cfg.sparsity, warmup).to(device)
        self.descent, self.ascent = build_l0_optimizers(self.gates, self.control, cfg.reg_lr)
        tr_mode = cfg.cofi_lora_tr if self.method.lora else "full"
        self.distill = CoFiDistillLoss(
            self.shape.n_layers, self.shape.d_model, cfg.cofi_distill_temperature,
            cfg.cofi_alpha_layer, cfg.cofi_alpha_pred, cfg.cofi_layer_distill_version,
            cfg.cofi_existing_layers, tr_mode).to(device)
        self.hooks = apply_gates(model, self.spec, None)
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed)
        self.method.teacher.to(device)
        trainer.schedule = CoFiSchedule(cfg.lr, self.prepruning, self.pruning_end, cfg.cofi_ft_lr)
        trainer.selection_open = False  # the final model is the fine-tuning stage's best
        trainer.rebuild_optimizer({}, extra_params=self._tr_params())
        trainer.say(f"CoFi: pre-pruning until step {self.prepruning}, pruning stage until "
                    f"{self.pruning_end} (target sparsity {cfg.sparsity:g}, Lagrangian warm-up "
                    f"{warmup} steps), then {trainer.total_steps - self.pruning_end} fine-tuning steps")

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

    def extra_loss(self, trainer, batch, outputs) -> torch.Tensor | None:
        step = trainer.step
        if step >= self.pruning_end:
            return None  # fine-tuning stage: the task loss alone
        with torch.no_grad():
            teacher_out = self.method.teacher(**batch, output_hidden_states=True)
        gates = self.hooks.gates
        loss = self.distill(teacher_out, outputs, gates).total
        if self._pruning(step):
            s_hat = expected_sparsity(self.gates, self.shape)
            target = self.control.target_at(step - self.prepruning)
            loss = loss + self.control(s_hat, target)
        return loss - outputs.loss  # no hard-label cross-entropy in this stage (§4.7)

    def after_backward(self, trainer) -> None:
        if trainer.accelerator.num_processes > 1 and trainer.step < self.pruning_end:
            for p in self._tr_params():  # W_tr lives outside DDP: average its gradients
                if p.grad is not None:
                    p.grad = trainer.accelerator.reduce(p.grad, "mean")
        if self._pruning(trainer.step):
            params = list(self.gates.parameters()) + list(self.control.parameters())
            if trainer.accelerator.num_processes > 1:  # identical gates on every process
                for p in params:
                    if p.grad is not None:
                        p.grad = trainer.accelerator.reduce(p.grad, "mean")
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
        if trainer.step < self.pruning_end:  # deterministic gates at evaluation (§4.4)
            self.hooks.gates = self.gates.deterministic() if trainer.step > self.prepruning else None
            # TTA counts pruning-stage evaluations once the expected sparsity reaches the target.
            trainer.at_final_size = False
            if trainer.step > self.prepruning:
                with torch.no_grad():
                    s_hat = float(expected_sparsity(self.gates, self.shape))
                trainer.at_final_size = self._reached_target(s_hat)

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

    def _snapshot(self, trainer) -> dict:
        return {"model": trainer.snapshot_trainable(),
                "gates": {k: v.detach().clone() for k, v in self.gates.state_dict().items()}}

    # -- compaction, then the fine-tuning stage --------------------------------------------------
    def _compact(self, trainer) -> None:
        model = trainer.unwrapped_model
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
        self.hooks.remove()
        with torch.no_grad():
            s_hat = float(expected_sparsity(self.gates, self.shape))
        # "exact" folds z_hid into the LayerNorms, so the compacted model equals the gated one that
        # selection evaluated; CoFi's own fold ("cofi", --cofi-hidden-fold) is exact only for z = 1.
        result = compact_with_gates(model, self.spec, gates, hidden_fold=self.cfg.cofi_hidden_fold)
        self.compaction = {"source": source, "expected_sparsity": s_hat,
                           "expected_sparsity_at_pruning_end": stage_end,
                           "deterministic_sparsity": deterministic_sparsity(gates, self.shape),
                           "empty_unit_sublayers": result.empty_unit_sublayers,
                           "kept_heads": [len(h) for h in result.structure["heads"]],
                           "kept_neurons": [len(n) for n in result.structure["neurons"]],
                           "kept_hidden": len(result.structure["hidden"])}
        if self.method.lora:  # fresh LoRA on the compacted model for the fine-tuning stage (§5)
            heads = self.spec.head_modules if self.cfg.cofi_lora_head == "trainable" else ()
            inject_lora(model, self.cfg.r, self.cfg.lora_alpha,
                        self.cfg.target_modules or list(self.spec.lora_target_modules), heads)
        else:
            _train_all_but_embeddings(model, self.spec)
        self.method.teacher = None  # not needed after the pruning stage: free its memory
        trainer.rebuild_optimizer({}, extra_params=[])
        trainer.selection_open = True
        trainer.say(f"CoFi: pruning stage ended at expected sparsity {stage_end:.4f} (target "
                    f"{self.cfg.sparsity:g})")
        trainer.say(f"CoFi: compacted {source}; expected sparsity {s_hat:.4f}; fine-tuning the "
                    f"compacted model at a constant lr {self.cfg.cofi_ft_lr:g}")
