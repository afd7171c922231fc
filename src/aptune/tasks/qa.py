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
                            unanswerable_ratio=None, unanswerable_source="other-paragraph",
                            null_threshold_from="fixed", held_out_questions=600)
        self.held_out: list[QAExample] = []  # training questions that choose the null threshold
        self.chosen_threshold: float | None = None  # the last one chosen on them

    def configure(self, options: dict) -> None:
        self.options.update({k: options[k] for k in self.options if options.get(k) is not None})

    def resolved_options(self) -> dict:
        """The synthetic-question ratio the run used and, once chosen on held-out questions, the
        null threshold (config.yaml records them: eval and predict answer with that threshold)."""
        ratio = self.options["unanswerable_ratio"]
        found = {} if ratio is None else {"unanswerable_ratio": ratio}
        if self.chosen_threshold is not None:
            found["null_score_threshold"] = self.chosen_threshold
        return found

    def adopt_labels(self, config) -> None:
        self.check_head(config)

    def held_out_examples(self) -> list[QAExample]:
        return self.held_out

    def constant_floor(self, examples: list) -> float | None:
        """F1 of answering "no answer" everywhere: the share of unanswerable questions (0.5007 on
        the official dev file's F1, whose EM is 50.07)."""
        return sum(not e.answerable for e in examples) / len(examples) if examples else None

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
        held = ""
        if split == "train" and self.options["null_threshold_from"] == "held-out":
            self.held_out = held_out_questions(examples, kept, int(self.options["held_out_questions"]),
                                               seed, report.source)
            unanswerable = sum(not e.answerable for e in self.held_out)
            held = (f"; {len(self.held_out):,} left-out questions ({unanswerable:,} unanswerable) "
                    "choose the null threshold")
        if split == "train":
            if ratio is None:  # the local file's skew: top it up to the official file's share
                share = sum(not e.answerable for e in examples) / len(examples)
                ratio = self.options["unanswerable_ratio"] = AUTO_RATIO if share < AUTO_BELOW else 0.0
            kept = add_unanswerable(kept, examples, ratio, seed, self.options["unanswerable_source"])
        report.rows_kept = len(kept)
        synthetic = sum(e.synthetic for e in kept)
        report.detail = f"{sum(not e.answerable for e in kept):,} of them unanswerable" + (
            f", {synthetic:,} synthetic (--unanswerable-ratio {ratio:g}, "
            f"{self.options['unanswerable_source']})" if synthetic else "") + held
        return Split(kept, report)

    # -- windows and scoring -------------------------------------------------------------------
    def tokenize_fn(self, tokenizer, max_length: int) -> Callable:
        return window_tokenizer(tokenizer, max_length, int(self.options["doc_stride"]))

    def evaluate(self, model, loader, accelerator=None) -> Scored:
        from ..train.outputs import span_logits

        dataset = loader.dataset
        held = getattr(dataset, "held_out", None)
        chosen = {}
        if held is not None and len(held) and self.options["null_threshold_from"] == "held-out":
            sampler = getattr(loader, "batch_sampler", None)  # a prepared loader keeps it there
            batch_size = getattr(sampler, "batch_size", None) or loader.batch_size or 32
            chosen = self.choose_threshold(model, held, batch_size, accelerator)
        starts, ends = span_logits(model, loader, accelerator)
        if len(starts) != len(dataset):
            raise RuntimeError(f"scored {len(starts)} windows of {len(dataset)}")
        scored = self.score(dataset.examples, dataset.meta["example_index"], dataset.meta["offsets"],
                            starts, ends, also_at_zero=bool(chosen))
        scored.metrics.update(chosen)
        return scored

    def choose_threshold(self, model, held, batch_size: int, accelerator=None) -> dict[str, float]:
        """Set the null threshold to the one that maximises F1 on the held-out training questions
        (encoded windows in `held`). Every process scores all of them (a few hundred questions)
        on its own device; the main process's choice is broadcast, so all answer alike."""
        import torch
        from torch.utils.data import DataLoader

        from ..train.outputs import span_logits

        device = next(model.parameters()).device
        # its own generator: iterating a loader draws a seed from the global one, which would
        # change every later training step's dropout
        loader = DataLoader(held, batch_size=batch_size, shuffle=False, collate_fn=held.collate,
                            generator=torch.Generator())
        batches = ({k: v.to(device) for k, v in batch.items()} for batch in loader)
        starts, ends = span_logits(model, batches, None)
        o = self.options
        answers = best_answers(held.examples, held.meta["example_index"], held.meta["offsets"], starts,
                               ends, int(o["n_best"]), int(o["max_answer_length"]), 0.0)
        tuned = threshold_tuned_on(held.examples, answers)
        chosen = [float(tuned["best_f1_threshold"]), float(tuned["best_f1"])]
        if accelerator is not None and accelerator.num_processes > 1 and torch.distributed.is_initialized():
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(chosen, from_process=0)
        self.chosen_threshold = o["null_score_threshold"] = chosen[0]
        return {"null_score_threshold": chosen[0], "held_out_f1": chosen[1]}

    def score(self, examples: list[QAExample], example_index, offsets, starts, ends,
              also_at_zero: bool = False) -> Scored:
        """SQuAD v2 figures of the windows' logits; best_f1 uses a threshold tuned on these rows.
        `also_at_zero` adds what threshold 0 scores (beside a threshold chosen on held-out rows)."""
        o = self.options
        answers = best_answers(examples, example_index, offsets, starts, ends, int(o["n_best"]),
                               int(o["max_answer_length"]), float(o["null_score_threshold"]))
        golds = {e.id: list(e.answers) for e in examples}
        metrics = squad_v2_scores(golds, {e.id: a.text for e, a in zip(examples, answers)})
        metrics.update({f"{k}_tuned_on_dev": v for k, v in threshold_tuned_on(examples, answers).items()})
        if also_at_zero:
            at_zero = squad_v2_scores(golds, {e.id: "" if a.null_margin > 0 else a.span_text
                                              for e, a in zip(examples, answers)})
            metrics.update({f"{k}_at_threshold_0": at_zero[k] for k in ("f1", "has_ans_f1", "no_ans_f1")})
        rows = [{"id": e.id, "prediction": a.text, "best_span": a.span_text,
                 "null_margin": round(a.null_margin, 4) if np.isfinite(a.null_margin) else None,
                 "gold": list(e.answers)} for e, a in zip(examples, answers)]
        return Scored(metrics, [], rows)


def threshold_tuned_on(examples: list[QAExample], answers: list) -> dict[str, float]:
    """The null threshold that maximises F1 on these questions (from each one's best span and null
    margin), with that F1: best_threshold's keys."""
    return best_threshold({e.id: list(e.answers) for e in examples},
                          {e.id: a.span_text for e, a in zip(examples, answers)},
                          {e.id: a.null_margin for e, a in zip(examples, answers)})


def held_out_questions(examples: list[QAExample], kept: list[QAExample], limit: int, seed: int,
                       source: str) -> list[QAExample]:
    """Training questions left out of the subset `kept`, to choose the null threshold on: the
    unanswerable ones (real, written ones: the local file has 348) and as many answerable ones,
    at most `limit` in all, drawn with `seed`, in file order."""
    used = {e.id for e in kept}
    groups = [[e for e in examples if e.id not in used and not e.answerable],
              [e for e in examples if e.id not in used and e.answerable]]
    n = min(len(groups[0]), len(groups[1]), limit // 2)
    if n == 0:
        raise AptuneError(f"--null-threshold-from held-out needs unanswerable training questions left "
                          f"out of the training subset, and {source} leaves none "
                          f"({len(groups[0])} unanswerable, {len(groups[1])} answerable left out)",
                          "pass a smaller --max-train-samples, or --null-threshold-from fixed")
    picked = []
    for group in groups:
        index = fixed_subset(len(group), n, seed + 1)  # None: the whole group
        picked += group if index is None else [group[i] for i in index]
    order = {e.id: i for i, e in enumerate(examples)}
    return sorted(picked, key=lambda e: order[e.id])


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
