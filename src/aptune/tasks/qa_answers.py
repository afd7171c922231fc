"""Start/end logits of every window -> one answer per question (docs/tasks.md#answers).

For each question: the best span over all its windows among the n-best start and end tokens of
each window (start ≤ end, at most `max_answer_length` tokens, inside the context), scored
s_start + s_end; the null score is the lowest [CLS] score s_0 + e_0 over its windows. The answer
is "" when null score − best span score > threshold (default 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .squad_data import QAExample


@dataclass
class Answer:
    text: str  # the answer given ("" = no answer) at the threshold used
    span_text: str  # the best span, whatever the threshold
    null_margin: float  # null score − best span score (+inf when no span is valid)


def best_answers(examples: list[QAExample], example_index: list[int], offsets: list[np.ndarray],
                 start_logits: list[np.ndarray], end_logits: list[np.ndarray], n_best: int = 20,
                 max_answer_length: int = 30, threshold: float = 0.0) -> list[Answer]:
    """One Answer per example, from its windows' logits (each (T_w,), trimmed to the window)."""
    windows: list[list[int]] = [[] for _ in examples]
    for w, i in enumerate(example_index):
        windows[i].append(w)
    answers = []
    for example, ws in zip(examples, windows):
        null_score, best_score, best_text = np.inf, -np.inf, ""
        for w in ws:
            starts, ends, spans = start_logits[w], end_logits[w], offsets[w]
            null_score = min(null_score, float(starts[0] + ends[0]))
            score, text = _best_span(example.context, starts, ends, spans, n_best, max_answer_length)
            if score > best_score:
                best_score, best_text = score, text
        margin = null_score - best_score  # +inf when no window had a valid span
        answers.append(Answer("" if margin > threshold else best_text, best_text, float(margin)))
    return answers


def _best_span(context: str, starts: np.ndarray, ends: np.ndarray, spans: np.ndarray, n_best: int,
               max_answer_length: int) -> tuple[float, str]:
    inside = np.flatnonzero(spans[:, 0] >= 0)  # (n,) context tokens of this window
    if len(inside) == 0:
        return -np.inf, ""
    top_starts = inside[np.argsort(-starts[inside], kind="stable")[:n_best]]  # (k,)
    top_ends = inside[np.argsort(-ends[inside], kind="stable")[:n_best]]  # (k,)
    length = top_ends[None, :] - top_starts[:, None] + 1  # (k, k) tokens per candidate span
    scores = starts[top_starts][:, None] + ends[top_ends][None, :]  # (k, k)
    scores = np.where((length >= 1) & (length <= max_answer_length), scores, -np.inf)
    flat = int(np.argmax(scores))
    best = float(scores.flat[flat])
    if not np.isfinite(best):
        return -np.inf, ""
    s, e = top_starts[flat // scores.shape[1]], top_ends[flat % scores.shape[1]]
    return best, context[spans[s, 0]:spans[e, 1]]
