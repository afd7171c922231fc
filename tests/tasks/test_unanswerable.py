"""Synthetic unanswerable SQuAD questions: every source loses the answer, deterministically."""

from __future__ import annotations

import numpy as np
import pytest

from aptune.errors import AptuneError
from aptune.tasks.squad_data import QAExample
from aptune.tasks.unanswerable import add_unanswerable, edit_question, without_answer_sentences
from tests.helpers import squad_train_examples


def test_synthetic_unanswerable_questions_hold_none_of_their_answers(tiny_data_dir):
    examples = squad_train_examples(tiny_data_dir)
    answerable = [e for e in examples if e.answerable]
    mixed = add_unanswerable(examples, examples, 0.5, seed=3)
    made = mixed[len(examples):]
    assert mixed[:len(examples)] == examples and 0 < len(made) <= round(0.5 * len(answerable))
    by_id = {e.id: e for e in examples}
    for e in made:
        source = by_id[e.id.split("-unanswerable-")[0]]
        assert e.synthetic and not e.answerable and e.question == source.question
        assert e.context != source.context and e.article == source.article
        assert not any(a.lower() in e.context.lower() for a in source.answers)
    assert [e.id for e in add_unanswerable(examples, examples, 0.5, seed=3)] == [e.id for e in mixed]


def test_answer_removed_questions_keep_their_paragraph_without_the_answer_sentences():
    context = "Ann lives in Oslo. She won the race in 1999! Bob came second. It rained."
    won = QAExample("q1", "When did Ann win?", context, ("1999",), (context.index("1999"),), "a")
    assert without_answer_sentences(won) == "Ann lives in Oslo. Bob came second. It rained."
    # an answer whose text also occurs in another sentence cannot be removed: skipped
    again = context + " In 1999 it snowed."
    assert without_answer_sentences(QAExample("q2", "When?", again, ("1999",), (won.starts[0],), "a")) is None
    alone = QAExample("q3", "Who?", "Ann won.", ("Ann",), (0,), "a")
    assert without_answer_sentences(alone) is None  # nothing left
    made = add_unanswerable([won, alone], [won, alone], 1.0, seed=0, source="answer-removed")[2:]
    assert [(e.question, e.context, e.answerable, e.synthetic) for e in made] == \
        [(won.question, "Ann lives in Oslo. Bob came second. It rained.", False, True)]


def test_mixed_unanswerable_questions_alternate_the_two_sources():
    paragraphs = [f"Town {i} has a mill. Its mayor is Mayor{i}. It lies on a river." for i in range(4)]
    examples = [QAExample(f"q{i}", f"Who is the mayor of town {i}?", c, (f"Mayor{i}",),
                          (c.index(f"Mayor{i}"),), "towns") for i, c in enumerate(paragraphs)]
    made = add_unanswerable(examples, examples, 1.0, seed=3, source="mixed")[len(examples):]
    by_id = {e.id: e for e in examples}
    kinds = []
    for e in made:
        source = by_id[e.id.split("-unanswerable-")[0]]
        assert not e.answerable and source.answers[0].lower() not in e.context.lower()
        kinds.append("other" if e.context in paragraphs else "removed")
    assert kinds == ["other", "removed"] * 2
    with pytest.raises(AptuneError, match="unknown unanswerable source"):
        add_unanswerable(examples, examples, 1.0, seed=3, source="shuffled")


def test_edited_questions_ask_for_something_their_paragraph_does_not_say():
    rng = np.random.default_rng(0)
    names, numbers = ["Oslo", "Bergen", "Ann"], ["1999", "2004"]
    # the only edit that applies is the one made
    assert edit_question("Which is the largest city?", [], [], rng) in \
        {"Which is the smallest city?", "Which is not the largest city?"}
    assert edit_question("Where did Bob go?", ["Bob", "Oslo"], [], rng) == "Where did Oslo go?"
    assert edit_question("What did he do in 1999?", [], ["1999", "2004"], rng) == "What did he do in 2004?"
    assert edit_question("Who was the mayor?", [], [], rng) == "Who was not the mayor?"
    assert edit_question("Who was not the mayor?", [], [], rng) == "Who was the mayor?"
    assert edit_question("Where did he go?", names, [], rng) is None  # no name, number, antonym or auxiliary
    # a question's first word and capitalised function words are not names
    assert edit_question("The city did grow?", ["Oslo"], [], rng) is None
    seen = {edit_question("Was Ann the first in 1999?", names, numbers, np.random.default_rng(s))
            for s in range(40)}
    assert seen == {"Was Ann the last in 1999?", "Was Oslo the first in 1999?",
                    "Was Bergen the first in 1999?", "Was Ann the first in 2004?",
                    "Was not Ann the first in 1999?"}


def test_edited_question_keeps_its_paragraph_and_draws_names_from_its_article():
    context = "Ann lives in Oslo. She won the race in 1999! Bob came second in Bergen."
    won = QAExample("q1", "When did Ann win the race?", context, ("1999",), (context.index("1999"),), "a")
    other = QAExample("q2", "Who came second?", "In Tromsø, Eve came third.", ("Eve",), (11,), "a")
    pool = [won, other]
    made = add_unanswerable(pool, pool, 1.0, seed=0, source="edited-question")[2:]
    assert made and all(not e.answerable and e.synthetic for e in made)
    for e in made:
        source = won if e.id.startswith("q1") else other
        assert e.context == source.context and e.question != source.question
        new_words = set(e.question.rstrip("?").split()) - set(source.question.rstrip("?").split())
        assert new_words <= {"Oslo", "Bob", "Bergen", "Eve", "not", "lose"}  # the article's names, or edits
    again = add_unanswerable(pool, pool, 1.0, seed=0, source="edited-question")[2:]
    assert [(e.id, e.question) for e in again] == [(e.id, e.question) for e in made]
