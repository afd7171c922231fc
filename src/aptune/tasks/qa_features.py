"""Question + context -> overlapping windows ("features") for extractive QA (docs/tasks.md#windows).

A context longer than the window is split into windows of at most `max_length` tokens that
overlap by `stride` tokens; each window is [CLS] question [SEP] context-piece [SEP]. A window's
target is the answer's first and last token when the whole answer lies inside it, else the
[CLS] position 0 (the no-answer target), as for an unanswerable question.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import AptuneError
from .squad_data import QAExample

MAX_QUESTION_TOKENS = 64  # longer questions are cut, so that every window keeps room for context


def window_tokenizer(tokenizer, max_length: int, stride: int) -> Callable[[list[QAExample]], dict]:
    """Examples -> model inputs per window, the training targets, and per window its example's
    index in the list and its tokens' character offsets in the context ((-1, -1) off-context)."""
    if not getattr(tokenizer, "is_fast", False):
        raise AptuneError("question answering needs a fast tokenizer (it maps tokens to characters)",
                          "use a model folder with a tokenizer.json")
    # A window holds the question, the special tokens (3 for BERT, 4 for RoBERTa) and the context;
    # the tokenizer needs the stride below what is left for the context.
    room = max_length - MAX_QUESTION_TOKENS - tokenizer.num_special_tokens_to_add(pair=True)
    if not 0 < stride < room:
        raise AptuneError(f"--doc-stride {stride} does not fit windows of --max-length {max_length} "
                          f"(a question takes up to {MAX_QUESTION_TOKENS} tokens)",
                          (f"pass a --doc-stride below {room}, or a larger --max-length" if room > 1 else
                           f"pass a --max-length above {max_length - room + 2}")
                          + " (the paper uses 384 with stride 128)")
    if tokenizer.padding_side == "left":
        raise AptuneError("question answering expects a tokenizer that pads on the right",
                          "set tokenizer.padding_side = 'right' in the model folder")

    def encode(examples: list[QAExample]) -> dict:
        questions = [_cut_question(tokenizer, e.question) for e in examples]
        enc = tokenizer(questions, [e.context for e in examples], truncation="only_second",
                        max_length=max_length, stride=stride, return_overflowing_tokens=True,
                        return_offsets_mapping=True, padding=False)
        sample_of = enc.pop("overflow_to_sample_mapping")  # window -> example (chunk-local)
        out = {k: v for k, v in enc.items() if k != "offset_mapping"}
        out.update(start_positions=[], end_positions=[], example_index=list(sample_of), offsets=[])
        for w, offsets in enumerate(enc["offset_mapping"]):
            in_context = np.array([s == 1 for s in enc.sequence_ids(w)])  # (T,)
            spans = np.asarray(offsets, dtype=np.int64)  # (T, 2) character spans
            spans[~in_context] = -1
            start, end = _target(examples[sample_of[w]], spans, in_context)
            out["start_positions"].append(start)
            out["end_positions"].append(end)
            out["offsets"].append(spans.astype(np.int32))
        return out

    return encode


def _cut_question(tokenizer, question: str) -> str:
    """The question's text up to its MAX_QUESTION_TOKENS-th token (leading spaces dropped, which
    RoBERTa's tokenizer would otherwise count)."""
    question = question.lstrip()
    enc = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
    if len(enc["input_ids"]) <= MAX_QUESTION_TOKENS:
        return question
    return question[:enc["offset_mapping"][MAX_QUESTION_TOKENS - 1][1]]


def _target(example: QAExample, spans: np.ndarray, in_context: np.ndarray) -> tuple[int, int]:
    """(first, last) token of the first gold answer inside this window, else (0, 0)."""
    if not example.answerable:
        return 0, 0
    first_char = example.starts[0]
    last_char = first_char + len(example.answers[0])  # one past the answer's last character
    context_tokens = np.flatnonzero(in_context)  # (n,)
    if len(context_tokens) == 0:
        return 0, 0
    lo, hi = context_tokens[0], context_tokens[-1]
    if spans[lo, 0] > first_char or spans[hi, 1] < last_char:
        return 0, 0  # the answer is not wholly inside this window
    start = lo
    while start <= hi and spans[start, 1] <= first_char:  # tokens that end before the answer
        start += 1
    end = hi
    while end >= lo and spans[end, 0] >= last_char:  # tokens that start after it
        end -= 1
    return int(start), int(max(end, start))
