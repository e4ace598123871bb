"""Multiple choice: the common ways of stating a choice, option text, and the reject reasons."""

from __future__ import annotations

import pytest

from reasondistill.verify.choice import (GOLD_PARSE_FAILURE, MATCH, MISMATCH, NO_ANSWER, extract_choice,
                                         gold_choice, verify_choice)

CAPITALS = ["Rome", "Oslo", "Paris", "Bern"]


@pytest.mark.parametrize("text, letter", [
    ("The answer is (B)", "B"),
    ("so the answer is (B).", "B"),
    ("B) 42", "B"),
    ("**C**", "C"),
    ("Answer: D", "D"),
    ("Final answer: **A**", "A"),
    ("The correct option is C.", "C"),
    ("I choose B because it is the capital.", "B"),
    ("\\boxed{A}", "A"),
    ("\\boxed{\\text{C}}", "C"),
    ("A", "A"),
    ("(D)", "D"),
    ("Let me consider A and B.\nFinal: (C)", "C"),
    ("Checking A, then B, then C.\n\nThe answer is B.", "B"),
])
def test_letters_in_common_phrasings(text, letter):
    assert extract_choice(text) == letter


def test_option_text_instead_of_a_letter():
    assert extract_choice("The answer is: Paris", CAPITALS) == "C"
    assert extract_choice("After some thought.\nIt is definitely Oslo.", CAPITALS) == "B"
    # "4" is inside "14": the longer option wins; two different options named: no choice
    assert extract_choice("The answer is 14", ["4", "14", "40"]) == "B"
    assert extract_choice("The answer is Rome or Paris", CAPITALS) is None


def test_the_article_a_is_not_option_a():
    assert extract_choice("The answer is a bit unclear to me.") is None
    assert extract_choice("I think it is a trick question") is None


def test_gold_may_be_a_letter_or_an_option_text():
    assert gold_choice("(b)") == "B"
    assert gold_choice("Paris", CAPITALS) == "C"
    assert gold_choice({"A": "yes", "B": "no"}.get("B"), {"A": "yes", "B": "no"}) == "B"
    assert gold_choice("Madrid", CAPITALS) is None


def test_gold_may_be_a_0_based_index_as_in_the_task_loader():
    from reasondistill.tasks.adapters import reference_letter

    assert (gold_choice("1", CAPITALS), gold_choice(2, CAPITALS), gold_choice("9", CAPITALS)) == ("B", "C", None)
    assert gold_choice("1", ["1", "2", "3"]) == "A"  # an option's text before an index
    for ref in ("B", "(C)", 0, 3, "2", "Paris", "paris", "1", 7, "7", "Madrid"):
        for options in (CAPITALS, ["1", "2", "3"]):
            assert gold_choice(ref, options) == reference_letter(ref, options), (ref, options)


def test_a_bare_letter_in_any_case_and_a_bare_index_when_asked():
    assert [extract_choice(t) for t in ("b", "(c)", " d. ", "a bit")] == ["B", "C", "D", None]
    assert extract_choice("2", CAPITALS) is None  # a completion's bare number: index or 1-based? neither
    assert extract_choice("2", CAPITALS, number_is_index=True) == "C"
    assert extract_choice("7", CAPITALS, number_is_index=True) is None
    assert extract_choice("2", ["1", "2"], number_is_index=True) == "B"  # the option "2", not index 2
    assert extract_choice("The answer is 2", CAPITALS, number_is_index=True) is None  # only a bare number
    check = verify_choice(1, "1", CAPITALS, number_is_index=True)
    assert (check.verdict, check.predicted) == ("correct", "B")


@pytest.mark.parametrize("gold, text, options, verdict, reason", [
    ("C", "I pick Paris", CAPITALS, "correct", MATCH),
    ("Paris", "The answer is (C)", CAPITALS, "correct", MATCH),
    ("B", "The answer is (C)", None, "wrong", MISMATCH),
    ("B", "I really cannot tell.", None, "unparseable", NO_ANSWER),
    ("Madrid", "The answer is (C)", CAPITALS, "unparseable", GOLD_PARSE_FAILURE),
    ("E", "Answer: E", ["1", "2", "3", "4", "5"], "correct", MATCH),
])
def test_verify_choice(gold, text, options, verdict, reason):
    check = verify_choice(gold, text, options)
    assert (check.verdict, check.reason) == (verdict, reason), check
