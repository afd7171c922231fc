"""Mask Tuning end to end on a task-tuned dense model (docs/baselines.md#loraprune), timed
per phase."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..arch import ArchSpec
from ..counting import non_embedding_parameters
from ..errors import AptuneError
from .fisher import collect_mask_gradients
from .layout import UnitLayout
from .rearrange import rearrange_masks
from .rescale import rescale_masks
from .search import BlockCosts, mac_costs, param_costs, search_masks


@dataclass
class MaskTuningConfig:
    kept: float = 0.4  # 1 - sparsity
    constraint: str = "params"  # "params": non-embedding params from the tensors; "mac": MACs
    seq_len: float = 25.16  # mean dev length for the MAC cost
    teacher: str = "full"  # "full" (APT's port) or "ta_sqrt" (Kwon: the search at sqrt(C))
    rescale: bool = True
    classification: bool = True


@dataclass
class MaskTuningResult:
    head: torch.Tensor  # (U, H) final mask values (0 = pruned, else the tuned scale)
    neuron: torch.Tensor  # (U, F)
    budget: float
    costs: BlockCosts
    kept_heads: int
    kept_neurons: int
    tuned: list[str] = field(default_factory=list)
    stopped: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        return {"constraint": self.costs.kind, "budget": self.budget, "kept_heads": self.kept_heads,
                "kept_neurons": self.kept_neurons, "tuned_sublayers": self.tuned,
                "stopped": self.stopped, "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}


def _costs_and_budget(model: nn.Module, spec: ArchSpec, cfg: MaskTuningConfig,
                      kept: float) -> tuple[BlockCosts, float]:
    shape, layout = spec.shape(model), UnitLayout.of(model, spec)
    n_heads, n_neurons = sum(layout.heads), sum(layout.neurons)
    hidden, head_dim = shape.hidden, shape.head_dim
    if cfg.constraint == "mac":
        costs = mac_costs(hidden, head_dim, cfg.seq_len, shape.gated_ffn)
        return costs, kept * costs.full(n_heads, n_neurons)
    if cfg.constraint != "params":
        raise AptuneError(f"unknown Mask Tuning constraint '{cfg.constraint}'", "use params or mac")
    costs = param_costs(hidden, head_dim, shape.gated_ffn, biases=layout.biases)
    # Everything that Mask Tuning cannot remove (output biases, LayerNorms) is paid first, so that
    # the kept ratio counted from the tensors meets the target.
    total = non_embedding_parameters(model)
    prunable = costs.full(n_heads, n_neurons)
    return costs, kept * total - (total - prunable)


def run_mask_tuning(model: nn.Module, spec: ArchSpec, batches: list[dict[str, torch.Tensor]],
                    cfg: MaskTuningConfig, log=print) -> MaskTuningResult:
    """Decide and rescale the kept heads and neurons of `model` (weights are not touched)."""
    seconds: dict[str, float] = {}
    costs, budget = _costs_and_budget(model, spec, cfg, cfg.kept)
    if budget < costs.head:
        raise AptuneError(f"a kept ratio of {cfg.kept:.3f} leaves no room for even one head",
                          "choose a lower sparsity")
    t0 = time.perf_counter()
    grads = collect_mask_gradients(model, spec, batches)
    head_fisher, neuron_fisher = grads.head_fisher, grads.neuron_fisher  # (U, H), (U, F)
    layout = grads.layout
    valid = (layout.valid("head"), layout.valid("neuron"))
    seconds["fisher"] = time.perf_counter() - t0
    log(f"mask tuning: mask gradients on {len(batches)} batches in {seconds['fisher']:.1f} s")

    t0 = time.perf_counter()
    head, neuron = search_masks(head_fisher, neuron_fisher, costs, budget, *valid)
    seconds["search"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    head = rearrange_masks(grads.head, head_fisher, head, layout.heads)
    neuron = rearrange_masks(grads.neuron, neuron_fisher, neuron, layout.neurons)
    seconds["rearrange"] = time.perf_counter() - t0
    kept_heads, kept_neurons = int(head.sum()), int(neuron.sum())
    log(f"mask tuning: search + rearrangement keep {kept_heads}/{sum(layout.heads)} heads and "
        f"{kept_neurons}/{sum(layout.neurons)} neurons ({costs.kind} budget {budget:,.0f}) in "
        f"{seconds['search'] + seconds['rearrange']:.1f} s")

    result = MaskTuningResult(head, neuron, budget, costs, kept_heads, kept_neurons, seconds=seconds)
    if cfg.rescale:
        if cfg.teacher == "full":
            t_head, t_neuron = torch.ones_like(head), torch.ones_like(neuron)
        elif cfg.teacher == "ta_sqrt":
            _, ta_budget = _costs_and_budget(model, spec, cfg, math.sqrt(cfg.kept))
            t_head, t_neuron = search_masks(head_fisher, neuron_fisher, costs, ta_budget, *valid)
        else:
            raise AptuneError(f"unknown Mask Tuning teacher '{cfg.teacher}'", "use full or ta_sqrt")
        t0 = time.perf_counter()
        tuned = rescale_masks(model, spec, batches, head, neuron, t_head, t_neuron, cfg.classification)
        seconds["rescale"] = time.perf_counter() - t0
        result.head, result.neuron = tuned.head, tuned.neuron
        result.tuned, result.stopped = tuned.tuned, tuned.stopped
        log(f"mask tuning: rescaled {len(tuned.tuned)} sub-layers in {seconds['rescale']:.1f} s"
            + (f"; stopped at {tuned.stopped}" if tuned.stopped else ""))
    seconds["total"] = sum(seconds.values())
    return result
