"""Math verification: extraction, math-verify equivalences, reject reasons, and all of GSM8K test.

The GSM8K check runs every official test solution against its own final answer through the
worker pool (1319/1319 expected). It needs /work/shared/data/gsm8k (the ``shared`` folder beside
the project root) and is skipped, saying so, when that is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import hang_guard
from reasondistill.checks import TIMEOUT
from reasondistill.verify.checker import verify_math_many
from reasondistill.verify.math import (GOLD_PARSE_FAILURE, MATCH, MISMATCH, NO_ANSWER, PARSE_FAILURE, UNCLOSED_BOXED,
                                       extract_answer, gold_answer, last_boxed, verify_math)

GSM8K = (Path(__file__).resolve().parents[2] / "../shared/data/gsm8k").resolve()


def final_answer(solution: str) -> str:
    return solution.rsplit("####", 1)[1].strip()


@pytest.mark.skipif(not (GSM8K / "test.jsonl").exists(),
                    reason=f"GSM8K not found at {GSM8K} (expected the shared data folder beside the repo)")
def test_every_gsm8k_test_solution_verifies_against_its_final_answer():
    rows = [json.loads(line) for line in (GSM8K / "test.jsonl").read_text().splitlines() if line.strip()]
    assert len(rows) == 1319
    golds = [final_answer(r["answer"]) for r in rows]
    solutions = [r["answer"] for r in rows]
    checks = verify_math_many(golds, solutions, workers=2, timeout=20, progress=False)
    failed = [(i, golds[i], c) for i, c in enumerate(checks) if c.verdict != "correct"]
    assert not failed, failed[:5]
    assert sum(c.verdict == "correct" for c in checks) == 1319
    # the answer is read from "#### N", not from the calculator annotations before it
    assert all(extract_answer(s).source == "hash" for s in solutions[:50])
    # and a solution does not verify against another problem's answer (when they differ)
    shifted = [(golds[i + 1], solutions[i]) for i in range(100) if golds[i + 1] != golds[i]]
    assert all(verify_math(g, s).verdict == "wrong" for g, s in shifted)


@pytest.mark.parametrize("gold, completion", [
    ("1234", "The total is 1,234 dollars. #### 1,234"),
    ("1,234", "so \\boxed{1234}"),
    ("#### 1,234,567", "The answer is 1234567."),
    ("0.5", "\\boxed{\\frac{1}{2}}"),
    ("\\frac{1}{2}", "The answer is 0.5"),
    ("\\boxed{(3, \\frac{\\pi}{2})}", "\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}"),
    ("72", "Answer: **72**"),
    ("18", "The answer is $18."),
    ("-3", "so x = -3, the answer is $-3$"),
    ("x + 1", "\\boxed{1+x}"),
    ("1000000", "\\boxed{1e6}"),  # scientific notation: not 1 x e x 6 (Euler's e)
    ("1e6", "The answer is 1000000"),
    ("0.0025", "The answer is 2.5e-3."),
    ("-150", "\\boxed{-1.5E+2}"),
])
def test_equivalent_answers_are_correct(gold, completion):
    check = verify_math(gold, completion)
    assert (check.verdict, check.reason) == ("correct", MATCH), check


def test_boxed_extraction_handles_nested_braces_and_takes_the_last():
    assert last_boxed("first \\boxed{1} then \\boxed{\\frac{a^{2}}{b}}") == "\\frac{a^{2}}{b}"
    assert last_boxed("\\boxed{\\{1, 2\\}}") == "\\{1, 2\\}"
    assert last_boxed("\\boxed 7 apples") == "7"
    assert last_boxed("\\boxed{unclosed") is None
    assert extract_answer("\\boxed{5} #### 6").source == "boxed"


def test_extraction_order_and_last_number_fallback():
    assert extract_answer("#### 42").text == "42"
    assert extract_answer("Thus the final answer is 7.").text == "7"
    assert extract_answer("I got 3 then 5 apples").text == "5"
    assert extract_answer("I got 3 then 5 apples", last_number=False) is None
    assert extract_answer("It costs $1,234.50 in total").text == "1234.50"
    assert extract_answer("no digits at all") is None
    assert gold_answer("Some steps <<2*3=6>>6\n#### 6") == "6"


@pytest.mark.parametrize("gold, answer", [
    ("29", "29"), ("1,000", "1000"), ("\\frac{1}{2}", "0.5"), ("0.5", "1/2"), ("18", "$18.00"), ("4", "x = 4"),
    ("0.5", "\\frac{1}{2}"), ("12", "12 apples"),
])
def test_a_text_that_is_just_an_answer_is_taken_whole_when_asked(gold, answer):
    found = extract_answer(answer, last_number=False, whole_answer=True)
    assert found is not None and found.source == "whole", found
    check = verify_math(gold, answer, last_number=False, whole_answer=True)
    assert (check.verdict, check.reason) == ("correct", MATCH), check


def test_whole_answers_are_short_and_wordless_and_off_by_default():
    assert extract_answer("29", last_number=False) is None  # a completion: no marker, no fallback
    for text in ("I think it is 8.", "No idea.", "x = 4\ny = 5", "1 + " * 40 + "1"):
        assert extract_answer(text, last_number=False, whole_answer=True) is None, text
    # a marker wins over the whole text, and the whole text over the last number (not "2" of \frac{1}{2})
    assert extract_answer("\\boxed{3}", whole_answer=True).source == "boxed"
    assert extract_answer("\\frac{1}{2}", whole_answer=True).text == "\\frac{1}{2}"


@pytest.mark.parametrize("completion", [
    "<think>x</think>\\boxed{\\frac{1}{2}",
    "so 1/2, i.e. \\boxed{\\frac{1}{2}",
    "first \\boxed{3}, finally \\boxed{\\frac{1}{2}",  # the final answer is the cut-off one
    "#### 1/2 \\boxed{\\frac{1}{2}",
])
def test_an_unclosed_final_box_is_unparseable_not_the_last_number_inside_it(completion):
    for last_number, whole_answer in ((True, False), (False, True)):
        assert extract_answer(completion, last_number=last_number, whole_answer=whole_answer) is None
        check = verify_math("1/2", completion, last_number=last_number, whole_answer=whole_answer)
        assert (check.verdict, check.reason, check.predicted) == ("unparseable", UNCLOSED_BOXED, None), check


@pytest.mark.parametrize("gold, completion, last_number, verdict, reason", [
    ("5", "I have no idea.", True, "unparseable", NO_ANSWER),
    ("5", "it is 5", False, "unparseable", NO_ANSWER),
    ("5", "The answer is \\sqrt", False, "unparseable", PARSE_FAILURE),
    ("5", "\\boxed{\\sqrt}", True, "unparseable", PARSE_FAILURE),
    ("}", "\\boxed{5}", True, "unparseable", GOLD_PARSE_FAILURE),
    ("5", "\\boxed{6}", True, "wrong", MISMATCH),
    ("\\frac{1}{3}", "\\boxed{0.33}", True, "wrong", MISMATCH),
    ("300001", "\\boxed{3e5}", True, "wrong", MISMATCH),
    ("2.718", "\\boxed{e}", True, "wrong", MISMATCH),
])
def test_rejects_carry_their_reason(gold, completion, last_number, verdict, reason):
    check = verify_math(gold, completion, last_number=last_number)
    assert (check.verdict, check.reason) == (verdict, reason), check


def test_a_hanging_comparison_becomes_timeout_not_wrong():
    golds = ["5", "5", "7"]
    preds = ["\\boxed{5}", "\\boxed{2^{2^{2^{30}}}}", "#### 7"]  # sympy never finishes the middle one
    checks = verify_math_many(golds, preds, workers=1, timeout=1.5, progress=False)
    assert [(c.verdict, c.reason) for c in checks] == [
        ("correct", MATCH), ("unparseable", TIMEOUT), ("correct", MATCH)]


def test_clean_answer_strips_dollars_as_the_old_regex_did_in_linear_time():
    import itertools
    import re
    import time

    from reasondistill.verify.math import clean_answer, strip_dollars

    def old(s):
        return re.sub(r"^\$+(.*?)\$+$", r"\1", s)
    for n in range(7):  # every string of up to 6 characters over the characters that matter
        for chars in itertools.product("$a\n ", repeat=n):
            s = "".join(chars)
            assert strip_dollars(s) == old(s), repr(s)
    assert clean_answer("$1,234.$") == "1234" and clean_answer("**$42$**.") == "42"
    with hang_guard(30, "clean_answer on a run of $"):  # ~0.03 s; the regex took 58.5 s for 4,000
        for n in (4_000, 1_000_000):
            assert clean_answer("$" * n) == "" and clean_answer("$" * n + "x") == "$" * n + "x"


class _CountedReads(str):
    """A string that counts the characters read from it by index (``text[i]``)."""
    reads = 0

    def __getitem__(self, i):
        _CountedReads.reads += 1
        return str.__getitem__(self, i)


def _reads(text: str) -> int:
    _CountedReads.reads = 0
    last_boxed(_CountedReads(text))
    return _CountedReads.reads


def test_last_boxed_is_linear_with_many_unclosed_boxes():
    # characters read, not seconds: twice the unclosed boxes must cost about twice the reads (a
    # rescan from every unclosed box to the end of the text would cost four times as many)
    for head, unit in (("", "\\boxed{"), ("\\boxed{1} ", "\\boxed{"), ("", "\\boxed$")):
        one, two = _reads(head + unit * 2_000), _reads(head + unit * 4_000)
        assert 0 < two <= 2.2 * one, (unit, one, two)
    assert last_boxed("\\boxed{" * 200_000) is None
    assert last_boxed("\\boxed{1} " + "\\boxed{" * 200_000) == "1"
    assert last_boxed("\\boxed$" * 200_000) is None
    assert last_boxed("\\boxed{a} \\boxed{b") == "a" and last_boxed("\\boxed{\\frac{1}{2}} x") == "\\frac{1}{2}"
