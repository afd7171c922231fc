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
from .layout import UnitLayout
from .unit_masks import unit_masks


@dataclass
class MaskGradients:
    head: torch.Tensor  # (n_batches, U, H); 0 on the layout's padding
    neuron: torch.Tensor  # (n_batches, U, F)
    layout: UnitLayout

    @property
    def head_fisher(self) -> torch.Tensor:
        return self.head.pow(2).sum(0)  # (U, H)

    @property
    def neuron_fisher(self) -> torch.Tensor:
        return self.neuron.pow(2).sum(0)  # (U, F)


def collect_mask_gradients(model: nn.Module, spec: ArchSpec,
                           batches: Iterable[dict[str, torch.Tensor]]) -> MaskGradients:
    layout = UnitLayout.of(model, spec)  # Mask Tuning prunes a dense model
    device = next(model.parameters()).device
    head = torch.ones(layout.n_units, layout.max_heads, device=device, requires_grad=True)
    neuron = torch.ones(layout.n_units, layout.max_neurons, device=device, requires_grad=True)
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in flags:
        p.requires_grad_(False)  # only the masks need gradients
    was_training = model.training
    model.eval()  # dropout off for every Mask Tuning step
    head_grads, neuron_grads = [], []
    try:
        with unit_masks(model, spec, layout.per_unit(head, "head"), layout.per_unit(neuron, "neuron")):
            for batch in batches:
                batch = {k: v.to(device) for k, v in batch.items()}
                loss = model(**batch).loss  # mean task loss of the mini-batch
                # padding entries never reach the loss: their gradient is 0
                g_head, g_neuron = torch.autograd.grad(loss, (head, neuron), allow_unused=True,
                                                       materialize_grads=True)
                head_grads.append(g_head)
                neuron_grads.append(g_neuron)
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)
    return MaskGradients(torch.stack(head_grads), torch.stack(neuron_grads), layout)
