"""Fold tuned mask values into the weights, then slice the pruned units out
(docs/baselines.md#materialisation).

A kept head's scale multiplies its column block of W_O; a kept neuron's scale multiplies its
column of W_down. The binary pattern then goes through the shared compaction, with Mask
Tuning's empty-sub-layer semantics (LayerNorm(bias + x)) so that masked == materialised.
"""

from __future__ import annotations

import torch
from torch import nn

from ..arch import ArchSpec
from ..structure import Structure
from ..surgery import compact_and_record, kept_units
from .layout import UnitLayout


@torch.no_grad()
def fold_scales(model: nn.Module, spec: ArchSpec, head: torch.Tensor, neuron: torch.Tensor) -> None:
    """head (U, H) and neuron (U, F) mask values (UnitLayout); zeros are left for slicing."""
    layout = UnitLayout.of(model, spec)
    heads, neurons = layout.per_unit(head, "head"), layout.per_unit(neuron, "neuron")
    for layer, h, n in zip(spec.layers(model), heads, neurons):
        if h is not None:
            out = spec.attention(layer).output
            scale = torch.where(h != 0, h, torch.ones_like(h))  # (H,)
            w = out.weight.view(out.out_features, -1, spec.layer_head_dim(layer))  # (d, H, d_h)
            w.mul_(scale.to(w)[None, :, None])
        if n is not None:
            down = spec.ffn(layer).down
            scale = torch.where(n != 0, n, torch.ones_like(n))  # (F,)
            down.weight.mul_(scale.to(down.weight)[None, :])  # (d, F)


def materialize(model: nn.Module, spec: ArchSpec, head: torch.Tensor, neuron: torch.Tensor) -> Structure:
    """Fold, compact and record the structure. Returns the structure in the original numbering.

    An all-zero sub-layer keeps computing what its masked version computed: LayerNorm(b_O + x)
    where the output projection has a bias (BERT), kept as zero-width projections; plain x where
    it has none and the norm comes first (T5), so it is skipped (docs/baselines.md#materialisation)."""
    layout = UnitLayout.of(model, spec)
    fold_scales(model, spec, head, neuron)
    hidden = torch.ones(spec.shape(model).hidden)  # Mask Tuning never prunes hidden dimensions
    empty = "bias_ln" if layout.biases else "identity"
    heads = [h if h is not None else head.new_zeros(0) for h in layout.per_unit(head, "head")]
    neurons = [n if n is not None else neuron.new_zeros(0) for n in layout.per_unit(neuron, "neuron")]
    return compact_and_record(model, spec, kept_units(hidden, heads, neurons, empty_sublayer=empty))
