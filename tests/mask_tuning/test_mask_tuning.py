"""Mask Tuning (the LoRA+Prune baseline's pruning step) on tiny models and hand-made cases."""

from __future__ import annotations

import itertools

import pytest
import torch

from aptune.arch import get_spec
from aptune.counting import non_embedding_parameters
from aptune.export import load_pruned, save_pruned
from aptune.mask_tuning.pipeline import MaskTuningConfig, run_mask_tuning
from aptune.mask_tuning.fisher import collect_mask_gradients
from aptune.mask_tuning.materialize import materialize
from aptune.mask_tuning.rearrange import rearrange_layer, rearrange_masks
from aptune.mask_tuning.rescale import lsmr_scales, rescale_masks
from aptune.mask_tuning.search import BlockCosts, mac_costs, param_costs, search_masks
from aptune.mask_tuning.unit_masks import unit_masks
from tests.helpers import build_tiny_model, randomize_biases_and_norms


@pytest.fixture(scope="module", params=["bert", "roberta"])
def model_dir(request, tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp(f"mt-{request.param}"), request.param,
                            layers=3, hidden=32, heads=4, ffn=48)


def _load(folder):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    return randomize_biases_and_norms(model)


def _batches(model, n=4, batch=6, seq=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, model.config.vocab_size, (batch, seq), generator=g)
        mask = torch.ones(batch, seq, dtype=torch.long)
        mask[: batch // 2, seq - 3:] = 0  # some padding
        ids[mask == 0] = model.config.pad_token_id
        labels = torch.randint(0, 2, (batch,), generator=g)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


# -- search -------------------------------------------------------------------------------------
def _brute_force(head_imp, neuron_imp, costs, budget):
    best, best_sets = -1.0, None
    heads, neurons = head_imp.flatten().tolist(), neuron_imp.flatten().tolist()
    for hk in range(1, len(heads) + 1):
        for hs in itertools.combinations(range(len(heads)), hk):
            left = budget - hk * costs.head
            if left < 0:
                continue
            n = min(len(neurons), int(left // costs.neuron))
            for ns in itertools.combinations(range(len(neurons)), n):
                score = sum(heads[i] for i in hs) + sum(neurons[i] for i in ns)
                if score > best + 1e-12:
                    best, best_sets = score, (hs, ns)
    return best, best_sets


@pytest.mark.parametrize("budget", [10.0, 13.0, 17.5, 25.0])
def test_search_is_exact_on_a_hand_made_case(budget):
    head_imp = torch.tensor([[5.0, 1.0], [0.5, 3.0]])  # (L=2, H=2)
    neuron_imp = torch.tensor([[2.0, 0.1, 1.5], [0.9, 2.5, 0.2]])  # (L=2, F=3)
    costs = BlockCosts(head=4.0, neuron=1.5, kind="params")
    head, neuron = search_masks(head_imp, neuron_imp, costs, budget)
    best, _ = _brute_force(head_imp, neuron_imp, costs, budget)
    score = float((head * head_imp).sum() + (neuron * neuron_imp).sum())
    assert score == pytest.approx(best)
    assert float(head.sum() * costs.head + neuron.sum() * costs.neuron) <= budget
    assert head.sum() >= 1


def test_search_hand_case_picks_the_expected_units():
    # Budget 13 with heads at 4 and neurons at 1.5: one head + 6 neurons (score 5 + 7.2 = 12.2)
    # beats two heads + 3 neurons (5 + 3 + 6.0 = 14.0)? No: 14.0 wins, so two heads are kept.
    head_imp = torch.tensor([[5.0, 1.0], [0.5, 3.0]])
    neuron_imp = torch.tensor([[2.0, 0.1, 1.5], [0.9, 2.5, 0.2]])
    head, neuron = search_masks(head_imp, neuron_imp, BlockCosts(4.0, 1.5, "params"), 13.0)
    assert head.tolist() == [[1, 0], [0, 1]]
    assert neuron.tolist() == [[1, 0, 1], [0, 1, 0]]


def test_costs_follow_the_spec_formulas():
    mac = mac_costs(hidden=768, head_dim=64, seq_len=25.16)
    assert mac.head == pytest.approx(4 * 25.16 * 768 * 64 + 2 * 25.16 ** 2 * 64)
    assert mac.neuron == pytest.approx(2 * 25.16 * 768)
    assert 120 < mac.head / mac.neuron < 140  # "one head costs about as much as 130 neurons"
    p = param_costs(hidden=768, head_dim=64, biases=False)
    assert (p.head, p.neuron) == (4 * 768 * 64, 2 * 768)


# -- rearrangement ------------------------------------------------------------------------------
def test_rearrangement_keeps_per_layer_counts():
    g = torch.Generator().manual_seed(0)
    grads = torch.randn(16, 3, 10, generator=g)  # (n_batches, L, N)
    importance = grads.pow(2).sum(0)
    masks = torch.zeros(3, 10)
    masks[0, :7] = 1
    masks[1, :2] = 1
    masks[2] = 1
    out = rearrange_masks(grads, importance, masks)
    assert out.sum(1).tolist() == masks.sum(1).tolist()
    assert set(out.unique().tolist()) <= {0.0, 1.0}


def test_rearrangement_prunes_units_whose_gradients_cancel():
    # Units 0 and 1 have large opposite gradients: pruning both costs nothing together.
    base = torch.tensor([1.0, -1.0, 0.3, 0.2, 0.25])
    grads = torch.stack([base * s for s in (1.0, 2.0, -1.0, 0.5)])  # (4, 5)
    grads[:, 0] *= 3
    grads[:, 1] *= 3
    importance = grads.pow(2).sum(0)
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0])  # the diagonal Fisher prunes 3 and 4
    out = rearrange_layer(grads, importance, mask)
    pruned = set(torch.nonzero(out == 0).flatten().tolist())
    cost = lambda p: float(grads[:, sorted(p)].sum(1).pow(2).sum())  # noqa: E731
    assert len(pruned) == 2
    assert cost(pruned) <= cost({3, 4}) + 1e-9


# -- LSMR ---------------------------------------------------------------------------------------
def test_lsmr_recovers_scales_of_a_well_posed_system():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 5, generator=g, dtype=torch.float64) * 10
    truth = torch.tensor([0.5, 1.5, -0.3, 2.0, 1.0], dtype=torch.float64)
    normal, rhs = a.t() @ a, a.t() @ (a @ truth)
    scales, ok = lsmr_scales(normal, rhs)
    assert ok
    assert torch.allclose(torch.as_tensor(scales), truth, atol=1e-2)


def _ffn_objective(model, spec, batches, tuned, ones_h, ones_n, i, scales):
    """The least-squares objective that the FFN rescaling of layer i minimises (pre-LayerNorm):
    Σ ‖W_2 (h_S ⊙ m) + b_2 + u_S − (W_2 h_T + b_2 + u_T)‖² over the non-padding tokens, with the
    student stream of the solve (earlier layers and this layer's heads tuned)."""
    from aptune.mask_tuning import rescale as R

    down = spec.ffn(spec.layers(model)[i]).down
    layout = R.UnitLayout.of(model, spec)
    s_head, s_neuron = R._student_masks(tuned.head, tuned.neuron, layout, i, "ffn")
    total = 0.0
    with torch.no_grad():
        for batch in batches:
            keep = batch["attention_mask"].bool()
            teacher = R._capture(model, spec, i, "ffn", batch, list(ones_h), list(ones_n))
            student = R._capture(model, spec, i, "ffn", batch, s_head, s_neuron)
            target = down(teacher["inner"]) + teacher["residual"]
            output = down(student["inner"] * scales) + student["residual"]
            total += float((output - target)[keep].pow(2).sum())
    return total


def test_rescaling_reduces_the_reconstruction_error(model_dir):
    model = _load(model_dir)
    spec = get_spec(model)
    batches = _batches(model)
    head = torch.ones(3, 4)
    head[1, 1:3] = 0
    head[2, 0] = 0
    neuron = (torch.rand(3, 48, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    ones_h, ones_n = torch.ones_like(head), torch.ones_like(neuron)
    tuned = rescale_masks(model, spec, batches, head, neuron, ones_h, ones_n, classification=False)
    assert tuned.tuned, tuned.stopped
    assert {"ffn0", "mha1", "ffn1"} <= set(tuned.tuned), tuned
    for i in (0, 1):
        before = _ffn_objective(model, spec, batches, tuned, ones_h, ones_n, i, neuron[i])
        after = _ffn_objective(model, spec, batches, tuned, ones_h, ones_n, i, tuned.neuron[i])
        assert after < before
    assert torch.equal(tuned.head != 0, head != 0)  # rescaling never changes which units survive
    assert torch.equal(tuned.neuron != 0, neuron != 0)


# -- gradients, materialisation, the whole procedure -------------------------------------------
def test_mask_gradients_match_finite_differences(model_dir):
    model = _load(model_dir)
    spec = get_spec(model)
    batch = _batches(model, n=1)[0]
    flags = [p.requires_grad for p in model.parameters()]
    grads = collect_mask_gradients(model, spec, [batch])
    assert [p.requires_grad for p in model.parameters()] == flags  # restored afterwards
    eps = 1e-3
    for layer, h in ((0, 1), (2, 3)):
        losses = []
        for sign in (1, -1):
            head = torch.ones(3, 4)
            head[layer, h] += sign * eps
            with unit_masks(model, spec, list(head), None), torch.no_grad():
                losses.append(float(model(**batch).loss))
        numeric = (losses[0] - losses[1]) / (2 * eps)
        assert grads.head[0, layer, h] == pytest.approx(numeric, rel=2e-2, abs=1e-4)


def test_masked_equals_materialized_with_empty_sublayers(model_dir, tmp_path):
    model = _load(model_dir)
    spec = get_spec(model)
    g = torch.Generator().manual_seed(3)
    head = torch.rand(3, 4, generator=g) * 2 - 0.5  # real-valued scales, some negative
    neuron = torch.rand(3, 48, generator=g) * 2 - 0.5
    head[0, :2] = 0
    head[1] = 0  # an empty attention sub-layer keeps LayerNorm(b_O + x)
    neuron[2] = 0  # an empty FFN keeps LayerNorm(b_2 + x)
    neuron[0, ::3] = 0
    batch = _batches(model, n=1)[0]
    with unit_masks(model, spec, list(head), list(neuron)), torch.no_grad():
        masked = model(**batch).logits
    materialize(model, spec, head, neuron)
    with torch.no_grad():
        pruned = model(**batch).logits
    assert torch.allclose(masked, pruned, atol=1e-5)
    assert spec.attention(spec.layers(model)[1]).query.out_features == 0
    save_pruned(model, tmp_path / "m")
    loaded = load_pruned(tmp_path / "m")
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, pruned, atol=1e-6)


@pytest.mark.parametrize("constraint", ["params", "mac"])
@pytest.mark.parametrize("teacher", ["full", "ta_sqrt"])
def test_run_mask_tuning_meets_the_parameter_budget(model_dir, constraint, teacher):
    model = _load(model_dir)
    spec = get_spec(model)
    dense = non_embedding_parameters(model)
    cfg = MaskTuningConfig(kept=0.5, constraint=constraint, seq_len=9.0, teacher=teacher,
                           classification=True)
    result = run_mask_tuning(model, spec, _batches(model), cfg, log=lambda s: None)
    assert 1 <= result.kept_heads < 12 and result.kept_neurons < 3 * 48
    materialize(model, spec, result.head, result.neuron)
    kept = non_embedding_parameters(model) / dense
    if constraint == "params":
        assert kept <= 0.5 + 1e-9
        assert kept >= 0.5 - (4 * 32 * 8 + 24) / dense  # within one head's cost of the target
    assert set(result.seconds) >= {"fisher", "search", "rearrange", "rescale", "total"}
