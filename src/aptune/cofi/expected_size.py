"""CoFi's size model: the prunable size M, the expected size Ŝ and sparsity ŝ
(docs/baselines.md#expected-size).

M counts only the encoder layers of a BERT-shaped model, with biases partly counted and
LayerNorms ignored, exactly as CoFi does; it is *not* APT's C (report that one too, from the
compacted tensors). Expectations of products are taken as products of expectations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..arch import ModelShape
from .gates import CoFiGates, L0Gates


@dataclass(frozen=True)
class SizeModel:
    """The dimensions CoFi's size model M needs, for a dense model whose layers are alike."""

    n_layers: int
    n_heads: int
    d_model: int
    d_ff: int
    head_dim: int = 0  # 0: d_model // n_heads, as CoFi assumes

    @classmethod
    def from_shape(cls, shape: ModelShape) -> "SizeModel":
        n_heads, d_ff = shape.uniform()
        return cls(shape.n_layers, n_heads, shape.hidden, d_ff, shape.head_dim)

    @property
    def d_h(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @classmethod
    def of_gates(cls, gates: L0Gates) -> "SizeModel":
        return cls(gates.n_layers, gates.n_heads, gates.d_model, gates.d_ff)

    @property
    def attention_params(self) -> int:
        """Q, K, V, O weights and biases of one layer: 4d² + 4d."""
        return 4 * self.d_model ** 2 + 4 * self.d_model

    @property
    def ffn_params(self) -> int:
        """Both FFN weights, the FFN-in bias, and 4d more (CoFi's count): 2·d·d_ff + d + 4d."""
        return 2 * self.d_model * self.d_ff + 5 * self.d_model

    @property
    def full_size(self) -> int:
        """M = L · [(4d² + 4d) + (2·d·d_ff + d + 4d)]; 85,017,600 for BERT/RoBERTa-base."""
        return self.n_layers * (self.attention_params + self.ffn_params)

    @property
    def params_per_head(self) -> float:
        return self.attention_params / self.n_heads  # 196,864 for base

    @property
    def params_per_neuron(self) -> int:
        return self.ffn_params // self.d_ff  # ⌊(2·d·d_ff + 5d) / d_ff⌋ = 1,537 for base


def expected_size(prob: CoFiGates, shape: SizeModel, hidden_pruning: bool = True) -> torch.Tensor:
    """Ŝ from P(z ≠ 0) of every gate; differentiable in log α.

    With hidden pruning (CoFi's default):
        Ŝ = Σ_j Σ_{l,h} P_hid^j P_mha^l P_head^{l,h} · params_per_head / d
          + 2 · Σ_j Σ_{l,i} P_hid^j P_ffn^l P_int^{l,i}
    Without it, CoFi's other formula: Σ_{l,h} P_mha P_head · params_per_head
    + Σ_{l,i} P_ffn P_int · params_per_neuron.
    """
    heads = (prob.mha[:, None] * prob.head).sum()  # Σ_{l,h} P_mha^l P_head^{l,h}
    neurons = (prob.ffn[:, None] * prob.intermediate).sum()  # Σ_{l,i} P_ffn^l P_int^{l,i}
    if not hidden_pruning:
        return heads * shape.params_per_head + neurons * shape.params_per_neuron
    hidden = prob.hidden.sum()  # Σ_j P_hid^j: the double sums factor
    return hidden * (heads * shape.params_per_head / shape.d_model + 2 * neurons)


def expected_sparsity(gates: L0Gates, shape: SizeModel | None = None) -> torch.Tensor:
    """ŝ = 1 − Ŝ / M for the current log α's."""
    shape = shape or SizeModel.of_gates(gates)
    size = expected_size(gates.keep_probability(), shape, hidden_pruning="hidden" in gates.groups)
    return 1 - size / shape.full_size


def deterministic_size(gates: CoFiGates, shape: SizeModel) -> int:
    """The size reported at evaluation: 4·d_h per (kept head × kept hidden dim) plus 2 per
    (kept neuron × kept hidden dim), a kept unit being one whose own and layer gates are ≠ 0."""
    head_dim = shape.d_h
    hidden = int(gates.kept_hidden().sum())
    heads = int(gates.kept_heads().sum())
    neurons = int(gates.kept_neurons().sum())
    return hidden * (4 * head_dim * heads + 2 * neurons)


def deterministic_sparsity(gates: CoFiGates, shape: SizeModel) -> float:
    return 1 - deterministic_size(gates, shape) / shape.full_size
