"""The inference-cost budget (docs/method.md#inference-cost-budget): the cost model against
torch's own count of multiply-adds, the two-budget keep-set search against both targets, and an
APT run on a tiny BERT2BERT whose compacted model costs what the run reports."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from aptune.apt.budget import BLOCK_TYPES, Counts, select_keep_set
from aptune.apt.inference_cost import InferenceCost
from aptune.arch import get_spec
from tests.helpers import fails, invoke

torch.set_num_threads(1)

SOURCE, TARGET = 12, 3


def _layer_macs(model) -> float:
    """Multiply-adds of the two stacks' transformer layers for one example, counted by torch
    (eager attention, so that the score and mix products are counted too)."""
    for sub in (model.config.encoder, model.config.decoder, model.encoder.config, model.decoder.config):
        sub._attn_implementation = "eager"
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(input_ids=torch.randint(5, 20, (1, SOURCE)),  # (1, SOURCE)
              decoder_input_ids=torch.randint(5, 20, (1, TARGET)))  # (1, TARGET)
    counts = counter.get_flop_counts()
    stacks = ("EncoderDecoderModel.encoder.encoder", "EncoderDecoderModel.decoder.bert.encoder")
    return sum(sum(counts.get(name, {}).values()) for name in stacks) / 2  # FLOPs -> multiply-adds


def _model_cost(model) -> InferenceCost:
    spec = get_spec(model)
    shape = spec.shape(model)
    return InferenceCost.build(list(shape.heads), list(shape.neurons), spec.unit_streams(model),
                               [SOURCE, TARGET], shape.head_dim, shape.ffn_factor)


def _dense(model):
    shape = get_spec(model).shape(model)
    return (torch.ones(sum(shape.heads), dtype=torch.bool), torch.ones(sum(shape.neurons), dtype=torch.bool),
            shape.hidden)


def test_streams_put_cross_attention_keys_on_the_encoder(bert2bert_dir, tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification, EncoderDecoderModel

    b2b = EncoderDecoderModel.from_pretrained(bert2bert_dir)
    assert get_spec(b2b).unit_streams(b2b) == [(0, 0), (0, 0), (1, 1), (1, 0), (1, 1), (1, 0)]
    bert = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    assert set(get_spec(bert).unit_streams(bert)) == {(0, 0)}


def test_the_cost_model_counts_what_torch_counts(bert2bert_dir):
    from transformers import EncoderDecoderModel

    model = EncoderDecoderModel.from_pretrained(bert2bert_dir).eval()
    assert _model_cost(model).total(*_dense(model)) == pytest.approx(_layer_macs(model))


def test_the_cost_models_projections_match_torch_on_gated_t5(t5_dir):
    """T5 (gated FFN: three matrices per neuron; cross-attention keys and values on the source):
    the cost less the attention products (b_h, which T5's fused attention hides from the counter)
    equals the stacks' linear multiply-adds."""
    from transformers import T5ForConditionalGeneration

    model = T5ForConditionalGeneration.from_pretrained(t5_dir).eval()
    spec = get_spec(model)
    shape = spec.shape(model)
    assert shape.ffn_factor == 3
    cost = InferenceCost.build(list(shape.heads), list(shape.neurons), spec.unit_streams(model),
                               [SOURCE, TARGET], shape.head_dim, shape.ffn_factor)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(input_ids=torch.randint(5, 20, (1, SOURCE)),  # (1, SOURCE)
              decoder_input_ids=torch.randint(5, 20, (1, TARGET)))  # (1, TARGET)
    counts = counter.get_flop_counts()
    linear = sum(v for name in ("T5ForConditionalGeneration.encoder", "T5ForConditionalGeneration.decoder")
                 for op, v in counts[name].items() if str(op) in ("aten.mm", "aten.addmm")) / 2
    assert cost.total(*_dense(model)) - float(cost.head_fixed.sum()) == pytest.approx(linear)


def _random_problem(seed: int):
    """Flat salience and a cost model of a 2+2-layer encoder-decoder (6 units) with 4 heads and
    64 neurons per unit, d_m 32."""
    g = torch.Generator().manual_seed(seed)
    heads, neurons = [4] * 6, [64, 64, 0, 64, 0, 64]
    streams = [(0, 0), (0, 0), (1, 1), (1, 0), (1, 1), (1, 0)]
    cost = InferenceCost.build(heads, neurons, streams, [64, 2], 8, 2)
    counts = Counts(sum(heads), sum(neurons), 32, 8, layers=6, mode="code")
    salience = {"head": torch.rand(24, generator=g), "neuron": torch.rand(256, generator=g),
                "hidden": torch.rand(32, generator=g) * 20}
    alive = {t: torch.ones_like(salience[t], dtype=torch.bool) for t in BLOCK_TYPES}
    return salience, alive, counts, cost


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("cost_fraction", [0.3, 0.5, 0.8])
def test_the_keep_set_meets_both_budgets(seed, cost_fraction):
    salience, alive, counts, cost = _random_problem(seed)
    dense_cost = cost.total(alive["head"], alive["neuron"], 32)
    plain = select_keep_set(salience, alive, counts, 0.4 * counts.size)
    both = select_keep_set(salience, alive, counts, 0.4 * counts.size, cost, cost_fraction * dense_cost)
    kept_cost = cost.total(both.keep["head"], both.keep["neuron"], both.keep["hidden"].numel())
    assert both.size < 0.4 * counts.size and kept_cost <= cost_fraction * dense_cost
    assert both.size == counts.formula(*(both.keep[t].numel() for t in BLOCK_TYPES))
    plain_cost = cost.total(plain.keep["head"], plain.keep["neuron"], plain.keep["hidden"].numel())
    if plain_cost <= cost_fraction * dense_cost:  # a budget that does not bind changes nothing
        assert all(torch.equal(plain.keep[t], both.keep[t]) for t in BLOCK_TYPES)


def test_a_binding_cost_budget_moves_the_kept_blocks_to_the_short_stream():
    salience, alive, counts, cost = _random_problem(0)
    dense_cost = cost.total(alive["head"], alive["neuron"], 32)
    plain = select_keep_set(salience, alive, counts, 0.4 * counts.size)
    both = select_keep_set(salience, alive, counts, 0.4 * counts.size, cost, 0.25 * dense_cost)
    encoder_neurons = lambda ks: int((ks.keep["neuron"] < 128).sum())  # noqa: E731  units 0 and 1
    assert encoder_neurons(both) < encoder_neurons(plain)
    # The search spends the parameter budget it can: more than a plain prefix stopped at the cost.
    assert both.size > 0.5 * plain.size


def test_a_protected_heads_raised_score_does_not_decide_the_search():
    """Salience of any scale (here ~1e-9) against one head raised to 1e10 (the protected
    cross-attention head): the search compares what each λ prunes, which the raised head never is."""
    salience, alive, counts, cost = _random_problem(1)
    salience = {t: v * 1e-9 for t, v in salience.items()}
    dense_cost = cost.total(alive["head"], alive["neuron"], 32)
    picks = []
    for raised in (1e10, 1.0):  # both put head 23 first in every order
        scores = {**salience, "head": salience["head"].clone()}
        scores["head"][23] = raised
        found = select_keep_set(scores, alive, counts, 0.4 * counts.size, cost, 0.25 * dense_cost)
        picks.append(found)
    assert 23 in picks[0].keep["head"].tolist()
    assert all(torch.equal(picks[0].keep[t], picks[1].keep[t]) for t in BLOCK_TYPES)


def test_apt_on_bert2bert_keeps_its_inference_cost_budget(bert2bert_dir, tiny_data_dir, tmp_path):
    from aptune.export import load_pruned

    out = tmp_path / "apt"
    result = invoke("train", "--task", "sst2", "--method", "apt", "--model", bert2bert_dir,
                    "--data-dir", tiny_data_dir, "--output-dir", out, "--epochs", "7",
                    "--max-train-samples", "96", "--max-eval-samples", "32", "--batch-size", "8",
                    "--lr", "3e-3", "--eval-every", "28", "--sparsity", "0.6",
                    "--max-inference-cost", "0.3", "--inference-lengths", f"{SOURCE},{TARGET}")
    assert "inference cost" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["params"]["kept_ratio"] <= 0.40
    reported = metrics["method_settings"]["pruning_log"][-1]["inference_cost"]
    assert reported <= 0.3
    from transformers import EncoderDecoderModel

    dense = EncoderDecoderModel.from_pretrained(bert2bert_dir).eval()
    pruned = load_pruned(out / "model").eval()
    assert _layer_macs(pruned) / _layer_macs(dense) == pytest.approx(reported, rel=1e-9)


@pytest.mark.parametrize("flags, message", [
    (("--max-inference-cost", "1.5"), "--max-inference-cost must be in (0, 1]"),
    (("--max-inference-cost", "0.5", "--inference-lengths", "128,x"), "--inference-lengths must be"),
    (("--max-inference-cost", "0.5", "--inference-lengths", "1,2,3"), "--inference-lengths must be"),
])
def test_bad_cost_budget_flags_are_refused(flags, message, tiny_bert_dir, tiny_data_dir, tmp_path):
    err = fails("train", "--task", "sst2", "--method", "apt", "--model", tiny_bert_dir, "--data-dir",
                tiny_data_dir, "--output-dir", tmp_path / "x", *flags)
    assert message in err
