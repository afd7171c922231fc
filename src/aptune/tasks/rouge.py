"""ROUGE for summaries, with one text normalisation for model inputs, references and predictions
(docs/tasks.md#cnndailymail).

The local CNN/DailyMail training rows are lower-cased and PTB-tokenized (`they 're`, `u.s .`), the
raw 3.0.0 rows are not. `normalise` brings any text to the tokenized form, so that a model sees its
test articles as it saw its training ones and is scored against references written the same way.
Scores are the F-measures of the `rouge-score` package with the Porter stemmer: ROUGE-1, ROUGE-2,
ROUGE-L (sentence level) and ROUGE-Lsum (summary level, over newline-separated sentences; the
sentences of a prediction are split on sentence-final punctuation, never with an NLTK download).
"""

from __future__ import annotations

import re

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")

# PTB-style tokenization: clitics split off their word, punctuation set apart, except a period or
# comma inside a token ("3.5", "1,000") and the period of an abbreviation ("u.s.", "mr."), as the
# tokenized training rows keep them.
_CLITICS = re.compile(r"(?<=\w)('s|'re|'ve|'ll|'d|'m|n't)\b")
_PUNCTUATION = re.compile(r"""([!?;:()\[\]{}"]|--|,(?=\s|$))""")
_FINAL_PERIOD = re.compile(r"(\S+)\.(?=\s|$)")
_TITLES = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "gen", "gov", "sen", "rep", "lt", "col",
           "sgt", "capt", "rev", "vs"}
_SENTENCE_END = re.compile(r"(?:(?<=\s[.!?])|(?<=^[.!?]))\s+")


def _split_period(match: re.Match) -> str:
    word = match.group(1)
    if "." in word or word in _TITLES:  # "u.s.", "mr.": an abbreviation keeps its period
        return match.group(0)
    return f"{word} ."


def normalise(text: str) -> str:
    """Lower-cased, PTB-tokenized text with single spaces inside each line; line breaks (the
    sentence boundaries of a reference) are kept."""
    lines = []
    for line in text.lower().replace("\r", "\n").split("\n"):
        line = _CLITICS.sub(r" \1", line)
        line = _PUNCTUATION.sub(r" \1 ", line)
        line = _FINAL_PERIOD.sub(_split_period, line)
        line = " ".join(line.split())
        if line:
            lines.append(line)
    return "\n".join(lines)


def sentences(text: str) -> list[str]:
    """The sentences of a normalised text: its lines, each split after a sentence-final
    punctuation token (" .", " !", " ?"; an abbreviation's period does not end a sentence)."""
    return [s for line in text.split("\n") for s in _SENTENCE_END.split(line) if s.strip()]


def lead(article: str, n: int = 3) -> str:
    """The lead-n baseline: the first n sentences of the normalised article, one per line."""
    return "\n".join(sentences(normalise(article))[:n])


def rouge_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE F-measures in [0, 1] of normalised predictions against normalised references."""
    scorer = _scorer()
    totals = dict.fromkeys(ROUGE_KEYS, 0.0)
    for predicted, reference in zip(predictions, references, strict=True):
        scores = scorer.score("\n".join(sentences(normalise(reference))),
                              "\n".join(sentences(normalise(predicted))))
        for key in ROUGE_KEYS:
            totals[key] += scores[key].fmeasure
    return {key: value / max(1, len(predictions)) for key, value in totals.items()}


def _scorer():
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        from ..errors import AptuneError

        raise AptuneError("scoring summaries needs the rouge-score package",
                          "pip install rouge-score (aptune's install brings it)") from None
    return rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
