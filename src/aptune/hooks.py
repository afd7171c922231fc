"""The shared hook builders: every pruner acts on a stock transformers model through these.

APT's masks (apt/masks.py), CoFi's gates (cofi/apply.py) and Mask Tuning's unit masks
(mask_tuning/unit_masks.py) differ only in *which* values they read; where the values act is
the same, so each is one builder here:

    scale_heads     input of the attention output projection: each head's context slice · z_h
    scale_neurons   input of the FFN down projection: each neuron's activation · z_n
    scale_output    output of a residual writer: · z (a scalar layer gate, or the (d,) hidden mask)
    masked_norm     a norm (LayerNorm or RMSNorm) whose statistics run over the kept hidden dims only
    mask_stream     the hidden mask everywhere the residual stream enters, is normalised or written
    skip_attention  the whole attention block returns its residual input
    skip_ffn        the whole FFN block returns its residual input

Each builder takes a getter, called at every forward, that returns the current values, or None
(or False) for "leave the model alone". The getters let a training loop swap masks or gate
samples without re-registering hooks. Each returns the torch hook handle.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .arch import ArchSpec

Values = Callable[[], "torch.Tensor | None"]
Condition = Callable[[], bool]


class HookGroup:
    """Hooks registered together, switched off together (`disabled()`: the getters of a pruner
    read `enabled` and return None) and removed together (before compaction replaces modules)."""

    def __init__(self) -> None:
        self.enabled = True
        self._handles: list[RemovableHandle] = []

    def add(self, *handles: RemovableHandle) -> None:
        self._handles.extend(handles)

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the model as if the hooks were not there (e.g. APT's teacher forward)."""
        previous, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = previous

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def masked_layer_norm(x: torch.Tensor, keep: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """LayerNorm whose mean and variance run over the dimensions where `keep` is non-zero."""
    kept = (keep != 0).to(x.dtype)  # (d,)
    n = kept.sum()
    mean = (x * kept).sum(-1, keepdim=True) / n  # (..., 1)
    centred = (x - mean) * kept  # (..., d), zero on pruned dims
    var = centred.pow(2).sum(-1, keepdim=True) / n  # (..., 1)
    y = centred * torch.rsqrt(var + eps) * weight  # (..., d)
    return y + bias if bias is not None else y


def masked_rms_norm(x: torch.Tensor, keep: torch.Tensor, weight: torch.Tensor,
                    eps: float) -> torch.Tensor:
    """T5's RMSNorm (no mean, no bias; statistics in float32) over the dimensions where `keep`
    is non-zero."""
    kept = (keep != 0).to(torch.float32)  # (d,)
    var = (x.to(torch.float32).pow(2) * kept).sum(-1, keepdim=True) / kept.sum()  # (..., 1)
    y = x * torch.rsqrt(var + eps)  # (..., d)
    if weight.dtype in (torch.float16, torch.bfloat16):
        y = y.to(weight.dtype)
    return weight * y


def _norm_eps(norm: nn.Module) -> float:
    return float(norm.eps if hasattr(norm, "eps") else norm.variance_epsilon)


def scale_heads(spec: ArchSpec, layer: nn.Module, values: Values) -> RemovableHandle:
    head_dim = spec.layer_head_dim(layer)

    def hook(module, args):
        z = values()
        if z is None:
            return None
        x = args[0]  # (B, T, H·d_h)
        scaled = x.reshape(*x.shape[:-1], z.numel(), head_dim) * z.to(x.dtype)[:, None]  # (B, T, H, d_h)
        return (scaled.reshape(x.shape), *args[1:])
    return spec.attention(layer).output.register_forward_pre_hook(hook)


def scale_neurons(spec: ArchSpec, layer: nn.Module, values: Values) -> RemovableHandle:
    def hook(module, args):
        z = values()
        if z is None:
            return None
        x = args[0]  # (B, T, d_ff)
        return (x * z.to(x.dtype), *args[1:])  # (B, T, d_ff) ⊙ (d_ff,)
    return spec.ffn(layer).down.register_forward_pre_hook(hook)


def scale_output(linear: nn.Module, values: Values) -> RemovableHandle:
    def hook(module, args, output):
        z = values()
        return output if z is None else output * z.to(output.dtype)  # (B, T, d) · scalar or (d,)
    return linear.register_forward_hook(hook)


def masked_norm(norm: nn.Module, keep: Values, pre_scale: bool = False,
                rms: bool = False) -> RemovableHandle:
    """z ⊙ MaskedLN(x) (or z ⊙ MaskedLN(z ⊙ x) with `pre_scale`, for the embedding norm, whose
    input is the sum of the embedding tables); `rms` for a family whose norm is RMSNorm."""
    eps = _norm_eps(norm)

    def hook(module, args, output):
        z = keep()
        if z is None:
            return output
        z = z.to(args[0].dtype)  # float32 masks must not promote a half-precision stream
        x = args[0] * z if pre_scale else args[0]  # (B, T, d)
        if rms:
            y = masked_rms_norm(x, z, module.weight, eps)  # (B, T, d)
        else:
            y = masked_layer_norm(x, z, module.weight, module.bias, eps)  # (B, T, d)
        return y * z.to(y.dtype)
    return norm.register_forward_hook(hook)


def mask_stream(spec: ArchSpec, model: nn.Module, keep: Values) -> list[RemovableHandle]:
    """The hidden-dimension mask (docs/method.md#masks). Post-LN (BERT): z ⊙ MaskedLN(z ⊙ emb) at
    the embedding norm, z ⊙ MaskedLN(z ⊙ o + x) after each sub-layer. Pre-norm (T5): z ⊙ emb
    where the stream starts, x + z ⊙ f(z ⊙ MaskedRMSNorm(x)) in each sub-layer, and masked final
    norms; a masked stream plus a masked write stays masked."""
    rms = spec.norm_kind == "rms"
    handles = []
    entries = spec.embedding_norms(model)
    handles += [masked_norm(norm, keep, pre_scale=True, rms=rms) for norm in entries]
    if not entries:
        handles += [scale_output(table, keep) for table in spec.embedding_tables(model)]
    for layer in spec.layers(model):
        handles += [masked_norm(norm, keep, rms=rms) for norm in spec.layer_norms(layer)]
        handles += [scale_output(writer, keep) for writer in spec.residual_writers(layer)]
    handles += [masked_norm(norm, keep, rms=rms) for norm in spec.final_norms(model)]
    handles += [scale_output(writer, keep) for writer in spec.head_writers(model)]
    handles += [masked_norm(norm, keep, rms=rms) for norm in spec.head_norms(model)]
    return handles


def skip_attention(spec: ArchSpec, layer: nn.Module, when: Condition) -> RemovableHandle:
    """Bypass the whole attention sub-layer, bias and norm included (docs/method.md#empty-sub-layers)."""
    def hook(module, args, kwargs, output):
        return spec.skipped_attention_output(args, kwargs, output) if when() else output
    return spec.attention_block(layer).register_forward_hook(hook, with_kwargs=True)


def skip_ffn(spec: ArchSpec, layer: nn.Module, when: Condition) -> RemovableHandle:
    def hook(module, args, kwargs, output):
        return spec.ffn_bypass(args, kwargs) if when() else output
    return spec.ffn_output_block(layer).register_forward_hook(hook, with_kwargs=True)
