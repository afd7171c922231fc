"""Distillation pieces shared by APT and CoFi: the prediction KL and the layer map Tr.

APT's layer loss and teacher live in apt/teacher.py, CoFi's in cofi/distill.py; both use these
(docs/method.md#distillation-losses, docs/baselines.md#cofi-distillation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .lora import LoRALinear


def prediction_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """τ² · KL(softmax(z_t/τ) ‖ softmax(z_s/τ)), averaged over the batch."""
    log_p_t = F.log_softmax(teacher_logits / tau, dim=-1)  # (B, C)
    log_p_s = F.log_softmax(student_logits / tau, dim=-1)  # (B, C)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # (B,)
    return tau * tau * kl.mean()


def output_prediction_loss(teacher_out, student_out, tau: float) -> torch.Tensor:
    """L_pred between two model outputs: the KL on the class logits, or for extractive QA the mean
    of the KLs on the start and on the end logits (each over the sequence positions)."""
    if getattr(student_out, "start_logits", None) is not None:
        start = prediction_loss(teacher_out.start_logits.detach(), student_out.start_logits, tau)
        end = prediction_loss(teacher_out.end_logits.detach(), student_out.end_logits, tau)
        return (start + end) / 2
    return prediction_loss(teacher_out.logits.detach(), student_out.logits, tau)


def lora_layer_transform(d_model: int, r: int = 8, lora_alpha: float = 16.0,
                         device=None, dtype=None) -> LoRALinear:
    """Tr: a frozen identity d×d map plus a trainable LoRA, so it starts as the identity."""
    tr = LoRALinear(d_model, d_model, r, lora_alpha, bias=True, device=device, dtype=dtype)
    with torch.no_grad():
        tr.weight.copy_(torch.eye(d_model, device=device, dtype=dtype))
        tr.bias.zero_()
    return tr
