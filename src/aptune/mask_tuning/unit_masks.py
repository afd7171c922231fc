"""Real-valued head and neuron masks, applied by hooks so that gradients reach them.

Unlike `aptune.masks` (APT's masks, which skip empty sub-layers and mask hidden dimensions),
these are plain multiplications: a head's mask scales its context slice (the input of the
attention output projection) and a neuron's mask scales its activation (the input of the down
projection). An all-zero layer therefore still adds the output bias before its LayerNorm, which
is Mask Tuning's semantics (baselines.md §3.8).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from ..arch import ArchSpec


@contextmanager
def unit_masks(model: nn.Module, spec: ArchSpec,
               head: Sequence[torch.Tensor | None] | None = None,
               neuron: Sequence[torch.Tensor | None] | None = None) -> Iterator[None]:
    """Scale heads by `head[l]` (n_heads,) and neurons by `neuron[l]` (d_ff,); None leaves a layer."""
    handles = []
    for i, layer in enumerate(spec.layers(model)):
        if head is not None and i < len(head) and head[i] is not None:
            handles.append(spec.attention(layer).output.register_forward_pre_hook(
                _scale_heads(head[i], spec.layer_head_dim(layer))))
        if neuron is not None and i < len(neuron) and neuron[i] is not None:
            handles.append(spec.ffn(layer).down.register_forward_pre_hook(_scale_neurons(neuron[i])))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _scale_heads(mask: torch.Tensor, head_dim: int):
    def hook(module, args):
        x = args[0]  # (B, T, n_h * d_h)
        scaled = x.view(*x.shape[:-1], mask.numel(), head_dim) * mask[:, None]  # (B, T, n_h, d_h)
        return (scaled.view(x.shape), *args[1:])
    return hook


def _scale_neurons(mask: torch.Tensor):
    def hook(module, args):
        return (args[0] * mask, *args[1:])  # (B, T, d_ff) * (d_ff,)
    return hook


def dense_shape(model: nn.Module, spec: ArchSpec) -> tuple[int, int, int]:
    """(layers, heads per layer, neurons per layer) of a dense model; Mask Tuning needs one."""
    layers = spec.layers(model)
    heads = {spec.attention(layer).query.out_features // spec.layer_head_dim(layer) for layer in layers}
    neurons = {spec.ffn(layer).up.out_features for layer in layers}
    if len(heads) != 1 or len(neurons) != 1:
        raise ValueError("Mask Tuning needs a dense model with the same shape in every layer")
    return len(layers), heads.pop(), neurons.pop()
