"""Synthetic unanswerable SQuAD questions for training (docs/tasks.md#the-unanswerable-skew).

The local train file has almost no unanswerable questions, so a model never learns to abstain.
Each source turns an answerable question into one whose paragraph does not answer it:
    other-paragraph   the question, with another paragraph of its article (no answer text in it)
    answer-removed    the question, with its paragraph less the sentences that hold an answer
    edited-question   its paragraph, with the question edited the way SQuAD v2's writers did
                      (Rajpurkar et al. 2018): an antonym, a swapped name or number, a negation
    mixed             other-paragraph and answer-removed, alternating
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Iterable, Literal, get_args

import numpy as np

from ..errors import AptuneError
from .squad_data import QAExample

UnanswerableSource = Literal["other-paragraph", "answer-removed", "edited-question", "mixed"]
UNANSWERABLE_SOURCES = get_args(UnanswerableSource)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")  # a sentence ends at . ! or ? followed by space


def add_unanswerable(examples: list[QAExample], pool: list[QAExample], ratio: float, seed: int,
                     source: str = "other-paragraph") -> list[QAExample]:
    """`examples` plus about ratio × (answerable ones) synthetic unanswerable questions, marked
    synthetic (see the module's docstring for `source`; `pool` gives the article's other
    paragraphs and names). A question that cannot be made unanswerable is skipped. Deterministic
    in `seed`; the originals keep their order and the synthetic ones follow."""
    if ratio <= 0:
        return examples
    if source not in UNANSWERABLE_SOURCES:
        raise AptuneError(f"unknown unanswerable source {source!r}",
                          f"pass one of {', '.join(UNANSWERABLE_SOURCES)}")
    paragraphs: dict[str, dict[str, None]] = defaultdict(dict)  # article -> its contexts, in order
    for example in pool:
        paragraphs[example.article][example.context] = None
    words: dict[str, tuple[list[str], list[str]]] = {}  # article -> its names and numbers
    answerable = [e for e in examples if e.answerable]
    rng = np.random.default_rng(seed)
    n_new = int(round(ratio * len(answerable)))
    picks = rng.choice(len(answerable), size=n_new, replace=n_new > len(answerable)) if answerable else []
    made = []
    for k, i in enumerate(picks):
        chosen = answerable[int(i)]
        question, context = chosen.question, None
        if source == "edited-question":
            if chosen.article not in words:
                words[chosen.article] = _names_and_numbers(paragraphs[chosen.article])
            question = edit_question(chosen.question, *words[chosen.article], rng)
            context = chosen.context if question is not None else None
        elif source == "answer-removed" or (source == "mixed" and k % 2 == 1):
            context = without_answer_sentences(chosen)
        else:
            context = _other_paragraph(chosen, paragraphs[chosen.article], rng)
        if context is None:
            continue
        made.append(QAExample(f"{chosen.id}-unanswerable-{k}", question, context, (), (),
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


# -- edited questions -------------------------------------------------------------------------
# Word pairs whose swap turns a question into one about something else (both directions).
_PAIRS = ("first last", "largest smallest", "biggest smallest", "most least", "highest lowest",
          "before after", "earliest latest", "earlier later", "increase decrease",
          "increased decreased", "more fewer", "north south", "east west", "northern southern",
          "eastern western", "older younger", "oldest youngest", "major minor", "maximum minimum",
          "longest shortest", "longer shorter", "best worst", "better worse", "early late",
          "positive negative", "inside outside", "above below", "upper lower", "win lose", "won lost",
          "start end", "began ended", "top bottom", "high low", "large small", "public private",
          "internal external", "ancient modern", "rich poor", "strong weak", "same different")
ANTONYMS = {a: b for pair in _PAIRS for a, b in (pair.split(), pair.split()[::-1])}
_WORD = re.compile(r"[A-Za-z]+")
_AUXILIARY = re.compile(r"\b(is|was|are|were|can|could|will|would|should|may|might|must)\b(?=\s+\w)",
                        re.IGNORECASE)
_NEGATION = re.compile(r"\s+(not|never)\b", re.IGNORECASE)
_NAME = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-z]{2,}\b")  # a capitalised word, not a sentence's first
_NUMBER = re.compile(r"\b\d+\b")
# Capitalised function words are not names (a quote or a title can start with one mid-sentence).
_NOT_NAMES = frozenset("The This That These Those There Its His Her Their Our For From With And But Not "
                       "After Before During When While Where What Which Who Why How".split())


def _names_and_numbers(contexts: Iterable[str]) -> tuple[list[str], list[str]]:
    """The capitalised words (names) and numbers that an article's paragraphs use: the
    replacements an edited question draws from, so that it still reads as on topic."""
    text = "\n".join(contexts)
    return sorted(set(_NAME.findall(text)) - _NOT_NAMES), sorted(set(_NUMBER.findall(text)))


def edit_question(question: str, names: list[str], numbers: list[str],
                  rng: np.random.Generator) -> str | None:
    """One edit, drawn among those that apply, that makes the question ask for something its
    paragraph does not say: a word for its antonym, a name or number for another one of the
    article's, or a negation added or removed. None when no edit applies."""
    edits = [e for e in (_antonym(question), _swap(question, _NAME, names, rng),
                         _swap(question, _NUMBER, numbers, rng), _negate(question))
             if e is not None and e != question]
    return edits[int(rng.integers(len(edits)))] if edits else None


def _antonym(question: str) -> str | None:
    for match in _WORD.finditer(question):
        word = match.group()
        swap = ANTONYMS.get(word.lower())
        if swap is not None:
            swap = swap.capitalize() if word[0].isupper() else swap
            return question[:match.start()] + swap + question[match.end():]
    return None


def _swap(question: str, pattern: re.Pattern, pool: list[str], rng: np.random.Generator) -> str | None:
    """One of the question's words that `pattern` finds, replaced by a word of `pool` that the
    question does not contain."""
    found = [m for m in pattern.finditer(question) if m.group() not in _NOT_NAMES]
    present = set(_WORD.findall(question)) | set(_NUMBER.findall(question))
    others = [w for w in pool if w not in present]
    if not found or not others:
        return None
    match = found[int(rng.integers(len(found)))]
    return question[:match.start()] + others[int(rng.integers(len(others)))] + question[match.end():]


def _negate(question: str) -> str | None:
    """'Who was the first ...?' -> 'Who was not the first ...?', and a negated question loses its
    negation."""
    negation = _NEGATION.search(question)
    if negation is not None:
        return question[:negation.start()] + question[negation.end():]
    aux = _AUXILIARY.search(question)
    return None if aux is None else question[:aux.end()] + " not" + question[aux.end():]
