"""Task registry, file validation, label mapping and reproducible subsets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aptune.errors import AptuneError
from aptune.tasks import DATA_DIR_ENV, get_task, resolve_data_dir
from aptune.tasks.base import fixed_subset


def test_registry_knows_sst2_and_mnli():
    assert get_task("sst2").num_labels == 2
    assert get_task("MNLI").id2label == {0: "entailment", 1: "neutral", 2: "contradiction"}
    with pytest.raises(AptuneError, match="unknown task"):
        get_task("cola")


def test_default_max_lengths():
    assert get_task("sst2").default_max_length == 64
    assert get_task("mnli").default_max_length == 128


def test_mnli_label_strings_map_to_fixed_ids(tiny_data_dir):
    split = get_task("mnli").load("train", tiny_data_dir, None, 0)
    rows = [json.loads(line) for line in
            (tiny_data_dir / "mnli" / "train_sample_10k.jsonl").read_text().splitlines()]
    ids = {"entailment": 0, "neutral": 1, "contradiction": 2}
    assert [e.label for e in split.examples] == [ids[r["label"]] for r in rows]


@pytest.mark.parametrize("strip, expected_end", [(True, lambda t: not t.endswith(".")),
                                                 (False, lambda t: t.endswith("."))])
def test_mnli_trailing_period_switch(tiny_data_dir, strip, expected_end):
    split = get_task("mnli").load("dev", tiny_data_dir, None, 0, {"strip_trailing_periods": strip})
    assert all(expected_end(e.texts[0]) for e in split.examples)


def test_subsets_are_fixed_and_seeded():
    a, b, c = fixed_subset(1000, 100, 0), fixed_subset(1000, 100, 0), fixed_subset(1000, 100, 1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(set(a.tolist())) == 100 and np.all(np.diff(a) > 0)
    assert fixed_subset(50, 100, 0) is None


def test_subset_of_a_split_is_reproducible(tiny_data_dir):
    task = get_task("sst2")
    one = task.load("train", tiny_data_dir, 50, 0)
    two = task.load("train", tiny_data_dir, 50, 0)
    assert [e.texts for e in one.examples] == [e.texts for e in two.examples]
    assert one.report.subset_of == 200 and one.report.rows_kept == 50


def test_garbled_rows_are_counted_not_fatal(tmp_path):
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "train.tsv").write_text(
        "sentence\tlabel\ngood film\t1\nno tab here\n\t0\nbad film\t0\nfine\t\n")
    split = get_task("sst2").load("train", tmp_path, None, 0)
    assert split.report.rows_kept == 2
    assert split.report.dropped == {"garbled": 1, "empty text": 1, "missing label": 1}
    assert "skipped 3 bad rows" in split.report.summary()


def test_data_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    assert resolve_data_dir(str(tmp_path / "..")) == tmp_path / ".."
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(AptuneError, match="does not exist"):
        resolve_data_dir(None)


def test_no_local_data_and_no_hub_names_both_options(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(AptuneError) as err:
        get_task("sst2").load("dev", resolve_data_dir(None), None, 0)
    assert "--data-dir" in err.value.fix and "hub" in err.value.fix
