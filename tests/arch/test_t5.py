"""T5 (v1.0 and the gated layout) as an aptune family: the masked model equals the compacted one
on teacher-forced logits and on greedy generation, with empty sub-layers (a stack's first
self-attention, which computes the position bias, a cross-attention and an FFN), pruned hidden
dimensions, adapters and a merge."""

from __future__ import annotations

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from aptune.apt.masks import apply_masks
from aptune.arch import get_spec
from aptune.counting import non_embedding_parameters
from aptune.lora import inject_lora, lora_modules, merge_and_unload
from aptune.surgery import compact_and_record
from tests.helpers import random_binary_masks, randomize_biases_and_norms

torch.set_num_threads(1)

LAYERS = 3  # encoder units 0-2; decoder units 3-8: (self 3, cross+FFN 4), (5, 6), (7, 8)


def tiny_t5(gated: bool, seed: int = 0, init_factor: float = 1.0,
            dtype: torch.dtype = torch.float32) -> T5ForConditionalGeneration:
    """A random T5. The default init gives logits small enough for the 1e-5 check in float32;
    greedy generation needs larger weights (`init_factor` 10) to pick varied tokens, and then
    float32 rounding in T5's norm exceeds 1e-5, so those models run in float64."""
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=LAYERS,
                   num_decoder_layers=LAYERS, num_heads=4, relative_attention_num_buckets=8,
                   relative_attention_max_distance=16, dropout_rate=0.0,
                   feed_forward_proj="gated-gelu" if gated else "relu",
                   tie_word_embeddings=not gated, decoder_start_token_id=0, pad_token_id=0,
                   eos_token_id=1, initializer_factor=init_factor)
    return randomize_biases_and_norms(T5ForConditionalGeneration(cfg).eval(), seed).to(dtype)


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 96, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    decoder_ids = torch.randint(2, 96, (3, 5), generator=g)
    decoder_ids[:, 0] = 0
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": decoder_ids}


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def _generate(model, batch):
    """Greedy tokens and each step's raw logits (B, steps, vocab), decoding with the cache."""
    with torch.no_grad():
        out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             max_new_tokens=6, min_new_tokens=6, do_sample=False, num_beams=1,
                             bad_words_ids=[[0]],  # a random model would repeat the pad token
                             output_logits=True, return_dict_in_generate=True)
    return out.sequences, torch.stack(out.logits, 1)


@pytest.mark.parametrize("gated", [False, True], ids=["v1.0", "gated"])
def test_shape_counts_heads_per_attention_module(gated):
    model = tiny_t5(gated)
    spec = get_spec(model)
    shape = spec.shape(model)
    assert shape.heads == (4,) * (LAYERS + 2 * LAYERS)
    assert shape.neurons == (48,) * LAYERS + (0, 48) * LAYERS  # decoder self units have no FFN
    assert (shape.hidden, shape.head_dim, shape.gated_ffn) == (32, 8, gated)
    counted = sum(p.numel() for m in spec.non_embedding_modules(model) for p in m.parameters())
    assert non_embedding_parameters(model) == counted
    attention = 4 * 32 * 32 * (LAYERS + 2 * LAYERS)
    ffn = (3 if gated else 2) * 32 * 48 * 2 * LAYERS
    norms = 32 * (2 * LAYERS + 3 * LAYERS + 2)
    assert counted == attention + ffn + norms


# (keep probability, fully masked attention units, fully masked FFN units)
CASES = [
    (0.6, (), ()),
    (0.5, (0, 3), ()),  # both stacks' first self-attention: the position-bias source goes
    (0.5, (6,), (1, 8)),  # a cross-attention; an encoder and a decoder FFN
    (0.4, (1, 5), (4,)),  # a later self-attention in each stack
]


def _masked_then_compacted(model, keep, empty_attention, empty_ffn, measure):
    """`measure(model)` under random binary masks, then after compaction; and the structure."""
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


@pytest.mark.parametrize("gated", [False, True], ids=["v1.0", "gated"])
@pytest.mark.parametrize("keep, empty_attention, empty_ffn", CASES)
def test_masked_equals_compacted(gated, keep, empty_attention, empty_ffn):
    model = tiny_t5(gated)
    spec = get_spec(model)
    batch = _batch()
    dense_logits, dense_params = _logits(model, batch), non_embedding_parameters(model)
    masked, compacted, structure = _masked_then_compacted(
        model, keep, empty_attention, empty_ffn, lambda m: _logits(m, batch))
    assert not torch.allclose(masked, dense_logits, atol=1e-3)
    assert (masked - compacted).abs().max() <= 1e-5
    assert non_embedding_parameters(model) < dense_params
    assert spec.shape(model).heads == tuple(len(h) for h in structure.heads)
    assert model.shared.weight is model.encoder.embed_tokens.weight is model.decoder.embed_tokens.weight
    assert model.lm_head.weight.shape[1] == len(structure.hidden)


@pytest.mark.parametrize("gated", [False, True], ids=["v1.0", "gated"])
@pytest.mark.parametrize("keep, empty_attention, empty_ffn", CASES)
def test_generation_masked_equals_compacted(gated, keep, empty_attention, empty_ffn):
    """Greedy generation with the cache: a pruned-away decoder self-attention must keep the
    cache's length right and the position bias flowing."""
    model = tiny_t5(gated, init_factor=10.0, dtype=torch.float64)
    batch = _batch()
    masked, compacted, _ = _masked_then_compacted(
        model, keep, empty_attention, empty_ffn, lambda m: _generate(m, batch))
    (masked_tokens, masked_logits), (tokens, logits) = masked, compacted
    assert len(set(masked_tokens[:, 1:].flatten().tolist())) >= 2  # not one token repeated
    assert torch.equal(masked_tokens, tokens)
    # generate returns float32 logits, and T5's norm takes float32 statistics: measured ≤ 1.2e-5
    # of the logits' size when right, 0.1 to 0.4 with a wrong cache length under a skipped layer
    assert (masked_logits - logits).abs().max() <= 1e-4 * masked_logits.abs().max()


def test_compacting_twice_gathers_the_original_bias_columns():
    """A second compaction composes the kept heads with the first, in the bias table's numbering."""
    model = tiny_t5(gated=True, dtype=torch.float64)
    spec = get_spec(model)
    batch = _batch(1)
    masks = random_binary_masks(model, spec, 0.8, torch.Generator().manual_seed(2))
    apply_masks(model, spec, masks)
    first = _logits(model, batch)
    masks.remove_hooks()
    compact_and_record(model, spec, masks.kept())
    assert (first - _logits(model, batch)).abs().max() <= 1e-5
    masks = random_binary_masks(model, spec, 0.6, torch.Generator().manual_seed(3))
    masks.head[0].zero_()
    apply_masks(model, spec, masks)
    second = _logits(model, batch)
    masks.remove_hooks()
    structure = compact_and_record(model, spec, masks.kept())
    assert (second - _logits(model, batch)).abs().max() <= 1e-5
    assert structure.heads[0] == ()


def test_adapters_follow_surgery_and_merge():
    model = tiny_t5(gated=True)
    spec = get_spec(model)
    inject_lora(model, 4, 8, spec.apt_target_modules)
    targets = {name.rsplit(".", 1)[-1] for name, _ in lora_modules(model)}
    assert targets == {"q", "v", "wi_0"}
    assert len(lora_modules(model)) == 2 * LAYERS + 4 * LAYERS + 2 * LAYERS
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.normal_(0, 0.1)
    batch = _batch(2)
    masks = random_binary_masks(model, spec, 0.5, torch.Generator().manual_seed(4))
    masks.head[4].zero_()
    apply_masks(model, spec, masks)
    masked = _logits(model, batch)
    masks.remove_hooks()
    compact_and_record(model, spec, masks.kept())
    assert (masked - _logits(model, batch)).abs().max() <= 1e-5
    merge_and_unload(model)
    assert (masked - _logits(model, batch)).abs().max() <= 1e-5


def test_unsupported_families_list_t5_and_t5_refuses_classification(tmp_path):
    from aptune.arch import spec_for_model_type
    from aptune.errors import AptuneError
    from aptune.models import load_classifier

    with pytest.raises(AptuneError) as err:
        spec_for_model_type("gpt2")
    assert "bert, roberta, t5" in err.value.fix
    tiny_t5(gated=False).save_pretrained(tmp_path / "t5")
    with pytest.raises(AptuneError) as err:
        load_classifier(str(tmp_path / "t5"), 2)
    assert "'t5' model for a sequence-classification task" in err.value.problem
    assert "one of: bert, roberta" in err.value.fix


def test_save_and_load_pruned_rebuilds_the_compacted_model(tmp_path):
    from aptune.export import load_pruned, save_pruned

    model = tiny_t5(gated=True)
    batch = _batch(3)
    _, compacted, structure = _masked_then_compacted(model, 0.5, (0, 3, 6), (8,),
                                                     lambda m: _logits(m, batch))
    save_pruned(model, tmp_path / "pruned")
    loaded = load_pruned(tmp_path / "pruned")
    assert type(loaded).__name__ == "T5ForConditionalGeneration"
    assert (_logits(loaded, batch) - compacted).abs().max() <= 1e-6
    assert loaded.shared.weight is loaded.decoder.embed_tokens.weight is loaded.lm_head.weight
    assert get_spec(loaded).shape(loaded) == get_spec(model).shape(model)
    assert non_embedding_parameters(loaded) == non_embedding_parameters(model)
