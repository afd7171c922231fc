"""Which entries of Mask Tuning's (U, H) and (U, F) mask tensors are real units
(docs/baselines.md#loraprune).

Mask Tuning keeps one row of head masks and one row of neuron masks per unit. In an encoder every
unit has both, of equal sizes. In an encoder-decoder a decoder layer is two units (self-attention;
cross-attention + FFN), so a self-attention unit has no FFN: its neuron row is padding, never
searched, scaled or kept. Rows are read through `per_unit`, which hands the hooks None for a
sub-layer the unit does not have.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..arch import ArchSpec
from ..errors import AptuneError


@dataclass(frozen=True)
class UnitLayout:
    heads: tuple[int, ...]  # heads per unit (0: the unit has no attention)
    neurons: tuple[int, ...]  # FFN neurons per unit (0: the unit has no FFN)
    streams: tuple[int, ...]  # per unit: 0 for the encoder (or an encoder-only model), 1 for the decoder
    first_of_stack: tuple[bool, ...]  # the first unit of its stack
    biases: bool  # the projections carry biases (BERT); T5's have none

    @classmethod
    def of(cls, model: nn.Module, spec: ArchSpec) -> "UnitLayout":
        """The layout of a dense model; a pruned one (sub-layers of different sizes) is refused."""
        shape, units = spec.shape(model), spec.layers(model)
        heads = tuple(h if spec.has_attention(u) else 0 for h, u in zip(shape.heads, units))
        neurons = tuple(n if spec.has_ffn(u) else 0 for n, u in zip(shape.neurons, units))
        if len({h for h in heads if h}) > 1 or len({n for n in neurons if n}) > 1 or not any(heads):
            raise AptuneError("Mask Tuning needs a dense model with the same shape in every layer, "
                              f"got heads {list(shape.heads)} and neurons {list(shape.neurons)}",
                              "start LoRA+Prune from a dense model, not a pruned one")
        streams, first = [0] * len(units), [False] * len(units)
        for s, stack in enumerate(spec.stacks(model)):
            for i, (attention, ffn) in enumerate(stack):
                for u in range(attention, ffn + 1):
                    streams[u] = s
                first[attention] = i == 0
        attention = spec.attention(next(u for u in units if spec.has_attention(u)))
        return cls(heads, neurons, tuple(streams), tuple(first), attention.output.bias is not None)

    @property
    def n_units(self) -> int:
        return len(self.heads)

    @property
    def max_heads(self) -> int:
        return max(self.heads)

    @property
    def max_neurons(self) -> int:
        return max(self.neurons, default=0)

    def valid(self, kind: str) -> torch.Tensor:
        """(U, H) or (U, F) booleans: True where the entry is a real head or neuron."""
        counts = self.heads if kind == "head" else self.neurons
        width = self.max_heads if kind == "head" else self.max_neurons
        return torch.arange(width)[None, :] < torch.tensor(counts)[:, None]  # (U, width)

    def per_unit(self, values: torch.Tensor, kind: str) -> list[torch.Tensor | None]:
        """Rows of `values` (U, width) cut to each unit's size; None for a missing sub-layer."""
        counts = self.heads if kind == "head" else self.neurons
        return [values[u, :n] if n else None for u, n in enumerate(counts)]
