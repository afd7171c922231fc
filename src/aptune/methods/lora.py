"""LoRA: r=8, α=16 on query and value; the task head trains; the rest is frozen
(docs/baselines.md#lora)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Method

if TYPE_CHECKING:
    from torch import nn


class LoRA(Method):
    name = "lora"
    label = "LoRA"
    description = "LoRA adapters on the query and value projections, plus the task head"
    resumable = True
    text_to_text = True
    adapters = True

    def prepare(self, model: nn.Module, spec, cfg) -> nn.Module:
        from ..lora import inject_lora, lora_modules

        targets = cfg.target_modules or list(spec.lora_target_modules)
        inject_lora(model, cfg.r, cfg.lora_alpha, targets, trainable_modules=spec.head_modules)
        # kept because describe() runs after finalize() has merged the adapters away
        self._adapted = [n for n, _ in lora_modules(model)]
        return model

    def finalize(self, model: nn.Module, spec, cfg) -> nn.Module:
        from ..lora import merge_and_unload

        return merge_and_unload(model)

    def describe(self, model: nn.Module, cfg) -> dict:
        from ..lora import lora_modules

        adapted = [n for n, _ in lora_modules(model)] or getattr(self, "_adapted", [])
        return {"r": cfg.r, "lora_alpha": cfg.lora_alpha,
                "target_modules": cfg.target_modules or None, "adapted_modules": adapted}
