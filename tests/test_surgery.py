"""Equivalence: the masked model equals the physically pruned one, with and without adapters,
including a fully pruned attention sub-layer, a fully pruned FFN and pruned hidden dimensions."""

from __future__ import annotations

import pytest
import torch

from aptune.apt.masks import Masks, apply_masks
from aptune.arch import get_spec
from aptune.counting import non_embedding_parameters
from aptune.export import load_pruned, save_pruned
from aptune.hooks import masked_layer_norm
from aptune.lora import inject_lora, lora_modules, merge_and_unload
from aptune.models import load_classifier
from aptune.structure import Structure, recorded_structure
from aptune.surgery import compact, compact_and_record
from tests.helpers import build_tiny_model, random_binary_masks, randomize_biases_and_norms

torch.set_num_threads(1)


@pytest.fixture(scope="module", params=["bert", "roberta"])
def deep_model_dir(request, tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp(request.param), request.param, layers=3,
                            hidden=48, heads=6, ffn=96, seed=3)


def _inputs(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, model.config.vocab_size, (4, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _load(folder):
    return randomize_biases_and_norms(load_classifier(str(folder), 2).eval())


def _logits(model, x):
    with torch.no_grad():
        return model(**x).logits


CASES = [  # (keep probability, fully pruned attention layer, fully pruned FFN layer)
    (0.6, None, None),
    (0.5, 1, None),
    (0.5, None, 0),
    (0.4, 0, 2),
    (0.9, 2, 2),  # one layer with neither attention nor FFN
]


@pytest.mark.parametrize("keep, empty_attn, empty_ffn", CASES)
def test_masked_equals_compacted(deep_model_dir, keep, empty_attn, empty_ffn):
    model = _load(deep_model_dir)
    spec = get_spec(model)
    x = _inputs(model)
    masks = random_binary_masks(model, spec, keep, torch.Generator().manual_seed(7),
                                empty_attn, empty_ffn)
    apply_masks(model, spec, masks)
    masked = _logits(model, x)
    masks.remove_hooks()
    dense_params = non_embedding_parameters(model)
    compact(model, spec, masks.kept())
    pruned = _logits(model, x)
    assert (masked - pruned).abs().max() <= 1e-5
    assert non_embedding_parameters(model) < dense_params
    assert not any(h for h in model._forward_hooks.values())  # the pruned model needs no hooks


def test_masked_equals_compacted_with_adapters_and_merge(deep_model_dir):
    model = _load(deep_model_dir)
    spec = get_spec(model)
    inject_lora(model, 4, 8, spec.apt_target_modules)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.normal_(0, 0.1)
    x = _inputs(model, 1)
    masks = random_binary_masks(model, spec, 0.5, torch.Generator().manual_seed(11), 1, 0)
    apply_masks(model, spec, masks)
    masked = _logits(model, x)
    masks.remove_hooks()
    compact(model, spec, masks.kept())
    assert (masked - _logits(model, x)).abs().max() <= 1e-5
    merge_and_unload(model)
    assert (masked - _logits(model, x)).abs().max() <= 1e-5


def test_all_ones_and_disabled_masks_change_nothing(deep_model_dir):
    model = _load(deep_model_dir)
    spec = get_spec(model)
    x = _inputs(model)
    dense = _logits(model, x)
    masks = apply_masks(model, spec, Masks.ones_like(model, spec))
    assert torch.equal(dense, _logits(model, x))
    masks.hidden[:5] = 0
    masks.head[0][:2] = 0.5
    assert not torch.allclose(dense, _logits(model, x))
    with masks.disabled():
        assert torch.equal(dense, _logits(model, x))


def test_masked_layer_norm_matches_layer_norm_on_kept_dims():
    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(10)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(3, 10)
    keep = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1, 0, 1.0])
    idx = keep.nonzero().flatten()
    out = masked_layer_norm(x, keep, norm.weight, norm.bias, norm.eps)
    ref = torch.nn.functional.layer_norm(x[:, idx], (len(idx),), norm.weight[idx], norm.bias[idx],
                                         norm.eps)
    assert torch.allclose(out[:, idx], ref, atol=1e-6)
    assert torch.allclose(masked_layer_norm(x, torch.ones(10), norm.weight, norm.bias, norm.eps),
                          norm(x), atol=1e-6)


def test_save_then_load_pruned_gives_identical_logits(deep_model_dir, tmp_path):
    model = _load(deep_model_dir)
    spec = get_spec(model)
    x = _inputs(model, 2)
    masks = random_binary_masks(model, spec, 0.5, torch.Generator().manual_seed(5), 0, 1)
    compact_and_record(model, spec, masks.kept())
    expected = _logits(model, x)
    save_pruned(model, tmp_path / "pruned")
    loaded = load_pruned(tmp_path / "pruned")
    assert torch.equal(expected, _logits(loaded, x))
    assert non_embedding_parameters(loaded) == non_embedding_parameters(model)
    layers = get_spec(loaded).layers(loaded)
    assert not get_spec(loaded).has_attention(layers[0]) and not get_spec(loaded).has_ffn(layers[1])


def test_compacted_parameter_count_matches_structure(deep_model_dir):
    model = _load(deep_model_dir)
    spec = get_spec(model)
    masks = random_binary_masks(model, spec, 0.5, torch.Generator().manual_seed(9), 2, None)
    s = masks.kept()
    compact(model, spec, s)
    d, dh = len(s.hidden), 48 // 6
    expected = 0
    for heads, neurons in zip(s.heads, s.neurons):
        if heads:
            expected += 4 * (d * dh * len(heads)) + 3 * dh * len(heads) + d + 2 * d  # q,k,v,o + LN
        if neurons:
            expected += 2 * d * len(neurons) + len(neurons) + d + 2 * d  # up, down + LN
    assert non_embedding_parameters(model) == expected


def test_structure_composes_two_compactions_to_the_original_numbering(deep_model_dir, tmp_path):
    """Compacting twice records the units kept in the dense numbering, and reloads exactly."""
    model = _load(deep_model_dir)
    spec = get_spec(model)
    x = _inputs(model, 3)
    first = random_binary_masks(model, spec, 0.7, torch.Generator().manual_seed(1))
    compact_and_record(model, spec, first.kept())
    second = random_binary_masks(model, spec, 0.7, torch.Generator().manual_seed(2))
    structure = compact_and_record(model, spec, second.kept())
    assert recorded_structure(model) == structure
    expected = Structure.identity(get_spec(model).shape(_load(deep_model_dir))).compose(
        first.kept()).compose(second.kept())
    assert structure == expected
    assert structure.summary() == {"hidden": len(structure.hidden),
                                   "heads": [len(h) for h in structure.heads],
                                   "neurons": [len(n) for n in structure.neurons]}
    assert Structure.from_dict(structure.to_dict()) == structure
    save_pruned(model, tmp_path / "twice")
    assert torch.equal(_logits(model, x), _logits(load_pruned(tmp_path / "twice"), x))


def test_compaction_needs_binary_masks(deep_model_dir):
    model = _load(deep_model_dir)
    masks = Masks.ones_like(model, get_spec(model))
    masks.head[0][0] = 0.5
    with pytest.raises(ValueError, match="binary"):
        masks.kept()


def test_a_pruned_model_is_not_a_starting_point(deep_model_dir, tmp_path):
    """Training starts from dense weights: a folder that aptune pruned, or a record that does not
    describe the model, gets one clear error instead of silently re-initialised weights."""
    from aptune.errors import AptuneError
    from aptune.mask_tuning.pipeline import MaskTuningConfig, run_mask_tuning

    model = _load(deep_model_dir)
    spec = get_spec(model)
    masks = random_binary_masks(model, spec, 0.6, torch.Generator().manual_seed(4))
    compact_and_record(model, spec, masks.kept())
    save_pruned(model, tmp_path / "pruned")
    (tmp_path / "pruned" / "vocab.txt").write_text((deep_model_dir / "vocab.txt").read_text())
    with pytest.raises(AptuneError, match="pruned"):
        load_classifier(str(tmp_path / "pruned"), 2)
    with pytest.raises(AptuneError, match="same shape in every layer"):
        run_mask_tuning(model, spec, [], MaskTuningConfig())
    dense = _load(deep_model_dir)
    dense.config.aptune_structure = recorded_structure(model).to_dict()  # a record of another model
    with pytest.raises(AptuneError, match="does not match"):
        compact_and_record(dense, spec, Masks.ones_like(dense, spec).kept())
