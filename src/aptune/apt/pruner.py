"""Adaptive pruning A_P: the masks, their steps towards each pruning point's keep-set, and the
physical removal of what they cut (docs/method.md#mask-updates, docs/method.md#compaction).

The pruner owns the masks and the salience taps that feed them. Compaction keeps three things
in step with the model: the salience EMA, the hidden-width modules outside the model that follow
the residual stream (the distillation map Tr), and the optimizer state of every sliced tensor.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..arch import ArchSpec
from ..errors import AptuneError
from ..structure import Structure
from ..surgery import ParamRemap, compact_and_record, model_structure, prune_linear_in, prune_linear_out
from ..train.optim import Survivors
from .budget import Counts, round_down_keep_set, select_keep_set
from .config import lengths_of
from .inference_cost import InferenceCost
from .masks import Masks, apply_masks
from .salience import SalienceCollector


class Pruner:
    def __init__(self, model: nn.Module, spec: ArchSpec, cfg: Any) -> None:
        self.spec, self.cfg = spec, cfg
        self.head_dim = spec.head_dim(model)
        self.ffn_factor = spec.shape(model).ffn_factor  # 2, or 3 for a gated FFN
        self.masks = apply_masks(model, spec, Masks.ones_like(model, spec))
        # Registered after the mask hooks, so the taps see masked activations.
        self.salience = SalienceCollector(model, spec, cfg.use_kurtosis, cfg.salience_beta,
                                          getattr(cfg, "salience_position_norm", "auto"),
                                          getattr(cfg, "kurtosis_scale", "salience_total"),
                                          getattr(cfg, "kurtosis_weight", 1.0))
        self.dense_size = self.counts().size  # C(Θ_0)
        # The inference-cost budget (docs/method.md#inference-cost-budget): off unless asked for.
        self.max_inference_cost = getattr(cfg, "max_inference_cost", None)
        self.unit_streams = spec.unit_streams(model)
        self.dense_cost = None if not self.max_inference_cost else \
            self._cost_of(self.inference_cost(), self._alive())
        self.structure = model_structure(model, spec)  # kept units, original numbering
        self.pruning_log: list[dict] = []
        self.protected_units = spec.protected_attention(model)
        # Linear maps outside the model that read and write the residual stream (Tr): sliced
        # along with the hidden dimensions.
        self.hidden_followers: list[nn.Linear] = []
        # Linear maps that read the student's stream but write another width (Tr once the teacher
        # has its own backbone): only their input columns follow the hidden dimensions.
        self.hidden_readers: list[nn.Linear] = []

    # -- sizes -----------------------------------------------------------------------------------
    def counts(self) -> Counts:
        heads, neurons, hidden = self.masks.count()
        return Counts(heads, neurons, hidden, self.head_dim, ffn_factor=self.ffn_factor,
                      layers=len(self.masks.head), mode=self.cfg.param_count_mode)

    def kept_ratio(self) -> float:
        return self.counts().size / self.dense_size

    def inference_cost(self) -> InferenceCost:
        """The per-block inference costs at the masks' current shapes."""
        lengths = lengths_of(getattr(self.cfg, "inference_lengths", None))
        if not lengths:
            raise AptuneError("--max-inference-cost needs the tokens per example of each stack",
                              "pass --inference-lengths SOURCE[,TARGET], e.g. 128,2")
        heads, neurons = [m.numel() for m in self.masks.head], [m.numel() for m in self.masks.neuron]
        return InferenceCost.build(heads, neurons, self.unit_streams, lengths, self.head_dim, self.ffn_factor)

    def _alive(self) -> dict[str, torch.Tensor]:
        """Which blocks of each type have a mask above 0, as flat vectors."""
        return {"head": torch.cat(self.masks.head) > 0, "neuron": torch.cat(self.masks.neuron) > 0,
                "hidden": self.masks.hidden > 0}

    @staticmethod
    def _cost_of(cost: InferenceCost, kept: dict[str, torch.Tensor]) -> float:
        """A kept set's inference cost; `kept[t]` holds indices or a boolean mask of each type."""
        hidden = kept["hidden"]
        return cost.total(kept["head"], kept["neuron"],
                          int(hidden.sum()) if hidden.dtype == torch.bool else hidden.numel())

    def kept_inference_cost(self) -> float | None:
        """The kept blocks' inference cost as a fraction of the dense model's (None: no cost budget)."""
        if not self.dense_cost:
            return None
        return self._cost_of(self.inference_cost(), self._alive()) / self.dense_cost

    def cost_target(self, kept_ratio: float) -> float | None:
        """The inference cost allowed at a point whose size target is `kept_ratio`: it falls from 1
        to --max-inference-cost in step with the size, so both budgets follow the one schedule."""
        if not self.dense_cost:
            return None
        progress = min(max((1.0 - kept_ratio) / self.cfg.sparsity, 0.0), 1.0)
        return (1.0 - progress * (1.0 - self.max_inference_cost)) * self.dense_cost

    # -- mask steps ------------------------------------------------------------------------------
    @torch.no_grad()
    def step_masks(self, point: int, kept_ratio: float, step_size: float, binarise: bool) -> None:
        """Move the masks one step towards the keep-set of `kept_ratio` · C(Θ_0): kept blocks up
        by `step_size`, the others down; with `binarise`, exactly to 1 and 0."""
        if self.salience.ema is None:
            return
        alive = self._alive()
        scores, counts = self._protected(self.salience.flat_ema()), self.counts()
        cost = self.inference_cost() if self.dense_cost else None
        keep = select_keep_set(scores, alive, counts, kept_ratio * self.dense_size, cost,
                               self.cost_target(kept_ratio))
        keep = round_down_keep_set(keep, scores, {"neuron": [m.numel() for m in self.masks.neuron],
                                                  "hidden": [self.masks.hidden.numel()]},
                                   self.cfg.kept_multiple, counts)
        flat = self.masks.flat()
        for t, vec in flat.items():
            up, down = keep.keep[t], keep.prune[t]
            if binarise:
                vec[up], vec[down] = 1.0, 0.0
            else:
                vec[up] = (vec[up] + step_size).clamp(max=1.0)
                vec[down] = (vec[down] - step_size).clamp(min=0.0)
        self.masks.write_flat(flat)
        if binarise:
            self.pruning_log.append({"point": point, "kept_target": kept_ratio,
                                     "size": keep.size, "kept_ratio": keep.size / self.dense_size,
                                     "heads": int(keep.keep["head"].numel()),
                                     "neurons": int(keep.keep["neuron"].numel()),
                                     "hidden": int(keep.keep["hidden"].numel()),
                                     **self._cost_entry(cost, keep),
                                     "salience_components": dict(self.salience.last_components)})

    def _cost_entry(self, cost: InferenceCost | None, keep) -> dict[str, float]:
        """The pruning log's inference-cost figure of a keep-set (none without a cost budget)."""
        if cost is None:
            return {}
        return {"inference_cost": self._cost_of(cost, keep.keep) / self.dense_cost}

    def _protected(self, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The flat scores with the top head of each protected unit (ArchSpec.protected_attention)
        raised to 1e10, as the original code does, so that the keep-set always takes it."""
        units = self.protected_units
        if not units:
            return scores
        head = scores["head"].clone()  # (Σ n_h,)
        offsets = [0]
        for m in self.masks.head:
            offsets.append(offsets[-1] + m.numel())
        for u in units:
            lo, hi = offsets[u], offsets[u + 1]
            if hi > lo:
                head[lo + int(torch.argmax(head[lo:hi]))] = 1e10  # a pruning point: reads allowed
        return {**scores, "head": head}

    # -- physical removal ------------------------------------------------------------------------
    def compact(self, model: nn.Module) -> Structure | None:
        """Remove every block whose mask is 0; the masks become all-ones on the new shapes.

        Returns what was kept (current numbering), or None when nothing was masked.
        """
        if not self.masks.is_binary():
            raise AptuneError("masks are not binary at compaction", "this is a bug; please report it")
        if self.masks.all_kept():
            return None
        kept = self.masks.kept()
        self.masks.remove_hooks()
        self.salience.detach()
        self.structure = compact_and_record(model, self.spec, kept)
        self.salience.keep_units(kept)
        dims = torch.as_tensor(kept.hidden, dtype=torch.long)
        for linear in self.hidden_followers:
            prune_linear_in(linear, dims)
            prune_linear_out(linear, dims)
        for linear in self.hidden_readers:
            prune_linear_in(linear, dims)
        self.masks = apply_masks(model, self.spec, Masks.ones_like(model, self.spec))
        self.salience.attach()
        return kept

    def compact_keeping_state(self, model: nn.Module, survivors: Survivors) -> tuple[bool, Survivors]:
        """`compact`, and carry the optimizer state of every sliced tensor (on top of `survivors`,
        e.g. adapters that just grew). Returns whether anything changed, and the survivors."""
        with ParamRemap() as remap:
            changed = self.compact(model) is not None
        return changed, _chain(survivors, remap)

    @staticmethod
    def cut_outputs_keeping_state(linear: nn.Linear, rows: torch.Tensor, survivors: Survivors) -> Survivors:
        """Keep the output features `rows` of a linear map outside the model (Tr), carrying the
        optimizer state of its sliced tensors on top of `survivors`."""
        with ParamRemap() as remap:
            prune_linear_out(linear, rows)
        return _chain(survivors, remap)

    def frozen_copy(self, model: nn.Module) -> nn.Module:
        """A copy of `model` as it stands, without the masks and salience taps, every tensor
        frozen: the teacher's own backbone once the student shrinks below it.

        The frozen tensors are shared, not copied: compaction never writes into a tensor, it
        gives the student new, sliced ones, so after the student's next compaction the old,
        full tensors live on in the copy alone and nothing is held twice. Only the trainable
        tensors (adapters, head) are duplicated. The hooks come off first because they are
        closures over this pruner: copied, they would apply the student's masks to the copy.
        The family's own hooks (T5's position-bias gathering, skipped sub-layers) are part of
        the model and are copied with it."""
        shared = {id(p): p for p in model.parameters() if not p.requires_grad}
        self.detach()
        try:
            twin = copy.deepcopy(model, memo=shared)
        finally:
            apply_masks(model, self.spec, self.masks)
            self.salience.attach()
        for p in twin.parameters():
            p.requires_grad_(False)  # the copies of the trainable ones; the shared are frozen already
        # Accelerate's mixed precision replaces the model's forward by a closure over the original
        # model: copied, it would run the student. The copy takes its class's forward (in full
        # precision) instead.
        for patched in ("forward", "_original_forward"):
            twin.__dict__.pop(patched, None)
        return twin.eval()

    def detach(self) -> None:
        """Drop every hook: after this the model runs as a plain model."""
        self.masks.remove_hooks()
        self.salience.detach()

    # -- agreement across processes --------------------------------------------------------------
    def fingerprint(self) -> torch.Tensor:
        """A number that differs when any mask or the kept structure differs."""
        values = torch.cat([m.flatten().double().cpu() for m in self.masks.all()])
        weights = torch.arange(1, values.numel() + 1, dtype=torch.float64)
        kept = float(sum(len(h) for h in self.structure.heads) * 1e6 + len(self.structure.hidden))
        return torch.tensor([float((values * weights).sum()) + kept, float(values.numel())])


def _chain(survivors: Survivors, remap: ParamRemap) -> Survivors:
    """`survivors` followed by the slices that `remap` recorded: a tensor grown then sliced is
    padded first, then cut."""
    merged = dict(survivors)
    for new, (old, select) in remap.links.items():
        if old in merged:
            root, first = merged.pop(old)
            merged[new] = (root, (lambda t, f=first, g=select: g(f(t))) if first else select)
        else:
            merged[new] = (old, select)
    return merged
