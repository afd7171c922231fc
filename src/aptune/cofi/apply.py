"""Make CoFi gates act on a stock transformers model through the shared hooks
(docs/baselines.md#cofi-gates).

Per layer, with o the attention output projection and f the FFN down projection:
    input of o          each head's context slice · z_head
    output of o         · z_MHA · z_hid       (before dropout: dropout(z·o) = z·dropout(o))
    input of f          · z_int
    output of f         · z_FFN · z_hid
    each LayerNorm      z_hid ⊙ MaskedLN(input), statistics over the dims with z_hid ≠ 0
    embedding LayerNorm z_hid ⊙ MaskedLN(z_hid ⊙ (word + pos + type))
A sub-layer whose layer gate is exactly 0 is skipped, LayerNorm included: it returns the residual
input (true layer removal). The hooks read `GateHooks.gates` at call time, so a training loop
sets a fresh sample there each step; `None` (or `disabled()`) runs the model ungated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import hooks
from ..arch import ArchSpec
from .gates import CoFiGates


class GateHooks(hooks.HookGroup):
    """The live connection between a model and its gates. Create it with `apply_gates`.

    `skip_empty_units=False` is CoFi's semantics: a sub-layer is skipped only when its *layer*
    gate is 0; one whose heads (or neurons) are all 0 still adds its gated output bias and runs
    its LayerNorm (CoFi issue #36, docs/baselines.md#cofi-compaction). `True` also skips those,
    which is what the compacted model does, so gated evaluation then matches compaction in that
    case too. Assign a new `CoFiGates` to `gates` rather than editing its tensors in place:
    which sub-layers are skipped is read back once per assignment.
    """

    def __init__(self, gates: CoFiGates | None = None, skip_empty_units: bool = False) -> None:
        super().__init__()
        self.skip_empty_units = skip_empty_units
        self.gates = gates

    @property
    def gates(self) -> CoFiGates | None:
        return self._gates

    @gates.setter
    def gates(self, gates: CoFiGates | None) -> None:
        self._gates = gates
        self._plan: _Plan | None = None  # decided on first use: a few host syncs per sample

    def active(self) -> CoFiGates | None:
        return self._gates if self.enabled else None

    # -- decisions shared by the hooks -----------------------------------------------------------
    def plan(self) -> "_Plan | None":
        if self.active() is None:
            return None
        if self._plan is None:
            self._plan = _Plan.of(self._gates, self.skip_empty_units)
        return self._plan

    def hidden(self) -> torch.Tensor | None:
        """z_hid, or None when it is the identity (all ones), to keep plain LayerNorm exact."""
        plan = self.plan()
        return None if plan is None or plan.hidden_is_identity else self._gates.hidden

    def attention_removed(self, i: int) -> bool:
        plan = self.plan()
        return plan is not None and plan.attention_removed[i]

    def ffn_removed(self, i: int) -> bool:
        plan = self.plan()
        return plan is not None and plan.ffn_removed[i]

    def group(self, name: str, i: int):
        """A getter of gate group `name` at layer `i` (None when ungated), for the hooks."""
        def values() -> torch.Tensor | None:
            g = self.active()
            return None if g is None else getattr(g, name)[i]
        return values


@dataclass(frozen=True)
class _Plan:
    """The data-dependent branches of one set of gates, read back from the device once."""

    hidden_is_identity: bool
    attention_removed: list[bool]
    ffn_removed: list[bool]

    @classmethod
    def of(cls, g: CoFiGates, skip_empty_units: bool) -> "_Plan":
        with torch.no_grad():
            attention = g.mha == 0  # (L,)
            ffn = g.ffn == 0  # (L,)
            if skip_empty_units:
                attention = attention | (g.head == 0).all(-1)
                ffn = ffn | (g.intermediate == 0).all(-1)
            return cls(bool((g.hidden == 1).all()), attention.tolist(), ffn.tolist())


def apply_gates(model: nn.Module, spec: ArchSpec, gates: CoFiGates | None = None,
                skip_empty_units: bool = False) -> GateHooks:
    """Register the gate hooks on a dense model; returns the handle whose `gates` they read."""
    gh = GateHooks(gates, skip_empty_units)
    gh.add(*hooks.mask_stream(spec, model, gh.hidden))  # z_hid: embeddings, norms, writers
    for i, layer in enumerate(spec.layers(model)):
        if spec.has_attention(layer):
            gh.add(hooks.scale_heads(spec, layer, gh.group("head", i)))
            gh.add(hooks.scale_output(spec.attention(layer).output, gh.group("mha", i)))
            gh.add(hooks.skip_attention(spec, layer, lambda i=i: gh.attention_removed(i)))
        if spec.has_ffn(layer):
            gh.add(hooks.scale_neurons(spec, layer, gh.group("intermediate", i)))
            gh.add(hooks.scale_output(spec.ffn(layer).down, gh.group("ffn", i)))
            gh.add(hooks.skip_ffn(spec, layer, lambda i=i: gh.ffn_removed(i)))
    return gh
