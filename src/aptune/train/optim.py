"""AdamW construction, a step-indexed learning-rate schedule, and optimizer rebuilds that keep
the state of parameters that survive a change of shape."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

NO_DECAY_SUFFIXES = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def param_groups(model: nn.Module, weight_decay: float, extra_params=()) -> list[dict]:
    """Trainable parameters only (frozen ones get no optimizer state), split by weight decay."""
    decay, no_decay = [], []
    named = list(model.named_parameters()) + [(f"extra.{i}", p) for i, p in enumerate(extra_params)]
    for name, p in named:
        if not p.requires_grad:
            continue
        (no_decay if name.endswith(NO_DECAY_SUFFIXES) or p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float,
                    extra_params=()) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, weight_decay, extra_params), lr=lr,
                             betas=(0.9, 0.999), eps=1e-8)


@dataclass(frozen=True)
class LinearWarmupDecay:
    """lr(t) = peak·t/w during warm-up, then linear decay to 0 at `total` steps.

    A pure function of the global step: rebuilding the optimizer can never detach or restart it
    (the stale-scheduler bug of the original APT code, docs/method.md#learning-rate-schedule).
    """

    peak: float
    total_steps: int
    warmup_steps: int

    @classmethod
    def from_ratio(cls, peak: float, total_steps: int, warmup_ratio: float) -> "LinearWarmupDecay":
        return cls(peak, total_steps, math.ceil(warmup_ratio * total_steps))

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.peak * step / self.warmup_steps  # as HF: lr(0) = 0
        span = max(1, self.total_steps - self.warmup_steps)
        return self.peak * max(0.0, (self.total_steps - step) / span)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# A selector maps an old state tensor (shaped like the old parameter) to the new one's shape.
Selector = Callable[[torch.Tensor], torch.Tensor]
# New parameter -> (the old parameter it came from, the selector; None when the shape is unchanged).
Survivors = dict[nn.Parameter, tuple[nn.Parameter, "Selector | None"]]


def rebuild_optimizer(old: torch.optim.Optimizer, model: nn.Module, weight_decay: float,
                      survivors: Survivors,
                      extra_params=()) -> torch.optim.AdamW:
    """A new AdamW over the model's trainable parameters.

    `survivors` maps a new parameter to (the old parameter it came from, a selector that cuts or
    pads the old state to the new shape; None when the shape is unchanged). Parameters that are
    absent start with fresh state; parameters that are gone lose theirs.
    """
    lr = old.param_groups[0]["lr"]
    new = build_optimizer(model, lr, weight_decay, extra_params)
    for new_p, (old_p, select) in survivors.items():
        state = old.state.get(old_p)
        if not state:
            continue
        moved = {}
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == old_p.shape:
                moved[key] = (select(value) if select is not None else value).clone()
            else:
                moved[key] = value.clone() if torch.is_tensor(value) else value  # e.g. `step`
        new.state[new_p] = moved
    return new


def pad_rows(new_rows: int) -> Selector:
    """State selector for a tensor that gained rows at the end (new rows start at zero)."""
    def select(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, t.new_zeros(new_rows - t.shape[0], *t.shape[1:])], 0)
    return select


def pad_cols(new_cols: int) -> Selector:
    def select(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, t.new_zeros(t.shape[0], new_cols - t.shape[1])], 1)
    return select
