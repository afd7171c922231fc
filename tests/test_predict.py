"""`aptune predict`: label names and probabilities for --text or a file, the same labels as
`aptune eval --save-predictions` on the dev file, and one clear error for each bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import fails, invoke

pytestmark = pytest.mark.usefixtures("one_thread", "no_env_data_dir")


@pytest.fixture(scope="module")
def runs(tiny_bert_dir, tiny_roberta_dir, tiny_data_dir, tmp_path_factory):
    """A tiny SST-2 APT run (single texts) and a tiny MNLI LoRA run (pairs)."""
    out = tmp_path_factory.mktemp("predict")
    common = ("--data-dir", tiny_data_dir, "--batch-size", "16", "--eval-every", "20", "--quiet")
    logs = out / "logs"
    logs.mkdir()
    for name, args in (("sst2", ("--task", "sst2", "--method", "apt", "--model", tiny_bert_dir,
                                 "--epochs", "7", "--lr", "2e-3")),
                       ("mnli", ("--task", "mnli", "--method", "lora", "--model", tiny_roberta_dir,
                                 "--epochs", "1"))):
        result = invoke("train", *args, "--output-dir", out / name, *common)
        (logs / f"{name}.txt").write_text(result.stdout)
    return out


def lines(text: str) -> list[dict]:
    return [json.loads(ln) for ln in text.splitlines() if ln.startswith("{")]


def test_a_pruned_run_ends_with_the_next_command(runs):
    pruned, dense = (runs / "logs" / f"{n}.txt" for n in ("sst2", "mnli"))
    assert f"next: aptune export --model-dir {(runs / 'sst2').resolve()} --format onnx" in pruned.read_text()
    assert "next:" not in dense.read_text()  # LoRA keeps its size: nothing to export for speed


def test_text_flags_print_label_names_and_probabilities(runs):
    rows = lines(invoke("predict", "--model-dir", runs / "sst2", "--text", "a great film",
                        "--text", "a dull, tedious story").stdout)
    assert len(rows) == 2
    for row in rows:
        assert row["label"] in ("negative", "positive")
        assert set(row["probabilities"]) == {"negative", "positive"}
        assert sum(row["probabilities"].values()) == pytest.approx(1, abs=1e-5)
        assert row["score"] == max(row["probabilities"].values())


@pytest.mark.parametrize("task, dev_file", [("sst2", "sst2/dev.tsv"), ("mnli", "mnli/dev_matched.jsonl")])
def test_file_predictions_equal_eval_predictions(runs, tiny_data_dir, tmp_path, task, dev_file):
    out = tmp_path / "predictions.jsonl"
    result = invoke("predict", "--model-dir", runs / task / "model", "--input", tiny_data_dir / dev_file,
                    "--output", out, "--quiet")
    assert "predicted 64 rows" in result.stderr
    evaluated = tmp_path / "eval.jsonl"
    invoke("eval", "--model-dir", runs / task, "--task", task, "--data-dir", tiny_data_dir,
           "--save-predictions", evaluated)
    predicted = [r["label"] for r in lines(out.read_text())]
    expected = [r["label"] for r in lines(evaluated.read_text())]
    assert len(predicted) == 64 and predicted == expected


def test_columns_are_named_or_found(runs, tmp_path):
    data = tmp_path / "reviews.csv"
    data.write_text('id,body\n1,"a great, warm film"\n2,\n3,a boring plot\n')
    rows = lines(invoke("predict", "--model-dir", runs / "sst2", "--input", data, "--text-column",
                        "body").stdout)
    assert len(rows) == 2  # the empty row is skipped


def test_bad_input_gets_one_clear_error(runs, tmp_path):
    sst2, mnli = runs / "sst2", runs / "mnli"
    assert "either --text" in fails("predict", "--model-dir", sst2)
    data = tmp_path / "x.csv"
    data.write_text("id,body\n1,good\n")
    assert "either --text" in fails("predict", "--model-dir", sst2, "--text", "a", "--input", data)
    assert "columns: id, body" in fails("predict", "--model-dir", sst2, "--input", data)
    assert "no column review" in fails("predict", "--model-dir", sst2, "--input", data,
                                       "--text-column", "review")
    assert "does not exist" in fails("predict", "--model-dir", sst2, "--input", tmp_path / "none.jsonl")
    odd = tmp_path / "x.parquet.bak"
    odd.write_text("x")
    assert "not a file type" in fails("predict", "--model-dir", sst2, "--input", odd)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert "is empty" in fails("predict", "--model-dir", sst2, "--input", empty)
    blank = tmp_path / "blank.tsv"
    blank.write_text("sentence\tlabel\n \t1\n")
    assert "has no rows with text" in fails("predict", "--model-dir", sst2, "--input", blank)
    assert "takes pairs of texts" in fails("predict", "--model-dir", mnli, "--text", "a man sleeps")
    assert "one --text-pair per --text" in fails("predict", "--model-dir", mnli, "--text", "a", "--text", "b",
                                                 "--text-pair", "c")
    assert "holds no saved model" in fails("predict", "--model-dir", tmp_path, "--text", "a")


def test_a_pruned_run_is_not_a_training_start(runs, tiny_data_dir):
    stderr = fails("train", "--task", "sst2", "--model", Path(runs) / "sst2" / "model", "--data-dir",
                   tiny_data_dir, "--output-dir", Path(runs) / "again", "--quiet")
    assert "pruned" in stderr and "fix:" in stderr
