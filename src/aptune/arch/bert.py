"""BERT and RoBERTa (and every model that reuses the BERT layer, such as all-MiniLM-L6-v2).

A BERT layer is post-LayerNorm: `attention` returns LN(x + O(attn(x))) as a pair, then
`output(intermediate(x'), x')` returns LN(x' + W_2·act(W_1·x')).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import ArchSpec, AttentionParts, FFNParts, SkippedSublayer


class BertSpec(ArchSpec):
    family = "bert"
    model_types = ("bert", "roberta")
    lora_target_modules = ("attention.self.query", "attention.self.value")
    apt_target_modules = ("attention.self.query", "attention.self.value", "intermediate.dense")
    # BERT classifies from the pooler (a pretrained dense+tanh) and a new linear layer; RoBERTa's
    # head holds both; extractive QA reads every token with `qa_outputs`. Either way the whole head
    # is trained (docs/baselines.md#common-protocol).
    head_modules = ("pooler", "classifier", "qa_outputs")
    remote_code = ("bert_remote_code.py", {"bert": "AptunePrunedBertForSequenceClassification",
                                           "roberta": "AptunePrunedRobertaForSequenceClassification"})

    def backbone(self, model: nn.Module) -> nn.Module:
        return getattr(model, model.base_model_prefix, model)

    def layers(self, model: nn.Module) -> list[nn.Module]:
        return list(self.backbone(model).encoder.layer)

    def attention(self, layer: nn.Module) -> AttentionParts:
        block = self.attention_block(layer)
        sa = block.self
        return AttentionParts(sa.query, sa.key, sa.value, block.output.dense)

    def ffn_host(self, layer: Any) -> nn.Module:
        """The BertLayer that holds the unit's FFN (`intermediate` and `output`)."""
        return layer

    def ffn(self, layer: nn.Module) -> FFNParts:
        host = self.ffn_host(layer)
        return FFNParts(host.intermediate.dense, host.output.dense)

    def embeddings(self, model: nn.Module) -> nn.Module:
        return self.backbone(model).embeddings

    def embedding_tables(self, model: nn.Module) -> list[nn.Embedding]:
        emb = self.embeddings(model)
        return [emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings]

    def embedding_norm(self, model: nn.Module) -> nn.Module:
        return self.embeddings(model).LayerNorm

    def layer_norms(self, layer: nn.Module) -> list[nn.Module]:
        out = []
        if self.has_attention(layer):
            out.append(self.attention_block(layer).output.LayerNorm)
        if self.has_ffn(layer):
            out.append(self.ffn_output_block(layer).LayerNorm)
        return out

    def head_readers(self, model: nn.Module) -> list[nn.Linear]:
        readers = []
        pooler = getattr(self.backbone(model), "pooler", None)
        if pooler is not None:
            readers.append(pooler.dense)  # BERT: the pooler reads [CLS]; its output is its own size
        head = getattr(model, "classifier", None)
        if head is not None and hasattr(head, "dense"):
            readers.append(head.dense)  # RoBERTa's classification head
        elif head is not None and pooler is None and isinstance(head, nn.Linear):
            readers.append(head)
        for name in ("qa_outputs",):
            if hasattr(model, name):
                readers.append(getattr(model, name))
        return readers

    # -- shapes ----------------------------------------------------------------------------------
    def layer_head_dim(self, layer: nn.Module) -> int:
        return int(self.attention_block(layer).self.attention_head_size)

    def set_num_heads(self, layer: nn.Module, n_heads: int) -> None:
        sa = self.attention_block(layer).self
        sa.num_attention_heads = n_heads
        sa.all_head_size = n_heads * sa.attention_head_size

    def max_positions(self, model: nn.Module) -> int:
        cfg = model.config
        # RoBERTa numbers positions from padding_idx + 1, so two slots are never used.
        offset = (cfg.pad_token_id + 1) if cfg.model_type == "roberta" else 0
        return int(cfg.max_position_embeddings) - offset

    # -- sub-layer blocks ------------------------------------------------------------------------
    def attention_block(self, layer: nn.Module) -> nn.Module:
        return layer.attention

    def ffn_input_block(self, layer: nn.Module) -> nn.Module:
        return self.ffn_host(layer).intermediate

    def ffn_output_block(self, layer: nn.Module) -> nn.Module:
        return self.ffn_host(layer).output

    def attention_bypass(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        return self.block_input(args, kwargs), None  # (output, attention weights), as BertAttention

    def ffn_bypass(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        return args[1] if len(args) > 1 else kwargs["input_tensor"]  # BertOutput(h, input_tensor)

    def skip_attention(self, layer: nn.Module) -> None:
        layer.attention = SkippedSublayer(self.attention_bypass, "attention")

    def skip_ffn(self, layer: nn.Module) -> None:
        # BertLayer calls output(intermediate(x), x): make intermediate free and return x.
        host = self.ffn_host(layer)
        host.intermediate = nn.Identity()
        host.output = SkippedSublayer(self.ffn_bypass, "ffn")
