"""Equivalence: the masked model equals the physically pruned one, with and without adapters,
including a fully pruned attention sub-layer, a fully pruned FFN and pruned hidden dimensions."""

from __future__ import annotations

import pytest
import torch

from aptune.arch import get_spec
from aptune.counting import non_embedding_parameters
from aptune.export import load_pruned, record_structure, save_pruned
from aptune.lora import inject_lora, lora_modules, merge_and_unload
from aptune.masks import Masks, apply_masks, masked_layer_norm, random_binary_masks
from aptune.models import load_classifier
from aptune.surgery import compact

from conftest import build_tiny_model, randomize_biases_and_norms

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
    compact(model, spec, masks)
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
    compact(model, spec, masks)
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
    structure = compact(model, spec, masks)
    record_structure(model, structure)
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
    s = compact(model, spec, masks)
    d, dh = len(s["hidden"]), 48 // 6
    expected = 0
    for heads, neurons in zip(s["heads"], s["neurons"]):
        if heads:
            expected += 4 * (d * dh * len(heads)) + 3 * dh * len(heads) + d + 2 * d  # q,k,v,o + LN
        if neurons:
            expected += 2 * d * len(neurons) + len(neurons) + d + 2 * d  # up, down + LN
    assert non_embedding_parameters(model) == expected
