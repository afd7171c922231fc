"""The inference cost of a kept set: multiply-adds per example of the transformer layers, at the
token counts each stack runs on (docs/method.md#inference-cost-budget).

Why a second budget: the parameter budget counts a block the same wherever it sits, but on an
encoder-decoder the encoder runs on the whole input and the decoder on a few target tokens, so a
decoder block costs a fraction of an encoder block's time. Cut to 40% of the parameters by
salience alone, such a model sheds its decoder and keeps the encoder that sets the latency.

For a unit whose queries and FFN run on L_q tokens and whose keys and values run on L_kv:
    head    d_m' · d_h · (2·L_q + 2·L_kv)  +  2 · d_h · L_q · L_kv    (q, o; k, v; scores and mix)
    neuron  d_m' · f · L_q                                           (f = 2, or 3 when gated)
so a kept set costs  d_m' · (Σ_kept a_h + Σ_kept a_n) + Σ_kept b_h  with a per hidden dim, b fixed.
Embeddings, norms, softmax and the task head are left out, as the parameter count leaves out
embeddings: the figure is a lower bound of the time that pruning can save.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class InferenceCost:
    """Per-block cost terms over the flat block vectors (heads and neurons concatenated over units)."""

    head_per_dim: torch.Tensor  # (Σ n_h,) a_h: multiply-adds per kept hidden dim
    head_fixed: torch.Tensor  # (Σ n_h,) b_h: attention scores and mix, independent of d_m'
    neuron_per_dim: torch.Tensor  # (Σ n_f,) a_n

    @classmethod
    def build(cls, heads: list[int], neurons: list[int], streams: list[tuple[int, int]],
              lengths: list[int], head_dim: int, ffn_factor: int) -> "InferenceCost":
        """`heads[u]`, `neurons[u]`: unit u's current block counts; `streams[u]`: (query stream,
        key/value stream) (ArchSpec.unit_streams); `lengths[s]`: tokens of stream s per example."""
        a_h, b_h, a_n = [], [], []
        for n_h, n_f, (q, kv) in zip(heads, neurons, streams):
            l_q, l_kv = lengths[min(q, len(lengths) - 1)], lengths[min(kv, len(lengths) - 1)]
            a_h.append(torch.full((n_h,), float(head_dim * (2 * l_q + 2 * l_kv)), dtype=torch.float64))
            b_h.append(torch.full((n_h,), float(2 * head_dim * l_q * l_kv), dtype=torch.float64))
            a_n.append(torch.full((n_f,), float(ffn_factor * l_q), dtype=torch.float64))
        return cls(torch.cat(a_h), torch.cat(b_h), torch.cat(a_n))

    def hidden_cost(self, alive_heads: torch.Tensor, alive_neurons: torch.Tensor) -> float:
        """What one hidden dimension costs with these heads and neurons alive."""
        return float(self.head_per_dim[alive_heads].sum() + self.neuron_per_dim[alive_neurons].sum())

    def total(self, heads: torch.Tensor, neurons: torch.Tensor, hidden: int) -> float:
        """Cost of a kept set: `heads`, `neurons` are flat indices (or boolean masks) of kept blocks."""
        return hidden * self.hidden_cost(heads, neurons) + float(self.head_fixed[heads].sum())
