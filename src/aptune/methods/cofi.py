"""Prune+Distill (CoFi) and LoRA+Prune+Distill (CoFi with only LoRA and the L0 gates trained).

The method lives in aptune/cofi/ (docs/baselines.md#cofi); these entries declare its facts: the
FT run it distils from (`--cofi-teacher-path DIR`, or trained inline first, its training time
charged here) and its two stages, pruning then fine-tuning, as one training loop.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ..cofi.config import CoFiConfig
from .base import Cost, Method, Prerequisite, PrerequisiteRun

if TYPE_CHECKING:
    from torch import nn


class CoFi(Method):
    name = "cofi"
    label = "Prune+Distill"
    description = "CoFi: L0 gates on heads, layers, neurons and hidden dims, distilled from an FT teacher"
    default_lr = 2e-5
    other_paper_learning_rates = {"cofi_ft_lr": 2e-5}
    default_weight_decay = 0.0
    config_section = CoFiConfig
    prerequisite = Prerequisite("ft", "cofi_teacher_path",
                                {"epochs": "cofi_teacher_epochs", "lr": "cofi_teacher_lr"},
                                "the FT teacher")
    prunes = True
    resumable = True  # its callback checkpoints the gates, λ, W_tr and the stage; the teacher is reloaded
    has_unused_parameters = True
    lora = False  # CoFi-LoRA trains only LoRA, the gates and the head
    unused_options = ("cofi_lora_head", "cofi_lora_tr")  # CoFi-LoRA's own
    missed_size_hint = ("CoFi's Lagrangian had not reached the target when its pruning stage ended: "
                        "lengthen --cofi-pruning-epochs or raise --reg-lr")

    def __init__(self) -> None:
        self.teacher_run: dict[str, Any] = {}
        self.callback = None

    def loop_epochs(self, cfg) -> float:
        return cfg.cofi_pruning_epochs + cfg.cofi_ft_epochs

    def check_plan(self, cfg, steps_per_epoch: int) -> None:
        from ..cofi.callback import CoFiStages

        total = math.ceil(self.loop_epochs(cfg) * steps_per_epoch)
        CoFiStages.of(cfg, steps_per_epoch, total).check_reaches_target(cfg, steps_per_epoch)

    def start(self, model: nn.Module, spec, ctx, needed: PrerequisiteRun | None) -> tuple[nn.Module, Cost]:
        self._teacher = needed.model.eval().requires_grad_(False)
        self.teacher_run = needed.summary
        # On CPU the teacher is loaded before the memory baseline is taken, yet it is resident
        # while the student trains (docs/baselines.md#cofi-accounting): count its tensors. (CUDA's
        # max_memory_allocated is absolute and already includes it.)
        resident = 0
        if ctx.accelerator.device.type == "cpu":
            resident = sum(p.numel() * p.element_size() for p in self._teacher.parameters())
        # The student starts from the pretrained model with a new head (CoFi's way).
        return model, Cost(seconds=needed.cost.seconds, resident_bytes=resident)

    def prepare(self, model: nn.Module, spec, cfg) -> nn.Module:
        from ..cofi.callback import train_all_but_embeddings
        from ..lora import inject_lora

        if self.lora:
            heads = spec.head_modules if cfg.cofi_lora_head == "trainable" else ()
            inject_lora(model, cfg.r, cfg.lora_alpha, cfg.target_modules or list(spec.lora_target_modules),
                        trainable_modules=heads)
        else:
            train_all_but_embeddings(model, spec)
        return model

    def callbacks(self, model: nn.Module, spec, cfg) -> list:
        from ..cofi.callback import CoFiCallback

        # The callback owns the teacher from here on, and drops it after compaction.
        self.callback = CoFiCallback(self._teacher, spec, cfg, self.lora)
        self._teacher = None
        return [self.callback]

    def finalize(self, model: nn.Module, spec, cfg) -> nn.Module:
        from ..lora import merge_and_unload

        return merge_and_unload(model)

    def describe(self, model: nn.Module, cfg) -> dict:
        cb = self.callback
        return {"teacher": self.teacher_run, "lora": self.lora,
                "stages": cb.stages if cb else {}, "sparsity_history": cb.history if cb else [],
                "compaction": cb.compaction if cb else {}}


class CoFiLoRA(CoFi):
    name = "cofi-lora"
    label = "LoRA+Prune+Distill"
    description = "CoFi where only LoRA (r 8, α 16 on query and value), the L0 gates and the head train"
    default_lr = 2e-4
    lora = True
    adapters = True
    unused_options = ()
