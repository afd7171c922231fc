"""LoRA adapters: injection, trainable set, merge equivalence, PEFT-style counting."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from aptune.arch import get_spec
from aptune.errors import AptuneError
from aptune.lora import LoRALinear, count_parameters, inject_lora, lora_modules, merge_and_unload
from aptune.models import load_classifier


def _model(folder, num_labels=2):
    torch.manual_seed(0)
    return load_classifier(str(folder), num_labels).eval()


def _inputs(seed=0, vocab=40):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_lora_starts_as_exact_noop(tiny_model_dir):
    model = _model(tiny_model_dir)
    x = _inputs()
    with torch.no_grad():
        before = model(**x).logits
    inject_lora(model, r=8, lora_alpha=16, target_modules=get_spec(model).lora_target_modules)
    with torch.no_grad():
        after = model(**x).logits
    assert torch.equal(before, after)


def test_only_adapters_and_head_train(tiny_model_dir):
    model = _model(tiny_model_dir)
    spec = get_spec(model)
    names = inject_lora(model, 8, 16, spec.lora_target_modules, trainable_modules=spec.head_modules)
    assert len(names) == 2 * len(spec.layers(model))  # query and value in every layer
    for name, p in model.named_parameters():
        expected = "lora_" in name or name.startswith(("classifier", "bert.pooler", "roberta.pooler"))
        assert p.requires_grad == expected, name
    trainable, total = count_parameters(model)
    hidden, n_layers = model.config.hidden_size, model.config.num_hidden_layers
    lora = n_layers * 2 * (8 * hidden + hidden * 8)
    head = sum(p.numel() for n, p in model.named_parameters()
               if n.startswith(("classifier", "bert.pooler", "roberta.pooler")))
    assert trainable == lora + head
    assert total == sum(p.numel() for p in model.parameters())


def test_merge_and_unload_matches_adapter_outputs(tiny_model_dir):
    model = _model(tiny_model_dir)
    inject_lora(model, 4, 8, ["query", "value"])
    with torch.no_grad():
        for _, m in lora_modules(model):  # B = 0 would make the test vacuous
            m.lora_B.normal_(0, 0.2)
        x = _inputs(1)
        before = model(**x).logits
        merge_and_unload(model)
        after = model(**x).logits
    assert not lora_modules(model)
    assert all(type(m) is torch.nn.Linear for n, m in model.named_modules() if n.endswith("query"))
    assert torch.allclose(before, after, atol=1e-5), (before - after).abs().max()


def test_merged_model_saves_plain_keys(tiny_bert_dir, tmp_path):
    model = _model(tiny_bert_dir)
    dense_keys = set(model.state_dict())
    inject_lora(model, 8, 16, ["query", "value"])
    merge_and_unload(model).save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert not any("lora" in k for k in saved)
    assert {k for k in dense_keys if "position_ids" not in k} >= set(saved) - {""}


def test_lora_linear_math():
    torch.manual_seed(0)
    base = torch.nn.Linear(6, 5)
    layer = LoRALinear.from_linear(base, r=2, lora_alpha=4)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(7, 6)
    expected = base(x) + 2.0 * (x @ layer.lora_A.T @ layer.lora_B.T)  # scaling = alpha / r = 2
    assert torch.allclose(layer(x), expected, atol=1e-6)
    assert torch.allclose(layer.merged_linear()(x), expected, atol=1e-5)


@pytest.mark.parametrize("targets", [["nonexistent"], ["^nothing$"]])
def test_target_modules_that_match_nothing_fail_clearly(tiny_bert_dir, targets):
    model = _model(tiny_bert_dir)
    with pytest.raises(AptuneError, match="match no nn.Linear"):
        inject_lora(model, 8, 16, targets)


def test_lora_method_reports_its_adapted_modules_after_the_merge(tiny_bert_dir):
    from aptune.config import TrainConfig
    from aptune.methods.lora import LoRA

    model = _model(tiny_bert_dir)
    method, cfg = LoRA(), TrainConfig(method="lora")
    model = method.prepare(model, get_spec(model), cfg)
    adapted = [n for n, _ in lora_modules(model)]
    merged = method.finalize(model, get_spec(model), cfg)
    assert not lora_modules(merged) and adapted
    assert method.describe(merged, cfg)["adapted_modules"] == adapted
