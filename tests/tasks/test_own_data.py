"""`--task text-classification`: the user's own files (CSV, TSV, JSON lines, Parquet), columns found
or named, string labels saved with the model, a held-out split drawn with the data seed, accuracy
and macro-F1 with a per-class report, every method, and one clear error per kind of bad file."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from aptune.errors import AptuneError
from aptune.tasks import get_task
from tests.helpers import FILLER, NEGATIVE, POSITIVE, fails, invoke

pytestmark = pytest.mark.usefixtures("one_thread", "no_env_data_dir")
LABELS = ("agree", "disagree", "unrelated")  # sorted, as the label set will be


def pair_rows(n: int, seed: int = 0) -> list[dict]:
    """Three classes of sentence pairs: the second text carries a positive word (agree), a
    negative word (disagree) or neither (unrelated)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = LABELS[i % 3]
        extra = {"agree": rng.choice(POSITIVE), "disagree": rng.choice(NEGATIVE),
                 "unrelated": rng.choice(FILLER)}[label]
        hypothesis = rng.sample(FILLER, 3) + [extra]
        rng.shuffle(hypothesis)
        rows.append({"sentence1": " ".join(rng.sample(FILLER, 5)), "sentence2": " ".join(hypothesis),
                     "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_delimited(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    import csv

    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def line(stdout: str, prefix: str) -> str:
    found = [ln for ln in stdout.splitlines() if ln.startswith(prefix)]
    assert len(found) == 1, stdout
    return found[0]


# -- the acceptance path: APT on generated three-class pairs, saved, reloaded, scored, served ------
def test_apt_on_own_pairs_end_to_end(tmp_path, learnable_bert_dir):
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(330))
    run = tmp_path / "run"
    stdout = invoke("train", "--task", "text-classification", "--train-file", data, "--method", "apt",
                    "--model", learnable_bert_dir, "--output-dir", run, "--epochs", "6", "--lr", "5e-3",
                    "--batch-size", "16", "--eval-every", "20", "--quiet").stdout
    # columns and labels found from the file, and said at start-up
    assert line(stdout, "data:") == ("data: text 'sentence1' + 'sentence2', label 'label'; 3 labels: "
                                     "agree, disagree, unrelated; headline metric accuracy")
    assert line(stdout, "dev:").startswith("dev:   33 rows from ") and "held-out 0.1, data seed 0" in stdout
    assert line(stdout, "train:").startswith("train: 297 rows from ")
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "agree", "1": "disagree", "2": "unrelated"}
    assert config["label2id"] == {"agree": 0, "disagree": 1, "unrelated": 2}
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert (recorded["text_column"], recorded["text_pair_column"], recorded["label_column"]) == \
        ("sentence1", "sentence2", "label")
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["eval"]) == {"accuracy", "macro_f1"}
    assert metrics["params"]["kept_ratio"] <= 0.41  # it was pruned
    assert [r["label"] for r in metrics["per_class"]] == list(LABELS)
    assert sum(r["support"] for r in metrics["per_class"]) == 33
    assert "dev per class (33 rows):" in stdout
    assert line(stdout, "result:").startswith(
        f"result: text-classification apt dev accuracy {metrics['eval']['accuracy']:.4f} ")

    # eval finds the same held-out rows again from the run's config, and scores what training did
    evaluated = invoke("eval", "--model-dir", run).stdout.splitlines()
    assert evaluated[0] == (f"text-classification dev (33 rows): accuracy {metrics['eval']['accuracy']:.4f}"
                            f", macro_f1 {metrics['eval']['macro_f1']:.4f}")
    assert [ln.split()[0] for ln in evaluated[2:]] == list(LABELS)

    # predict on a new file (CSV this time) gives label names, the labels eval gives on it
    fresh = write_delimited(tmp_path / "fresh.csv", pair_rows(60, seed=9))
    scored = tmp_path / "scored.jsonl"
    invoke("eval", "--model-dir", run, "--validation-file", fresh, "--save-predictions", scored)
    predicted = invoke("predict", "--model-dir", run, "--input", fresh, "--quiet").stdout.splitlines()
    assert [json.loads(p)["label"] for p in predicted] == \
        [json.loads(s)["label"] for s in scored.read_text().splitlines()]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(pair_rows(60, seed=9)), tmp_path / "fresh.parquet")
    assert invoke("predict", "--model-dir", run, "--input", tmp_path / "fresh.parquet",
                  "--quiet").stdout.splitlines() == predicted  # every format reads the same rows
    one = json.loads(invoke("predict", "--model-dir", run, "--text", "the film is with",
                            "--text-pair", "the plot is great").stdout)
    assert one["label"] in LABELS and set(one["probabilities"]) == set(LABELS)


def test_the_generated_pairs_are_learnable(tmp_path, learnable_bert_dir):
    """FT learns the three classes well above chance (1/3), so the file's labels reach the model
    intact (the tiny model is too small for APT to learn them in a test's few steps)."""
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(600))
    run = tmp_path / "run"
    invoke("train", "--task", "text-classification", "--train-file", data, "--method", "ft",
           "--model", learnable_bert_dir, "--output-dir", run, "--epochs", "3", "--lr", "5e-3",
           "--batch-size", "16", "--eval-every", "25", "--quiet")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["eval"]["accuracy"] > 0.6, metrics["history"]
    # TTA on own data: against this FT run, printed and recorded
    lora = tmp_path / "lora"
    stdout = invoke("train", "--task", "text-classification", "--train-file", data, "--method", "lora",
                    "--model", learnable_bert_dir, "--output-dir", lora, "--epochs", "2", "--lr", "2e-2",
                    "--batch-size", "16", "--eval-every", "25", "--tta-reference", run, "--quiet").stdout
    tta = json.loads((lora / "metrics.json").read_text())["tta"]
    best = max(r["value"] for r in metrics["history"])
    assert tta["threshold"] == pytest.approx(0.97 * best) and tta["ft"]["reached"]
    assert line(stdout, "TTA: dev accuracy >= ").startswith(
        f"TTA: dev accuracy >= {0.97 * best:.4f} (97% of the FT run's best {best:.4f}): ")
    # a reference trained on other rows is refused before training
    other = write_jsonl(tmp_path / "other.jsonl", pair_rows(90, seed=3))
    refused = fails("train", "--task", "text-classification", "--train-file", other, "--method", "lora",
                    "--model", learnable_bert_dir, "--output-dir", tmp_path / "x", "--tta-reference", run)
    assert "--tta-reference" in refused and "was trained on other data" in refused


@pytest.mark.parametrize("method", ["ft", "lora", "lora-prune", "cofi", "cofi-lora"])
def test_every_method_trains_on_own_data(tmp_path, tiny_bert_dir, method):
    rows = pair_rows(120)
    train = write_delimited(tmp_path / "train.tsv", rows[:96], "\t")
    dev = write_delimited(tmp_path / "dev.tsv", rows[96:], "\t")
    run = tmp_path / "run"
    extra = {"lora-prune": ("--mt-num-samples", "32"),
             "cofi": ("--cofi-teacher-epochs", "1", "--cofi-prepruning-steps", "2", "--on-size-miss", "warn"),
             "cofi-lora": ("--cofi-teacher-epochs", "1", "--cofi-prepruning-steps", "2",
                           "--on-size-miss", "warn")}.get(method, ())
    stdout = invoke("train", "--task", "text-classification", "--train-file", train, "--validation-file", dev,
                    "--method", method, "--model", tiny_bert_dir, "--output-dir", run, "--epochs", "2",
                    "--batch-size", "16", "--eval-every", "6", "--metric", "macro_f1", "--quiet",
                    *extra).stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["selection"]["metric"] == "macro_f1" and metrics["data"]["dev_rows"] == 24
    assert "result: text-classification " + method + " dev macro_f1 " in stdout
    assert json.loads((run / "model" / "config.json").read_text())["id2label"]["2"] == "unrelated"


# -- reading: formats, columns, labels, the held-out split --------------------------------------
def load(split: str, **options):
    task = get_task("text-classification", options)
    return task, task.load(split, None, None, 0, options)


def test_every_format_reads_the_same_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = pair_rows(40)
    paths = [write_jsonl(tmp_path / "a.jsonl", rows), write_delimited(tmp_path / "a.csv", rows),
             write_delimited(tmp_path / "a.tsv", rows, "\t"), tmp_path / "a.parquet"]
    pq.write_table(pa.Table.from_pylist(rows), paths[-1])
    paths.append(tmp_path / "a.json")  # one JSON array of objects
    paths[-1].write_text(json.dumps(rows))
    loaded = [load("train", train_file=str(p), validation_split=0.25)[1].examples for p in paths]
    assert len(loaded[0]) == 30 and all(x == loaded[0] for x in loaded)


def test_integer_labels_keep_their_ids_and_columns_can_be_named(tmp_path):
    rows = [{"body": f"text {i}", "stars": i % 3} for i in range(30)]
    path = write_jsonl(tmp_path / "reviews.jsonl", rows)
    task, split = load("train", train_file=str(path), text_column="body", label_column="stars")
    assert task.label_names == ("0", "1", "2")
    stars = {r["body"]: r["stars"] for r in rows}
    assert all(e.label == stars[e.texts[0]] for e in split.examples)  # integer labels keep their ids


def test_held_out_split_is_fixed_by_the_data_seed_and_disjoint(tmp_path):
    path = str(write_jsonl(tmp_path / "d.jsonl", pair_rows(100)))
    _, train = load("train", train_file=path)
    _, dev = load("dev", train_file=path)
    _, dev_again = load("dev", train_file=path)
    assert (len(train.examples), len(dev.examples)) == (90, 10)
    assert dev.examples == dev_again.examples
    assert not {e.texts for e in train.examples} & {e.texts for e in dev.examples}
    other = get_task("text-classification").load("dev", None, None, 1, {"train_file": path})
    assert other.examples != dev.examples  # another data seed, other rows


def test_macro_f1_and_the_per_class_report():
    import numpy as np

    task = get_task("text-classification")
    task.label_names = LABELS
    preds, gold = np.array([0, 0, 1, 1, 2, 0]), np.array([0, 1, 1, 1, 2, 2])
    scores = task.compute_metrics(preds, gold)
    # F1 per class: agree (P 1/3, R 1) 0.5; disagree (P 1, R 2/3) 0.8; unrelated (P 1, R 1/2) 2/3
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    report = {r["label"]: r for r in task.per_class(preds, gold)}
    assert report["agree"]["precision"] == pytest.approx(1 / 3) and report["disagree"]["support"] == 3


# -- bad input: one clear message each ----------------------------------------------------------
def test_bad_files_get_one_clear_error_each(tmp_path):
    good = pair_rows(30)

    def refused(rows_or_text, match: str, suffix: str = ".jsonl", split: str = "train", **options):
        path = tmp_path / f"bad{len(list(tmp_path.iterdir()))}{suffix}"
        if isinstance(rows_or_text, (bytes, str)):
            path.write_bytes(rows_or_text if isinstance(rows_or_text, bytes) else rows_or_text.encode())
        else:
            write_jsonl(path, rows_or_text)
        with pytest.raises(AptuneError, match=match):
            load(split, **{"train_file": str(path), **options})

    refused([{"words": "a", "label": "x"}, {"words": "b", "label": "y"}],
            r"cannot tell which column holds the text \(columns: words, label\)")
    refused(good, r"has no column body \(columns: sentence1, sentence2, label\)", text_column="body")
    refused([{"text": "a", "tag": "x"}] * 5, r"which column holds the label \(columns: text, tag\)")
    refused("", r"is empty", suffix=".csv")
    refused([{"text": f"t{i}", "label": "spam"} for i in range(20)],
            r"holds one class \('spam'\); classification needs at least two")
    refused(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 20, r"is not UTF-8 text", suffix=".csv")
    refused(b"sentence,label\n\xff\xfe bad bytes,x\n", r"is not UTF-8 text", suffix=".csv")
    refused("a\tb\n", r"not a file type aptune reads", suffix=".txt")
    refused('[{"text": "a", "label": "x"}, {"text": "b", "lab', r"is not valid JSON .* looks truncated",
            suffix=".json")
    refused(json.dumps(good[0]) + "\n" + json.dumps(good[1])[:20],
            r"ends in the middle of a JSON line \(line 2\)")
    refused([{"text": "" if i % 2 else f"t{i}", "label": "ab"[(i // 2) % 2]} for i in range(20)],
            r"(?s)\d of 18 rows .* are unusable \(\d empty text\).*--max-skipped-fraction")
    # below the threshold: skipped and counted
    rows = [{"text": "" if i == 0 else f"t{i}", "label": "ab"[i % 2]} for i in range(20)]
    _, split = load("train", train_file=str(write_jsonl(tmp_path / "few.jsonl", rows)), validation_split=0.5)
    assert "skipped 1 bad rows (1 empty text)" in split.report.summary()
    # a validation label that training never saw
    dev = write_jsonl(tmp_path / "dev.jsonl", [{**good[0], "label": "maybe"}, good[1]])
    refused(good, r"labels never seen in training: 'maybe' \(1 rows\)", split="dev", validation_file=str(dev))


def test_files_as_spreadsheets_and_pandas_write_them(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    # a byte-order mark (Excel's "CSV UTF-8") and float-looking labels ("1.0") read as intended
    csv_path = tmp_path / "excel.csv"
    csv_path.write_bytes("\ufefftext,label\n".encode() + "".join(
        f"row {i},{i % 2}.0\n" for i in range(20)).encode())
    task, split = load("train", train_file=str(csv_path), validation_split=0.5)
    assert task.text_columns == ("text",) and task.label_names == ("0", "1")
    # Parquet floats 1.0 are the same labels as CSV "1" (train on one, validate on the other)
    pq.write_table(pa.Table.from_pylist([{"text": f"p{i}", "label": float(i % 2)} for i in range(20)]),
                   tmp_path / "t.parquet")
    dev = write_delimited(tmp_path / "dev.csv", [{"text": "a", "label": "1"}, {"text": "b", "label": "0"}])
    _, checked = load("dev", train_file=str(tmp_path / "t.parquet"), validation_file=str(dev))
    assert [e.label for e in checked.examples] == [1, 0]
    # a number where text belongs is reported as such, not as empty text
    rows = [{"text": i if i < 1 else f"t{i}", "label": "ab"[i % 2]} for i in range(20)]
    _, split = load("train", train_file=str(write_jsonl(tmp_path / "n.jsonl", rows)), validation_split=0.5)
    assert "1 text not a string" in split.report.summary()


def test_headers_labels_and_hub_ids_that_cannot_work_are_refused(tmp_path, monkeypatch):
    for header, match in (("text,label,\n", "unnamed column"), ("text,text,label\n", "text more than once")):
        path = tmp_path / f"h{len(header)}.csv"
        path.write_text(header + "a,b,c\n" * 5)
        with pytest.raises(AptuneError, match=match):
            load("train", train_file=str(path))
    path = write_jsonl(tmp_path / "multi.jsonl", [{"text": "a", "labels": ["x", "y"]}] * 5)
    with pytest.raises(AptuneError, match="multi-label"):
        load("train", train_file=str(path))
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    table = datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(20)],
                                        "label": [-1 if i < 4 else i % 2 for i in range(20)]},
                                       features=features)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: table)
    task, split = load("train", dataset="someone/reviews", max_skipped_fraction=0.5)
    assert task.label_names == ("neg", "pos")  # -1 is "unlabelled", not a third class
    assert "missing label" in split.report.summary()


def test_config_refuses_inconsistent_flags(tmp_path, tiny_bert_dir, monkeypatch):
    data = write_jsonl(tmp_path / "d.jsonl", pair_rows(30))
    assert "--train-file is for --task text-classification, not --task sst2" in fails(
        "train", "--task", "sst2", "--train-file", data, "--model", tiny_bert_dir)
    assert "needs its rows: either --train-file FILE or --dataset HUB_ID" in fails(
        "train", "--task", "text-classification", "--model", tiny_bert_dir)
    assert "--validation-split must be a fraction in (0, 1)" in fails(
        "train", "--task", "text-classification", "--train-file", data, "--validation-split", "1.5")
    assert "--metric must be one of accuracy, macro_f1" in fails(
        "train", "--task", "text-classification", "--train-file", data, "--metric", "f2")
    assert "--text-column is for --task text-classification" in fails(
        "train", "--task", "sst2", "--text-column", "body", "--model", tiny_bert_dir)
    from aptune.config import TrainConfig

    monkeypatch.chdir(tmp_path)
    config = TrainConfig(task="Text_Classification", train_file="d.jsonl")
    assert config.task == "text-classification"  # the canonical name goes to config.yaml
    assert Path(config.train_file) == data.resolve()  # absolute: eval finds it from anywhere
    missing = fails("train", "--task", "text-classification", "--train-file", tmp_path / "missing.csv",
                    "--model", tiny_bert_dir)
    assert "--train-file" in missing and "missing.csv does not exist" in missing


def test_hub_datasets_map_class_labels_to_names(monkeypatch):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    table = datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(20)],
                                        "label": [i % 2 for i in range(20)]}, features=features)
    calls = []

    def fake_load(name, config, split):
        calls.append((name, config, split))
        return table

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    task, split = load("train", dataset="someone/reviews", dataset_config="default")
    assert task.label_names == ("neg", "pos") and len(split.examples) == 18
    assert calls == [("someone/reviews", "default", "train")]
    assert "hub someone/reviews/default[train]" in split.report.source


def test_a_base_run_on_other_data_is_refused(tmp_path, tiny_bert_dir):
    first = write_jsonl(tmp_path / "a.jsonl", pair_rows(60))
    base = tmp_path / "lora"
    invoke("train", "--task", "text-classification", "--train-file", first, "--method", "lora",
           "--model", tiny_bert_dir, "--output-dir", base, "--epochs", "1", "--batch-size", "16", "--quiet")
    other = write_jsonl(tmp_path / "b.jsonl", [{**r, "label": "yes" if r["label"] == "agree" else "no"}
                                               for r in pair_rows(60)])
    common = ("--method", "lora-prune", "--base-run", base, "--model", tiny_bert_dir, "--epochs", "1",
              "--output-dir", tmp_path / "out")
    assert "has the labels agree, disagree, unrelated; this run's are no, yes" in fails(
        "train", "--task", "text-classification", "--train-file", other, *common)
    same_labels = write_jsonl(tmp_path / "c.jsonl", pair_rows(60, seed=5))
    assert "was trained on other data (train_file differ)" in fails(
        "train", "--task", "text-classification", "--train-file", same_labels, *common)
