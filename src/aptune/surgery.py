"""Physical removal of pruned structure: small slicing functions, then whole-model compaction
(docs/method.md#compaction).

Each slicing function cuts one axis of one module and updates its size attributes, so the result
is a stock module with smaller shapes. LoRA factors follow their weight: output rows cut lora_B,
input columns cut lora_A; the rank axis is never cut.
"""

from __future__ import annotations

import torch
from torch import nn

from .arch import ArchSpec
from .errors import AptuneError
from .lora import LoRALinear
from .structure import Structure, record_structure, recorded_structure


class ParamRemap:
    """Records, while active, how each sliced parameter maps to the one it replaced, so that an
    optimizer rebuild can carry the surviving entries of its state
    (docs/method.md#optimizer-state-after-a-shape-change)."""

    active: "ParamRemap | None" = None

    def __init__(self) -> None:
        self.links: dict[nn.Parameter, tuple[nn.Parameter, object]] = {}

    def __enter__(self) -> "ParamRemap":
        ParamRemap.active = self
        return self

    def __exit__(self, *exc) -> None:
        ParamRemap.active = None

    def record(self, old: nn.Parameter, new: nn.Parameter, dim: int, idx: torch.Tensor) -> None:
        select = lambda t, d=dim, i=idx: t.index_select(d, i.to(t.device))  # noqa: E731
        if old in self.links:  # sliced twice (e.g. heads, then hidden): compose the selectors
            root, first = self.links.pop(old)
            self.links[new] = (root, lambda t, f=first, g=select: g(f(t)))
        else:
            self.links[new] = (old, select)


# (id(old parameter), dim) -> (the old parameter, its sliced successor). The old parameter is held
# so that its id cannot be reused by a tensor created later in the same compaction: a recycled id
# would hand that tensor another parameter's slice.
Tied = dict[tuple[int, int], tuple[torch.Tensor, nn.Parameter]]


def _keep(t: torch.Tensor, dim: int, idx: torch.Tensor, tied: Tied | None = None) -> nn.Parameter:
    """The kept slice of `t` as a new parameter. With `tied`, a parameter that several modules
    share (T5's embedding table, its encoder and decoder inputs and a tied LM head) is sliced
    once and the modules keep sharing the result."""
    if tied is not None and (id(t), dim) in tied and tied[(id(t), dim)][0] is t:
        return tied[(id(t), dim)][1]
    kept = t.detach().index_select(dim, idx.to(t.device)).clone()
    new = nn.Parameter(kept, requires_grad=t.requires_grad)
    if ParamRemap.active is not None and t.requires_grad:
        ParamRemap.active.record(t, new, dim, idx)
    if tied is not None:
        tied[(id(t), dim)] = (t, new)
    return new


def prune_linear_out(linear: nn.Linear, idx: torch.Tensor) -> None:
    """Keep output features `idx`: weight rows, bias entries, lora_B rows."""
    linear.weight = _keep(linear.weight, 0, idx)
    if linear.bias is not None:
        linear.bias = _keep(linear.bias, 0, idx)
    if isinstance(linear, LoRALinear):
        linear.lora_B = _keep(linear.lora_B, 0, idx)
    linear.out_features = int(idx.numel())


def prune_linear_in(linear: nn.Linear, idx: torch.Tensor, tied: Tied | None = None) -> None:
    """Keep input features `idx`: weight columns, lora_A columns."""
    linear.weight = _keep(linear.weight, 1, idx, tied)
    if isinstance(linear, LoRALinear):
        linear.lora_A = _keep(linear.lora_A, 1, idx)
    linear.in_features = int(idx.numel())


def prune_layer_norm(norm: nn.Module, idx: torch.Tensor) -> None:
    """A LayerNorm, or an RMSNorm with a weight and no bias."""
    norm.weight = _keep(norm.weight, 0, idx)
    if getattr(norm, "bias", None) is not None:
        norm.bias = _keep(norm.bias, 0, idx)
    norm.normalized_shape = (int(idx.numel()),)


def prune_embedding(emb: nn.Embedding, idx: torch.Tensor, tied: Tied | None = None) -> None:
    emb.weight = _keep(emb.weight, 1, idx, tied)
    emb.embedding_dim = int(idx.numel())


def head_feature_index(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Feature indices of the kept heads: head h owns features [h·d_h, (h+1)·d_h)."""
    offsets = torch.arange(head_dim, device=heads.device)
    return (heads[:, None] * head_dim + offsets[None, :]).reshape(-1)  # (n_kept · d_h,)


def prune_heads(spec: ArchSpec, layer: nn.Module, heads: torch.Tensor,
                empty_sublayer: str = "identity") -> None:
    """Keep the heads `heads` of one layer.

    With none left, `empty_sublayer` decides: "identity" (APT, CoFi) replaces the sub-layer by the
    identity on the residual stream; "bias_ln" (Mask Tuning) keeps zero-width projections, so the
    sub-layer still computes LayerNorm(b_O + x), exactly as its all-zero-masked version did.
    """
    if heads.numel() == 0 and empty_sublayer == "identity":
        spec.skip_attention(layer)
        return
    attn = spec.attention(layer)
    idx = head_feature_index(heads, spec.layer_head_dim(layer))
    for proj in (attn.query, attn.key, attn.value):
        prune_linear_out(proj, idx)
    prune_linear_in(attn.output, idx)
    spec.keep_heads(layer, heads)


def prune_neurons(spec: ArchSpec, layer: nn.Module, neurons: torch.Tensor,
                  empty_sublayer: str = "identity") -> None:
    if neurons.numel() == 0 and empty_sublayer == "identity":
        spec.skip_ffn(layer)
        return
    ffn = spec.ffn(layer)
    for proj in ffn.inputs():
        prune_linear_out(proj, neurons)
    prune_linear_in(ffn.down, neurons)


def prune_hidden(spec: ArchSpec, model: nn.Module, dims: torch.Tensor) -> None:
    """Keep hidden dimensions `dims` everywhere the residual stream is read or written."""
    tied: Tied = {}  # tables and a head that share one weight go on sharing it
    for table in spec.embedding_tables(model):
        prune_embedding(table, dims, tied)
    for norm in [*spec.embedding_norms(model), *spec.final_norms(model), *spec.head_norms(model)]:
        prune_layer_norm(norm, dims)
    for writer in spec.head_writers(model):
        prune_linear_out(writer, dims)
    for layer in spec.layers(model):
        for norm in spec.layer_norms(layer):
            prune_layer_norm(norm, dims)
        for reader in spec.residual_readers(layer):
            prune_linear_in(reader, dims)
        for writer in spec.residual_writers(layer):
            prune_linear_out(writer, dims)
    for reader in spec.head_readers(model):
        prune_linear_in(reader, dims, tied)


def kept_units(hidden: torch.Tensor, heads, neurons, empty_sublayer: str = "identity") -> Structure:
    """The units whose values are non-zero (hidden (d,), and one vector per layer for heads and
    neurons), in the current numbering: what a compaction keeps."""
    def on(values: torch.Tensor) -> list[int]:
        return torch.nonzero(values != 0, as_tuple=False).flatten().tolist()
    return Structure.of(on(hidden), [on(h) for h in heads], [on(n) for n in neurons], empty_sublayer)


def model_structure(model: nn.Module, spec: ArchSpec) -> Structure:
    """What `model` keeps in the original numbering: its recorded structure, or everything for a
    model never compacted. A record that does not describe the model is refused."""
    shape = spec.shape(model)
    recorded = recorded_structure(model)
    if recorded is None:
        return Structure.identity(shape)
    if not recorded.matches(shape):
        raise AptuneError("the model's config records a pruned structure (aptune_structure) that "
                          "does not match its layers",
                          "load pruned models with aptune.load_pruned, and start training from a "
                          "dense pretrained model")
    return recorded


def compact(model: nn.Module, spec: ArchSpec, kept: Structure) -> None:
    """Slice `model` down to the units in `kept` (indices in the model's *current* numbering).

    `kept.empty_sublayer` is the semantics of a sub-layer with nothing left (see `prune_heads`).
    """
    for layer, heads, neurons in zip(spec.layers(model), kept.heads, kept.neurons):
        if spec.has_attention(layer):
            prune_heads(spec, layer, torch.as_tensor(heads, dtype=torch.long), kept.empty_sublayer)
        if spec.has_ffn(layer):
            prune_neurons(spec, layer, torch.as_tensor(neurons, dtype=torch.long), kept.empty_sublayer)
    prune_hidden(spec, model, torch.as_tensor(kept.hidden, dtype=torch.long))


def compact_and_record(model: nn.Module, spec: ArchSpec, kept: Structure) -> Structure:
    """Compact, compose with the structure the model already records, record the result.

    Returns the structure in the original numbering. Every pruner ends its compactions here, so a
    saved model always carries the structure that `export.load_pruned` rebuilds.
    """
    before = model_structure(model, spec)
    compact(model, spec, kept)
    structure = before.compose(kept)
    record_structure(model, structure)
    return structure
