"""Mask gradients and the diagonal empirical Fisher (docs/baselines.md#mask-gradients-and-fisher).

One forward/backward per calibration mini-batch with every mask at 1. The Fisher uses the
per-batch gradients, as the original code does: I_i = Σ_b g_{b,i}². The gradient matrices are
kept as well, because the rearrangement step needs the block-diagonal Fisher.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from ..arch import ArchSpec
from .unit_masks import unit_masks


@dataclass
class MaskGradients:
    head: torch.Tensor  # (n_batches, L, H)
    neuron: torch.Tensor  # (n_batches, L, F)

    @property
    def head_fisher(self) -> torch.Tensor:
        return self.head.pow(2).sum(0)  # (L, H)

    @property
    def neuron_fisher(self) -> torch.Tensor:
        return self.neuron.pow(2).sum(0)  # (L, F)


def collect_mask_gradients(model: nn.Module, spec: ArchSpec,
                           batches: Iterable[dict[str, torch.Tensor]]) -> MaskGradients:
    shape = spec.shape(model)
    n_heads, n_neurons = shape.uniform()  # Mask Tuning prunes a dense model
    n_layers = shape.n_layers
    device = next(model.parameters()).device
    head = torch.ones(n_layers, n_heads, device=device, requires_grad=True)
    neuron = torch.ones(n_layers, n_neurons, device=device, requires_grad=True)
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in flags:
        p.requires_grad_(False)  # only the masks need gradients
    was_training = model.training
    model.eval()  # dropout off for every Mask Tuning step
    head_grads, neuron_grads = [], []
    try:
        with unit_masks(model, spec, list(head), list(neuron)):
            for batch in batches:
                batch = {k: v.to(device) for k, v in batch.items()}
                loss = model(**batch).loss  # mean task loss of the mini-batch
                g_head, g_neuron = torch.autograd.grad(loss, (head, neuron))
                head_grads.append(g_head)
                neuron_grads.append(g_neuron)
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)
    return MaskGradients(torch.stack(head_grads), torch.stack(neuron_grads))
