"""Self-distillation: the teacher snapshot, layer sampling and mapping, Tr, L_pred and L_layer
(apt-method.md §9)."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .lora import LoRALinear


def prediction_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """τ² · KL(softmax(z_t/τ) ‖ softmax(z_s/τ)), averaged over the batch."""
    log_p_t = F.log_softmax(teacher_logits / tau, dim=-1)  # (B, C)
    log_p_s = F.log_softmax(student_logits / tau, dim=-1)  # (B, C)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # (B,)
    return tau * tau * kl.mean()


def sample_teacher_layers(n_layers: int, generator: torch.Generator, groups: int = 4) -> list[int]:
    """One layer drawn uniformly from each of `groups` contiguous, nearly equal blocks (RAIL-KD)."""
    bounds = [round(i * n_layers / groups) for i in range(groups + 1)]
    picks = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi > lo:
            picks.append(lo + int(torch.randint(hi - lo, (1,), generator=generator)))
    return picks


def map_layers(teacher_hidden: list[torch.Tensor], student_hidden: list[torch.Tensor],
               teacher_layers: list[int], alive: list[bool], transform: nn.Module) -> dict[int, int]:
    """φ(i) = argmin over alive j of MSE(Tr(H_s^j), H_t^i); ties go to the nearest index (§9.4)."""
    candidates = [j for j, ok in enumerate(alive) if ok]
    if not candidates:
        return {}
    with torch.no_grad():
        mapped = {j: transform(student_hidden[j]) for j in candidates}
        phi = {}
        for i in teacher_layers:
            errors = [(float(F.mse_loss(mapped[j], teacher_hidden[i])), abs(j - i), j) for j in candidates]
            phi[i] = min(errors)[2]
    return phi


def layer_loss(teacher_hidden: list[torch.Tensor], student_hidden: list[torch.Tensor],
               phi: dict[int, int], transform: nn.Module) -> torch.Tensor:
    """Σ_i MSE(Tr(H_s^φ(i)), H_t^i): summed over the sampled layers, not averaged."""
    terms = [F.mse_loss(transform(student_hidden[j]), teacher_hidden[i]) for i, j in phi.items()]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def make_layer_transform(d_model: int, r: int = 8, lora_alpha: float = 16.0,
                         device=None, dtype=None) -> LoRALinear:
    """Tr: a frozen identity d×d map plus a trainable LoRA, so it starts as the identity."""
    tr = LoRALinear(d_model, d_model, r, lora_alpha, bias=True, device=device, dtype=dtype)
    with torch.no_grad():
        tr.weight.copy_(torch.eye(d_model, device=device, dtype=dtype))
        tr.bias.zero_()
    return tr


class TeacherSnapshot:
    """An earlier state of the student: frozen copies of its trainable tensors (adapters, head).

    The backbone is shared, so only the copies cost memory. The teacher forward substitutes them
    by name (torch.func.functional_call) and runs unmasked, in eval mode, without gradients.
    """

    def __init__(self, model: nn.Module) -> None:
        self.state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def forward(self, model: nn.Module, batch: dict, masks=None, salience=None):
        was_training = model.training
        model.eval()
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        salience_active = salience.active if salience is not None else False
        if salience is not None:
            salience.active = False  # pitfall P8: teacher activations must not feed salience
        try:
            with masks.disabled() if masks is not None else contextlib.nullcontext():
                out = functional_call(model, self.state, args=(),
                                      kwargs={**inputs, "output_hidden_states": True}, strict=False)
        finally:
            if salience is not None:
                salience.active = salience_active
            model.train(was_training)
        return out

    def numel(self) -> int:
        return sum(t.numel() for t in self.state.values())
