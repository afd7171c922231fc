"""Block costs and the constrained mask search (docs/baselines.md#mask-search).

Two item types with uniform costs make the knapsack exact: for each number k of kept heads, the
best choice is the k most important heads plus as many of the most important neurons as the
remaining budget pays for. Scan k and keep the best total importance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BlockCosts:
    head: float
    neuron: float
    kind: str  # "mac" or "params"

    def full(self, n_heads: int, n_neurons: int) -> float:
        return n_heads * self.head + n_neurons * self.neuron


def mac_costs(hidden: int, head_dim: int, seq_len: float, gated: bool = False) -> BlockCosts:
    """MACs per head and per neuron at sequence length s (the original's `--metric mac`)."""
    head = 4 * seq_len * hidden * head_dim + 2 * seq_len ** 2 * head_dim
    neuron = (3 if gated else 2) * seq_len * hidden
    return BlockCosts(head, neuron, "mac")


def param_costs(hidden: int, head_dim: int, gated: bool = False, biases: bool = True) -> BlockCosts:
    """Parameters per head (q, k, v rows and o columns) and per neuron (up row, down column).

    With `biases` the q/k/v bias entries and the up bias entry are counted too, so that the
    kept ratio counted from the tensors matches the budget exactly.
    """
    head = 4 * hidden * head_dim + (3 * head_dim if biases else 0)
    neuron = (3 if gated else 2) * hidden + (1 if biases else 0)
    return BlockCosts(head, neuron, "params")


def search_masks(head_importance: torch.Tensor, neuron_importance: torch.Tensor,
                 costs: BlockCosts, budget: float, head_valid: torch.Tensor | None = None,
                 neuron_valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary masks (U, H) and (U, F) of maximum total importance whose cost fits `budget`.

    At least one head always survives. Head counts whose heads alone exceed the budget are not
    considered, so the result never breaks the budget unless even one head does. Entries where
    `head_valid` / `neuron_valid` (same shapes) are False are padding (UnitLayout): never kept.
    """
    head_ids = _valid_ids(head_importance, head_valid)  # (n_h,) flat indices of real heads
    neuron_ids = _valid_ids(neuron_importance, neuron_valid)  # (n_f,)
    head_sorted, head_order = head_importance.flatten()[head_ids].sort(descending=True)  # (n_h,)
    neuron_sorted, neuron_order = neuron_importance.flatten()[neuron_ids].sort(descending=True)  # (n_f,)
    zero = head_sorted.new_zeros(1)
    head_cum = torch.cat([zero, head_sorted.cumsum(0)])  # (L·H + 1,) total of the top-k
    neuron_cum = torch.cat([zero, neuron_sorted.cumsum(0)])  # (L·F + 1,)
    k = torch.arange(1, head_sorted.numel() + 1, device=head_sorted.device)  # (L·H,) head counts
    left = budget - k.double() * costs.head  # (L·H,) budget left for neurons
    n = (left / costs.neuron).floor().clamp(0, neuron_sorted.numel()).long()  # (L·H,)
    score = head_cum[k] + neuron_cum[n]  # (L·H,)
    score[(left < 0) & (k > 1)] = float("-inf")
    best = int(score.argmax())
    n_heads, n_neurons = int(k[best]), int(n[best])
    head_mask = torch.zeros(head_importance.numel(), device=head_importance.device)
    head_mask[head_ids[head_order[:n_heads]]] = 1
    neuron_mask = torch.zeros(neuron_importance.numel(), device=neuron_importance.device)
    neuron_mask[neuron_ids[neuron_order[:n_neurons]]] = 1
    return head_mask.view_as(head_importance), neuron_mask.view_as(neuron_importance)


def _valid_ids(importance: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    if valid is None:
        return torch.arange(importance.numel(), device=importance.device)
    return torch.nonzero(valid.flatten().to(importance.device)).flatten()
