"""The encoder-decoder half of `aptune bench` (--model-family seq2seq) on two CNN/DM runs of a tiny
T5. Its own file, so that pytest-xdist's --dist loadfile can give it the other worker."""

from __future__ import annotations

import json

import pytest

from tests.helpers import invoke


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("APTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("APTUNE_DATA_DIR", raising=False)


def test_bench_reports_the_seq2seq_half_with_generation_speed(isolated_cache, t5_dir, tiny_data_dir,
                                                             tmp_path):
    """The harness on two CNN/DM runs of a tiny T5 trained in place: ROUGE-1/2/Lsum beside the
    paper's T5 rows, and greedy-generation tokens per second against FT's."""
    run = tmp_path / "results" / "smoke-table2-seq2seq"
    common = ("--task", "cnn_dailymail", "--model", t5_dir, "--data-dir", tiny_data_dir, "--max-length", "48",
              "--max-target-length", "16", "--generation-max-tokens", "16", "--max-eval-samples", "8",
              "--batch-size", "8", "--eval-every", "28", "--lr", "3e-3", "--quiet")
    invoke("train", "--method", "ft", "--epochs", "1", "--max-train-samples", "32",
           "--output-dir", run / "cnn_dailymail" / "ft", *common)
    invoke("train", "--method", "apt", "--epochs", "7", "--max-train-samples", "96", "--sparsity", "0.6",
           "--output-dir", run / "cnn_dailymail" / "apt", *common)
    out = invoke("bench", "--suite", "table2", "--scale", "smoke", "--model-family", "seq2seq",
                 "--tasks", "cnn_dailymail", "--report-only", "--results-dir", tmp_path / "results",
                 "--data-dir", tiny_data_dir).stdout
    results = json.loads((run / "results.json").read_text())["table2"]
    assert results["family"] == "seq2seq"
    assert set(results["jobs"]) == {"cnn_dailymail/ft", "cnn_dailymail/apt"}
    apt = results["jobs"]["cnn_dailymail/apt"]
    assert apt["metric"] == "rouge1" and set(apt["rouge"]) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    generate = apt["inference"]["generate"]
    assert generate["tokens"] == 8 * 64 and generate["tokens_per_s"] > 0  # 8 dev rows x 64 new tokens
    ft_rate = results["jobs"]["cnn_dailymail/ft"]["inference"]["generate"]["tokens_per_s"]
    relative = apt["relative"]["inf_time_pct_generate"]
    assert relative == pytest.approx(100 * ft_rate / generate["tokens_per_s"])
    table = (run / "table.md").read_text()
    assert "## Table 2 (encoder-decoder)" in table and "| CNN/DM R1 / R2 / RLsum | paper |" in table
    assert "| APT | — | 95.0 | — | 87.0 |" in table and "38.6 / 17.0 / 35.8" in table
    assert "| gen (tokens/s) |" in table
    assert "greedy generation of 64 tokens per row on 8 dev rows" in out
