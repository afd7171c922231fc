"""BERT2BERT (an EncoderDecoderModel of two BERT stacks) as an aptune family: masked == compacted
on teacher-forced logits and on greedy generation with the cache, with a pruned-away decoder
self-attention, cross-attention and FFNs, pruned hidden dimensions (which cut the LM head's
transform and its tied vocabulary projection), and save/load."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertLMHeadModel, BertModel, EncoderDecoderModel

from aptune.apt.masks import apply_masks
from aptune.arch import get_spec
from aptune.counting import non_embedding_parameters
from aptune.surgery import compact_and_record
from tests.helpers import random_binary_masks, randomize_biases_and_norms

torch.set_num_threads(1)

LAYERS = 2  # encoder units 0-1; decoder units (self 2, cross+FFN 3), (4, 5)


def tiny_bert2bert(seed: int = 0, init_range: float = 0.02,
                   dtype: torch.dtype = torch.float32) -> EncoderDecoderModel:
    """A random BERT2BERT; generation tests use larger weights (`init_range` 0.2) and float64."""
    torch.manual_seed(seed)
    common = dict(vocab_size=80, hidden_size=24, num_hidden_layers=LAYERS, num_attention_heads=4,
                  intermediate_size=40, max_position_embeddings=64, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0, pad_token_id=0, initializer_range=init_range)
    encoder = BertModel(BertConfig(**common))  # with the pooler, as a warm start from MiniLM has
    decoder = BertLMHeadModel(BertConfig(**common, is_decoder=True, add_cross_attention=True))
    model = EncoderDecoderModel(encoder=encoder, decoder=decoder)
    for cfg in (model.config, model.generation_config):
        cfg.decoder_start_token_id, cfg.eos_token_id, cfg.pad_token_id = 2, 3, 0
    return randomize_biases_and_norms(model.eval(), seed).to(dtype)


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 80, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    decoder_ids = torch.randint(4, 80, (3, 5), generator=g)
    decoder_ids[:, 0] = 2
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": decoder_ids}


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def _generate(model, batch):
    with torch.no_grad():
        out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             max_new_tokens=6, min_new_tokens=6, do_sample=False, num_beams=1,
                             bad_words_ids=[[0]], output_logits=True, return_dict_in_generate=True)
    return out.sequences, torch.stack(out.logits, 1)


def _masked_then_compacted(model, keep, empty_attention, empty_ffn, measure):
    spec = get_spec(model)
    masks = random_binary_masks(model, spec, keep, torch.Generator().manual_seed(5))
    for i in empty_attention:
        masks.head[i].zero_()
    for i in empty_ffn:
        masks.neuron[i].zero_()
    apply_masks(model, spec, masks)
    masked = measure(model)
    masks.remove_hooks()
    structure = compact_and_record(model, spec, masks.kept())
    return masked, measure(model), structure


def test_shape_counts_units():
    model = tiny_bert2bert()
    spec = get_spec(model)
    shape = spec.shape(model)
    assert spec.family == "bert2bert"
    assert shape.heads == (4,) * (3 * LAYERS)
    assert shape.neurons == (40,) * LAYERS + (0, 40) * LAYERS
    attention = (4 * 24 * 24 + 4 * 24) * 3 * LAYERS
    ffn = (2 * 24 * 40 + 40 + 24) * 2 * LAYERS
    norms = 2 * 24 * (2 * LAYERS + 3 * LAYERS)
    assert non_embedding_parameters(model) == attention + ffn + norms


CASES = [  # (keep, fully masked attention units, fully masked FFN units)
    (0.6, (), ()),
    (0.5, (2,), ()),  # the decoder's first self-attention: the cache must still count tokens
    (0.5, (0, 3), (5,)),  # an encoder self-attention, a cross-attention, a decoder FFN
    (0.4, (4,), (0,)),
]


@pytest.mark.parametrize("keep, empty_attention, empty_ffn", CASES)
def test_masked_equals_compacted(keep, empty_attention, empty_ffn):
    model = tiny_bert2bert()
    batch = _batch()
    dense, dense_params = _logits(model, batch), non_embedding_parameters(model)
    masked, compacted, structure = _masked_then_compacted(
        model, keep, empty_attention, empty_ffn, lambda m: _logits(m, batch))
    assert not torch.allclose(masked, dense, atol=1e-3)
    assert (masked - compacted).abs().max() <= 1e-5
    assert non_embedding_parameters(model) < dense_params
    head = model.decoder.cls.predictions
    assert head.decoder.weight is model.decoder.bert.embeddings.word_embeddings.weight  # still tied
    assert head.transform.dense.out_features == len(structure.hidden)


@pytest.mark.parametrize("keep, empty_attention, empty_ffn", CASES)
def test_generation_masked_equals_compacted(keep, empty_attention, empty_ffn):
    model = tiny_bert2bert(init_range=0.2, dtype=torch.float64)
    batch = _batch()
    (masked_tokens, masked_logits), (tokens, logits), _ = _masked_then_compacted(
        model, keep, empty_attention, empty_ffn, lambda m: _generate(m, batch))
    assert torch.equal(masked_tokens, tokens)
    assert (masked_logits - logits).abs().max() <= 1e-4 * masked_logits.abs().max()


def test_save_and_load_pruned(tmp_path):
    from aptune.export import load_pruned, save_pruned

    model = tiny_bert2bert()
    batch = _batch(1)
    _, compacted, _ = _masked_then_compacted(model, 0.5, (2, 3), (1,), lambda m: _logits(m, batch))
    save_pruned(model, tmp_path / "pruned")
    loaded = load_pruned(tmp_path / "pruned")
    assert type(loaded).__name__ == "EncoderDecoderModel"
    assert (_logits(loaded, batch) - compacted).abs().max() <= 1e-6
    assert get_spec(loaded).shape(loaded) == get_spec(model).shape(model)
