"""Make CoFi gates act on a stock transformers model through forward hooks (baselines.md §4.2).

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

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from ..arch import ArchSpec
from ..masks import masked_layer_norm
from .gates import CoFiGates


class GateHooks:
    """The live connection between a model and its gates. Create it with `apply_gates`.

    `skip_empty_units=False` is CoFi's semantics: a sub-layer is skipped only when its *layer*
    gate is 0; one whose heads (or neurons) are all 0 still adds its gated output bias and runs
    its LayerNorm (§4.8's edge case, CoFi issue #36). `True` also skips those, which is what the
    compacted model does, so gated evaluation then matches compaction in that case too.
    Assign a new `CoFiGates` to `gates` rather than editing its tensors in place: which
    sub-layers are skipped is read back once per assignment.
    """

    def __init__(self, gates: CoFiGates | None = None, skip_empty_units: bool = False) -> None:
        self.skip_empty_units = skip_empty_units
        self.enabled = True
        self._handles: list = []
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

    @contextmanager
    def disabled(self) -> Iterator[None]:
        previous, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = previous

    def remove(self) -> None:
        """Detach every hook (needed before compaction, which replaces modules)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

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
    hooks = GateHooks(gates, skip_empty_units)
    handles = hooks._handles
    handles.append(spec.embedding_norm(model).register_forward_hook(_norm_hook(hooks, pre_scale=True)))
    for i, layer in enumerate(spec.layers(model)):
        for norm in spec.layer_norms(layer):
            handles.append(norm.register_forward_hook(_norm_hook(hooks, pre_scale=False)))
        if spec.has_attention(layer):
            handles += _attention_hooks(spec, layer, hooks, i)
        if spec.has_ffn(layer):
            handles += _ffn_hooks(spec, layer, hooks, i)
    return hooks


def _norm_hook(hooks: GateHooks, pre_scale: bool):
    def hook(module: nn.LayerNorm, args, output):
        z = hooks.hidden()
        if z is None:
            return output
        z = z.to(args[0].dtype)  # float32 gates must not promote a half-precision stream
        x = args[0] * z if pre_scale else args[0]  # (B, T, d)
        y = masked_layer_norm(x, z, module.weight, module.bias, module.eps)  # (B, T, d)
        return y * z.to(y.dtype)
    return hook


def _writer_hook(hooks: GateHooks, layer_gate: str, i: int):
    """A sub-layer's output projection: scale by its layer gate and mask the hidden dims."""
    def hook(module, args, output):
        g = hooks.active()
        if g is None:
            return output
        out = output * getattr(g, layer_gate)[i].to(output.dtype)  # (B, T, d) · scalar
        z = hooks.hidden()
        return out if z is None else out * z.to(out.dtype)  # (B, T, d) ⊙ (d,)
    return hook


def _attention_hooks(spec: ArchSpec, layer: nn.Module, hooks: GateHooks, i: int) -> list:
    head_dim = spec.layer_head_dim(layer)

    def scale_heads(module, args):
        g = hooks.active()
        if g is None:
            return None
        x = args[0]  # (B, T, H·d_h)
        z = g.head[i].to(x.dtype)  # (H,)
        scaled = x.reshape(*x.shape[:-1], z.numel(), head_dim) * z[:, None]  # (B, T, H, d_h)
        return (scaled.reshape(x.shape), *args[1:])

    def skip_if_removed(module, args, kwargs, output):
        if hooks.attention_removed(i):
            hidden = args[0] if args else kwargs["hidden_states"]
            return (hidden, None)  # projections, bias and LayerNorm all bypassed
        return output

    out_proj = spec.attention(layer).output
    return [out_proj.register_forward_pre_hook(scale_heads),
            out_proj.register_forward_hook(_writer_hook(hooks, "mha", i)),
            spec.attention_block(layer).register_forward_hook(skip_if_removed, with_kwargs=True)]


def _ffn_hooks(spec: ArchSpec, layer: nn.Module, hooks: GateHooks, i: int) -> list:
    def scale_neurons(module, args):
        g = hooks.active()
        if g is None:
            return None
        x = args[0]  # (B, T, d_ff)
        return (x * g.intermediate[i].to(x.dtype), *args[1:])  # (B, T, d_ff) ⊙ (d_ff,)

    def skip_if_removed(module, args, kwargs, output):
        if hooks.ffn_removed(i):
            return args[1] if len(args) > 1 else kwargs["input_tensor"]
        return output

    down = spec.ffn(layer).down
    return [down.register_forward_pre_hook(scale_neurons),
            down.register_forward_hook(_writer_hook(hooks, "ffn", i)),
            spec.ffn_output_block(layer).register_forward_hook(skip_if_removed, with_kwargs=True)]
