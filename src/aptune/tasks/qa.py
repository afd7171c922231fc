"""SQuAD v2: extractive question answering with unanswerable questions (docs/tasks.md#squad-v2)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import AptuneError
from .base import DataReport, Scored, Split, Task, fixed_subset
from .qa_answers import best_answers
from .qa_features import window_tokenizer
from .squad_data import QAExample, hub_examples, read_squad_json
from .squad_metric import best_threshold, squad_v2_scores
from .unanswerable import add_unanswerable


# Without --unanswerable-ratio: a training file with under 5% unanswerable questions (the local
# file has 0.4%) gets 0.5 synthetic ones per answerable one, the official train file's share
# (43,498 of 130,319); measured in the README's SQuAD section.
AUTO_RATIO, AUTO_BELOW = 0.5, 0.05


class SquadV2(Task):
    name = "squad_v2"
    metric = "f1"
    default_max_length = 384
    folder = "squad_v2"
    splits = {"train": "train-v2.0.partial.json", "dev": "dev-v2.0.json"}
    hub_splits = {"train": "train", "dev": "validation"}
    head = "question-answering"
    prediction_distill_weight = 0.1  # L_distill = 0.1·L_pred + 0.9·L_layer on SQuAD
    inference_shape = (384, (16, 32))  # full 384-token windows
    inference_dev_rows = 256  # questions: a CPU pass over thousands of windows takes minutes

    def __init__(self) -> None:
        self.options = dict(doc_stride=128, n_best=20, max_answer_length=30, null_score_threshold=0.0,
                            unanswerable_ratio=None, unanswerable_source="other-paragraph")

    def configure(self, options: dict) -> None:
        self.options.update({k: options[k] for k in self.options if options.get(k) is not None})

    def resolved_options(self) -> dict:
        """The synthetic-question ratio the run used (config.yaml records it)."""
        ratio = self.options["unanswerable_ratio"]
        return {} if ratio is None else {"unanswerable_ratio": ratio}

    def adopt_labels(self, config) -> None:
        self.check_head(config)

    # -- reading -------------------------------------------------------------------------------
    def load(self, split: str, data_dir: Path | None, max_rows: int | None, seed: int,
             options: dict | None = None) -> Split:
        if options:
            self.configure(options)
        if data_dir is not None:
            path = self.local_file(split, data_dir)
            report = DataReport(source=str(path), unit="questions")
            examples = read_squad_json(path, report)
        else:
            report = DataReport(source=f"hub squad_v2[{self.hub_splits[split]}]", unit="questions")
            examples = hub_examples(self.hub_splits[split], report)
        if not examples:
            raise AptuneError(f"{report.source} has no questions", "pass a SQuAD v2 file with questions")
        kept = balanced_subset(examples, max_rows, seed)
        if len(kept) < len(examples):
            report.subset_of = len(examples)
        ratio = self.options["unanswerable_ratio"]
        if split == "train":
            if ratio is None:  # the local file's skew: top it up to the official file's share
                share = sum(not e.answerable for e in examples) / len(examples)
                ratio = self.options["unanswerable_ratio"] = AUTO_RATIO if share < AUTO_BELOW else 0.0
            kept = add_unanswerable(kept, examples, ratio, seed, self.options["unanswerable_source"])
        report.rows_kept = len(kept)
        synthetic = sum(e.synthetic for e in kept)
        report.detail = f"{sum(not e.answerable for e in kept):,} of them unanswerable" + (
            f", {synthetic:,} synthetic (--unanswerable-ratio {ratio:g}, "
            f"{self.options['unanswerable_source']})" if synthetic else "")
        return Split(kept, report)

    # -- windows and scoring -------------------------------------------------------------------
    def tokenize_fn(self, tokenizer, max_length: int) -> Callable:
        return window_tokenizer(tokenizer, max_length, int(self.options["doc_stride"]))

    def evaluate(self, model, loader, accelerator=None) -> Scored:
        from ..train.outputs import span_logits

        dataset = loader.dataset
        starts, ends = span_logits(model, loader, accelerator)
        if len(starts) != len(dataset):
            raise RuntimeError(f"scored {len(starts)} windows of {len(dataset)}")
        return self.score(dataset.examples, dataset.meta["example_index"], dataset.meta["offsets"],
                          starts, ends)

    def score(self, examples: list[QAExample], example_index, offsets, starts, ends) -> Scored:
        """SQuAD v2 figures of the windows' logits; best_f1 uses a threshold tuned on these rows."""
        o = self.options
        answers = best_answers(examples, example_index, offsets, starts, ends, int(o["n_best"]),
                               int(o["max_answer_length"]), float(o["null_score_threshold"]))
        golds = {e.id: list(e.answers) for e in examples}
        metrics = squad_v2_scores(golds, {e.id: a.text for e, a in zip(examples, answers)})
        tuned = best_threshold(golds, {e.id: a.span_text for e, a in zip(examples, answers)},
                               {e.id: a.null_margin for e, a in zip(examples, answers)})
        metrics.update({f"{k}_tuned_on_dev": v for k, v in tuned.items()})
        rows = [{"id": e.id, "prediction": a.text, "best_span": a.span_text,
                 "null_margin": round(a.null_margin, 4) if np.isfinite(a.null_margin) else None,
                 "gold": list(e.answers)} for e, a in zip(examples, answers)]
        return Scored(metrics, [], rows)


def balanced_subset(examples: list[QAExample], max_rows: int | None, seed: int) -> list[QAExample]:
    """A fixed random subset of `max_rows` questions that keeps the answerable / unanswerable
    proportions (each drawn with `seed`), in file order."""
    if max_rows is None or max_rows >= len(examples):
        return examples
    if max_rows <= 0:
        raise AptuneError(f"a sample limit must be positive, got {max_rows}",
                          "pass a positive --max-train-samples / --max-eval-samples")
    groups = [[i for i, e in enumerate(examples) if e.answerable],
              [i for i, e in enumerate(examples) if not e.answerable]]
    share = round(max_rows * len(groups[0]) / len(examples))
    keep = []
    for group, n in zip(groups, (share, max_rows - share)):
        picked = fixed_subset(len(group), n, seed) if n > 0 else np.array([], dtype=int)
        keep += [group[i] for i in (range(len(group)) if picked is None else picked)]
    return [examples[i] for i in sorted(keep)]
