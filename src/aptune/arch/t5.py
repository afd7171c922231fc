"""T5 (v1.0, and the gated v1.1 / lm-adapt / flan layout): an encoder-decoder with pre-RMSNorm.

A T5 block is a list of residual sub-layers, each x + f(RMSNorm(x)) with no bias anywhere:
self-attention, then (decoder only) cross-attention over the encoder output, then the FFN. The
spec splits a decoder block into two units, (self-attention) and (cross-attention, FFN), so that
a unit keeps the shape the pruners know: at most one attention and one FFN sub-layer
(docs/architectures.md#t5). Heads are counted per attention module, so encoder self, decoder self
and decoder cross heads are separate units of the budget; one set of hidden dimensions is shared
by the embedding table, both stacks and the LM head.

Two T5 details need care after surgery:
- The relative position bias is computed once per stack, by its first self-attention, from a
  table with a column per *original* head, and passed down to every later layer. Pruned layers
  gather their kept heads' columns from that full bias (`_gather_position_bias`), and the table is
  never cut; a first self-attention pruned away keeps its table (`T5PositionBias`).
- With tied embeddings the LM head's input is rescaled by the *original* d_m^-0.5: transformers
  reads `model_dim`, set from the config when the model is built, which surgery never changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.models.t5.modeling_t5 import T5Attention

from .base import ArchSpec, AttentionParts, FFNParts, SkippedSublayer, keep_cache_length

# The kept heads of a compacted attention, as columns of its stack's full position-bias table.
BIAS_HEADS = "aptune_bias_heads"


@dataclass(frozen=True, eq=False)
class T5Unit:
    """One unit of a T5 block: `block.layer[attention_slot]` and, if any, `block.layer[ffn_slot]`.

    The slots are read at call time, because surgery replaces pruned-away sub-layers."""
    block: nn.Module
    attention_slot: int
    ffn_slot: int | None
    layer_index: int  # the block's index in its stack (the cache's layer index)
    cross: bool = False


class T5PositionBias(nn.Module):
    """The position-bias table of a stack whose first self-attention was pruned away: later
    layers still gather their heads from the bias it computes. Uses T5Attention's own code."""

    compute_bias = T5Attention.compute_bias
    _relative_position_bucket = staticmethod(T5Attention._relative_position_bucket)

    def __init__(self, attention: T5Attention) -> None:
        super().__init__()
        self.relative_attention_bias = attention.relative_attention_bias
        self.is_decoder = attention.is_decoder
        self.relative_attention_num_buckets = attention.relative_attention_num_buckets
        self.relative_attention_max_distance = attention.relative_attention_max_distance


class T5Spec(ArchSpec):
    family = "t5"
    model_types = ("t5",)
    # The paper's T5 LoRA targets: q and v of every attention (encoder self, decoder self, cross).
    lora_target_modules = ("SelfAttention.q", "SelfAttention.v", "EncDecAttention.q", "EncDecAttention.v")
    # APT adds the activated FFN branch: wi_0 of a gated FFN, wi of T5 v1.0.
    apt_target_modules = lora_target_modules + ("DenseReluDense.wi_0", "DenseReluDense.wi")
    head_modules = ()  # the LM head is pretrained and frozen (docs/baselines.md#common-protocol)
    norm_kind = "rms"
    task_heads = ("text-to-text",)

    def layers(self, model: nn.Module) -> list[T5Unit]:
        units = [T5Unit(block, 0, 1, i) for i, block in enumerate(model.encoder.block)]
        for i, block in enumerate(model.decoder.block):
            units += [T5Unit(block, 0, None, i), T5Unit(block, 1, 2, i, cross=True)]
        return units

    def stacks(self, model: nn.Module) -> list[list[tuple[int, int]]]:
        n_enc = len(model.encoder.block)
        decoder = [(n_enc + 2 * i, n_enc + 2 * i + 1) for i in range(len(model.decoder.block))]
        return [[(i, i) for i in range(n_enc)], decoder]

    def stream_ends(self, model: nn.Module) -> list[nn.Module]:
        return [model.encoder.block[-1], model.decoder.block[-1]]

    def protected_attention(self, model: nn.Module) -> list[int]:
        return [len(self.layers(model)) - 1]  # the last decoder layer's cross-attention

    def _attention_module(self, unit: T5Unit) -> T5Attention:
        sub = self.attention_block(unit)
        return sub.EncDecAttention if unit.cross else sub.SelfAttention

    def attention(self, unit: T5Unit) -> AttentionParts:
        att = self._attention_module(unit)
        return AttentionParts(att.q, att.k, att.v, att.o)

    def ffn(self, unit: T5Unit) -> FFNParts:
        dense = unit.block.layer[unit.ffn_slot].DenseReluDense
        if hasattr(dense, "wi_0"):  # gated: act(wi_0 x) ⊙ wi_1 x
            return FFNParts(dense.wi_0, dense.wo, dense.wi_1)
        return FFNParts(dense.wi, dense.wo)

    def is_gated(self, model: nn.Module) -> bool:
        return bool(model.config.is_gated_act)

    def embeddings(self, model: nn.Module) -> nn.Module:
        return model.shared

    def embedding_tables(self, model: nn.Module) -> list[nn.Embedding]:
        tables = [model.shared, model.encoder.embed_tokens, model.decoder.embed_tokens]
        return list({id(t): t for t in tables}.values())  # each module once

    def embedding_norm(self, model: nn.Module) -> None:
        return None  # pre-norm: the embedding output enters the stream as it is

    def final_norms(self, model: nn.Module) -> list[nn.Module]:
        return [model.encoder.final_layer_norm, model.decoder.final_layer_norm]

    def layer_norms(self, unit: T5Unit) -> list[nn.Module]:
        out = []
        if self.has_attention(unit):
            out.append(self.attention_block(unit).layer_norm)
        if self.has_ffn(unit):
            out.append(self.ffn_output_block(unit).layer_norm)
        return out

    def head_readers(self, model: nn.Module) -> list[nn.Linear]:
        return [model.lm_head]

    # -- shapes ----------------------------------------------------------------------------------
    def layer_head_dim(self, unit: T5Unit) -> int:
        return int(self._attention_module(unit).key_value_proj_dim)

    def set_num_heads(self, unit: T5Unit, n_heads: int) -> None:
        att = self._attention_module(unit)
        att.n_heads = n_heads
        att.inner_dim = n_heads * att.key_value_proj_dim

    def keep_heads(self, unit: T5Unit, heads: torch.Tensor) -> None:
        att = self._attention_module(unit)
        before = getattr(att, BIAS_HEADS, None)
        if before is None:  # first compaction: start gathering from the full bias
            before = torch.arange(att.n_heads)
            if not unit.cross:
                att.register_forward_pre_hook(_gather_position_bias, with_kwargs=True)
                att.register_forward_hook(_pass_full_position_bias, with_kwargs=True)
            else:  # cross-attention has no position bias: each computes its own zeros
                att.register_forward_pre_hook(_own_zero_bias, with_kwargs=True)
        setattr(att, BIAS_HEADS, before[heads.to(before.device)])
        self.set_num_heads(unit, int(heads.numel()))

    def num_neurons(self, unit: T5Unit) -> int:
        return self.ffn(unit).up.out_features if self.has_ffn(unit) else 0

    def max_positions(self, model: nn.Module) -> int:
        """Relative positions have no hard limit; 512 is the length T5 was trained at."""
        return int(getattr(model.config, "n_positions", None) or 512)

    # -- sub-layer blocks ------------------------------------------------------------------------
    def attention_block(self, unit: T5Unit) -> nn.Module:
        return unit.block.layer[unit.attention_slot]

    def ffn_input_block(self, unit: T5Unit) -> nn.Module:
        return unit.block.layer[unit.ffn_slot]

    def ffn_output_block(self, unit: T5Unit) -> nn.Module:
        return unit.block.layer[unit.ffn_slot]

    def has_ffn(self, unit: T5Unit) -> bool:
        return unit.ffn_slot is not None and super().has_ffn(unit)

    def attention_bypass(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        # (stream, position bias passed on, attention weights), as T5LayerSelfAttention returns
        return self.block_input(args, kwargs), kwargs.get("position_bias"), None

    def skipped_attention_output(self, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        return self.block_input(args, kwargs), output[1], None  # the bias it computed goes on

    def ffn_bypass(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        return self.block_input(args, kwargs)  # T5LayerFF returns the stream alone

    def skip_attention(self, unit: T5Unit) -> None:
        att = self._attention_module(unit)
        skipped = SkippedSublayer(self.attention_bypass, "cross-attention" if unit.cross else "attention")
        if getattr(att, "has_relative_attention_bias", False):
            skipped.position_bias = T5PositionBias(att)  # the stack's bias source survives
            skipped.bypass = _first_layer_bypass(skipped, att.key_value_proj_dim, unit.layer_index)
        elif not unit.cross:
            skipped.bypass = _self_attention_bypass(att.key_value_proj_dim, unit.layer_index)
        unit.block.layer[unit.attention_slot] = skipped

    def skip_ffn(self, unit: T5Unit) -> None:
        unit.block.layer[unit.ffn_slot] = SkippedSublayer(self.ffn_bypass, "ffn")


def _gather_position_bias(module: T5Attention, args: tuple, kwargs: dict[str, Any]):
    """Before a compacted self-attention: compute the stack's full bias if this is its first
    layer, and hand the attention its kept heads' columns. (T5 passes everything but the stream
    by keyword.)"""
    bias = kwargs.get("position_bias")
    if bias is None and module.has_relative_attention_bias:
        hidden, cache = args[0] if args else kwargs["hidden_states"], kwargs.get("cache")
        past = cache.get_seq_length(module.layer_idx) if cache is not None else 0
        q_len = hidden.shape[1]
        bias = module.compute_bias(q_len, past + q_len, device=hidden.device,
                                   past_seen_tokens=past)  # (1, H_full, q, k)
    if bias is None:
        return None
    module._aptune_full_bias = bias
    heads = getattr(module, BIAS_HEADS).to(bias.device)
    kwargs = {**kwargs, "position_bias": bias.index_select(1, heads)}  # (1, H_kept, q, k)
    return args, kwargs


def _pass_full_position_bias(module: T5Attention, args: tuple, kwargs: dict[str, Any], output):
    """After it: pass the full bias on to the next layer, not this layer's columns."""
    full = module.__dict__.pop("_aptune_full_bias", None)
    return output if full is None else (output[0], full, *output[2:])


def _own_zero_bias(module: T5Attention, args: tuple, kwargs: dict[str, Any]):
    """A compacted cross-attention: drop the zero bias shaped for the first layer's heads; T5
    builds zeros for this layer's own head count."""
    if kwargs.get("position_bias") is None:
        return None
    return args, {**kwargs, "position_bias": None}


def _self_attention_bypass(head_dim: int, layer_index: int):
    def bypass(args: tuple, kwargs: dict[str, Any]) -> Any:
        hidden = args[0] if args else kwargs["hidden_states"]
        keep_cache_length(kwargs.get("cache"), hidden, head_dim, layer_index)
        return hidden, kwargs.get("position_bias"), None
    return bypass


def _first_layer_bypass(skipped: SkippedSublayer, head_dim: int, layer_index: int):
    """A stack's first self-attention, pruned away: still compute the stack's full bias."""
    def bypass(args: tuple, kwargs: dict[str, Any]) -> Any:
        hidden, cache = (args[0] if args else kwargs["hidden_states"]), kwargs.get("cache")
        past = cache.get_seq_length(layer_index) if cache is not None else 0
        keep_cache_length(cache, hidden, head_dim, layer_index)
        q_len = hidden.shape[1]
        bias = skipped.position_bias.compute_bias(q_len, past + q_len, device=hidden.device,
                                                  past_seen_tokens=past)  # (1, H_full, q, k)
        return hidden, bias, None
    return bypass
