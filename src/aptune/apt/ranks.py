"""Adaptive tuning A_T: the adapter sites, their importance, the tuning-parameter count δ and
rank growth (docs/method.md#rank-growth, docs/method.md#adapter-importance,
docs/method.md#tuning-parameter-count)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..arch import ArchSpec
from ..lora import LoRALinear, lora_modules
from ..train.optim import Survivors, pad_cols, pad_rows
from .masks import Masks


@dataclass
class AdapterSite:
    """One APT adapter and the masks that bound its live dimensions."""

    name: str
    module: LoRALinear
    layer: int
    output_kind: str  # "head" (q, v) or "neuron" (FFN up)


class AdapterImportance:
    """Ī(a) ← β·Ī + (1-β)·Σ|W_B ⊙ ∂L/∂W_B|, read after backward and before
    clipping (docs/method.md#adapter-importance).

    The EMA runs on the device in float64 (the same arithmetic as Python floats) and is read only
    through `scores`, at pruning points and checkpoints: a read per step would stall GPU steps.
    """

    def __init__(self, beta: float = 0.85) -> None:
        self.beta = beta
        self._scores: dict[str, float | torch.Tensor] = {}

    @property
    def scores(self) -> dict[str, float]:
        return {name: float(v) for name, v in self._scores.items()}

    @scores.setter
    def scores(self, values: dict[str, float]) -> None:
        self._scores = dict(values)

    def update(self, sites: list[AdapterSite]) -> None:
        for site in sites:
            b = site.module.lora_B
            value = 0.0 if b.grad is None else (b.detach() * b.grad.detach()).abs().sum().double()  # ()
            self._scores[site.name] = self.beta * self._scores.get(site.name, 0.0) + (1 - self.beta) * value

    def reset(self) -> None:
        self._scores.clear()


def tuning_count(sites: list[AdapterSite], live_in: int, live_out: dict[str, int]) -> int:
    """δ = Σ (d_i' + d_o') · r over live adapters, with d' the currently kept dims."""
    return sum((live_in + live_out[s.name]) * s.module.r for s in sites if live_out[s.name] > 0)


def plan_rank_growth(sites: list[AdapterSite], importance: dict[str, float], budget_prev: float,
                     budget_now: float, delta_now: int, live_in: int, live_out: dict[str, int],
                     selection: str = "tophalf", rule: str = "paper", max_rank: int = 64
                     ) -> dict[str, int]:
    """New ranks for the adapters that grow at this pruning point (docs/method.md#rank-growth)."""
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


def adapter_sites(model: nn.Module, spec: ArchSpec) -> list[AdapterSite]:
    """Adapters inside transformer layers, with the mask kind that bounds their outputs."""
    by_module = {id(m): n for n, m in lora_modules(model)}
    sites = []
    for i, layer in enumerate(spec.layers(model)):
        if spec.has_attention(layer):
            attn = spec.attention(layer)
            for proj in (attn.query, attn.key, attn.value):
                if id(proj) in by_module:
                    sites.append(AdapterSite(by_module[id(proj)], proj, i, "head"))
        if spec.has_ffn(layer) and id(spec.ffn(layer).up) in by_module:
            sites.append(AdapterSite(by_module[id(spec.ffn(layer).up)], spec.ffn(layer).up, i, "neuron"))
    return sites


class Ranks:
    """The adapters APT tunes, their importance while a pruning window is open, and their growth."""

    def __init__(self, model: nn.Module, spec: ArchSpec, cfg: Any, head_dim: int,
                 generator: torch.Generator) -> None:
        self.spec, self.cfg, self.head_dim = spec, cfg, head_dim
        self.generator = generator  # shared with the teacher: one random stream per run
        self.importance = AdapterImportance(cfg.salience_beta)
        self.collecting = False  # importance is read only inside pruning windows
        self.history: list[dict] = []
        self.final: dict[str, int] | None = None
        self.refresh(model)

    def refresh(self, model: nn.Module) -> None:
        """Find the sites (again, after a compaction removed sub-layers)."""
        self.sites = adapter_sites(model, self.spec)

    def table(self) -> dict[str, int]:
        return rank_table(self.sites)

    def live_outputs(self, masks: Masks) -> dict[str, int]:
        return live_outputs(self.sites, masks.head, masks.neuron, self.head_dim)

    def delta(self, masks: Masks) -> int:
        """δ, the tuning parameters now (docs/method.md#tuning-parameter-count)."""
        return tuning_count(self.sites, int((masks.hidden > 0).sum()), self.live_outputs(masks))

    def observe(self) -> None:
        """After backward (gradients averaged across processes): accumulate importance."""
        if self.collecting:
            self.importance.update(self.sites)

    def grow(self, budget_prev: float, budget_now: float, masks: Masks) -> Survivors:
        """Grow the chosen adapters for the budget Δ_k; returns their optimizer survivors."""
        cfg = self.cfg
        plan = plan_rank_growth(self.sites, self.importance.scores, budget_prev, budget_now,
                                self.delta(masks), int((masks.hidden > 0).sum()), self.live_outputs(masks),
                                cfg.rank_selection, cfg.rank_growth_rule, cfg.max_rank)
        survivors: Survivors = {}
        for site in self.sites:
            if site.name in plan:
                old_a, old_b = site.module.grow_rank(plan[site.name], cfg.new_rank_init, self.generator)
                survivors[site.module.lora_A] = (old_a, pad_rows(plan[site.name]))
                survivors[site.module.lora_B] = (old_b, pad_cols(plan[site.name]))
        return survivors
