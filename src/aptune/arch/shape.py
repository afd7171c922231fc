"""ModelShape: how many prunable units a model has now, read by `ArchSpec.shape(model)`.

Every pruner (APT's masks and budget, CoFi's gates and size model, Mask Tuning's search) reads
shapes through this one type, never from a family's config names.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import AptuneError


@dataclass(frozen=True)
class ModelShape:
    heads: tuple[int, ...]  # attention heads per layer (0 where the sub-layer is gone)
    neurons: tuple[int, ...]  # FFN neurons per layer (0 where the sub-layer is gone)
    hidden: int  # d_m, the residual-stream width
    head_dim: int  # d_h
    gated_ffn: bool = False  # a gated FFN has three matrices per neuron instead of two

    @property
    def n_layers(self) -> int:
        return len(self.heads)

    @property
    def ffn_factor(self) -> int:
        """Weights per neuron and hidden dimension: 2 (up, down) or 3 (gate, up, down)."""
        return 3 if self.gated_ffn else 2

    def uniform(self) -> tuple[int, int]:
        """(heads, neurons) of every layer, for pruners that need a dense model of equal layers."""
        if len(set(self.heads)) != 1 or len(set(self.neurons)) != 1:
            raise AptuneError("this pruner needs a dense model with the same shape in every layer, "
                              f"got heads {list(self.heads)} and neurons {list(self.neurons)}",
                              "start CoFi and Mask Tuning from a dense model, not a pruned one")
        return self.heads[0], self.neurons[0]
