"""`aptune export --format transformers`: pruned BERT and RoBERTa folders that stock transformers
opens with trust_remote_code in a process where aptune cannot be imported, with the same logits;
a dense model in the stock layout; and `aptune predict` on the folder."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from aptune.export import load_pruned
from tests.helpers import fails, invoke

pytestmark = pytest.mark.usefixtures("one_thread", "no_env_data_dir")

# Runs in a fresh interpreter where `import aptune` fails: only torch and transformers are used.
LOAD_WITHOUT_APTUNE = """
import sys
sys.modules["aptune"] = None  # any import of aptune now raises ImportError
import numpy as np, torch
from transformers import AutoModelForSequenceClassification
folder, inputs, out = sys.argv[1:]
model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
feeds = {k: torch.as_tensor(v) for k, v in np.load(inputs).items()}
with torch.no_grad():
    np.save(out, model(**feeds).logits.numpy())
print(type(model).__name__)
"""


@pytest.fixture(scope="module")
def runs(tiny_bert_dir, tiny_roberta_dir, tiny_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf")
    common = ("--task", "sst2", "--data-dir", tiny_data_dir, "--batch-size", "16", "--eval-every", "20",
              "--quiet")
    for name, model, method, epochs in (("bert", tiny_bert_dir, "apt", "7"),
                                        ("roberta", tiny_roberta_dir, "apt", "7"),
                                        ("dense", tiny_bert_dir, "lora", "1")):
        invoke("train", "--method", method, "--model", model, "--epochs", epochs, "--lr", "2e-3",
               "--output-dir", out / name, *common)
        invoke("export", "--model-dir", out / name, "--format", "transformers", "--data-dir", tiny_data_dir,
               "--verify-rows", "32")
    return out


def inputs(tmp_path, with_segments: bool) -> tuple:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 40, (4, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask}
    if with_segments:
        feeds["token_type_ids"] = torch.zeros_like(ids)
    path = tmp_path / "inputs.npz"
    np.savez(path, **{k: v.numpy() for k, v in feeds.items()})
    return feeds, path


@pytest.mark.parametrize("name, cls", [("bert", "AptunePrunedBertForSequenceClassification"),
                                       ("roberta", "AptunePrunedRobertaForSequenceClassification")])
def test_pruned_folder_opens_without_aptune(runs, tmp_path, name, cls):
    folder = runs / name / "transformers"
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSequenceClassification"] == f"aptune_modeling.{cls}"
    assert "aptune" not in (folder / "aptune_modeling.py").read_text().split('"""')[2]  # code: no import
    manifest = json.loads((folder / "aptune_export.json").read_text())
    assert manifest["trust_remote_code"] and manifest["verification"]["max_abs_logit_diff"] <= 1e-5
    feeds, path = inputs(tmp_path, name == "bert")
    out = tmp_path / "logits.npy"
    proc = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_APTUNE, str(folder), str(path), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith(cls)
    with torch.no_grad():
        expected = load_pruned(runs / name / "model")(**feeds).logits.numpy()
    assert np.abs(np.load(out) - expected).max() <= 1e-5


def test_dense_model_is_written_in_the_stock_layout(runs):
    from transformers import AutoModelForSequenceClassification

    folder = runs / "dense" / "transformers"
    assert not (folder / "aptune_modeling.py").exists()
    assert "auto_map" not in json.loads((folder / "config.json").read_text())
    model = AutoModelForSequenceClassification.from_pretrained(folder)  # no remote code needed
    assert model.config.num_labels == 2


def test_predict_reads_the_exported_folder(runs):
    result = invoke("predict", "--model-dir", runs / "bert" / "transformers", "--text", "a great film")
    assert json.loads(result.stdout.strip().splitlines()[-1])["label"] in ("negative", "positive")


def test_the_public_api_exports_too(runs, tmp_path, tiny_data_dir):
    import aptune

    report = aptune.export_model(runs / "roberta", "transformers", output=tmp_path / "hf",
                                 data_dir=str(tiny_data_dir), verify_rows=16)
    assert report["output"] == str(tmp_path / "hf") and report["verification"]["rows"] == 16
    assert report["trust_remote_code"] and (tmp_path / "hf" / "aptune_modeling.py").is_file()


def test_int8_is_for_onnx_only(runs):
    stderr = fails("export", "--model-dir", runs / "bert", "--format", "transformers", "--quantize", "int8")
    assert "--quantize int8 applies to --format onnx" in stderr
