"""Adaptive tuning A_T: adapter importance, the tuning-parameter count δ and rank growth
(apt-method.md §4.3, §5.4, §8)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .lora import LoRALinear


@dataclass
class AdapterSite:
    """One APT adapter and the masks that bound its live dimensions."""

    name: str
    module: LoRALinear
    layer: int
    output_kind: str  # "head" (q, v) or "neuron" (FFN up)


class AdapterImportance:
    """Ī(a) ← β·Ī + (1-β)·Σ|W_B ⊙ ∂L/∂W_B|, read after backward and before clipping (§5.4)."""

    def __init__(self, beta: float = 0.85) -> None:
        self.beta = beta
        self.scores: dict[str, float] = {}

    def update(self, sites: list[AdapterSite]) -> None:
        for site in sites:
            b = site.module.lora_B
            value = 0.0 if b.grad is None else float((b.detach() * b.grad.detach()).abs().sum())
            self.scores[site.name] = self.beta * self.scores.get(site.name, 0.0) + (1 - self.beta) * value

    def reset(self) -> None:
        self.scores.clear()


def tuning_count(sites: list[AdapterSite], live_in: int, live_out: dict[str, int]) -> int:
    """δ = Σ (d_i' + d_o') · r over live adapters, with d' the currently kept dims (§4.3)."""
    return sum((live_in + live_out[s.name]) * s.module.r for s in sites if live_out[s.name] > 0)


def plan_rank_growth(sites: list[AdapterSite], importance: dict[str, float], budget_prev: float,
                     budget_now: float, delta_now: int, live_in: int, live_out: dict[str, int],
                     selection: str = "tophalf", rule: str = "paper", max_rank: int = 64
                     ) -> dict[str, int]:
    """New ranks for the adapters that grow at this pruning point (§8.2-8.3)."""
    alive = [s for s in sites if live_out[s.name] > 0 and s.module.r > 0]
    ranked = sorted(alive, key=lambda s: (-importance.get(s.name, 0.0), s.name))
    growable = [s for s in ranked if s.module.r < max_rank]
    chosen = growable if selection == "all" else growable[: len(alive) // 2]
    if not chosen or budget_prev <= 0:
        return {}
    if rule == "paper":
        factor = budget_now / budget_prev
    elif rule == "budget_fill":
        if selection == "all":
            factor = budget_now / max(delta_now, 1)
        else:
            grow_base = sum((live_in + live_out[s.name]) * s.module.r for s in chosen)
            factor = (budget_now - delta_now) / max(grow_base, 1) + 1
    else:
        raise ValueError(f"unknown rank_growth_rule {rule!r}")
    plan = {}
    for s in chosen:
        new_r = min(max_rank, math.floor(s.module.r * factor))
        if new_r > s.module.r:
            plan[s.name] = new_r
    return plan


def growth_factor(budget_prev: float, budget_now: float) -> float:
    return budget_now / budget_prev if budget_prev > 0 else 1.0


def rank_table(sites: list[AdapterSite]) -> dict[str, int]:
    return {s.name: s.module.r for s in sites}


def live_outputs(sites: list[AdapterSite], head_masks: list[torch.Tensor],
                 neuron_masks: list[torch.Tensor], head_dim: int) -> dict[str, int]:
    out = {}
    for s in sites:
        if s.output_kind == "head":
            out[s.name] = int((head_masks[s.layer] > 0).sum()) * head_dim
        else:
            out[s.name] = int((neuron_masks[s.layer] > 0).sum())
    return out
