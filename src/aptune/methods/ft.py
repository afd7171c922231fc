"""FT: full fine-tuning; every weight, embeddings included, is trained on the task loss
(docs/baselines.md#ft)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Method

if TYPE_CHECKING:
    from torch import nn


class FullFineTuning(Method):
    name = "ft"
    label = "FT"
    description = "full fine-tuning of every weight"
    default_lr = 2e-5
    resumable = True
    text_to_text = True

    def prepare(self, model: nn.Module, spec, cfg) -> nn.Module:
        model.requires_grad_(True)
        return model
