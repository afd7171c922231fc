"""BERT and RoBERTa (and every model that reuses the BERT layer, such as all-MiniLM-L6-v2)."""

from __future__ import annotations

from torch import nn

from .base import ArchSpec, AttentionParts, FFNParts


class BertSpec(ArchSpec):
    family = "bert"
    model_types = ("bert", "roberta")
    lora_target_modules = ("attention.self.query", "attention.self.value")
    apt_target_modules = ("attention.self.query", "attention.self.value", "intermediate.dense")
    # BERT classifies from the pooler (a pretrained dense+tanh) and a new linear layer; RoBERTa's
    # head holds both. Either way the whole head is trained, as baselines.md requires.
    head_modules = ("pooler", "classifier")

    def backbone(self, model: nn.Module) -> nn.Module:
        return getattr(model, model.base_model_prefix, model)

    def layers(self, model: nn.Module) -> list[nn.Module]:
        return list(self.backbone(model).encoder.layer)

    def attention(self, layer: nn.Module) -> AttentionParts:
        sa = layer.attention.self
        return AttentionParts(sa.query, sa.key, sa.value, layer.attention.output.dense)

    def ffn(self, layer: nn.Module) -> FFNParts:
        return FFNParts(layer.intermediate.dense, layer.output.dense)

    def layer_norms(self, layer: nn.Module) -> list[nn.Module]:
        return [layer.attention.output.LayerNorm, layer.output.LayerNorm]

    def embeddings(self, model: nn.Module) -> nn.Module:
        return self.backbone(model).embeddings
