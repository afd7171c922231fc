"""CoFi's distillation loss: prediction KL plus layer MSE with ordered mapping
(docs/baselines.md#cofi-distillation).

    L = α_layer · Σ_{i∈𝒯} MSE(W_tr H_s^{m(i)}, H_t^i) + α_pred · T² · KL(p_t ‖ p_s)
H are the layer outputs (the embedding output is excluded); the MSE averages every element,
padding included. W_tr is d×d and starts as the identity with zero bias.

Teacher layers 𝒯 (version 4): the last layer of each of 4 equal blocks, {2, 5, 8, 11} for 12
layers. For other depths the block bounds are ⌊b·n_L/4⌋ (b = 0..4) and empty blocks are dropped,
e.g. 6 layers -> {0, 2, 3, 5} and 3 layers -> {0, 1, 2}.

Mapping m (version 4): teacher layers top-down; each takes the existing student layer of least
MSE among those strictly below the previous match (the first may take any), and reuses the
previous match when none qualifies. Ties go to the lower index. With no existing student layer
at all there is nothing to match and L_layer = 0. Version 3 is the unordered argmin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import lora_layer_transform, output_prediction_loss
from .config import EXISTING_LAYER_RULES, LAYER_DISTILL_VERSIONS, LAYER_TRANSFORMS
from .gates import CoFiGates


def teacher_layers_v4(n_layers: int, blocks: int = 4) -> list[int]:
    bounds = [b * n_layers // blocks for b in range(blocks + 1)]
    return [hi - 1 for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]


def existing_layers(gates: CoFiGates | None, n_layers: int, rule: str = "mha_only") -> list[bool]:
    """Which student layers count as present in this step's gates.

    CoFi tests z_MHA ≠ 0 only (`mha_only`); its authors agree it should be z_MHA ≠ 0 or
    z_FFN ≠ 0 (`mha_or_ffn`, CoFi issue #53). Without gates (pre-pruning) every layer exists.
    """
    if rule not in EXISTING_LAYER_RULES:
        raise ValueError(f"existing-layer rule must be one of {EXISTING_LAYER_RULES}, got {rule!r}")
    if gates is None:
        return [True] * n_layers
    alive = gates.mha.detach() != 0  # (L,)
    if rule == "mha_or_ffn":
        alive = alive | (gates.ffn.detach() != 0)
    return alive.tolist()


def match_layers(errors: torch.Tensor, teacher_layers: Sequence[int], candidates: Sequence[int],
                 version: int = 4) -> dict[int, int]:
    """Teacher layer -> student layer, from errors[a, b] = MSE(teacher_layers[a], candidates[b])."""
    if version not in LAYER_DISTILL_VERSIONS:
        raise ValueError(f"layer distillation version must be one of {LAYER_DISTILL_VERSIONS}")
    if not candidates:
        return {}
    errors = errors.detach().cpu()  # (|𝒯|, |C|)
    if version == 3:
        return {t: candidates[int(torch.argmin(errors[a]))] for a, t in enumerate(teacher_layers)}
    mapping: dict[int, int] = {}
    previous: int | None = None
    for a in sorted(range(len(teacher_layers)), key=lambda a: -teacher_layers[a]):
        allowed = [b for b, j in enumerate(candidates) if previous is None or j < previous]
        if allowed:
            best = min(allowed, key=lambda b: (float(errors[a, b]), b))
            previous = candidates[best]
        mapping[teacher_layers[a]] = previous
    return mapping


def layer_distill_loss(teacher_hidden: Sequence[torch.Tensor], student_hidden: Sequence[torch.Tensor],
                       exists: Sequence[bool], transform: nn.Module, teacher_layers: Sequence[int],
                       version: int = 4) -> tuple[torch.Tensor, dict[int, int]]:
    """Σ over 𝒯 of the matched MSEs, and the mapping. Hidden lists hold layer outputs only."""
    candidates = [j for j, ok in enumerate(exists) if ok]
    ref = student_hidden[0]
    if not candidates or not teacher_layers:
        return ref.new_zeros(()), {}
    mapped = [transform(student_hidden[j]) for j in candidates]  # each (B, T, d)
    errors = torch.stack([torch.stack([F.mse_loss(m, teacher_hidden[i]) for m in mapped])
                          for i in teacher_layers])  # (|𝒯|, |C|), differentiable
    mapping = match_layers(errors, teacher_layers, candidates, version)
    position = {j: b for b, j in enumerate(candidates)}
    terms = [errors[a, position[mapping[t]]] for a, t in enumerate(teacher_layers)]
    return torch.stack(terms).sum(), mapping


def make_layer_transform(d_model: int, mode: str = "full", device=None, dtype=None) -> nn.Module:
    """W_tr: `full` (trainable d×d, CoFi), `frozen_identity` (CoFi-LoRA default) or `lora`
    (frozen identity plus a trainable LoRA r8/α16, as in APT). All start as the identity."""
    if mode not in LAYER_TRANSFORMS:
        raise ValueError(f"layer transform must be one of {LAYER_TRANSFORMS}, got {mode!r}")
    if mode == "lora":
        return lora_layer_transform(d_model, device=device, dtype=dtype)
    tr = nn.Linear(d_model, d_model, device=device, dtype=dtype)
    with torch.no_grad():
        tr.weight.copy_(torch.eye(d_model, device=device, dtype=dtype))
        tr.bias.zero_()
    tr.requires_grad_(mode == "full")
    return tr


@dataclass
class DistillLosses:
    total: torch.Tensor  # α_layer · layer + α_pred · pred
    pred: torch.Tensor
    layer: torch.Tensor
    mapping: dict[int, int] = field(default_factory=dict)


class CoFiDistillLoss(nn.Module):
    """The whole CoFi distillation loss; owns W_tr (`self.transform`), which the main optimizer trains."""

    def __init__(self, n_layers: int, d_model: int, temperature: float = 2.0, alpha_layer: float = 0.9,
                 alpha_pred: float = 0.1, version: int = 4, existing: str = "mha_only",
                 transform: str | nn.Module = "full") -> None:
        super().__init__()
        if version not in LAYER_DISTILL_VERSIONS or existing not in EXISTING_LAYER_RULES:
            raise ValueError(f"version must be in {LAYER_DISTILL_VERSIONS} and existing in "
                             f"{EXISTING_LAYER_RULES}")
        self.n_layers = n_layers
        self.temperature = temperature
        self.alpha_layer = alpha_layer
        self.alpha_pred = alpha_pred
        self.version = version
        self.existing = existing
        self.teacher_layers = teacher_layers_v4(n_layers)
        self.transform = transform if isinstance(transform, nn.Module) else make_layer_transform(
            d_model, transform)

    def forward(self, teacher_out, student_out, gates: CoFiGates | None = None) -> DistillLosses:
        """`*_out` are model outputs run with output_hidden_states=True (embeddings at index 0)."""
        pred = output_prediction_loss(teacher_out, student_out, self.temperature)
        exists = existing_layers(gates, self.n_layers, self.existing)
        teacher_hidden = [h.detach() for h in teacher_out.hidden_states[1:]]
        layer, mapping = layer_distill_loss(teacher_hidden, list(student_out.hidden_states[1:]), exists,
                                            self.transform, self.teacher_layers, self.version)
        total = self.alpha_layer * layer + self.alpha_pred * pred
        return DistillLosses(total, pred, layer, mapping)
