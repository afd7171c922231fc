"""The official SQuAD v2 evaluation (docs/tasks.md#squad-v2-metric), written here.

Answers are normalised (lower case, punctuation and the articles a/an/the removed, white space
collapsed); exact match and token F1 take the maximum over a question's gold answers; an empty
gold list means "no answer", which only the empty prediction matches. Scores are fractions in
[0, 1] (the official script prints them ×100).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Mapping, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (the official normalisation)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_score(gold: str, predicted: str) -> float:
    return float(normalize_answer(gold) == normalize_answer(predicted))


def f1_score(gold: str, predicted: str) -> float:
    """Token F1 of the normalised texts; an empty side scores 1 only against another empty one."""
    gold_tokens, predicted_tokens = normalize_answer(gold).split(), normalize_answer(predicted).split()
    if not gold_tokens or not predicted_tokens:
        return float(gold_tokens == predicted_tokens)
    common = sum((Counter(gold_tokens) & Counter(predicted_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def question_scores(golds: Sequence[str], predicted: str) -> tuple[float, float]:
    """(exact, F1) of one prediction: the maximum over the gold answers that are not empty after
    normalisation; none left means the question has no answer (gold = "")."""
    kept = [g for g in golds if normalize_answer(g)] or [""]
    return max(exact_score(g, predicted) for g in kept), max(f1_score(g, predicted) for g in kept)


def squad_v2_scores(golds: Mapping[str, Sequence[str]], predictions: Mapping[str, str]) -> dict[str, float]:
    """exact and f1 over every question, and over the answerable (has_ans_*) and unanswerable
    (no_ans_*) ones; a question without a prediction counts as answered with ""."""
    exact, f1 = {}, {}
    for qid, answers in golds.items():
        exact[qid], f1[qid] = question_scores(answers, predictions.get(qid, ""))
    has_answer = [qid for qid, answers in golds.items() if answers]  # the official split: any gold text
    answered = set(has_answer)
    no_answer = [qid for qid in golds if qid not in answered]
    out = {"exact": _mean(exact, golds), "f1": _mean(f1, golds), "total": float(len(golds))}
    for prefix, ids in (("has_ans", has_answer), ("no_ans", no_answer)):
        out[f"{prefix}_exact"], out[f"{prefix}_f1"] = _mean(exact, ids), _mean(f1, ids)
        out[f"{prefix}_total"] = float(len(ids))
    return out


def best_threshold(golds: Mapping[str, Sequence[str]], span_predictions: Mapping[str, str],
                   null_margins: Mapping[str, float]) -> dict[str, float]:
    """The null-score threshold that maximises F1 on these questions (the official script's
    `find_best_thresh`): a question is answered "" when its null margin (null score minus the
    best span's score) exceeds the threshold. Tuned on the data it scores: label it so."""
    ids = list(golds)
    span_f1 = {q: question_scores(golds[q], span_predictions.get(q, ""))[1] for q in ids}
    no_answer = {q: not any(normalize_answer(a) for a in golds[q]) for q in ids}
    # Threshold = +inf: every question answered with its span; lowering it past a question's
    # margin turns that one into "" (right for an unanswerable one, F1 0 for an answerable one).
    finite = [m for m in null_margins.values() if math.isfinite(m)]
    score = best = sum(span_f1[q] for q in ids)
    best_at = max(finite, default=0.0)  # every question with a span answers it
    order = sorted(ids, key=lambda q: -null_margins[q])
    for k, q in enumerate(order):
        score += (1.0 if no_answer[q] else 0.0) - span_f1[q]
        nxt = null_margins[order[k + 1]] if k + 1 < len(order) else -math.inf
        if score > best and nxt < null_margins[q]:  # a threshold between this margin and the next
            best, best_at = score, _between(null_margins[q], nxt)
    return {"best_f1": best / max(1, len(ids)), "best_f1_threshold": float(best_at)}


def _between(high: float, low: float) -> float:
    """A finite threshold t with low <= t < high (the margins may be ±inf)."""
    if math.isfinite(high) and math.isfinite(low):
        return (high + low) / 2
    if math.isfinite(high):
        return high - 1.0
    return low + 1.0 if math.isfinite(low) else 0.0


def _mean(values: Mapping[str, float], ids) -> float:
    ids = list(ids)
    return sum(values[q] for q in ids) / len(ids) if ids else 0.0
