"""Per-layer mask rearrangement with the block-diagonal Fisher (docs/baselines.md#mask-rearrangement).

The search fixes how many units each layer keeps; this re-chooses which. Pruning a set P costs
‖Σ_{i∈P} G_i‖², where G_i (n_batches,) is unit i's gradient column, so units whose gradients
cancel can be pruned together. Greedy single pass, as in the original.
"""

from __future__ import annotations

import torch


def rearrange_layer(grads: torch.Tensor, importance: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """grads (n_batches, N), importance (N,), mask (N,) binary -> new mask with the same count."""
    n_prune = int((mask == 0).sum())
    if n_prune == 0 or n_prune == mask.numel():
        return mask.clone()
    order = importance.argsort().tolist()  # ascending importance
    pruned = order[:n_prune]
    total = grads[:, pruned].sum(1)  # (n_batches,) Σ over P of G_i
    for unit in order[n_prune:]:
        pruned.append(unit)
        total = total + grads[:, unit]
        without = total[:, None] - grads[:, pruned]  # (n_batches, |P|): Σ over P∖{j}
        drop = int(without.pow(2).sum(0).argmin())
        total = without[:, drop]
        pruned.pop(drop)
    out = torch.ones_like(mask)
    out[torch.tensor(pruned, dtype=torch.long)] = 0
    return out


def rearrange_masks(grads: torch.Tensor, importance: torch.Tensor, masks: torch.Tensor,
                    counts: tuple[int, ...] | None = None) -> torch.Tensor:
    """Apply `rearrange_layer` to every unit: grads (n_batches, U, N), importance/masks (U, N);
    `counts` (UnitLayout) is each unit's number of real entries, the rest being padding."""
    out = masks.clone()
    for i in range(masks.shape[0]):
        n = masks.shape[1] if counts is None else counts[i]
        if n:
            out[i, :n] = rearrange_layer(grads[:, i, :n], importance[i, :n], masks[i, :n])
    return out
