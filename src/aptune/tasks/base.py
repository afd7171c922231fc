"""A task: where its rows come from, how they are checked, tokenised and scored."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import AptuneError

DATA_DIR_ENV = "APTUNE_DATA_DIR"


@dataclass
class DataReport:
    """What loading a split found: kept rows, dropped rows and why."""

    source: str
    rows_read: int = 0
    rows_kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    subset_of: int | None = None
    detail: str = ""  # what else a reader should know about the rows (QA: how many unanswerable)
    unit: str = "rows"  # what a row is ("questions" for QA)

    def summary(self) -> str:
        text = f"{self.rows_kept:,} {self.unit} from {self.source}"
        if self.subset_of is not None:
            text += f" (fixed subset of {self.subset_of:,})"
        if self.dropped:
            reasons = ", ".join(f"{n} {why}" for why, n in self.dropped.most_common())
            text += f"; skipped {sum(self.dropped.values()):,} bad rows ({reasons})"
        return text + (f"; {self.detail}" if self.detail else "")


@dataclass
class Example:
    texts: tuple[str, ...]
    label: int


@dataclass
class Split:
    examples: list  # Example, or the task's own example type (QAExample)
    report: DataReport


@dataclass
class Scored:
    """A task's evaluation of a model on a split: its metrics, its per-class report (where one
    means something) and one record per example (what `--save-predictions` writes)."""

    metrics: dict[str, float]
    per_class: list[dict] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """--data-dir wins, then $APTUNE_DATA_DIR; None means: use the hub."""
    chosen = data_dir if data_dir not in (None, "") else os.environ.get(DATA_DIR_ENV) or None
    if chosen is None:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise AptuneError(f"data directory {path} does not exist",
                          f"pass --data-dir pointing at a folder laid out like shared/data, "
                          f"or set {DATA_DIR_ENV}")
    return path


def text_problem(texts: list) -> str | None:
    """Why a row's text cells cannot be used, or None: 'empty text' (missing or blank), or
    'text not a string' (a number or a list where text belongs)."""
    if any(t is not None and not isinstance(t, str) for t in texts):
        return "text not a string"
    if any(t is None or not t.strip() for t in texts):
        return "empty text"
    return None


def tokenize_examples(tokenizer, max_length: int) -> Callable[[list[Example]], dict]:
    """Examples -> token ids (one or two text columns, truncated to `max_length`), with their
    labels when every label is known (texts to predict carry -1)."""
    def encode(examples: list[Example]) -> dict:
        columns = list(zip(*(e.texts for e in examples)))
        enc = tokenizer(*columns, truncation=True, max_length=max_length)
        if all(e.label >= 0 for e in examples):
            enc["labels"] = [e.label for e in examples]
        return enc
    return encode


def fixed_subset(n_rows: int, max_rows: int | None, seed: int) -> np.ndarray | None:
    """Indices of a reproducible random subset, in file order; None when no subset is needed."""
    if max_rows is None or max_rows >= n_rows:
        return None
    if max_rows <= 0:
        raise AptuneError(f"a sample limit must be positive, got {max_rows}",
                          "pass a positive --max-train-samples / --max-eval-samples")
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(n_rows)[:max_rows])


def take_subset(loaded: Split, max_rows: int | None, seed: int) -> Split:
    """Keep the fixed random subset of `max_rows` examples (in file order), noted in the report."""
    keep = fixed_subset(len(loaded.examples), max_rows, seed)
    if keep is not None:
        loaded.report.subset_of = len(loaded.examples)
        loaded.examples = [loaded.examples[i] for i in keep]
        loaded.report.rows_kept = len(loaded.examples)
    return loaded


class Task:
    """Base class. A task is registered once and the training loop never special-cases it."""

    name: str = ""
    metric: str = ""  # the dev metric used for checkpoint selection
    default_max_length: int = 128
    splits: dict[str, str] = {}  # split -> file under <data_dir>/<folder>
    folder: str = ""
    # The model head the task trains (models.HEADS).
    head: str = "sequence-classification"
    # APT's default weight of the prediction-distillation loss (docs/method.md#distillation-losses).
    prediction_distill_weight: float = 1.0
    # The dense-vs-pruned inference check at the end of a pruning run: tokens per row, batch sizes.
    inference_shape: tuple[int, tuple[int, ...]] = (128, (32, 128))
    # At most this many dev rows for the benchmark's real-data inference pass (None: as asked).
    inference_dev_rows: int | None = None
    # A generation task: the benchmark also times greedy generation of exactly this many new tokens
    # per row on real dev inputs (tokens per second); None: the task is scored without generation.
    generation_benchmark_tokens: int | None = None
    label_names: tuple[str, ...] = ()
    # The input of the task's text-to-text form for encoder-decoders, e.g. "sst2 sentence: {0}"
    # ({i}: the i-th text column); None: the task has none (tasks/text_to_text.py).
    t5_template: str | None = None

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))

    def load(self, split: str, data_dir: Path | None, max_rows: int | None, seed: int,
             options: dict | None = None) -> Split:
        raise NotImplementedError

    def configure(self, options: dict) -> None:
        """Take what the run's options say about the data (a task with its own files reads its
        columns and metric here); fixed benchmark tasks need nothing."""

    def bind_model(self, tokenizer, model_config) -> None:
        """Take what the task needs from the model it trains (a text-to-text task: the decoder's
        start and end tokens); most tasks need nothing."""

    def check_head(self, config) -> None:
        """A saved model must have this task's head (a QA model cannot classify sentences)."""
        from ..models import head_of

        if head_of(config) != self.head:
            raise AptuneError(f"the model is a {head_of(config)} model and {self.name} needs a "
                              f"{self.head} one", "pass the --task the model was trained on")

    def adopt_labels(self, config) -> None:
        """Check a saved model against the task's labels (a task whose labels come from the
        training file takes the model's instead)."""
        self.check_head(config)
        if config.num_labels != self.num_labels:
            raise AptuneError(f"the model has {config.num_labels} labels but {self.name} has "
                              f"{self.num_labels}", "pass the --task the model was trained on")

    def resolved_options(self) -> dict:
        """Options the task found for itself (columns detected from a header), to record in the
        run's config.yaml so that eval and predict read the data the same way."""
        return {}

    def held_out_examples(self) -> list:
        """Training examples left out of training to choose a setting at each evaluation without
        looking at dev (QA's null threshold, --null-threshold-from held-out); none by default."""
        return []

    def constant_floor(self, examples: list) -> float | None:
        """The dev metric that one constant answer scores on `examples` (for accuracy: always the
        most frequent label): what a model that learned nothing gets. None where the task has no
        such figure."""
        return None

    @staticmethod
    def no_better_than(value: float, floor: float, rows: int) -> bool:
        """Whether `value` fails to beat a constant answer's `floor` by more than one of `rows` dev
        rows: how the teacher gate and the prerequisite check tell that a model learned nothing."""
        return value <= floor + 1 / max(1, rows)

    def per_class(self, predictions: np.ndarray, labels: np.ndarray) -> list[dict]:
        """The per-class report (classification tasks); empty where it means nothing."""
        return []

    def describe(self) -> str | None:
        """A start-up line about the data that the user did not spell out (columns found, labels)."""
        return None

    def tokenize_fn(self, tokenizer, max_length: int) -> Callable:
        raise NotImplementedError

    def collator(self, tokenizer):
        """How rows become a batch: dynamic padding of the inputs (labels are one id per row)."""
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer, return_tensors="pt")

    def compute_metrics(self, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        raise NotImplementedError

    def evaluate(self, model, loader, accelerator=None) -> Scored:
        """Score `model` on the examples behind `loader` (gathered across processes). A
        classification task predicts one label per row."""
        from ..train.outputs import predict_labels

        predicted, gold = predict_labels(model, loader, accelerator)
        names = self.id2label
        rows = [{"label": names.get(int(p), str(int(p))), "gold": names.get(int(g), str(int(g)))}
                for p, g in zip(predicted, gold)]
        return Scored(self.compute_metrics(predicted, gold), self.per_class(predicted, gold), rows)

    def local_file(self, split: str, data_dir: Path) -> Path:
        """The split's file under the data directory, or one clear error when it is missing."""
        path = data_dir / self.folder / self.splits[split]
        if not path.is_file():
            raise AptuneError(f"{self.name} {split} file not found: {path}",
                              f"put {self.folder}/{self.splits[split]} under the data directory, or "
                              "unset --data-dir/APTUNE_DATA_DIR to download from the hub")
        return path
