"""SQuAD v2 questions: read from the official JSON layout (or the hub), checked, and the optional
synthetic unanswerable questions for training (docs/tasks.md#squad-v2)."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Literal, get_args

import numpy as np

from ..errors import AptuneError
from .base import DataReport

LAYOUT_FIX = ("a SQuAD file is the official JSON layout: {\"data\": [{\"title\", \"paragraphs\": "
              "[{\"context\", \"qas\": [{\"id\", \"question\", \"answers\": "
              "[{\"text\", \"answer_start\"}]}]}]}]}")


@dataclass
class QAExample:
    """One question about one paragraph; no answers means unanswerable."""

    id: str
    question: str
    context: str
    answers: tuple[str, ...]
    starts: tuple[int, ...]  # character offset of each answer in the context
    article: str = ""
    synthetic: bool = False  # an unanswerable question made from an answerable one

    @property
    def answerable(self) -> bool:
        return bool(self.answers)


def read_squad_json(path: Path, report: DataReport) -> list[QAExample]:
    """Every question of a SQuAD JSON file, in file order; one clear error for a bad file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise AptuneError(f"cannot read {path} ({exc.strerror})", "check the file's permissions") from None
    if not raw.strip():
        raise AptuneError(f"{path} is empty", f"pass a SQuAD v2 JSON file ({LAYOUT_FIX})")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise AptuneError(f"{path} is not UTF-8 text", "pass a UTF-8 encoded SQuAD JSON file") from None
    except json.JSONDecodeError as exc:
        raise AptuneError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})",
                          "the file looks truncated or is not JSON; download it again") from None
    articles = data.get("data") if isinstance(data, dict) else None
    if not isinstance(articles, list):
        raise AptuneError(f"{path} does not have the SQuAD layout (no top-level 'data' list)", LAYOUT_FIX)
    return list(_questions(articles, str(path), report))


def _questions(articles: list, source: str, report: DataReport) -> Iterator[QAExample]:
    for a, article in enumerate(articles):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise AptuneError(f"{source}: article {a} has no 'paragraphs' list", LAYOUT_FIX)
        title = str(article.get("title", a))
        for paragraph in paragraphs:
            context, qas = (paragraph.get("context"), paragraph.get("qas")) if isinstance(paragraph, dict) \
                else (None, None)
            if not isinstance(context, str) or not isinstance(qas, list):
                raise AptuneError(f"{source}: a paragraph of article {title!r} lacks 'context' or 'qas'",
                                  LAYOUT_FIX)
            for qa in qas:
                report.rows_read += 1
                example = _question(qa, context, title, source)
                if example is None:
                    report.dropped["empty question"] += 1
                    continue
                yield example


def _question(qa: dict, context: str, title: str, source: str) -> QAExample | None:
    if not isinstance(qa, dict) or "id" not in qa:
        raise AptuneError(f"{source}: a question of article {title!r} is not an object with an 'id'",
                          LAYOUT_FIX)
    question = qa.get("question")
    if not isinstance(question, str) or not question.strip() or not context.strip():
        return None
    answers = [] if qa.get("is_impossible") else qa.get("answers") or []
    texts, starts = [], []
    for answer in answers:
        text, start = answer.get("text"), answer.get("answer_start")
        typed = isinstance(text, str) and isinstance(start, int)
        if not typed or context[start:start + len(text)] != text:
            raise AptuneError(
                f"{source}: question {qa['id']} has the answer {text!r} at offset {start}, but the "
                f"context has {context[start:start + len(str(text))]!r} there",
                "fix the answer's answer_start (the character offset of its text in the context)")
        texts.append(text)
        starts.append(start)
    return QAExample(str(qa["id"]), question.strip(), context, tuple(texts), tuple(starts), title)


def hub_examples(split: str, report: DataReport) -> list[QAExample]:
    """The hub's `squad_v2` split ('train' or 'validation'), as the local files give it."""
    try:
        import datasets

        rows = datasets.load_dataset("squad_v2", split=split)
    except Exception as exc:  # noqa: BLE001 - any hub failure means the same thing to a user
        raise AptuneError(f"no local data for squad_v2 and the hub is unreachable "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                          "pass --data-dir DIR (or set APTUNE_DATA_DIR) to a folder holding "
                          "squad_v2/train-v2.0.partial.json and squad_v2/dev-v2.0.json, or go "
                          "online") from None
    out = []
    for row in rows:
        report.rows_read += 1
        texts, starts = row["answers"]["text"], row["answers"]["answer_start"]
        qa = {"id": row["id"], "question": row["question"],
              "answers": [{"text": t, "answer_start": s} for t, s in zip(texts, starts)]}
        example = _question(qa, row["context"], row["title"], f"hub squad_v2[{split}]")
        if example is None:
            report.dropped["empty question"] += 1
        else:
            out.append(example)
    return out


UnanswerableSource = Literal["other-paragraph", "answer-removed", "mixed"]  # --unanswerable-source
UNANSWERABLE_SOURCES = get_args(UnanswerableSource)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")  # a sentence ends at . ! or ? followed by space


def add_unanswerable(examples: list[QAExample], pool: list[QAExample], ratio: float, seed: int,
                     source: str = "other-paragraph") -> list[QAExample]:
    """`examples` plus about ratio × (answerable ones) synthetic unanswerable questions, marked
    synthetic. `source` says how a chosen answerable question loses its answer:
    'other-paragraph' pairs it with another paragraph of the same article (from `pool`) that holds
    none of its answers; 'answer-removed' keeps its own paragraph without the sentences that hold
    an answer (on topic, like SQuAD v2's written unanswerable questions); 'mixed' alternates the
    two. A question that cannot be made unanswerable is skipped. Deterministic in `seed`; the
    originals keep their order and the synthetic ones follow."""
    if ratio <= 0:
        return examples
    if source not in UNANSWERABLE_SOURCES:
        raise AptuneError(f"unknown unanswerable source {source!r}",
                          f"pass one of {', '.join(UNANSWERABLE_SOURCES)}")
    paragraphs: dict[str, dict[str, None]] = defaultdict(dict)  # article -> its contexts, in order
    for example in pool:
        paragraphs[example.article][example.context] = None
    answerable = [e for e in examples if e.answerable]
    rng = np.random.default_rng(seed)
    n_new = int(round(ratio * len(answerable)))
    picks = rng.choice(len(answerable), size=n_new, replace=n_new > len(answerable)) if answerable else []
    made = []
    for k, i in enumerate(picks):
        chosen = answerable[int(i)]
        removed = source == "answer-removed" or (source == "mixed" and k % 2 == 1)
        context = without_answer_sentences(chosen) if removed else \
            _other_paragraph(chosen, paragraphs[chosen.article], rng)
        if context is None:
            continue
        made.append(QAExample(f"{chosen.id}-unanswerable-{k}", chosen.question, context, (), (),
                              chosen.article, synthetic=True))
    return examples + made


def _other_paragraph(example: QAExample, contexts: Iterable[str], rng: np.random.Generator) -> str | None:
    answers = [a.lower() for a in example.answers]
    others = [c for c in contexts if c != example.context and not any(a in c.lower() for a in answers)]
    return others[int(rng.integers(len(others)))] if others else None


def without_answer_sentences(example: QAExample) -> str | None:
    """The example's paragraph without every sentence that overlaps one of its answers; None when
    nothing is left or an answer's text still occurs in what is left."""
    bounds = [0] + [m.end() for m in SENTENCE_END.finditer(example.context)] + [len(example.context)]
    spans = [(start, len(text) + start) for text, start in zip(example.answers, example.starts)]
    kept = [example.context[a:b] for a, b in zip(bounds, bounds[1:])
            if b > a and not any(a < end and start < b for start, end in spans)]
    context = "".join(kept).strip()
    lowered = context.lower()
    if not context or any(answer.lower() in lowered for answer in example.answers):
        return None
    return context
