"""CoFi gates on tiny BERT and RoBERTa: hooks (docs/baselines.md#cofi-gates), compaction equality
and export (docs/baselines.md#cofi-compaction)."""

from __future__ import annotations

import logging

import pytest
import torch

from aptune.arch import get_spec
from aptune.cofi.apply import apply_gates
from aptune.cofi.compaction import compact_with_gates
from aptune.cofi.gates import CoFiGates, L0Gates
from aptune.export import load_pruned, save_pruned
from aptune.lora import inject_lora, lora_modules
from tests.helpers import build_tiny_model, randomize_biases_and_norms

pytestmark = pytest.mark.usefixtures("one_thread")

L, H, D, F = 3, 4, 32, 48


@pytest.fixture(scope="module", params=["bert", "roberta"])
def model_dir(request, tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp(f"cofi-{request.param}"), request.param,
                            layers=L, hidden=D, heads=H, ffn=F)


def _load(folder):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    return randomize_biases_and_norms(model)


def _batch(model, batch=4, seq=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, model.config.vocab_size, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[: batch // 2, seq - 3:] = 0  # some padding
    ids[mask == 0] = model.config.pad_token_id
    return {"input_ids": ids, "attention_mask": mask}


@torch.no_grad()
def _logits(model, batch):
    return model(**batch).logits


@torch.no_grad()
def _outputs(model, batch, keep_hidden: torch.Tensor | None = None) -> torch.Tensor:
    """Logits and every layer output, flattened: the task head squashes differences (tanh), so
    the hidden states are the sharper test. `keep_hidden` selects a dense model's kept dims."""
    out = model(**batch, output_hidden_states=True)
    hidden = [h if keep_hidden is None else h[..., keep_hidden] for h in out.hidden_states]
    return torch.cat([out.logits.flatten()] + [h.flatten() for h in hidden])


def _hand_gates(kept_hidden: str, seed: int = 0) -> CoFiGates:
    """Fractional kept values everywhere; layer 0's attention is removed by z_MHA = 0, layer 1's
    FFN has every neuron at 0 (z_FFN ≠ 0), layer 2's FFN is removed by z_FFN = 0; some heads,
    neurons and hidden dims are pruned."""
    g = torch.Generator().manual_seed(seed)
    frac = lambda *shape: 0.3 + 0.7 * torch.rand(shape, generator=g)  # kept values in (0.3, 1)
    head, mha, neuron, ffn = frac(L, H), frac(L), frac(L, F), frac(L)
    head[1, [0, 2]] = 0
    head[2, 3] = 0
    mha[0] = 0
    neuron[0, ::3] = 0
    neuron[1] = 0
    neuron[2, 1::2] = 0
    ffn[2] = 0
    hidden = frac(D) if kept_hidden == "fractional" else torch.ones(D)
    hidden[[1, 5, 7, 20]] = 0
    return CoFiGates(head=head, mha=mha, intermediate=neuron, ffn=ffn, hidden=hidden)


# -- hooks --------------------------------------------------------------------------------------
def test_all_one_gates_leave_the_model_unchanged(model_dir):
    model = _load(model_dir)
    batch = _batch(model)
    dense = _logits(model, batch)
    ones = CoFiGates(torch.ones(L, H), torch.ones(L), torch.ones(L, F), torch.ones(L), torch.ones(D))
    hooks = apply_gates(model, get_spec(model), ones)
    assert torch.allclose(_logits(model, batch), dense, atol=1e-6)
    hooks.gates = _hand_gates("fractional")
    assert not torch.allclose(_logits(model, batch), dense, atol=1e-3)
    with hooks.disabled():
        assert torch.allclose(_logits(model, batch), dense, atol=1e-6)
    hooks.remove()
    assert torch.allclose(_logits(model, batch), dense, atol=1e-6)


def test_a_zero_layer_gate_removes_the_sublayer(model_dir):
    model = _load(model_dir)
    spec = get_spec(model)
    batch = _batch(model)
    gates = CoFiGates(torch.ones(L, H), torch.ones(L), torch.ones(L, F), torch.ones(L), torch.ones(D))
    gates.mha[1] = 0
    gates.ffn[1] = 0
    hooks = apply_gates(model, spec, gates)
    layer_in = model(**batch, output_hidden_states=True).hidden_states[1]
    layer_out = model(**batch, output_hidden_states=True).hidden_states[2]
    assert torch.equal(layer_in, layer_out)  # both sub-layers bypassed, LayerNorms included
    hooks.remove()


def test_sampled_gates_train_every_log_alpha(model_dir):
    model = _load(model_dir).train()
    spec = get_spec(model)
    l0 = L0Gates.for_shape(spec.shape(model), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # away from the clamp at 1 so that every gate has a gradient
        for p in l0.log_alpha.values():
            p.fill_(0.5)
    hooks = apply_gates(model, spec, l0.sample(torch.Generator().manual_seed(3)))
    model(**_batch(model)).logits.pow(2).sum().backward()
    for name, p in l0.log_alpha.items():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name
    hooks.remove()


# -- compaction ---------------------------------------------------------------------------------
@pytest.mark.parametrize("hidden_fold,kept_hidden", [("cofi", "one"), ("exact", "fractional")])
def test_compacted_equals_gated(model_dir, hidden_fold, kept_hidden):
    # CoFi's fold ("cofi") leaves the post-LN ·z_hid unfolded: exact only for kept z_hid = 1, so
    # it is tested with those; the "exact" fold is tested with fractional kept z_hid.
    model = _load(model_dir)
    spec = get_spec(model)
    batch = _batch(model)
    gates = _hand_gates(kept_hidden)
    hooks = apply_gates(model, spec, gates, skip_empty_units=True)
    gated = _outputs(model, batch, gates.kept_hidden())
    hooks.remove()
    result = compact_with_gates(model, spec, gates, hidden_fold=hidden_fold)
    assert torch.allclose(_outputs(model, batch), gated, atol=1e-5)
    layers = spec.layers(model)
    assert not spec.has_attention(layers[0]) and spec.has_attention(layers[1])
    assert not spec.has_ffn(layers[1]) and not spec.has_ffn(layers[2])
    assert spec.attention(layers[1]).query.out_features == 2 * (D // H)
    assert spec.embedding_norm(model).weight.shape == (D - 4,)
    assert result.structure.heads[1] == (1, 3) and result.structure.neurons[1] == ()
    assert result.empty_unit_sublayers == [f"layer 1 FFN: every neuron gate is 0 but z_FFN = "
                                           f"{float(gates.ffn[1]):.4g}"]


def test_cofi_semantics_keep_the_bias_of_an_all_zero_unit_sublayer(model_dir, caplog):
    # CoFi issue #36 (docs/baselines.md#cofi-compaction): by default (as in CoFi) the gated model
    # still adds z_FFN·b_2 and runs the LayerNorm when every neuron is 0; compaction skips the
    # sub-layer and says so.
    model = _load(model_dir)
    spec = get_spec(model)
    batch = _batch(model)
    gates = _hand_gates("one")
    hooks = apply_gates(model, spec, gates)
    faithful = _outputs(model, batch, gates.kept_hidden())
    hooks.skip_empty_units = True
    hooks.gates = gates  # decisions are re-read on assignment
    skipping = _outputs(model, batch, gates.kept_hidden())
    hooks.remove()
    assert not torch.allclose(faithful, skipping, atol=1e-2)
    with caplog.at_level(logging.WARNING, logger="aptune.cofi.compaction"):
        compact_with_gates(model, spec, gates)
    assert "layer 1 FFN" in caplog.text
    assert torch.allclose(_outputs(model, batch), skipping, atol=1e-5)


def test_cofi_semantics_match_compaction_without_the_edge_case(model_dir):
    model = _load(model_dir)
    spec = get_spec(model)
    batch = _batch(model)
    gates = _hand_gates("one")
    gates.intermediate[1, :5] = 0.5  # layer 1's FFN keeps a few neurons
    hooks = apply_gates(model, spec, gates)  # default: CoFi's semantics
    gated = _outputs(model, batch, gates.kept_hidden())
    hooks.remove()
    assert compact_with_gates(model, spec, gates).empty_unit_sublayers == []
    assert torch.allclose(_outputs(model, batch), gated, atol=1e-5)


def test_compaction_merges_lora_first(model_dir):
    model = _load(model_dir)
    spec = get_spec(model)
    inject_lora(model, 4, 8.0, spec.lora_target_modules, spec.head_modules)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, module in lora_modules(model):
            module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=g) * 0.2)
    batch = _batch(model)
    gates = _hand_gates("fractional")
    hooks = apply_gates(model, spec, gates, skip_empty_units=True)
    gated = _outputs(model, batch, gates.kept_hidden())
    hooks.remove()
    compact_with_gates(model, spec, gates, hidden_fold="exact")
    assert not lora_modules(model)
    assert torch.allclose(_outputs(model, batch), gated, atol=1e-5)


def test_save_and_load_after_compaction(model_dir, tmp_path):
    model = _load(model_dir)
    spec = get_spec(model)
    batch = _batch(model)
    l0 = L0Gates.for_shape(get_spec(model).shape(model))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # a spread of log α's, as after some pruning
        for p in l0.log_alpha.values():
            p.copy_(torch.randn(p.shape, generator=g) * 2.5)
        l0.log_alpha["mha"][0] = -4.0  # removes layer 0's attention
    gates = l0.deterministic()
    assert float(gates.mha[0]) == 0 and bool((gates.hidden == 0).any())
    hooks = apply_gates(model, spec, gates, skip_empty_units=True)
    gated = _outputs(model, batch, gates.kept_hidden())
    hooks.remove()
    compact_with_gates(model, spec, gates, hidden_fold="exact")
    compacted = _outputs(model, batch)
    assert torch.allclose(compacted, gated, atol=1e-5)
    loaded = load_pruned(save_pruned(model, tmp_path / "pruned"))
    assert torch.equal(_outputs(loaded, batch), compacted)
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())
