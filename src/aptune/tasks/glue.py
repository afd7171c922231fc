"""GLUE classification tasks: SST-2 and MNLI, from local files or the hub."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import AptuneError
from . import files
from .base import DataReport, Example, Split, Task, take_subset, text_problem, tokenize_examples
from .metrics import per_class_scores


class ClassificationTask(Task):
    metric = "accuracy"
    label_names: tuple[str, ...] = ()
    text_columns: tuple[str, ...] = ()
    label_column = "label"
    file_format = "tsv"  # or "jsonl"
    hub_path = ("glue", "")
    hub_splits: dict[str, str] = {}

    def constant_floor(self, examples: list) -> float | None:
        labels = [e.label for e in examples if e.label >= 0]
        if self.metric != "accuracy" or not labels:
            return None  # a constant's macro-F1 is not a floor anyone reads
        return max(labels.count(c) for c in set(labels)) / len(labels)

    # -- reading -------------------------------------------------------------------------------
    def _label_id(self, raw) -> int | None:
        """Map a raw label (an id, a digit string or a label name) to its fixed id."""
        if isinstance(raw, bool) or raw is None:
            return None
        if isinstance(raw, int):
            return raw
        text = str(raw).strip()
        if text == "":
            return None
        if text.lstrip("-").isdigit():
            return int(text)
        lowered = text.lower()
        return self.label_names.index(lowered) if lowered in self.label_names else -1

    def _local_rows(self, path: Path) -> Iterator[dict | None]:
        """The file's rows through the reader every task shares (so binary, non-UTF-8 and
        truncated files get its messages), after checking that the task's columns are there."""
        columns, rows = files.read_table(path, f"{self.name} data file")
        required = (*self.text_columns, self.label_column)
        missing = [c for c in required if c not in columns]
        if missing and self.file_format == "tsv":
            raise AptuneError(
                f"{path} lacks the column(s) {', '.join(missing)} (header: {', '.join(columns)})",
                f"{self.name} needs a tab-separated file with the header '{chr(9).join(required)}'")
        if missing:
            raise AptuneError(
                f"{path} rows lack the keys {', '.join(required)} (found: {', '.join(columns)})",
                f"{self.name} needs JSON lines with the keys {', '.join(required)}")
        return iter(rows)

    def _validate(self, rows: Iterator[dict | None], source: str, options: dict) -> Split:
        report = DataReport(source=source)
        examples, bad_labels = [], Counter()
        for row in rows:
            report.rows_read += 1
            if row is None:
                report.dropped["garbled"] += 1
                continue
            texts = [row.get(c) for c in self.text_columns]
            problem = text_problem(texts)
            if problem:
                report.dropped[problem] += 1
                continue
            label = self._label_id(row.get(self.label_column))
            if label is None:
                report.dropped["missing label"] += 1
                continue
            if not 0 <= label < self.num_labels:
                bad_labels[str(row.get(self.label_column))] += 1
                continue
            examples.append(Example(tuple(self.clean_text(t, options) for t in texts), label))
        if bad_labels:
            self.refuse_unknown_labels(source, bad_labels)
        if not examples:
            raise AptuneError(f"{source} has no usable rows ({report.summary()})",
                              f"check that it has rows with text in {', '.join(self.text_columns)} "
                              f"and a label in {self.label_column}")
        report.rows_kept = len(examples)
        return Split(examples, report)

    def refuse_unknown_labels(self, source: str, found: Counter) -> None:
        listed = ", ".join(f"{k!r} ({n})" for k, n in found.most_common(5))
        raise AptuneError(
            f"{source} has labels outside {self.name}'s label set: {listed}",
            f"{self.name} labels are {', '.join(f'{i}={n}' for i, n in self.id2label.items())}; "
            "check that --task matches the file",
        )

    def clean_text(self, text: str, options: dict) -> str:
        return text.strip()

    def load(self, split: str, data_dir: Path | None, max_rows: int | None, seed: int,
             options: dict | None = None) -> Split:
        options = options or {}
        if data_dir is not None:
            path = self.local_file(split, data_dir)
            loaded = self._validate(self._local_rows(path), str(path), options)
        else:
            loaded = self._validate(self._rows_hub(split), self._hub_name(split), options)
        return take_subset(loaded, max_rows, seed)

    def _hub_name(self, split: str) -> str:
        return f"hub {'/'.join(p for p in self.hub_path if p)}[{self.hub_splits[split]}]"

    def _rows_hub(self, split: str) -> Iterator[dict]:
        try:
            import datasets

            ds = datasets.load_dataset(*[p for p in self.hub_path if p], split=self.hub_splits[split])
        except Exception as exc:  # noqa: BLE001 - any hub failure means the same thing to a user
            raise AptuneError(
                f"no local data for {self.name} and the hub is unreachable "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                "pass --data-dir DIR (or set APTUNE_DATA_DIR) to a folder laid out like "
                "shared/data, or go online so that the hub download works",
            ) from None
        for row in ds:
            yield {**row, self.label_column: int(row[self.label_column])}

    # -- tokenising and scoring ----------------------------------------------------------------
    def tokenize_fn(self, tokenizer, max_length: int) -> Callable:
        return tokenize_examples(tokenizer, max_length)

    def compute_metrics(self, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        return {"accuracy": float((predictions == labels).mean())}

    def per_class(self, predictions: np.ndarray, labels: np.ndarray) -> list[dict[str, Any]]:
        """Precision, recall, F1 and support of every label, by name."""
        return per_class_scores(predictions, labels, self.label_names)


class SST2(ClassificationTask):
    name = "sst2"
    folder = "sst2"
    splits = {"train": "train.tsv", "dev": "dev.tsv"}
    default_max_length = 64
    label_names = ("negative", "positive")
    text_columns = ("sentence",)
    t5_template = "sst2 sentence: {0}"  # the input of its text-to-text form (T5's GLUE prefix)
    file_format = "tsv"
    hub_path = ("glue", "sst2")
    hub_splits = {"train": "train", "dev": "validation"}


_TRAILING_PERIODS = re.compile(r"[\s.]+$")


class MNLI(ClassificationTask):
    name = "mnli"
    folder = "mnli"
    splits = {"train": "train_sample_10k.jsonl", "dev": "dev_matched.jsonl"}
    default_max_length = 128
    # GLUE's fixed ids: 0 entailment, 1 neutral, 2 contradiction.
    label_names = ("entailment", "neutral", "contradiction")
    text_columns = ("premise", "hypothesis")
    t5_template = "mnli hypothesis: {1} premise: {0}"
    file_format = "jsonl"
    hub_path = ("glue", "mnli")
    hub_splits = {"train": "train", "dev": "validation_matched"}

    def clean_text(self, text: str, options: dict) -> str:
        # The local train sample lost every trailing period; stripping dev too keeps them alike.
        text = text.strip()
        if options.get("strip_trailing_periods", True):
            stripped = _TRAILING_PERIODS.sub("", text)
            text = stripped or text
        return text
