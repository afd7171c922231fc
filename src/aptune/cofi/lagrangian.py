"""CoFi's Lagrangian sparsity control and its two optimizers (docs/baselines.md#lagrangian-control).

L_c = λ1 (ŝ − t) + λ2 (ŝ − t)², signed, with λ1 = λ2 = 0 at the start. The log α's descend
L_c; λ1 and λ2 *ascend* it, which drives ŝ to t. CoFi writes the ascent as AdamW with learning
rate −reg_lr; torch's AdamW rejects a negative learning rate, so we use its `maximize=True`,
which negates the gradient instead. With zero weight decay the two are the same update:
Adam's step is odd in the gradient (m flips sign, v does not).
"""

from __future__ import annotations

import torch
from torch import nn

from .gates import L0Gates


def target_sparsity_at(step: int, target: float, warmup_steps: int) -> float:
    """t(k) = t_target · min(1, k / K_w), with k counted from the start of pruning."""
    if warmup_steps <= 0:
        return target
    return target * min(1.0, max(step, 0) / warmup_steps)


class LagrangianControl(nn.Module):
    """Holds λ1 and λ2 (trainable, 0 at the start) and the target warm-up."""

    def __init__(self, target: float, warmup_steps: int) -> None:
        super().__init__()
        self.target = float(target)
        self.warmup_steps = int(warmup_steps)
        self.lambda_1 = nn.Parameter(torch.zeros(()))
        self.lambda_2 = nn.Parameter(torch.zeros(()))

    def target_at(self, step: int) -> float:
        return target_sparsity_at(step, self.target, self.warmup_steps)

    def forward(self, expected_sparsity: torch.Tensor, target: float) -> torch.Tensor:
        gap = expected_sparsity - target  # signed, not |ŝ − t|
        return self.lambda_1 * gap + self.lambda_2 * gap * gap


def build_l0_optimizers(gates: L0Gates, control: LagrangianControl, reg_lr: float = 0.01,
                        betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
                        ) -> tuple[torch.optim.AdamW, torch.optim.AdamW]:
    """(descent on log α, ascent on λ): both AdamW at reg_lr, constant, no weight decay.

    Neither is gradient-clipped; call `gates.clamp_()` after every step of the first.
    """
    descent = torch.optim.AdamW(list(gates.parameters()), lr=reg_lr, betas=betas, eps=eps,
                                weight_decay=0.0)
    ascent = torch.optim.AdamW(list(control.parameters()), lr=reg_lr, betas=betas, eps=eps,
                               weight_decay=0.0, maximize=True)
    return descent, ascent
