"""SQuAD v2 questions: read from the official JSON layout (or the hub) and checked
(docs/tasks.md#squad-v2). The synthetic unanswerable ones are made in unanswerable.py."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

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
