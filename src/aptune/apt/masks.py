"""APT's structured masks over heads, FFN neurons and hidden dimensions (docs/method.md#masks).

Three mask sets, always sized to the model's *current* shapes:
    head[l]   (n_heads_l,)   multiplies each head's context slice, the input of attention output
    neuron[l] (n_ffn_l,)     multiplies the activated FFN neurons, the input of the down projection
    hidden    (d_m,)         the residual stream: embeddings, every sub-layer output and norm
They act through the shared hooks (aptune.hooks); nothing is forked. Norms under a hidden mask
take their statistics over the kept dimensions only, so that a binary-masked model equals the
physically pruned one. A sub-layer whose heads (or neurons) are all zero is skipped
(docs/method.md#empty-sub-layers).

Whether a mask is all ones or all zeros decides the hooks' control flow at every forward. Those
facts are read from the device only when a mask has changed (a tensor's `_version` counts its
in-place writes, whoever makes them, except through `.data`), never per forward: a read per
forward would make every GPU step wait for the device.
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


@dataclass(frozen=True)
class MaskFacts:
    """What the hooks branch on, for one mask as it stands."""

    ones: bool  # every unit kept at 1: the hooks leave the model alone
    zeros: bool  # every unit at 0: the sub-layer is skipped
    any_kept: bool  # some unit above 0: the layer is alive for distillation

    @staticmethod
    def flags(m: torch.Tensor) -> torch.Tensor:
        return torch.stack([(m == 1).all(), (m == 0).all(), (m > 0).any()])  # (3,) bool, on m's device

    @classmethod
    def read(cls, m: torch.Tensor) -> "MaskFacts":
        return cls(*cls.flags(m).tolist())  # a host read: only for a mask that changed

    @classmethod
    def of_ones(cls, m: torch.Tensor) -> "MaskFacts":
        """A mask made of ones, known without reading it."""
        return cls(ones=True, zeros=m.numel() == 0, any_kept=m.numel() > 0)


@dataclass
class Masks:
    head: list[torch.Tensor]
    neuron: list[torch.Tensor]
    hidden: torch.Tensor
    group: hooks.HookGroup = field(default_factory=hooks.HookGroup, repr=False)  # its hooks
    # id(mask) -> (mask, its `_version` when read, facts); the mask is held so its id stays its own
    _facts: dict[int, tuple[torch.Tensor, int, MaskFacts]] = field(
        default_factory=dict, repr=False, compare=False)

    @classmethod
    def ones(cls, shape: ModelShape, device: torch.device | str = "cpu") -> "Masks":
        masks = cls([torch.ones(n, device=device) for n in shape.heads],
                    [torch.ones(n, device=device) for n in shape.neurons],
                    torch.ones(shape.hidden, device=device))
        for m in masks.all():
            masks._remember(m, MaskFacts.of_ones(m))
        return masks

    @classmethod
    def ones_like(cls, model: nn.Module, spec: ArchSpec) -> "Masks":
        return cls.ones(spec.shape(model), next(model.parameters()).device)

    def all_kept(self) -> bool:
        """Whether no unit is masked at all (a host read: for pruning points, not per step)."""
        return all(bool((m > 0).all()) for m in self.all())

    def is_binary(self) -> bool:
        return all(bool(((t == 0) | (t == 1)).all()) for t in self.all())

    def all(self) -> Iterator[torch.Tensor]:
        yield from self.head
        yield from self.neuron
        yield self.hidden

    def facts(self, m: torch.Tensor) -> MaskFacts:
        """`m`'s facts, read from the device again only if `m` was written since the last read."""
        if m.is_inference():  # keeps no version counter, so it cannot be cached
            return MaskFacts.read(m)
        cached = self._facts.get(id(m))
        if cached is not None and cached[0] is m and cached[1] == m._version:
            return cached[2]
        return self._remember(m, MaskFacts.read(m))

    def read_facts(self) -> None:
        """Read every mask's facts in one go, right after the masks were written, so that the
        forwards that follow find them without a wait for the device."""
        masks = [m for m in self.all() if not m.is_inference()]
        if masks:
            rows = torch.stack([MaskFacts.flags(m) for m in masks]).tolist()  # (n_masks, 3) bool
            for m, row in zip(masks, rows):
                self._remember(m, MaskFacts(*row))

    def _remember(self, m: torch.Tensor, facts: MaskFacts) -> MaskFacts:
        self._facts[id(m)] = (m, m._version, facts)
        return facts

    def alive_layers(self, stacks: list[list[tuple[int, int]]]) -> list[list[bool]]:
        """Per stack, per layer (`ArchSpec.stacks`): whether its self-attention keeps a head and
        its FFN a neuron (distillation maps onto these layers)."""
        return [[self.facts(self.head[a]).any_kept and self.facts(self.neuron[f]).any_kept
                 for a, f in stack] for stack in stacks]

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

    def alive(self) -> dict[str, torch.Tensor]:
        """Each block type as one bool vector over all layers: mask > 0 (stays on the device)."""
        return {t: v > 0 for t, v in self.flat().items()}

    def write_flat(self, flat: dict[str, torch.Tensor]) -> None:
        """Copy per-type vectors (as `flat` returns them) back into the per-layer masks."""
        for mask, part in zip(self.head, torch.split(flat["head"], [m.numel() for m in self.head])):
            mask.copy_(part)
        for mask, part in zip(self.neuron, torch.split(flat["neuron"], [m.numel() for m in self.neuron])):
            mask.copy_(part)
        self.hidden.copy_(flat["hidden"])
        self.read_facts()  # a mask step or pruning point: the time to read them

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
        return None if not masks.enabled or masks.facts(masks.hidden).ones else masks.hidden

    def scales(kind: str, i: int):  # read through `masks` at call time: its lists may be replaced
        def values() -> torch.Tensor | None:
            m = getattr(masks, kind)[i]
            return None if not masks.enabled or masks.facts(m).ones else m
        return values

    def empty(kind: str, i: int):
        return lambda: masks.enabled and masks.facts(getattr(masks, kind)[i]).zeros

    group.add(*hooks.mask_stream(spec, model, hidden))
    for i, layer in enumerate(spec.layers(model)):
        if spec.has_attention(layer):
            group.add(hooks.scale_heads(spec, layer, scales("head", i)))
            group.add(hooks.skip_attention(spec, layer, empty("head", i)))
        if spec.has_ffn(layer):
            group.add(hooks.scale_neurons(spec, layer, scales("neuron", i)))
            group.add(hooks.skip_ffn(spec, layer, empty("neuron", i)))
    return masks


__all__ = ["MaskFacts", "Masks", "apply_masks"]
