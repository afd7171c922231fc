"""Fold tuned mask values into the weights, then slice the pruned units out (baselines.md §3.8).

A kept head's scale multiplies its column block of W_O; a kept neuron's scale multiplies its
column of W_down. The binary pattern then goes through the shared compaction, with Mask
Tuning's empty-sub-layer semantics (LayerNorm(bias + x)) so that masked == materialised.
"""

from __future__ import annotations

import torch
from torch import nn

from ..arch import ArchSpec
from ..export import STRUCTURE_KEY, compose, record_structure
from ..masks import Masks
from ..surgery import compact


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


def materialize(model: nn.Module, spec: ArchSpec, head: torch.Tensor, neuron: torch.Tensor) -> dict:
    """Fold, compact and record the structure. Returns the structure in the original numbering."""
    fold_scales(model, spec, head, neuron)
    hidden = torch.ones(spec.embedding_norm(model).weight.shape[0])
    masks = Masks([(h != 0).float() for h in head], [(n != 0).float() for n in neuron], hidden)
    structure = compact(model, spec, masks, empty_sublayer="bias_ln")
    structure = compose(getattr(model.config, STRUCTURE_KEY, None), structure)
    record_structure(model, structure)
    return structure
