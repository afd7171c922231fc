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


@torch.no_grad()
def fold_scales(model: nn.Module, spec: ArchSpec, head: torch.Tensor, neuron: torch.Tensor) -> None:
    """head (L, H) and neuron (L, F) mask values; zeros are left for slicing."""
    for i, layer in enumerate(spec.layers(model)):
        out = spec.attention(layer).output
        head_dim = spec.layer_head_dim(layer)
        scale = torch.where(head[i] != 0, head[i], torch.ones_like(head[i]))  # (H,)
        w = out.weight.view(out.out_features, -1, head_dim)  # (d, H, d_h)
        w.mul_(scale.to(w)[None, :, None])
        down = spec.ffn(layer).down
        scale = torch.where(neuron[i] != 0, neuron[i], torch.ones_like(neuron[i]))  # (F,)
        down.weight.mul_(scale.to(down.weight)[None, :])  # (d, F)


def materialize(model: nn.Module, spec: ArchSpec, head: torch.Tensor, neuron: torch.Tensor) -> Structure:
    """Fold, compact and record the structure. Returns the structure in the original numbering."""
    fold_scales(model, spec, head, neuron)
    hidden = torch.ones(spec.shape(model).hidden)  # Mask Tuning never prunes hidden dimensions
    return compact_and_record(model, spec, kept_units(hidden, head, neuron, empty_sublayer="bias_ln"))
