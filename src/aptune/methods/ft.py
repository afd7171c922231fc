"""FT: full fine-tuning; every weight, embeddings included, is trained on the task loss."""

from __future__ import annotations

from torch import nn

from .base import Method


class FullFineTuning(Method):
    name = "ft"
    description = "full fine-tuning of every weight"

    def prepare(self, model: nn.Module, spec, cfg) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
