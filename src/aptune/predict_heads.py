"""`aptune predict` for the heads beyond sentence classification (docs/tasks.md#predict).

- **Question answering** (a SQuAD v2 run): `--question` / `--context` pairs, or an `--input` file
  with `question` and `context` columns. Each question is cut into the run's windows (max length,
  stride) and answered by the run's rules (n-best, maximum answer length, null threshold), as
  `aptune eval` answers dev questions: {answer, no_answer, best_span, null_margin}.
- **Text-to-text classification** (SST-2 or MNLI on an encoder-decoder): the label is what greedy
  generation of 2 tokens spells, as `aptune eval` scores it (null when it spells no label word);
  the probabilities are the softmax over the label words' first sub-words at the first decoder
  step: {label, score, probabilities}.
- **Summarisation** (a CNN/DailyMail run): `--text` articles or an `--input` file with an
  `article` column, normalised as training normalised them, generated with the run's settings
  (length, beams): {summary}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import AptuneError
from .tasks import DataReport, Example, files, get_task



# -- inputs ------------------------------------------------------------------------------------
def rows_from_file(path: str | Path, wanted: list[str]) -> tuple[list[list[str]], DataReport]:
    """The `wanted` columns of every row with text in all of them; the others are counted."""
    def columns(found: list[str]) -> list[str]:
        missing = [c for c in wanted if c not in found]
        if missing:
            raise AptuneError(f"{path} has no column(s) {', '.join(missing)} (columns: {', '.join(found)})",
                              "name them with --text-column / --text-pair-column")
        return wanted
    return files.text_rows(path, columns)


def question_rows(questions: list[str] | None, contexts: list[str] | None, input_file, question_column,
                  context_column) -> tuple[list[list[str]], DataReport | None]:
    if input_file:
        return rows_from_file(input_file, [question_column or "question", context_column or "context"])
    if not questions or not contexts or len(questions) != len(contexts):
        raise AptuneError(f"a question-answering model takes --question and --context in pairs "
                          f"(got {len(questions or [])} and {len(contexts or [])})",
                          "e.g. aptune predict --model-dir RUN --question 'Who won?' --context 'Ann won.'")
    if any(not t.strip() for t in questions + contexts):
        raise AptuneError("a --question (or --context) is empty", "pass the text")
    return [[q, c] for q, c in zip(questions, contexts)], None


# -- question answering ------------------------------------------------------------------------
def answer_questions(model, tokenizer, rows: list[list[str]], settings, batch_size: int) -> list[dict]:
    import torch

    from .tasks.qa_answers import best_answers
    from .tasks.squad_data import QAExample
    from .train.data import encode, make_loader
    from .train.outputs import span_logits

    task = settings.task if settings.task is not None else get_task("squad_v2")
    examples = [QAExample(str(i), q.strip(), c, (), ()) for i, (q, c) in enumerate(rows)]
    dataset = encode(task, examples, tokenizer, settings.max_length, model.config)  # one row per window
    with torch.no_grad():
        starts, ends = span_logits(model, make_loader(dataset, tokenizer, batch_size, False, 0))
    o = task.options
    answers = best_answers(examples, dataset.meta["example_index"], dataset.meta["offsets"], starts, ends,
                           int(o["n_best"]), int(o["max_answer_length"]), float(o["null_score_threshold"]))
    return [{"answer": a.text, "no_answer": a.text == "", "best_span": a.span_text,
             "null_margin": round(a.null_margin, 4) if np.isfinite(a.null_margin) else None}
            for a in answers]


# -- encoder-decoders --------------------------------------------------------------------------
def classify_as_text(model, tokenizer, examples: list[Example], settings, batch_size: int) -> list[dict]:
    import torch

    from .tasks.text_to_text import TextToTextClassification
    from .train.data import encode, make_loader

    task = TextToTextClassification(settings.task, tokenizer, model.config)
    loader = make_loader(encode(task, examples, tokenizer, settings.max_length, model.config),
                         tokenizer, batch_size, False, 0)
    names, firsts = list(task.label_names), task.targets[:, 0]  # (n_labels,) first sub-words
    out: list[dict[str, Any]] = []
    model.eval()
    with torch.no_grad():
        for batch in loader:
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            labels = task.generated_labels(model, inputs).tolist()  # (B,) -1: no label word
            start = torch.full((len(labels), 1), task.decoder_start_token_id)  # (B, 1)
            first = model(**inputs, decoder_input_ids=start).logits[:, 0, firsts]  # (B, n_labels)
            probs = torch.softmax(first.float(), dim=-1).tolist()
            for label, row in zip(labels, probs):
                out.append({"label": names[label] if label >= 0 else None,
                            "score": round(row[label], 6) if label >= 0 else None,
                            "probabilities": {n: round(p, 6) for n, p in zip(names, row)}})
    return out


def summarise(model, tokenizer, articles: list[str], settings, batch_size: int,
              show_progress: bool) -> list[dict]:
    from .tasks.rouge import normalise
    from .tasks.summarization import SummaryExample
    from .train.data import encode, make_loader

    task = settings.task
    task.bind_model(tokenizer, model.config)
    examples = [SummaryExample(normalise(a), "") for a in articles]
    loader = make_loader(encode(task, examples, tokenizer, settings.max_length, model.config),
                         tokenizer, batch_size, False, 0)
    return [{"summary": text} for text in task.generate(model, loader, progress=show_progress)]

