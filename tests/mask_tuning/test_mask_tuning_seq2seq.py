"""Mask Tuning on encoder-decoders (tiny T5 and BERT2BERT): the unit layout with its padding,
masked == materialised with empty sub-layers, the budget, and LoRA+Prune through the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from aptune.arch import get_spec
from aptune.counting import non_embedding_parameters
from aptune.export import load_pruned, save_pruned
from aptune.mask_tuning.layout import UnitLayout
from aptune.mask_tuning.materialize import materialize
from aptune.mask_tuning.pipeline import MaskTuningConfig, run_mask_tuning
from aptune.mask_tuning.search import BlockCosts, search_masks
from aptune.mask_tuning.unit_masks import unit_masks
from tests.helpers import build_tiny_model, invoke, randomize_biases_and_norms


@pytest.fixture(scope="module", params=["t5", "bert2bert"])
def family_dir(request, tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp(f"mt-{request.param}"), request.param,
                            hidden=32, heads=4, ffn=48)


def _load(folder):
    from transformers import AutoModelForSeq2SeqLM

    return randomize_biases_and_norms(AutoModelForSeq2SeqLM.from_pretrained(folder).eval())


def _batches(model, n=3, batch=4, seq=9, target=5, seed=0):
    """Inputs with some padding; targets with some -100 padding and their shifted decoder inputs."""
    config = model.config.decoder if hasattr(model.config, "decoder") else model.config
    start, pad = model.config.decoder_start_token_id, config.pad_token_id
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, config.vocab_size, (batch, seq), generator=g)
        mask = torch.ones(batch, seq, dtype=torch.long)
        mask[: batch // 2, seq - 3:] = 0
        ids[mask == 0] = pad
        labels = torch.randint(5, config.vocab_size, (batch, target), generator=g)
        labels[0, 3:] = -100
        shifted = torch.full_like(labels, start)
        shifted[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == -100, pad)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels,
                    "decoder_input_ids": shifted})
    return out


def test_the_layout_pads_the_missing_ffn_of_decoder_self_attention_units(family_dir):
    model = _load(family_dir)
    layout = UnitLayout.of(model, get_spec(model))
    # 2 encoder layers, then per decoder layer a self unit (no FFN) and a cross + FFN unit
    assert layout.heads == (4, 4, 4, 4, 4, 4) and layout.neurons == (48, 48, 0, 48, 0, 48)
    assert layout.streams == (0, 0, 1, 1, 1, 1)
    assert layout.first_of_stack == (True, False, True, False, False, False)
    assert layout.valid("neuron")[2].sum() == 0 and layout.per_unit(torch.ones(6, 48), "neuron")[2] is None


def test_the_search_never_keeps_padding():
    head_imp = torch.tensor([[3.0, 1.0], [2.0, 0.5]])  # (2, 2)
    neuron_imp = torch.tensor([[5.0, 4.0, 0.1], [9.0, 9.0, 9.0]])  # row 1 is padding
    valid = torch.tensor([[True, True, True], [False, False, False]])
    head, neuron = search_masks(head_imp, neuron_imp, BlockCosts(2.0, 1.0, "params"), 6.0,
                                None, valid)
    assert neuron[1].sum() == 0 and neuron[0].tolist() == [1.0, 1.0, 0.0]
    assert head.tolist() == [[1.0, 0.0], [1.0, 0.0]]


def test_masked_equals_materialized_with_empty_sublayers(family_dir, tmp_path):
    model = _load(family_dir)
    spec = get_spec(model)
    layout = UnitLayout.of(model, spec)
    g = torch.Generator().manual_seed(3)
    head = torch.rand(6, 4, generator=g) * 2 - 0.5  # real-valued scales, some negative
    neuron = (torch.rand(6, 48, generator=g) * 2 - 0.5) * layout.valid("neuron")
    head[0, :2] = 0
    head[2] = 0  # decoder layer 0's self-attention empty
    neuron[1] = 0  # encoder layer 1's FFN empty
    neuron[3, ::3] = 0
    batch = _batches(model, n=1)[0]

    def generate(m):  # greedy with the cache: positions and the causal mask read its length
        return m.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          max_new_tokens=6, min_new_tokens=6, do_sample=False, output_logits=True,
                          return_dict_in_generate=True)

    with unit_masks(model, spec, layout.per_unit(head, "head"), layout.per_unit(neuron, "neuron")):
        with torch.no_grad():
            masked, masked_gen = model(**batch).logits, generate(model)
    materialize(model, spec, head, neuron)
    with torch.no_grad():
        pruned, pruned_gen = model(**batch).logits, generate(model)
    assert torch.allclose(masked, pruned, atol=1e-5), (masked - pruned).abs().max()
    assert torch.equal(masked_gen.sequences, pruned_gen.sequences)
    assert torch.allclose(torch.stack(masked_gen.logits), torch.stack(pruned_gen.logits), atol=1e-4)
    save_pruned(model, tmp_path / "m")
    loaded = load_pruned(tmp_path / "m")
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, pruned, atol=1e-5)
        assert torch.equal(generate(loaded).sequences, pruned_gen.sequences)


def test_run_mask_tuning_meets_the_parameter_budget(family_dir):
    model = _load(family_dir)
    spec = get_spec(model)
    dense = non_embedding_parameters(model)
    cfg = MaskTuningConfig(kept=0.5, constraint="params", classification=False)
    result = run_mask_tuning(model, spec, _batches(model), cfg, log=lambda s: None)
    layout = UnitLayout.of(model, spec)
    assert (result.neuron[~layout.valid("neuron")] == 0).all()
    assert result.tuned and any(name.startswith("ffn") for name in result.tuned[2:]), result
    materialize(model, spec, result.head, result.neuron)
    kept = non_embedding_parameters(model) / dense
    assert 0.5 - (4 * 32 * 8 + 24) / dense <= kept <= 0.5 + 1e-9


def test_lora_prune_trains_an_encoder_decoder_end_to_end(tiny_data_dir, tmp_path, one_thread):
    t5 = build_tiny_model(tmp_path / "t5", "t5", hidden=32, heads=4, ffn=64)
    out = tmp_path / "lp"
    result = invoke("train", "--task", "sst2", "--method", "lora-prune", "--model", t5,
                    "--data-dir", tiny_data_dir, "--output-dir", out, "--epochs", "1",
                    "--base-epochs", "2", "--max-train-samples", "64", "--max-eval-samples", "32",
                    "--batch-size", "16", "--sparsity", "0.5", "--mt-num-samples", "32",
                    "--allow-untrained-prerequisite")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["params"]["kept_ratio"] <= 0.5 + 1e-9
    assert "mask tuning: search + rearrangement keep" in result.stdout
    scored = json.loads(invoke("eval", "--model-dir", out, "--max-eval-samples", "32", "--json").stdout)
    assert scored["eval"]["accuracy"] == pytest.approx(metrics["eval"]["accuracy"])
