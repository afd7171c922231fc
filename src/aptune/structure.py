"""Structure: which heads, neurons and hidden dimensions a pruned model kept.

Indices are in the original (dense) numbering. A compaction keeps a subset of the *current*
units; `compose` maps that subset back to the original numbering, so a model pruned several
times (APT at every teacher refresh) still records one structure. The structure travels in the
model's config under `aptune_structure`, which is how a saved pruned model rebuilds its shapes
(docs/method.md#saving-pruned-models). Plain Python: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .arch.shape import ModelShape

STRUCTURE_KEY = "aptune_structure"
# What a sub-layer with no heads (or neurons) left becomes: "identity" skips it (APT, CoFi);
# "bias_ln" keeps zero-width projections, so it still computes LayerNorm(b_O + x) (Mask Tuning).
EMPTY_SUBLAYER_RULES = ("identity", "bias_ln")


@dataclass(frozen=True)
class Structure:
    hidden: tuple[int, ...]
    heads: tuple[tuple[int, ...], ...]  # per layer
    neurons: tuple[tuple[int, ...], ...]  # per layer
    empty_sublayer: str = "identity"

    def __post_init__(self) -> None:
        if self.empty_sublayer not in EMPTY_SUBLAYER_RULES:
            raise ValueError(f"empty_sublayer must be one of {EMPTY_SUBLAYER_RULES}")

    @classmethod
    def of(cls, hidden, heads, neurons, empty_sublayer: str = "identity") -> "Structure":
        """From any sequences of ints (lists, tuples, tensors' tolist())."""
        return cls(tuple(int(i) for i in hidden), tuple(tuple(int(i) for i in h) for h in heads),
                   tuple(tuple(int(i) for i in n) for n in neurons), empty_sublayer)

    @classmethod
    def identity(cls, shape: ModelShape) -> "Structure":
        """Everything kept: the structure of a dense model of this shape."""
        return cls.of(range(shape.hidden), [range(h) for h in shape.heads],
                      [range(n) for n in shape.neurons])

    def compose(self, kept: "Structure") -> "Structure":
        """This structure after a compaction that kept `kept` (indices into this one's units)."""
        def pick(orig: tuple[int, ...], idx: tuple[int, ...]) -> tuple[int, ...]:
            return tuple(orig[i] for i in idx)
        empty = kept.empty_sublayer if kept.empty_sublayer != "identity" else self.empty_sublayer
        return Structure(pick(self.hidden, kept.hidden),
                         tuple(pick(o, k) for o, k in zip(self.heads, kept.heads)),
                         tuple(pick(o, k) for o, k in zip(self.neurons, kept.neurons)), empty)

    def matches(self, shape: ModelShape) -> bool:
        """Whether a model of `shape` is what this structure keeps (the model it describes)."""
        return (len(self.hidden) == shape.hidden and [len(h) for h in self.heads] == list(shape.heads)
                and [len(n) for n in self.neurons] == list(shape.neurons))

    def summary(self) -> dict[str, Any]:
        """Counts: kept hidden dims, and kept heads and neurons per layer."""
        return {"hidden": len(self.hidden), "heads": [len(h) for h in self.heads],
                "neurons": [len(n) for n in self.neurons]}

    def to_dict(self) -> dict[str, Any]:
        """The JSON form saved in config.json (the empty-sub-layer rule only when not identity)."""
        out: dict[str, Any] = {"hidden": list(self.hidden), "heads": [list(h) for h in self.heads],
                               "neurons": [list(n) for n in self.neurons]}
        if self.empty_sublayer != "identity":
            out["empty_sublayer"] = self.empty_sublayer
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Structure":
        return cls.of(data["hidden"], data["heads"], data["neurons"],
                      data.get("empty_sublayer", "identity"))


def recorded_structure(model: Any) -> Structure | None:
    """The structure recorded in a model's config, or None for a model never compacted."""
    data = getattr(model.config, STRUCTURE_KEY, None)
    return Structure.from_dict(data) if data else None


def record_structure(model: Any, structure: Structure) -> None:
    setattr(model.config, STRUCTURE_KEY, structure.to_dict())
