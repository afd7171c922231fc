"""CoFi compaction: fold the deterministic gate values into the weights, then slice
(docs/baselines.md#cofi-compaction).

Folding (CoFi's `update_params`):
    z_int   columns of W_2                      z_head  the head's rows of W_V and b_V
    z_FFN   W_2 and b_2                         z_MHA   W_O and b_O
    z_hid   embedding columns; output rows (and biases) of W_O and W_2; and then either
            hidden_fold="cofi":  input columns of Q, K, V, W_1 and of the task head (CoFi's way;
                                 the post-LayerNorm ·z_hid is not folded, so this is exact only
                                 when the kept z_hid are 1 and approximate otherwise)
            hidden_fold="exact": the weight and bias of every LayerNorm instead (the post-LN
                                 ·z_hid moves into the LN's affine map, so it is exact for any
                                 kept z_hid; readers need nothing, the stream already carries z)
Slicing then uses the shared surgery with binary masks: a head survives when z_head·z_MHA ≠ 0, a
neuron when z_int·z_FFN ≠ 0, a hidden dim when z_hid ≠ 0. A sub-layer with nothing left becomes
the identity. LoRA adapters are merged first (docs/baselines.md#cofi-lora), so that B·A is folded
and sliced with W.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from ..arch import ArchSpec
from ..lora import lora_modules, merge_and_unload
from ..structure import Structure
from ..surgery import compact_and_record, kept_units
from .gates import CoFiGates

log = logging.getLogger(__name__)

HIDDEN_FOLDS = ("cofi", "exact")


@dataclass
class CompactionResult:
    structure: Structure  # kept units in the original numbering (as recorded in the config)
    # An edge case (CoFi issue #36, docs/baselines.md#cofi-compaction): sub-layers whose units are
    # all 0 while their layer gate is not. The gated model still adds the gated bias there; the
    # compacted one skips the sub-layer.
    empty_unit_sublayers: list[str] = field(default_factory=list)


@torch.no_grad()
def fold_gates(model: nn.Module, spec: ArchSpec, gates: CoFiGates, hidden_fold: str = "cofi") -> None:
    """Multiply deterministic gate values into the weights of a dense model without adapters."""
    if hidden_fold not in HIDDEN_FOLDS:
        raise ValueError(f"hidden_fold must be one of {HIDDEN_FOLDS}, got {hidden_fold!r}")
    if lora_modules(model):
        raise ValueError("fold_gates() needs merged weights; call aptune.lora.merge_and_unload first")
    for i, layer in enumerate(spec.layers(model)):
        if spec.has_attention(layer):
            attn = spec.attention(layer)
            head_dim = spec.layer_head_dim(layer)
            z_head = gates.head[i].to(attn.value.weight)  # (H,)
            attn.value.weight.view(-1, head_dim, attn.value.in_features).mul_(z_head[:, None, None])
            if attn.value.bias is not None:
                attn.value.bias.view(-1, head_dim).mul_(z_head[:, None])  # (H, d_h)
            _scale(attn.output, gates.mha[i])
        if spec.has_ffn(layer):
            down = spec.ffn(layer).down
            down.weight.mul_(gates.intermediate[i].to(down.weight)[None, :])  # (d, d_ff)
            _scale(down, gates.ffn[i])
    _fold_hidden(model, spec, gates.hidden, hidden_fold)


def _scale(linear: nn.Linear, factor: torch.Tensor) -> None:
    linear.weight.mul_(factor.to(linear.weight))
    if linear.bias is not None:
        linear.bias.mul_(factor.to(linear.bias))


def _fold_hidden(model: nn.Module, spec: ArchSpec, z: torch.Tensor, hidden_fold: str) -> None:
    z = z.to(spec.embedding_tables(model)[0].weight)  # (d,)
    for table in spec.embedding_tables(model):
        table.weight.mul_(z[None, :])  # (V, d): z_hid ⊙ (word + pos + type) before the LN
    readers: list[nn.Linear] = []
    norms: list[nn.Module] = [*spec.embedding_norms(model), *spec.final_norms(model)]
    for layer in spec.layers(model):
        for writer in spec.residual_writers(layer):
            writer.weight.mul_(z[:, None])  # (d, d_in): output rows
            if writer.bias is not None:
                writer.bias.mul_(z)
        readers += spec.residual_readers(layer)
        norms += spec.layer_norms(layer)
    if hidden_fold == "cofi":
        for reader in readers + spec.head_readers(model):
            reader.weight.mul_(z[None, :])  # (d_out, d): input columns
    else:
        for norm in norms:
            norm.weight.mul_(z)
            if norm.bias is not None:
                norm.bias.mul_(z)


def kept_by_gates(gates: CoFiGates) -> Structure:
    """The units whose gates are non-zero (with their layer's gate): what compaction keeps."""
    return kept_units(gates.kept_hidden(), gates.kept_heads(), gates.kept_neurons())


def empty_unit_sublayers(gates: CoFiGates) -> list[str]:
    notes = []
    for i in range(gates.n_layers):
        if bool(gates.mha[i] != 0) and bool((gates.head[i] == 0).all()):
            notes.append(f"layer {i} attention: every head gate is 0 but z_MHA = {float(gates.mha[i]):.4g}")
        if bool(gates.ffn[i] != 0) and bool((gates.intermediate[i] == 0).all()):
            notes.append(f"layer {i} FFN: every neuron gate is 0 but z_FFN = {float(gates.ffn[i]):.4g}")
    return notes


def compact_with_gates(model: nn.Module, spec: ArchSpec, gates: CoFiGates,
                       hidden_fold: str = "cofi") -> CompactionResult:
    """Merge LoRA, fold, slice and record the structure (so export.save_pruned round-trips).

    Remove the gate hooks (`GateHooks.remove()`) first: merging and slicing replace modules.
    """
    gates = gates.detach().to("cpu")
    notes = empty_unit_sublayers(gates)
    for note in notes:
        log.warning("CoFi compaction: %s; the compacted model skips this sub-layer while the "
                    "gated model adds its bias (docs/baselines.md#cofi-compaction, CoFi issue #36)", note)
    if lora_modules(model):
        merge_and_unload(model)
    fold_gates(model, spec, gates, hidden_fold)
    return CompactionResult(compact_and_record(model, spec, kept_by_gates(gates)), notes)
