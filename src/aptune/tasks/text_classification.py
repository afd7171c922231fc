"""`--task text-classification`: the user's own labelled text, from files or a hub dataset.

The label set is the training file's labels (all its rows, sorted: numerically when every label is
an integer, else alphabetically), saved with the model as `id2label`. Validation rows come from
`--validation-file`, a hub split, or a held-out fraction of the training rows drawn with the data
seed, so that the same seed always holds out the same rows (and eval can find them again).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AptuneError
from . import files
from .base import Split, take_subset, text_problem
from .glue import ClassificationTask
from .metrics import classification_scores
from .options import OWN_DATA_TASK, task_options


class TextClassification(ClassificationTask):
    name = OWN_DATA_TASK
    default_max_length = 128
    splits = {"train": "--train-file", "dev": "--validation-file"}

    def __init__(self) -> None:
        self.label_names: tuple[str, ...] = ()
        self.text_columns: tuple[str, ...] = ()
        self.label_column = ""
        self.metric = "accuracy"
        self._tables: dict[tuple, tuple[list[str], list[dict | None], str]] = {}

    # -- what the run says --------------------------------------------------------------------
    def configure(self, options: dict[str, Any]) -> None:
        """Take the headline metric and any named columns from the options."""
        o = task_options(options)
        self.metric = o["metric"] or "accuracy"
        if o["text_column"]:
            self.text_columns = tuple(c for c in (o["text_column"], o["text_pair_column"]) if c)
        if o["label_column"]:
            self.label_column = o["label_column"]

    def adopt_labels(self, config) -> None:
        """Evaluating a saved model: its labels, in its order, are the label set."""
        self.check_head(config)
        self.label_names = tuple(config.id2label[i] for i in range(config.num_labels))

    def resolved_options(self) -> dict:
        pair = self.text_columns[1] if len(self.text_columns) > 1 else None
        return {"text_column": self.text_columns[0], "text_pair_column": pair,
                "label_column": self.label_column}

    def describe(self) -> str:
        texts = " + ".join(repr(c) for c in self.text_columns)
        return (f"data: text {texts}, label {self.label_column!r}; {self.num_labels} labels: "
                f"{', '.join(self.label_names)}; headline metric {self.metric}")

    # -- reading ------------------------------------------------------------------------------
    def load(self, split: str, data_dir: Path | None, max_rows: int | None, seed: int,
             options: dict | None = None) -> Split:
        o = task_options(options or {})
        self.configure(o)
        columns, rows, source = self._split_rows(split, o, seed)
        # Every split is read with the training split's columns once they are known.
        text, pair = (*self.text_columns, None)[:2] if self.text_columns else \
            (o["text_column"], o["text_pair_column"])
        self.text_columns = files.text_columns(columns, text, pair, None, source)
        self.label_column = files.label_column(columns, self.label_column or o["label_column"], source)
        if not self.label_names:
            self.label_names = self._training_labels(o)
        loaded = self._validate(iter(rows), source, o)
        bad = sum(loaded.report.dropped.values())
        if bad > o["max_skipped_fraction"] * max(1, loaded.report.rows_read):
            reasons = ", ".join(f"{n:,} {why}" for why, n in loaded.report.dropped.most_common())
            raise AptuneError(f"{bad:,} of {loaded.report.rows_read:,} rows of {source} are unusable "
                              f"({reasons})",
                              "correct or remove those rows, or raise --max-skipped-fraction to skip them")
        return take_subset(loaded, max_rows, seed)

    def _split_rows(self, split: str, o: dict, seed: int) -> tuple[list[str], list[dict | None], str]:
        """(columns, rows, where they came from) of one split, the held-out part drawn with `seed`."""
        has_validation = bool(o["validation_file"] or (o["dataset"] and o["dataset_validation_split"]))
        if split == "dev" and o["validation_file"]:
            return self._table(("file", o["validation_file"]), "--validation-file")
        if split == "dev" and has_validation:
            return self._table(("hub", o["dataset"], o["dataset_config"], o["dataset_validation_split"]))
        columns, rows, source = self._training_table(o)
        if has_validation:
            return columns, rows, source
        held_out = self._held_out(len(rows), o["validation_split"], seed, source)
        if split == "dev":
            return columns, [rows[i] for i in held_out], \
                f"{source} (held-out {o['validation_split']:g}, data seed {seed})"
        chosen = set(held_out.tolist())
        return columns, [r for i, r in enumerate(rows) if i not in chosen], \
            f"{source} (less the held-out {o['validation_split']:g})"

    def _training_table(self, o: dict) -> tuple[list[str], list[dict | None], str]:
        if o["train_file"]:
            return self._table(("file", o["train_file"]), "--train-file")
        if o["dataset"]:
            return self._table(("hub", o["dataset"], o["dataset_config"], o["dataset_train_split"]))
        raise AptuneError(f"--task {OWN_DATA_TASK} needs --train-file FILE or --dataset HUB_ID",
                          "name the training rows")

    @staticmethod
    def _held_out(n_rows: int, fraction: float, seed: int, source: str) -> np.ndarray:
        n_dev = max(1, round(fraction * n_rows))
        if n_rows - n_dev < 1:
            raise AptuneError(f"{source} has {n_rows} row(s): too few to hold out validation rows",
                              "pass --validation-file, or use a larger training file")
        return np.sort(np.random.default_rng(seed).permutation(n_rows)[:n_dev])

    def _table(self, key: tuple, what: str = "") -> tuple[list[str], list[dict | None], str]:
        if key not in self._tables:
            if key[0] == "file":
                columns, rows = files.read_table(key[1], what)
                self._tables[key] = (columns, rows, str(Path(key[1]).expanduser()))
            else:
                self._tables[key] = hub_table(*key[1:])
        return self._tables[key]

    def _training_labels(self, o: dict) -> tuple[str, ...]:
        columns, rows, source = self._training_table(o)
        column = files.label_column(columns, o["label_column"] or self.label_column or None, source)
        texts = self.text_columns
        found = Counter(label for r in rows if r is not None and not text_problem([r.get(c) for c in texts])
                        if (label := label_text(r.get(column))) is not None)
        if len(found) < 2:
            raise AptuneError(f"the label column {column!r} of {source} holds "
                              + (f"one class ({next(iter(found))!r})" if found else "no labels")
                              + "; classification needs at least two",
                              "check --label-column, or add rows of the other classes")
        names = list(found)
        numeric = all(_is_integer(n) for n in names)
        return tuple(sorted(names, key=int) if numeric else sorted(names))

    def _label_id(self, raw) -> int | None:
        text = label_text(raw)
        if text is None:
            return None
        return self.label_names.index(text) if text in self.label_names else -1

    def refuse_unknown_labels(self, source: str, found: Counter) -> None:
        listed = ", ".join(f"{k!r} ({n} rows)" for k, n in found.most_common(5))
        raise AptuneError(f"{source} has labels never seen in training: {listed}",
                          f"the training labels are {', '.join(self.label_names)}; fix those rows or "
                          "add examples of the label to the training file")

    # -- scoring ------------------------------------------------------------------------------
    def compute_metrics(self, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        return classification_scores(predictions, labels)


def label_text(raw) -> str | None:
    """A label value as its name: strings stripped, integers (also 1.0 from a float column or a
    "1.0" cell) as digits; None, NaN or empty means no label. A list or mapping (a multi-label
    row) is refused: one label per row is what classification trains on."""
    if raw is None:
        return None
    if isinstance(raw, (list, tuple, dict)):
        raise AptuneError(f"a label value is a {type(raw).__name__} ({str(raw)[:60]}): several labels "
                          "per row (multi-label) are not supported",
                          "give each row one label, or name another column with --label-column")
    if isinstance(raw, float):
        if raw != raw:  # NaN: an empty cell read by pandas/pyarrow
            return None
        if raw.is_integer():
            raw = int(raw)
    text = str(raw).strip()
    if text.endswith(".0") and _is_integer(text[:-2]):
        text = text[:-2]  # "1.0" from a spreadsheet is the label 1
    return text or None


def _is_integer(text: str) -> bool:
    return (text[1:] if text.startswith("-") else text).isdecimal()


def hub_table(dataset: str, config: str | None, split: str) -> tuple[list[str], list[dict], str]:
    """A hub split's rows; ClassLabel columns become their label names."""
    name = f"hub {dataset}{'/' + config if config else ''}[{split}]"
    try:
        import datasets

        ds = datasets.load_dataset(dataset, config, split=split)
    except Exception as exc:  # noqa: BLE001 - any hub failure means the same thing to a user
        raise AptuneError(f"cannot load {name} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                          "check the dataset id, configuration and split names, and that the hub is "
                          "reachable; or pass --train-file with local files") from None
    named = {c: f.names for c, f in ds.features.items() if hasattr(f, "names")}

    def value(column: str, v):  # a ClassLabel id as its name; -1 (unlabelled) as no label
        if column in named and isinstance(v, int):
            return named[column][v] if 0 <= v < len(named[column]) else None
        return v

    rows = [{k: value(k, v) for k, v in r.items()} for r in ds]
    return list(ds.column_names), rows, name
