"""APT's structured masks over heads, FFN neurons and hidden dimensions (docs/method.md#masks).

Three mask sets, always sized to the model's *current* shapes:
    head[l]   (n_heads_l,)   multiplies each head's context slice, the input of attention output
    neuron[l] (n_ffn_l,)     multiplies the activated FFN neurons, the input of the down projection
    hidden    (d_m,)         the residual stream: embeddings, every sub-layer output and norm
They act through the shared hooks (aptune.hooks); nothing is forked. Norms under a hidden mask
take their statistics over the kept dimensions only, so that a binary-masked model equals the
physically pruned one. A sub-layer whose heads (or neurons) are all zero is skipped
(docs/method.md#empty-sub-layers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ContextManager, Iterator

import torch
from torch import nn

from .. import hooks
from ..arch import ArchSpec, ModelShape
from ..structure import Structure
from ..surgery import kept_units


@dataclass
class Masks:
    head: list[torch.Tensor]
    neuron: list[torch.Tensor]
    hidden: torch.Tensor
    group: hooks.HookGroup = field(default_factory=hooks.HookGroup, repr=False)  # its hooks

    @classmethod
    def ones(cls, shape: ModelShape, device: torch.device | str = "cpu") -> "Masks":
        return cls([torch.ones(n, device=device) for n in shape.heads],
                   [torch.ones(n, device=device) for n in shape.neurons],
                   torch.ones(shape.hidden, device=device))

    @classmethod
    def ones_like(cls, model: nn.Module, spec: ArchSpec) -> "Masks":
        return cls.ones(spec.shape(model), next(model.parameters()).device)

    def is_binary(self) -> bool:
        return all(bool(((t == 0) | (t == 1)).all()) for t in self.all())

    def all(self) -> Iterator[torch.Tensor]:
        yield from self.head
        yield from self.neuron
        yield self.hidden

    def kept(self) -> Structure:
        """The units whose mask is 1, in the current numbering: what compaction keeps."""
        if not self.is_binary():
            raise ValueError("compaction needs binary masks; binarise them first")
        return kept_units(self.hidden, self.head, self.neuron)

    def count(self) -> tuple[int, int, int]:
        """(heads, neurons, hidden dims) whose mask is non-zero."""
        return (sum(int((m > 0).sum()) for m in self.head), sum(int((m > 0).sum()) for m in self.neuron),
                int((self.hidden > 0).sum()))

    def flat(self) -> dict[str, torch.Tensor]:
        """Each block type as one vector over all layers (a copy): what the keep-set search ranks."""
        return {"head": torch.cat(self.head), "neuron": torch.cat(self.neuron), "hidden": self.hidden.clone()}

    def write_flat(self, flat: dict[str, torch.Tensor]) -> None:
        """Copy per-type vectors (as `flat` returns them) back into the per-layer masks."""
        for mask, part in zip(self.head, torch.split(flat["head"], [m.numel() for m in self.head])):
            mask.copy_(part)
        for mask, part in zip(self.neuron, torch.split(flat["neuron"], [m.numel() for m in self.neuron])):
            mask.copy_(part)
        self.hidden.copy_(flat["hidden"])

    @property
    def enabled(self) -> bool:
        return self.group.enabled

    def disabled(self) -> ContextManager[None]:
        """Run the model unmasked, e.g. for the teacher, which never sees the student's masks."""
        return self.group.disabled()

    def remove_hooks(self) -> None:
        self.group.remove()


def apply_masks(model: nn.Module, spec: ArchSpec, masks: Masks) -> Masks:
    """Register the hooks that make `masks` act on `model`. Returns `masks` for chaining."""
    masks.remove_hooks()
    group = masks.group

    def hidden() -> torch.Tensor | None:  # None keeps plain LayerNorm exact when nothing is masked
        return None if not masks.enabled or bool((masks.hidden == 1).all()) else masks.hidden

    def heads(i: int):
        def values() -> torch.Tensor | None:
            m = masks.head[i]
            return None if not masks.enabled or bool((m == 1).all()) else m
        return values

    def neurons(i: int):
        def values() -> torch.Tensor | None:
            m = masks.neuron[i]
            return None if not masks.enabled or bool((m == 1).all()) else m
        return values

    def empty(kind: str, i: int):  # read through `masks` at call time: its lists may be replaced
        return lambda: masks.enabled and bool((getattr(masks, kind)[i] == 0).all())

    group.add(*hooks.mask_stream(spec, model, hidden))
    for i, layer in enumerate(spec.layers(model)):
        if spec.has_attention(layer):
            group.add(hooks.scale_heads(spec, layer, heads(i)))
            group.add(hooks.skip_attention(spec, layer, empty("head", i)))
        if spec.has_ffn(layer):
            group.add(hooks.scale_neurons(spec, layer, neurons(i)))
            group.add(hooks.skip_ffn(spec, layer, empty("neuron", i)))
    return masks


__all__ = ["Masks", "apply_masks"]
