"""The parameter budget: model size C, block costs, salience density, and the keep-set search
(docs/method.md#model-size, docs/method.md#keep-set-search).

paper: C = d_m' · (4·d_h·N_h' + 2·N_f')                        (biases and norms ignored, Eq. 6)
code:  C = d_m' · (4·d_h·N_h' + 2·N_f' + 6·n_L) + 3·d_h·N_h' + N_f'   (with biases and LayerNorms)

aptune's default is `code`: it is the count that the pruned model's own tensors give
(docs/protocol.md#parameters-kept), so a 40% budget really yields at most 40% by that count. With
`paper`, biases and norms that cannot be pruned can push the reported count above the target.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .inference_cost import InferenceCost

BLOCK_TYPES = ("head", "neuron", "hidden")


@dataclass(frozen=True)
class Counts:
    heads: int  # N_h'
    neurons: int  # N_f'
    hidden: int  # d_m'
    head_dim: int  # d_h
    ffn_factor: int = 2  # 3 for gated FFNs
    layers: int = 0  # n_L, used by the `code` convention
    mode: str = "paper"  # or "code" (param_count_mode)

    def formula(self, h, f, d):
        """C for kept counts h, f, d (ints or tensors of prefix counts)."""
        if self.mode == "code":
            return d * (4 * self.head_dim * h + self.ffn_factor * f + 6 * self.layers) \
                + 3 * self.head_dim * h + f
        return d * (4 * self.head_dim * h + self.ffn_factor * f)

    @property
    def size(self) -> int:
        """C, the non-embedding size, by this convention."""
        return int(self.formula(self.heads, self.neurons, self.hidden))

    def costs(self) -> dict[str, float]:
        """Cost of one block of each type at the current counts."""
        extra = self.mode == "code"
        return {"head": 4 * self.hidden * self.head_dim + (3 * self.head_dim if extra else 0),
                "neuron": self.ffn_factor * self.hidden + (1 if extra else 0),
                "hidden": 4 * self.head_dim * self.heads + self.ffn_factor * self.neurons
                + (6 * self.layers if extra else 0)}


@dataclass
class KeepSet:
    """Indices (within each flattened block vector) that stay on and the ones that go."""

    keep: dict[str, torch.Tensor]
    prune: dict[str, torch.Tensor]
    size: int  # C of the kept prefix


def select_keep_set(salience: dict[str, torch.Tensor], alive: dict[str, torch.Tensor],
                    counts: Counts, target_size: float, cost: InferenceCost | None = None,
                    target_cost: float | None = None) -> KeepSet:
    """Sort candidates by salience density and keep the largest prefix with C < target.

    `salience[t]` and `alive[t]` are flat vectors over all blocks of type t (heads and neurons
    concatenated over layers). Blocks that are not alive (already pruned) are never candidates.
    Ties break by block type, then index, so every process picks the same set.

    With `cost` and `target_cost`, the prefix must also cost at most `target_cost` at inference
    (docs/method.md#inference-cost-budget). The density's denominator becomes the parameter cost
    plus λ times the inference cost (in parameter units), for each λ of a fixed grid, and the
    keep-set with the most salience wins: a Lagrangian search over the two budgets. Where the
    size budget alone already meets the cost target, its keep-set stands.
    """
    plain = _keep_prefix(salience, alive, counts, target_size)
    if cost is None or target_cost is None or \
            cost.total(plain.keep["head"], plain.keep["neuron"], plain.keep["hidden"].numel()) <= target_cost:
        return plain  # a cost budget that does not bind changes nothing
    per_block = _inference_per_block(cost, alive, counts, target_size, target_cost)  # the same for every λ
    best, least_lost = None, float("inf")
    for lam in LAGRANGE_GRID:
        found = _keep_prefix(salience, alive, counts, target_size, cost, target_cost, lam, per_block)
        # The most salience kept is the least pruned (the candidates are the same for every λ);
        # summed over the pruned blocks, it is not swamped by a protected head's raised score.
        lost = sum(float(salience[t][found.prune[t]].double().sum()) for t in BLOCK_TYPES)
        if lost < least_lost:  # strict: the smallest λ wins a tie
            best, least_lost = found, lost
    return best


# λ values tried by the two-budget search: 0 (salience per parameter) to 1e3 (per unit of inference cost).
LAGRANGE_GRID = (0.0,) + tuple(10 ** (k / 4) for k in range(-12, 13))


def _keep_prefix(salience: dict[str, torch.Tensor], alive: dict[str, torch.Tensor], counts: Counts,
                 target_size: float, cost: InferenceCost | None = None, target_cost: float | None = None,
                 lam: float = 0.0, per_block: dict[str, torch.Tensor] | None = None) -> KeepSet:
    """The largest prefix by density under the size target (and the cost target, when given);
    `per_block`: each block's inference cost in parameter units, weighted by `lam` in the density."""
    costs = counts.costs()
    dens, kinds, index = [], [], []
    for code, t in enumerate(BLOCK_TYPES):
        idx = torch.nonzero(alive[t], as_tuple=False).flatten()  # (n_t,)
        denominator = torch.full(idx.shape, max(costs[t], 1e-12), dtype=torch.float64)  # (n_t,)
        if per_block is not None and lam > 0:
            denominator = denominator + lam * per_block[t][idx]
        dens.append(salience[t][idx].double() / denominator)
        kinds.append(torch.full_like(idx, code))
        index.append(idx)
    dens_all, kind_all, idx_all = torch.cat(dens), torch.cat(kinds), torch.cat(index)  # (N,)
    # Descending density; stable sort on (type, index) first makes ties deterministic.
    order = torch.argsort(kind_all * (idx_all.max() + 1 if idx_all.numel() else 1) + idx_all, stable=True)
    order = order[torch.argsort(-dens_all[order], stable=True)]
    kind_sorted = kind_all[order]
    cum = [torch.cumsum((kind_sorted == c).long(), 0) for c in range(3)]  # prefix counts per type
    sizes = counts.formula(cum[0], cum[1], cum[2])  # C_top-i for i = 1..N
    n = _largest_prefix_below(sizes, target_size)
    if cost is not None and target_cost is not None:
        n = min(n, _largest_prefix_within(_prefix_costs(cost, order, kind_sorted, idx_all, cum[2]),
                                          target_cost))
    keep, prune = {}, {}
    for code, t in enumerate(BLOCK_TYPES):
        chosen = order[:n][kind_sorted[:n] == code]
        rest = order[n:][kind_sorted[n:] == code]
        keep[t] = torch.sort(idx_all[chosen]).values
        prune[t] = torch.sort(idx_all[rest]).values
    return KeepSet(keep, prune, int(sizes[n - 1]) if n > 0 else 0)


def _inference_per_block(cost: InferenceCost, alive: dict[str, torch.Tensor], counts: Counts,
                         target_size: float, target_cost: float) -> dict[str, torch.Tensor]:
    """Each block's inference cost at the current counts, in parameter units (scaled so that the
    two targets weigh alike), as flat vectors over all blocks of each type."""
    hidden, scale = counts.hidden, target_size / max(target_cost, 1e-12)
    per_hidden = cost.hidden_cost(alive["head"], alive["neuron"]) * scale
    return {"head": (hidden * cost.head_per_dim + cost.head_fixed) * scale,  # (Σ n_h,)
            "neuron": hidden * cost.neuron_per_dim * scale,  # (Σ n_f,)
            "hidden": torch.full(alive["hidden"].shape, per_hidden, dtype=torch.float64)}  # (d_m,)


def _prefix_costs(cost: InferenceCost, order: torch.Tensor, kind_sorted: torch.Tensor,
                  idx_all: torch.Tensor, hidden_count: torch.Tensor) -> torch.Tensor:
    """Inference cost of every prefix of the sorted candidates: d' · Σ a + Σ b."""
    idx_sorted = idx_all[order]  # (N,)
    per_dim = torch.zeros(idx_sorted.shape, dtype=torch.float64)  # (N,) a of heads and neurons
    fixed = torch.zeros(idx_sorted.shape, dtype=torch.float64)  # (N,) b of heads
    is_head, is_neuron = kind_sorted == 0, kind_sorted == 1
    per_dim[is_head] = cost.head_per_dim[idx_sorted[is_head]]
    fixed[is_head] = cost.head_fixed[idx_sorted[is_head]]
    per_dim[is_neuron] = cost.neuron_per_dim[idx_sorted[is_neuron]]
    return hidden_count.double() * torch.cumsum(per_dim, 0) + torch.cumsum(fixed, 0)  # (N,)


def _largest_prefix_within(costs: torch.Tensor, target: float) -> int:
    """Largest i with costs[i-1] <= target; costs is non-decreasing."""
    return int(torch.searchsorted(costs, torch.tensor([target], dtype=costs.dtype), right=True)[0])


def _largest_prefix_below(sizes: torch.Tensor, target: float) -> int:
    """Largest i with sizes[i-1] < target, by binary search; sizes is non-decreasing."""
    lo, hi = 0, sizes.numel()
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if float(sizes[mid - 1]) < target:
            lo = mid
        else:
            hi = mid - 1
    return lo


def round_down_keep_set(keep: KeepSet, scores: dict[str, torch.Tensor], segments: dict[str, list[int]],
                        multiple: int, counts: Counts) -> KeepSet:
    """`keep` with each segment's kept blocks of the listed types (a layer's FFN neurons, the
    hidden dims) cut down to a multiple of `multiple`: the lowest-scoring kept blocks of a segment
    go (ties: the lower index first). Only ever removes, so the size stays under the target.
    Why: matrix kernels run faster on widths that are multiples of 8 (CPU vector units, GPU tensor
    cores; docs/method.md#kept-widths)."""
    if multiple <= 1:
        return keep
    kept, pruned = dict(keep.keep), dict(keep.prune)
    for t, sizes in segments.items():
        moved, lo = [], 0
        for size in sizes:
            idx = kept[t][(kept[t] >= lo) & (kept[t] < lo + size)]  # (k,) this segment's kept blocks
            excess = idx.numel() % multiple
            if excess:
                order = torch.argsort(scores[t][idx], stable=True)  # ascending; ties by index
                moved.append(idx[order[:excess]])
            lo += size
        if moved:
            gone = torch.cat(moved)  # (m,)
            kept[t] = kept[t][~torch.isin(kept[t], gone)]
            pruned[t] = torch.sort(torch.cat([pruned[t], gone])).values
    size = counts.formula(kept["head"].numel(), kept["neuron"].numel(), kept["hidden"].numel())
    return KeepSet(kept, pruned, int(size))
