"""Structured masks over attention heads, FFN neurons and hidden dimensions, applied by hooks.

Three model-level mask sets (apt-method.md §2.2), always sized to the model's *current* shapes:
    head[l]   (n_heads_l,)   multiplies each head's context slice, the input of attention output
    neuron[l] (n_ffn_l,)     multiplies the activated FFN neurons, the input of the down projection
    hidden    (d_m,)         the residual stream: embeddings, every sub-layer output and LayerNorm
The hooks sit on stock transformers modules; nothing is forked. LayerNorms under a hidden mask
take their statistics over the kept dimensions only, so that a binary-masked model equals the
physically pruned one. A sub-layer whose heads (or neurons) are all zero is skipped (§2.3).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from .arch import ArchSpec


@dataclass
class Masks:
    head: list[torch.Tensor]
    neuron: list[torch.Tensor]
    hidden: torch.Tensor
    enabled: bool = True
    _handles: list = field(default_factory=list, repr=False)

    @classmethod
    def ones_like(cls, model: nn.Module, spec: ArchSpec) -> "Masks":
        layers = spec.layers(model)
        dev = next(model.parameters()).device
        heads = [torch.ones(_n_heads(spec, layer), device=dev) for layer in layers]
        neurons = [torch.ones(_n_neurons(spec, layer), device=dev) for layer in layers]
        hidden = torch.ones(spec.embedding_norm(model).weight.shape[0], device=dev)
        return cls(heads, neurons, hidden)

    def is_binary(self) -> bool:
        return all(bool(((t == 0) | (t == 1)).all()) for t in self.all())

    def all(self) -> Iterator[torch.Tensor]:
        yield from self.head
        yield from self.neuron
        yield self.hidden

    @contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the model unmasked, e.g. for the teacher, which never sees the student's masks."""
        previous, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = previous

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _n_heads(spec: ArchSpec, layer: nn.Module) -> int:
    if not spec.has_attention(layer):
        return 0
    return spec.attention(layer).query.out_features // _head_dim(spec, layer)


def _head_dim(spec: ArchSpec, layer: nn.Module) -> int:
    return spec.layer_head_dim(layer)


def _n_neurons(spec: ArchSpec, layer: nn.Module) -> int:
    return spec.ffn(layer).up.out_features if spec.has_ffn(layer) else 0


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


def apply_masks(model: nn.Module, spec: ArchSpec, masks: Masks) -> Masks:
    """Register the hooks that make `masks` act on `model`. Returns `masks` for chaining."""
    masks.remove_hooks()
    hooks = masks._handles

    def hidden_is_identity() -> bool:
        return not masks.enabled or bool((masks.hidden == 1).all())

    def norm_hook(pre_scale: bool):
        def hook(module: nn.LayerNorm, args, output):
            if hidden_is_identity():
                return output
            m = masks.hidden
            x = args[0] * m if pre_scale else args[0]  # (B, T, d)
            return masked_layer_norm(x, m, module.weight, module.bias, module.eps) * m
        return hook

    def writer_hook(module, args, output):  # a sub-layer's output joins the residual stream
        return output if hidden_is_identity() else output * masks.hidden

    hooks.append(spec.embedding_norm(model).register_forward_hook(norm_hook(pre_scale=True)))
    for i, layer in enumerate(spec.layers(model)):
        for norm in spec.layer_norms(layer):
            hooks.append(norm.register_forward_hook(norm_hook(pre_scale=False)))
        for writer in spec.residual_writers(layer):
            hooks.append(writer.register_forward_hook(writer_hook))
        if spec.has_attention(layer):
            hooks += _head_hooks(spec, layer, masks, i)
        if spec.has_ffn(layer):
            hooks += _neuron_hooks(spec, layer, masks, i)
    return masks


def _head_hooks(spec: ArchSpec, layer: nn.Module, masks: Masks, i: int) -> list:
    head_dim = _head_dim(spec, layer)

    def scale_heads(module, args):
        if not masks.enabled:
            return None
        x = args[0]  # (B, T, n_h * d_h)
        m = masks.head[i]
        if bool((m == 1).all()):
            return None
        shaped = x.view(*x.shape[:-1], m.numel(), head_dim) * m[:, None]  # (B, T, n_h, d_h)
        return (shaped.view(x.shape), *args[1:])

    def skip_if_empty(module, args, kwargs, output):
        if masks.enabled and bool((masks.head[i] == 0).all()):
            hidden = args[0] if args else kwargs["hidden_states"]
            return (hidden, None)  # the whole sub-layer, bias and LayerNorm included, is bypassed
        return output

    block = spec.attention_block(layer)
    return [spec.attention(layer).output.register_forward_pre_hook(scale_heads),
            block.register_forward_hook(skip_if_empty, with_kwargs=True)]


def _neuron_hooks(spec: ArchSpec, layer: nn.Module, masks: Masks, i: int) -> list:
    def scale_neurons(module, args):
        if not masks.enabled or bool((masks.neuron[i] == 1).all()):
            return None
        return (args[0] * masks.neuron[i], *args[1:])  # (B, T, n_f) * (n_f,)

    def skip_if_empty(module, args, kwargs, output):
        if masks.enabled and bool((masks.neuron[i] == 0).all()):
            return args[1] if len(args) > 1 else kwargs["input_tensor"]
        return output

    return [spec.ffn(layer).down.register_forward_pre_hook(scale_neurons),
            spec.ffn_output_block(layer).register_forward_hook(skip_if_empty, with_kwargs=True)]


def random_binary_masks(model: nn.Module, spec: ArchSpec, keep: float, generator: torch.Generator,
                        empty_attention: int | None = None, empty_ffn: int | None = None) -> Masks:
    """Random 0/1 masks for tests: each block kept with probability `keep`."""
    masks = Masks.ones_like(model, spec)

    def draw(t: torch.Tensor) -> torch.Tensor:
        m = (torch.rand(t.shape, generator=generator) < keep).to(t.dtype)
        if m.sum() == 0:
            m[0] = 1
        return m

    masks.head = [draw(t) for t in masks.head]
    masks.neuron = [draw(t) for t in masks.neuron]
    masks.hidden = draw(masks.hidden)
    if empty_attention is not None:
        masks.head[empty_attention].zero_()
    if empty_ffn is not None:
        masks.neuron[empty_ffn].zero_()
    return masks


__all__ = ["Masks", "apply_masks", "masked_layer_norm", "random_binary_masks"]
