"""BERT/RoBERTa modelling code that `aptune export --format transformers` copies into the folder
it writes, as aptune_modeling.py (BertSpec.remote_code names it). Never imported by aptune.

It lets stock transformers open a model that aptune pruned, without aptune installed:

    AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)

The config is the dense BERT/RoBERTa config plus `aptune_structure`: the hidden dimensions, and
each layer's attention heads and FFN neurons, that the pruned model kept (original numbering).
These classes build the dense model, cut every layer to its kept size, and the weights load as
usual. Imports torch and transformers only.
"""

import torch
from torch import nn
from transformers import BertForSequenceClassification, RobertaForSequenceClassification


class SkippedSublayer(nn.Module):
    """A sub-layer with nothing left: returns the residual stream it was given."""

    def __init__(self, position, pair):
        super().__init__()
        self.position, self.pair = position, pair

    def forward(self, *args, **kwargs):
        name = "hidden_states" if self.position == 0 else "input_tensor"
        x = args[self.position] if len(args) > self.position else kwargs[name]
        return (x, None) if self.pair else x


def _parameter(t, dim, idx):
    return nn.Parameter(t.detach().index_select(dim, idx.to(t.device)).clone(), requires_grad=t.requires_grad)


def _keep_out(linear, idx):
    linear.weight = _parameter(linear.weight, 0, idx)
    if linear.bias is not None:
        linear.bias = _parameter(linear.bias, 0, idx)
    linear.out_features = int(idx.numel())


def _keep_in(linear, idx):
    linear.weight = _parameter(linear.weight, 1, idx)
    linear.in_features = int(idx.numel())


def _keep_norm(norm, idx):
    norm.weight = _parameter(norm.weight, 0, idx)
    if norm.bias is not None:
        norm.bias = _parameter(norm.bias, 0, idx)
    norm.normalized_shape = (int(idx.numel()),)


def prune_to_structure(model, structure):
    base = getattr(model, model.base_model_prefix)
    empty = structure.get("empty_sublayer", "identity")
    for layer, heads, neurons in zip(base.encoder.layer, structure["heads"], structure["neurons"]):
        attention = layer.attention.self
        if not heads and empty == "identity":
            layer.attention = SkippedSublayer(0, True)
        else:
            d_h = attention.attention_head_size
            idx = (torch.tensor(heads, dtype=torch.long)[:, None] * d_h + torch.arange(d_h)).reshape(-1)
            for projection in (attention.query, attention.key, attention.value):
                _keep_out(projection, idx)
            _keep_in(layer.attention.output.dense, idx)
            attention.num_attention_heads, attention.all_head_size = len(heads), len(heads) * d_h
        if not neurons and empty == "identity":
            layer.intermediate, layer.output = nn.Identity(), SkippedSublayer(1, False)
        else:
            idx = torch.tensor(neurons, dtype=torch.long)
            _keep_out(layer.intermediate.dense, idx)
            _keep_in(layer.output.dense, idx)
    dims = torch.tensor(structure["hidden"], dtype=torch.long)
    embeddings = base.embeddings
    tables = (embeddings.word_embeddings, embeddings.position_embeddings, embeddings.token_type_embeddings)
    for table in tables:
        table.weight = _parameter(table.weight, 1, dims)
        table.embedding_dim = int(dims.numel())
    _keep_norm(embeddings.LayerNorm, dims)
    for layer in base.encoder.layer:
        if not isinstance(layer.attention, SkippedSublayer):
            attention = layer.attention.self
            for reader in (attention.query, attention.key, attention.value):
                _keep_in(reader, dims)
            _keep_out(layer.attention.output.dense, dims)
            _keep_norm(layer.attention.output.LayerNorm, dims)
        if not isinstance(layer.output, SkippedSublayer):
            _keep_in(layer.intermediate.dense, dims)
            _keep_out(layer.output.dense, dims)
            _keep_norm(layer.output.LayerNorm, dims)
    pooler = getattr(base, "pooler", None)
    if pooler is not None:
        _keep_in(pooler.dense, dims)
    head = getattr(model, "classifier", None)
    if head is not None and hasattr(head, "dense"):
        _keep_in(head.dense, dims)
    elif head is not None and pooler is None and isinstance(head, nn.Linear):
        _keep_in(head, dims)


class AptunePrunedBertForSequenceClassification(BertForSequenceClassification):
    def __init__(self, config):
        super().__init__(config)
        prune_to_structure(self, config.aptune_structure)


class AptunePrunedRobertaForSequenceClassification(RobertaForSequenceClassification):
    def __init__(self, config):
        super().__init__(config)
        prune_to_structure(self, config.aptune_structure)
