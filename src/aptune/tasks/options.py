"""The options of `--task text-classification`: which files (or hub dataset), which columns, how
the validation rows are chosen and which metric leads. Torch-free: TrainConfig inherits them."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, Mapping

from ..errors import AptuneError
from ..fields import check_choices, option
from .unanswerable import UnanswerableSource

OWN_DATA_TASK = "text-classification"
PANEL = f"Your own data (--task {OWN_DATA_TASK})"


@dataclass
class OwnDataOptions:
    """Where the rows of `--task text-classification` come from and how they are read."""

    train_file: str | None = option(None, "Training rows: a .csv, .tsv, .jsonl or .parquet file with a "
                                    "header (or JSON keys) naming its columns.", PANEL)
    validation_file: str | None = option(None, "Validation rows in the same format. Default: hold out "
                                         "--validation-split of the training rows.", PANEL)
    validation_split: float = option(0.1, "Fraction of the training rows held out for validation "
                                     "(drawn with --data-seed) when there is no validation file.", PANEL)
    dataset: str | None = option(None, "A Hugging Face hub dataset id instead of files (needs a "
                                 "connection), e.g. 'imdb' or 'glue'.", PANEL)
    dataset_config: str | None = option(None, "The hub dataset's configuration, e.g. 'sst2' for 'glue'.",
                                        PANEL)
    dataset_train_split: str = option("train", "The hub split to train on.", PANEL)
    dataset_validation_split: str | None = option(None, "The hub split to validate on, e.g. "
                                                  "'validation'. Default: hold out --validation-split.",
                                                  PANEL)
    text_column: str | None = option(None, "Column of the text. Default: the first of text, sentence, "
                                     "review, ... or a known pair such as premise + hypothesis.", PANEL)
    text_pair_column: str | None = option(None, "Column of the second text of a pair (e.g. a "
                                          "hypothesis). Default: found with the text column.", PANEL)
    label_column: str | None = option(None, "Column of the label (strings or integers). Default: the "
                                      "first of label, labels, class, category, intent, target.", PANEL)
    metric: Literal["accuracy", "macro_f1"] = option("accuracy", "Headline dev metric: it selects the "
                                                     "checkpoint and leads the report.", PANEL)
    max_skipped_fraction: float = option(0.1, "Rows with empty text or no label are skipped and "
                                         "counted; a file with more than this fraction of them is "
                                         "refused.", PANEL)

    def validate(self) -> None:
        check_choices(self, OwnDataOptions)
        own = same_task(getattr(self, "task", OWN_DATA_TASK), OWN_DATA_TASK)
        given = [f.name for f in fields(OwnDataOptions) if f.name in SOURCES and getattr(self, f.name)]
        if not own:
            if given:
                flags = ", ".join("--" + g.replace("_", "-") for g in given)
                raise AptuneError(f"{flags} is for --task {OWN_DATA_TASK}, not --task {self.task}",
                                  f"pass --task {OWN_DATA_TASK} to train on your own files, or drop {flags}")
            return
        if bool(self.train_file) == bool(self.dataset):
            raise AptuneError(f"--task {OWN_DATA_TASK} needs its rows: either --train-file FILE or "
                              "--dataset HUB_ID" + (", not both" if self.train_file else ""),
                              "e.g. --train-file tickets.csv (--validation-file is optional)")
        if self.validation_file and self.dataset:
            raise AptuneError("--validation-file goes with --train-file, not with --dataset",
                              "name the hub split to validate on with --dataset-validation-split")
        if not 0 < self.validation_split < 1:
            raise AptuneError(f"--validation-split must be a fraction in (0, 1), got {self.validation_split}",
                              "pass e.g. --validation-split 0.1")
        if not 0 <= self.max_skipped_fraction < 1:
            raise AptuneError(f"--max-skipped-fraction must be in [0, 1), got {self.max_skipped_fraction}",
                              "pass e.g. --max-skipped-fraction 0.1")
        if self.train_file and (self.dataset_config or self.dataset_validation_split):
            raise AptuneError("--dataset-config and --dataset-validation-split go with --dataset, not "
                              "with --train-file", "drop them, or train from the hub with --dataset")
        # Absolute paths in the run's config.yaml: eval and predict find the files from anywhere.
        for name in ("train_file", "validation_file"):
            if getattr(self, name):
                setattr(self, name, str(Path(getattr(self, name)).expanduser().resolve()))
        if hasattr(self, "task"):
            self.task = OWN_DATA_TASK  # the canonical spelling in config.yaml


QA_PANEL = "Question answering (--task squad_v2)"


@dataclass
class QAOptions:
    """How SQuAD v2 questions become windows and answers (docs/tasks.md#squad-v2)."""

    doc_stride: int = option(128, "QA: tokens shared by consecutive windows of a long context "
                             "(the window is --max-length, default 384).", QA_PANEL)
    n_best: int = option(20, "QA: start and end candidates per window when choosing the answer span.",
                         QA_PANEL)
    max_answer_length: int = option(30, "QA: longest answer span, in tokens.", QA_PANEL)
    null_score_threshold: float = option(0.0, "QA: answer 'no answer' when the null score beats the "
                                         "best span's score by more than this.", QA_PANEL)
    null_threshold_from: Literal["fixed", "held-out"] = option(
        "fixed", "QA: 'fixed' answers with --null-score-threshold; 'held-out' chooses it at every "
        "evaluation as the threshold that maximises F1 on training questions left out of "
        "--max-train-samples (the file's real unanswerable ones and as many answerable ones), never "
        "on dev, in place of --null-score-threshold; the saved model keeps the last one chosen.",
        QA_PANEL)
    held_out_questions: int = option(600, "QA: at most this many held-out training questions choose "
                                     "the threshold under --null-threshold-from held-out (half "
                                     "unanswerable, as in dev).", QA_PANEL)
    unanswerable_ratio: float | None = option(None, "QA: add this many synthetic unanswerable training "
                                              "questions per answerable one (a question paired with "
                                              "another paragraph of its article that holds none of its "
                                              "answers). Default: 0.5 when under 5% of the training "
                                              "questions are unanswerable (the local file), else 0.",
                                              QA_PANEL)
    unanswerable_source: UnanswerableSource = option(
        "other-paragraph", "QA: how a synthetic unanswerable question loses its answer: "
        "'other-paragraph' (another paragraph of its article), 'answer-removed' (its own paragraph "
        "without the sentences holding an answer), 'edited-question' (its own paragraph, the "
        "question edited: an antonym, another name or number of the article, a negation) or "
        "'mixed' (the first two, half each).", QA_PANEL)

    def validate(self) -> None:
        _refuse_for_other_tasks(self, QAOptions, "squad_v2")
        check_choices(self, QAOptions)
        _require_positive(self, ("doc_stride", "n_best", "max_answer_length", "held_out_questions"))
        if self.held_out_questions < 2:
            raise AptuneError(f"--held-out-questions must be at least 2 (one unanswerable, one "
                              f"answerable), got {self.held_out_questions}",
                              "pass e.g. --held-out-questions 600")
        if self.unanswerable_ratio is not None and self.unanswerable_ratio < 0:
            raise AptuneError(f"--unanswerable-ratio must be >= 0, got {self.unanswerable_ratio}",
                              "pass e.g. --unanswerable-ratio 0.5 (0 adds none)")


SUMMARY_PANEL = "Summarisation (--task cnn_dailymail)"


@dataclass
class SummarizationOptions:
    """How CNN/DailyMail targets are cut and summaries generated (docs/tasks.md#cnndailymail).
    The article's length is --max-length (default 512)."""

    max_target_length: int = option(128, "Summaries: tokens of the reference kept as the training "
                                    "target (with the end token).", SUMMARY_PANEL)
    generation_max_tokens: int = option(128, "Summaries: the most tokens generated per summary.",
                                        SUMMARY_PANEL)
    num_beams: int = option(1, "Summaries: beams of the search (1: greedy, the paper's setting).",
                            SUMMARY_PANEL)
    length_penalty: float = option(1.0, "Summaries: beam search's length penalty (>1 favours longer "
                                   "summaries; no effect when greedy).", SUMMARY_PANEL)
    no_repeat_ngram_size: int = option(0, "Summaries: never generate an n-gram of this size twice "
                                       "(0: allowed).", SUMMARY_PANEL)

    def validate(self) -> None:
        _refuse_for_other_tasks(self, SummarizationOptions, "cnn_dailymail")
        _require_positive(self, ("max_target_length", "generation_max_tokens", "num_beams"))
        if self.max_target_length < 2:
            raise AptuneError(f"--max-target-length must be at least 2 (a token and the end token), "
                              f"got {self.max_target_length}", "pass e.g. --max-target-length 128")
        if self.no_repeat_ngram_size < 0:
            raise AptuneError(f"--no-repeat-ngram-size must be >= 0, got {self.no_repeat_ngram_size}",
                              "pass 0 (off) or e.g. 3")


def _refuse_for_other_tasks(config, options: type, task: str) -> None:
    """A task's own options set (away from their defaults) in a run of another task are refused."""
    if hasattr(config, "task") and not same_task(config.task, task):
        given = [f.name for f in fields(options) if getattr(config, f.name) != f.default]
        if given:
            flags = ", ".join("--" + g.replace("_", "-") for g in given)
            raise AptuneError(f"{flags} is for --task {task}, not --task {config.task}",
                              f"drop {flags}, or pass --task {task}")


def _require_positive(config, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(config, name) <= 0:
            raise AptuneError(f"--{name.replace('_', '-')} must be positive, got {getattr(config, name)}",
                              f"pass a positive --{name.replace('_', '-')}")


# Options that only --task text-classification reads: given with another task, they are refused.
SOURCES = ("train_file", "validation_file", "dataset", "dataset_config", "dataset_validation_split",
           "text_column", "text_pair_column", "label_column")


def same_task(a: str, b: str) -> bool:
    """Task names compare without case, '-' or '_' (as the task registry looks them up)."""
    def key(name: str) -> str:
        return name.lower().replace("-", "").replace("_", "")
    return key(a) == key(b)


def task_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """The options a task's loader reads, from a config (TrainConfig.to_dict(), a run's
    config.yaml, an export's manifest); missing keys take their defaults."""
    defaults = {f.name: f.default for f in (*fields(OwnDataOptions), *fields(QAOptions),
                                            *fields(SummarizationOptions))}
    out = {name: values.get(name, default) for name, default in defaults.items()}
    out["strip_trailing_periods"] = values.get("strip_trailing_periods", True)
    return out
