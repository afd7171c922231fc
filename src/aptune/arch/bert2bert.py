"""BERT2BERT: a transformers `EncoderDecoderModel` whose encoder and decoder are both BERT-layout
models (Rothe et al. 2020; `minilm-bert2bert` warm-starts both from the embedded MiniLM).

Both stacks are post-LN BERT layers, so everything BertSpec knows holds; what differs:
- A decoder layer has three sub-layers (self-attention, cross-attention, FFN) and is two units,
  (self-attention) and (cross-attention, FFN), as for T5 (docs/architectures.md#units).
- Each stack has its own embeddings and embedding LayerNorm, both on the one shared set of
  hidden dimensions.
- The decoder's LM head is transform (dense d -> d, GELU, LayerNorm) then a vocabulary projection
  tied to the decoder's word embedding, so the transform's *output* is indexed by the hidden
  dimensions too: it is cut, and masked, with them (`head_writers`, `head_norms`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .base import SkippedSublayer, keep_cache_length
from .bert import BertSpec

STACK_TYPES = ("bert", "roberta")


@dataclass(frozen=True, eq=False)
class BertUnit:
    """A BERT layer's attention sub-layer `attention_name` ("attention" or "crossattention") and,
    when `with_ffn`, the layer's FFN. Modules are read at call time (surgery replaces them)."""
    layer: nn.Module
    attention_name: str
    with_ffn: bool
    layer_index: int
    decoder: bool


class Bert2BertSpec(BertSpec):
    family = "bert2bert"
    model_types = ("encoder-decoder",)
    # q and v of every attention, the decoder's cross-attention included.
    lora_target_modules = ("attention.self.query", "attention.self.value")
    apt_target_modules = lora_target_modules + ("intermediate.dense",)
    # Warm-starting adds cross-attention and an LM-head transform that no checkpoint trained: every
    # method trains them in full (docs/architectures.md#bert2bert).
    head_modules = ("crossattention", "cls.predictions.transform")
    task_heads = ("text-to-text",)
    remote_code = None

    def check_config(self, config) -> None:
        from ..errors import AptuneError

        kinds = (config.encoder.model_type, config.decoder.model_type)
        if any(k not in STACK_TYPES for k in kinds):
            raise AptuneError(f"aptune supports encoder-decoder models of two BERT-layout stacks "
                              f"(bert2bert); this one pairs {kinds[0]} with {kinds[1]}",
                              "use --model minilm-bert2bert, a T5 model, or a BERT/RoBERTa encoder")

    def layers(self, model: nn.Module) -> list[BertUnit]:
        units = [BertUnit(layer, "attention", True, i, False)
                 for i, layer in enumerate(model.encoder.encoder.layer)]
        for i, layer in enumerate(model.decoder.bert.encoder.layer):
            units += [BertUnit(layer, "attention", False, i, True),
                      BertUnit(layer, "crossattention", True, i, True)]
        return units

    def stacks(self, model: nn.Module) -> list[list[tuple[int, int]]]:
        n_enc = len(model.encoder.encoder.layer)
        decoder = [(n_enc + 2 * i, n_enc + 2 * i + 1) for i in range(len(model.decoder.bert.encoder.layer))]
        return [[(i, i) for i in range(n_enc)], decoder]

    def stream_ends(self, model: nn.Module) -> list[nn.Module]:
        return [model.encoder.encoder.layer[-1], model.decoder.bert.encoder.layer[-1]]

    def protected_attention(self, model: nn.Module) -> list[int]:
        return [len(self.layers(model)) - 1]  # the last decoder layer's cross-attention

    def backbone(self, model: nn.Module) -> nn.Module:
        return model.encoder

    def attention_block(self, unit: BertUnit) -> nn.Module:
        return getattr(unit.layer, unit.attention_name)

    def ffn_host(self, unit: BertUnit) -> nn.Module:
        return unit.layer

    def has_ffn(self, unit: BertUnit) -> bool:
        return unit.with_ffn and super().has_ffn(unit)

    def embeddings(self, model: nn.Module) -> nn.Module:
        return model.encoder.embeddings

    def embedding_modules(self, model: nn.Module) -> list[nn.Module]:
        return [model.encoder.embeddings, model.decoder.bert.embeddings]

    def embedding_tables(self, model: nn.Module) -> list[nn.Embedding]:
        tables = []
        for emb in self.embedding_modules(model):
            tables += [emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings]
        return tables

    def embedding_norm(self, model: nn.Module) -> nn.Module:
        return model.encoder.embeddings.LayerNorm

    def embedding_norms(self, model: nn.Module) -> list[nn.Module]:
        return [emb.LayerNorm for emb in self.embedding_modules(model)]

    def head_readers(self, model: nn.Module) -> list[nn.Linear]:
        head = model.decoder.cls.predictions
        readers = [head.transform.dense, head.decoder]
        pooler = getattr(model.encoder, "pooler", None)  # unused, but BertModel still runs it
        return readers + ([pooler.dense] if pooler is not None else [])

    def head_writers(self, model: nn.Module) -> list[nn.Linear]:
        return [model.decoder.cls.predictions.transform.dense]

    def head_norms(self, model: nn.Module) -> list[nn.Module]:
        return [model.decoder.cls.predictions.transform.LayerNorm]

    def max_positions(self, model: nn.Module) -> int:
        cfg = model.config
        return min(int(cfg.encoder.max_position_embeddings), int(cfg.decoder.max_position_embeddings))

    def is_gated(self, model: nn.Module) -> bool:
        return False

    def keep_heads(self, unit: BertUnit, heads: torch.Tensor) -> None:
        super().keep_heads(unit, heads)
        if heads.numel() == 0 and unit.decoder and unit.attention_name == "attention":
            # Mask Tuning's zero-width sub-layer (LN(b_O + x)): its cache entry would hold no heads
            # and read as length 0, so generation would lose its positions (keep_cache_length).
            _zero_width_self_attention(unit.layer.attention.self, self.layer_head_dim(unit),
                                       unit.layer_index)

    def skip_attention(self, unit: BertUnit) -> None:
        skipped = SkippedSublayer(self.attention_bypass, unit.attention_name)
        if unit.decoder and unit.attention_name == "attention":
            skipped.bypass = _decoder_self_attention_bypass(self.layer_head_dim(unit), unit.layer_index)
        setattr(unit.layer, unit.attention_name, skipped)


def _zero_width_self_attention(module: nn.Module, head_dim: int, layer_index: int) -> None:
    """A decoder self-attention with no heads left: an empty context, and one head of zeros in the
    cache in place of its zero-width keys and values."""
    def forward(hidden_states: torch.Tensor, *args: Any, cache: Any = None, **kwargs: Any) -> tuple:
        keep_cache_length(cache, hidden_states, head_dim, layer_index)
        return hidden_states.new_zeros(*hidden_states.shape[:-1], 0), None  # (B, T, 0) context
    module.forward = forward


def _decoder_self_attention_bypass(head_dim: int, layer_index: int):
    def bypass(args: tuple, kwargs: dict[str, Any]) -> Any:
        hidden: torch.Tensor = args[0] if args else kwargs["hidden_states"]
        keep_cache_length(kwargs.get("cache"), hidden, head_dim, layer_index)
        return hidden, None  # (output, attention weights), as BertAttention
    return bypass
