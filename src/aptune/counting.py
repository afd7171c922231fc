"""Parameter counts taken from the model's own tensors (docs/protocol.md#parameters-kept)."""

from __future__ import annotations

from torch import nn

from .arch import get_spec


def non_embedding_parameters(model: nn.Module) -> int:
    """Attention and FFN weights and biases plus the layers' LayerNorms, counted from tensors."""
    spec = get_spec(model)
    seen: set[int] = set()
    total = 0
    for module in spec.non_embedding_modules(model):
        for p in module.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def parameter_summary(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "non_embedding": non_embedding_parameters(model)}
