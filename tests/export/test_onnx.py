"""`aptune export --format onnx`: a pruned BERT (segment ids) and a RoBERTa (none) exported with
dynamic axes, verified against PyTorch, quantised to int8, and served by `aptune predict --backend
onnx` with the labels PyTorch gives; missing packages and bad options get one clear error."""

from __future__ import annotations

import json
import sys

import pytest

from tests.helpers import fails, invoke

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytestmark = pytest.mark.usefixtures("one_thread", "no_env_data_dir")


@pytest.fixture(scope="module")
def exported(tiny_bert_dir, tiny_roberta_dir, tiny_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    common = ("--data-dir", tiny_data_dir, "--batch-size", "16", "--eval-every", "20", "--quiet")
    invoke("train", "--task", "sst2", "--method", "apt", "--model", tiny_bert_dir, "--epochs", "7",
           "--lr", "2e-3", "--output-dir", out / "apt", *common)
    invoke("train", "--task", "mnli", "--method", "lora", "--model", tiny_roberta_dir, "--epochs", "1",
           "--output-dir", out / "lora", *common)
    logs = {name: invoke("export", "--model-dir", out / name, "--quantize", "int8", "--data-dir",
                         tiny_data_dir, "--verify-rows", "48").stdout for name in ("apt", "lora")}
    return out, logs


def manifest(run) -> dict:
    return json.loads((run / "onnx" / "aptune_export.json").read_text())


@pytest.mark.parametrize("name, inputs", [("apt", ["input_ids", "attention_mask", "token_type_ids"]),
                                          ("lora", ["input_ids", "attention_mask"])])
def test_export_is_verified_against_pytorch(exported, name, inputs):
    out, logs = exported
    report = manifest(out / name)
    assert report["inputs"] == inputs
    check = report["verification"]
    assert check["rows"] == 48 and check["max_abs_logit_diff"] <= 1e-4
    assert check["same_label"] == 48 and check["accuracy_onnx"] == check["accuracy_torch"]
    assert report["int8"]["rows"] == 48 and report["int8"]["accuracy"] is not None
    assert {"model.onnx", "model.int8.onnx", "config.json", "aptune_export.json"} <= {
        p.name for p in (out / name / "onnx").iterdir()}
    assert "max |logit diff|" in logs[name] and "int8" in logs[name]
    assert not list(out.glob(".onnx.partial-*"))


def test_onnx_predictions_equal_pytorch_predictions(exported, tiny_data_dir):
    out, _ = exported
    for name, dev in (("apt", "sst2/dev.tsv"), ("lora", "mnli/dev_matched.jsonl")):
        by_backend = {}
        for backend in ("torch", "onnx", "onnx-int8"):
            result = invoke("predict", "--model-dir", out / name, "--backend", backend, "--input",
                            tiny_data_dir / dev, "--quiet")
            by_backend[backend] = [json.loads(ln)["label"] for ln in result.stdout.splitlines()]
        assert len(by_backend["torch"]) == 64
        assert by_backend["onnx"] == by_backend["torch"]
        assert len(by_backend["onnx-int8"]) == 64


def test_bad_export_options_and_missing_packages(exported, monkeypatch, tmp_path):
    out, _ = exported
    assert "unknown export format" in fails("export", "--model-dir", out / "apt", "--format", "tflite")
    assert "unknown --quantize" in fails("export", "--model-dir", out / "apt", "--quantize", "int4")
    assert "holds no model.onnx" in fails("predict", "--model-dir", tmp_path, "--backend", "onnx",
                                          "--text", "a")
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if the export extra were missing
    assert "pip install 'aptune[export]'" in fails("export", "--model-dir", out / "apt")


def test_benchmark_times_three_runtimes_side_by_side(exported, tiny_data_dir, tmp_path):
    out, _ = exported
    folder = tmp_path / "bench-export"
    stdout = invoke("export", "--model-dir", out / "apt", "--output", folder, "--data-dir", tiny_data_dir,
                    "--verify-rows", "16", "--benchmark", "--benchmark-rounds", "1").stdout
    result = json.loads((folder / "benchmark.json").read_text())
    rows = {(r["model"], r["runtime"], r["batch_size"]): r for r in result["rows"]}
    assert set(rows) == {(m, rt, bs) for m in ("dense", "pruned") for rt in ("torch", "onnx", "onnx-int8")
                         for bs in (1, 32, 128)}
    assert all(rows[("dense", rt, bs)]["speedup_vs_dense"] == 1.0 for _, rt, bs in rows)
    assert all(r["samples_per_s"] > 0 and r["seq_len"] == 128 for r in rows.values())
    # the default dense model is the run's pretrained start with a fresh head: no accuracy for it
    assert set(result["accuracy"]) == {"pruned"} and result["dev_rows"] == 64
    assert result["accuracy"]["pruned"]["onnx"] == result["accuracy"]["pruned"]["torch"]
    assert (folder / "benchmark.png").read_bytes()[:4] == b"\x89PNG"
    table = (folder / "benchmark.md").read_text()
    assert table.count("| ONNX Runtime int8 |") == 4 and "n/a (untrained head)" in table
    assert "| PyTorch eager | 32 |" in stdout  # the table is printed too
    manifest_ = json.loads((folder / "aptune_export.json").read_text())
    assert set(manifest_["benchmark"]["speedup_vs_dense"]) == {f"{rt}@{bs}" for _, rt, bs in rows}
    assert "needs --format onnx" in fails("export", "--model-dir", out / "apt", "--format", "transformers",
                                          "--benchmark")
