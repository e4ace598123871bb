"""The benchmark adapters on real (GSM8K) and fixture (MATH, multiple choice, code) data."""

import csv
import json
from pathlib import Path

import pytest

from reasondistill.records import RecordError
from reasondistill.tasks.base import load_task

GSM8K = Path(__file__).resolve().parents[2] / "../shared/data/gsm8k"


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def gsm8k():
    if not (GSM8K / "train.jsonl").exists() or not (GSM8K / "test.jsonl").exists():
        pytest.skip(f"the official GSM8K files are not at {GSM8K.resolve()} (train.jsonl, test.jsonl)")
    return load_task({"name": "gsm8k", "train_path": str(GSM8K / "train.jsonl"),
                      "test_path": str(GSM8K / "test.jsonl")})


def test_gsm8k_official_files(gsm8k):
    train, test = gsm8k.problems("train", None, 0), gsm8k.problems("test", None, 0)
    assert (len(train), len(test)) == (7473, 1319)
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    janet = next(p for p in test if p.prompt.startswith("Janet\u2019s ducks lay 16 eggs"))
    assert janet.answer == "18" and janet.difficulty == 2 and "####" not in janet.solution
    assert "<<" not in janet.solution and "16 - 3 - 4 = 9" in janet.solution
    assert all(p.answer and "####" not in p.answer and "," not in p.answer for p in train + test)
    assert gsm8k.check(janet, "She makes $18 a day.\n#### 18").verdict == "correct"
    assert gsm8k.check(janet, "The answer is \\boxed{18}.").verdict == "correct"
    assert gsm8k.check(janet, "The answer is 20.").verdict == "wrong"
    assert gsm8k.check(janet, "I cannot tell.").verdict == "unparseable"
    assert [p.id for p in gsm8k.problems("test", 50, 7)] == [p.id for p in gsm8k.problems("test", 50, 7)]
    assert len(gsm8k.problems("train", 100, 0)) == 100


def test_gsm8k_reference_solutions_verify(gsm8k):
    """Every official solution, given as a completion, is judged correct against its own answer."""
    test = gsm8k.problems("test", 200, 0)
    assert all(gsm8k.check(p, p.solution + f"\n#### {p.answer}").verdict == "correct" for p in test)


def test_gsm8k_row_without_final_answer_is_named(tmp_path):
    path = jsonl(tmp_path / "g.jsonl", [{"question": "q1", "answer": "1+1=2\n#### 2"},
                                        {"question": "q2", "answer": "so it is 3"}])
    with pytest.raises(RecordError, match=rf"{path}:2: field 'answer' \(task.fields.answer\) has no '#### <answer>'"):
        load_task({"name": "gsm8k", "train_path": str(path)}).problems("train", None, 0)


@pytest.mark.parametrize("final, answer", [("1,000", "1000"), ("-3.5", "-3.5"), ("$12", "12"), ("3/4", "3/4")])
def test_gsm8k_numeric_answers_are_read(tmp_path, final, answer):
    path = jsonl(tmp_path / "g.jsonl", [{"question": "q1", "answer": f"so\n#### {final}"}])
    assert load_task({"name": "gsm8k", "train_path": str(path)}).problems("train", None, 0)[0].answer == answer


@pytest.mark.parametrize("final", ["abc", "x = 4", "four"])
def test_gsm8k_answer_that_is_not_a_number_is_named(tmp_path, final):
    path = jsonl(tmp_path / "g.jsonl", [{"question": "q1", "answer": "1+1=2\n#### 2"},
                                        {"question": "q2", "answer": f"so\n#### {final}"}])
    with pytest.raises(RecordError, match=rf"{path}:2: field 'answer' \(task.fields.answer\): the answer after "
                                          rf"'####' should be a number, got '{final}'"):
        load_task({"name": "gsm8k", "train_path": str(path)}).problems("train", None, 0)


MATH_ROWS = [
    {"problem": "What is $\\frac{1}{2} + \\frac{1}{4}$?", "solution": "We get $\\boxed{\\frac{3}{4}}$.",
     "answer": "\\frac{3}{4}", "level": "Level 2", "subject": "Prealgebra", "unique_id": "test/prealgebra/1.json"},
    {"problem": "Solve $x^2 = 9$ for $x>0$.", "solution": "So $x = \\boxed{3}$.", "level": "Level 1",
     "subject": "Algebra", "unique_id": "test/algebra/2.json"},  # no `answer`: the last \boxed
    {"problem": "Find the point.", "solution": "It is $\\boxed{(3, \\frac{\\pi}{2})}$.",
     "answer": "\\left( 3, \\frac{\\pi}{2} \\right)", "level": "Level ?", "subject": "Precalculus",
     "unique_id": "test/precalculus/807.json"},
]


def test_math_adapter_on_a_fixture(tmp_path):
    path = jsonl(tmp_path / "math500.jsonl", MATH_ROWS)
    task = load_task({"name": "math", "test_path": str(path)})
    by_id = {p.id: p for p in task.problems("test", None, 0)}
    frac, sq, point = (by_id[f"math:{r['unique_id']}"] for r in MATH_ROWS)
    assert (frac.answer, frac.difficulty, frac.meta["subject"]) == ("\\frac{3}{4}", 2, "Prealgebra")
    assert (sq.answer, sq.difficulty) == ("3", 1)
    assert point.difficulty == 0 and point.meta["level"] == "Level ?"
    assert task.check(frac, "so \\boxed{0.75}").verdict == "correct"
    assert task.check(frac, "so \\boxed{\\frac{2}{3}}").verdict == "wrong"
    assert task.check(sq, "x = \\boxed{3}").verdict == "correct"
    assert task.check(point, "\\boxed{(3, \\frac{\\pi}{2})}").verdict == "correct"
    assert task.check(point, "no idea").verdict == "unparseable"


def test_math_row_without_any_answer_is_named(tmp_path):
    path = jsonl(tmp_path / "m.jsonl", [MATH_ROWS[0], {"problem": "p", "solution": "no box here"}])
    with pytest.raises(RecordError, match=rf"{path}:2: field 'solution' \(task.fields.solution\) has no \\boxed"):
        load_task({"name": "math", "train_path": str(path)}).problems("train", None, 0)


@pytest.mark.parametrize("row, message", [
    ({"solution": "First \\boxed{2}, then so \\boxed{3"}, r"field 'solution' \(task.fields.solution\): its last "
                                                       r"\\boxed\{ never closes"),
    ({"solution": "So \\boxed{}."}, r"field 'solution' \(task.fields.solution\) has no \\boxed\{\} answer \(or an "
                                     r"empty one\)"),
    ({"solution": "So \\boxed{\\frac{}{}}."}, r"field 'solution' \(task.fields.solution\): its last \\boxed\{\}: "
                                             r"an empty argument in '\\\\frac\{\}'"),
    ({"solution": "So \\boxed{3}.", "answer": "\\frac{1}{2"}, r"field 'answer' \(task.fields.answer\): unbalanced "
                                                             r"braces"),
])
def test_math_reference_that_cannot_be_an_answer_is_named(tmp_path, row, message):
    path = jsonl(tmp_path / "m.jsonl", [MATH_ROWS[0], {"problem": "p", "unique_id": "x", **row}])
    with pytest.raises(RecordError, match=rf"^{path}:2: {message}"):
        load_task({"name": "math", "train_path": str(path)}).problems("train", None, 0)


def test_math_answers_with_escaped_braces_and_sets_load(tmp_path):
    rows = [{"problem": "p1", "solution": "\\boxed{\\{1, 2\\}}", "unique_id": "a"},
            {"problem": "p2", "solution": "s", "answer": "\\left\\{ \\frac12 \\right\\}", "unique_id": "b"}]
    task = load_task({"name": "math", "train_path": str(jsonl(tmp_path / "m.jsonl", rows))})
    assert sorted(p.answer for p in task.problems("train", None, 0)) == ["\\left\\{ \\frac12 \\right\\}",
                                                                         "\\{1, 2\\}"]


def test_multiple_choice_letters_indices_texts_and_columns(tmp_path):
    rows = [{"question": "Capital of France?", "choices": ["Rome", "Paris", "Oslo"], "answer": "B", "id": 1},
            {"question": "2 + 2?", "choices": ["3", "4", "5", "22"], "answer": 1, "id": 2},  # 0-based index
            {"question": "Largest planet?", "choices": ["Mars", "Jupiter"], "answer": "Jupiter", "id": 3}]
    task = load_task({"name": "choice", "test_path": str(jsonl(tmp_path / "mc.jsonl", rows)),
                      "fields": {"id": "id"}})
    p1, p2, p3 = sorted(task.problems("test", None, 0), key=lambda p: p.id)
    assert p1.prompt == "Capital of France?\n\nA. Rome\nB. Paris\nC. Oslo"
    assert (p1.answer, p2.answer, p3.answer) == ("B", "B", "B")
    assert task.check(p1, "The answer is (B).").verdict == "correct"
    assert task.check(p1, "Answer: C").verdict == "wrong"
    assert task.check(p1, "I pick Paris").verdict == "correct"  # the option's text, not its letter
    assert task.check(p2, "hmm").verdict == "unparseable"

    mmlu = tmp_path / "mmlu.csv"  # MMLU-style: one column per option
    with mmlu.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["prompt", "A", "B", "C", "D", "target"])
        w.writerow(["Which is prime?", "4", "6", "7", "9", "C"])
        w.writerow(["Which is even?", "3", "5", "7", "8", "E"])
    spec = {"name": "choice", "train_path": str(mmlu),
            "fields": {"question": "prompt", "choices": ["A", "B", "C", "D"], "answer": "target"}}
    with pytest.raises(RecordError, match=rf"{mmlu}:3 \(row 2\): field 'target' \(task.fields.answer\): 'E' is not"):
        load_task(spec).problems("train", None, 0)
    ok = load_task({**spec, "skip_bad_rows": True}).problems("train", None, 0)
    assert [(p.answer, p.meta["choices"]) for p in ok] == [("C", ["4", "6", "7", "9"])]


@pytest.mark.parametrize("choices, answer, message", [
    (["x", ["nested"], "z"], "A", r"field 'choices' \(task.fields.choices\): option 1 \(B\) should be text, got list"),
    ([None, "y"], "B", r"field 'choices' \(task.fields.choices\): option 0 \(A\) is null"),
    (["x", "y", "  "], "A", r"field 'choices' \(task.fields.choices\): option 2 \(C\) is empty"),
    (["x", True], "A", r"field 'choices' \(task.fields.choices\): option 1 \(B\) should be text, got bool"),
    (["Paris", "Rome", "paris"], "Paris", r"field 'answer' \(task.fields.answer\): 'Paris' is the text of options "
                                          r"A, C: give the letter or the 0-based index"),
])
def test_multiple_choice_bad_options_and_ambiguous_answers_are_named(tmp_path, choices, answer, message):
    path = jsonl(tmp_path / "mc.jsonl", [{"question": "Q?", "choices": ["a", "b"], "answer": "A"},
                                         {"question": "Q2?", "choices": choices, "answer": answer}])
    with pytest.raises(RecordError, match=rf"^{path}:2: {message}"):
        load_task({"name": "choice", "train_path": str(path)}).problems("train", None, 0)


def test_multiple_choice_numeric_options_are_text(tmp_path):
    path = jsonl(tmp_path / "mc.jsonl", [{"question": "2 + 2?", "choices": [3, 4, 5.5], "answer": 1}])
    p = load_task({"name": "choice", "train_path": str(path)}).problems("train", None, 0)[0]
    assert (p.answer, p.meta["choices"]) == ("B", ["3", "4", "5.5"])  # an int answer is an index
    assert p.prompt.endswith("A. 3\nB. 4\nC. 5.5")


HUMANEVAL = {
    "task_id": "HumanEval/0", "entry_point": "add",
    "prompt": "def add(a: int, b: int) -> int:\n    \"\"\"Return a + b.\"\"\"\n",
    "canonical_solution": "    return a + b\n",
    "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n",
}
MBPP = {"task_id": 11, "text": "Write a function to square a number.", "code": "def sq(x):\n    return x * x",
        "test_list": ["assert sq(3) == 9", "assert sq(-2) == 4"], "test_setup_code": ""}


def test_code_adapter_runs_solutions_in_the_sandbox(tmp_path):
    task = load_task({"name": "code", "test_path": str(jsonl(tmp_path / "he.jsonl", [HUMANEVAL])), "wall_seconds": 10})
    p = task.problems("test", None, 0)[0]
    assert p.id == "code:HumanEval/0" and p.prompt == HUMANEVAL["prompt"] and p.meta["entry_point"] == "add"
    right = "```python\ndef add(a, b):\n    return a + b\n```"
    wrong = "```python\ndef add(a, b):\n    return a - b\n```"
    body_only = "```python\n    return a + b\n```"  # a continuation of the prompt
    assert task.check(p, right).verdict == "correct"
    assert task.check(p, body_only).verdict == "correct"
    bad = task.check(p, wrong)
    assert (bad.verdict, bad.reason) == ("wrong", "test failed")
    assert task.check(p, "def add(a, b): return a + b").verdict == "unparseable"  # no code block

    mbpp = load_task({"name": "code", "train_path": str(jsonl(tmp_path / "mbpp.jsonl", [MBPP])),
                      "fields": {"prompt": "text", "tests": "test_list", "solution": "code",
                                 "setup": "test_setup_code"}})
    q = mbpp.problems("train", None, 0)[0]
    assert q.meta["tests"] == "assert sq(3) == 9\nassert sq(-2) == 4"
    assert mbpp.check(q, f"```python\n{MBPP['code']}\n```").verdict == "correct"
    assert mbpp.check(q, "```python\ndef sq(x):\n    return x + x\n```").verdict == "wrong"


@pytest.mark.parametrize("row", [{**HUMANEVAL, "test": "assert c(1) =="},
                                 {**MBPP, "test_list": ["assert sq(3) == 9", "assert sq(-2) =="]}])
def test_code_rows_whose_tests_do_not_compile_are_refused_when_loaded(tmp_path, row):
    path = jsonl(tmp_path / "code.jsonl", [HUMANEVAL if "test" in row else MBPP, row])
    fields = {} if "test" in row else {"prompt": "text", "tests": "test_list", "setup": "test_setup_code"}
    field = "test" if "test" in row else "test_list"
    with pytest.raises(RecordError, match=rf"{path}:2: field '{field}' \(task.fields.tests\) does not compile: "
                                          rf".*line \d"):
        load_task({"name": "code", "train_path": str(path), "fields": fields}).problems("train", None, 0)


MBPP_FIELDS = {"prompt": "text", "tests": "test_list", "solution": "code", "setup": "test_setup_code",
               "entry_point": None}
NO_ENTRY_POINT = "tests define check\\(candidate\\) but the row has no entry_point"


@pytest.mark.parametrize("row, fields, message", [
    ({k: v for k, v in HUMANEVAL.items() if k != "entry_point"}, {},  # the column is missing
     rf"field 'entry_point' \(task.fields.entry_point\): {NO_ENTRY_POINT}; the row has: canonical_solution"),
    ({**{k: v for k, v in HUMANEVAL.items() if k != "entry_point"}, "entrypoint": "add"}, {},  # misnamed
     rf"field 'entry_point' \(task.fields.entry_point\): {NO_ENTRY_POINT}; the row has: .*entrypoint"),
    (HUMANEVAL, {"entry_point": None},
     rf"field 'test' \(task.fields.tests\): {NO_ENTRY_POINT} \(task.fields.entry_point is null\)"),
    ({**HUMANEVAL, "test": "def check(candidate):\n    pass\n"}, {},
     r"field 'test' \(task.fields.tests\): the tests contain no assert$"),
    ({**MBPP, "test_list": ["# assert sq(3) == 9"]}, MBPP_FIELDS,
     r"field 'test_list' \(task.fields.tests\): the tests contain no assert$"),
    ({**MBPP, "test_list": "['assert sq(3) == 9']"}, MBPP_FIELDS,  # a Python repr, not JSON
     r"field 'test_list' \(task.fields.tests\): the tests contain no assert \(they are a list written as Python"),
])
def test_code_rows_whose_tests_check_nothing_are_refused_when_loaded(tmp_path, row, fields, message):
    """Tests that never run an assert would make every completion correct: refused, parsed (never run)."""
    path = jsonl(tmp_path / "code.jsonl", [row])
    with pytest.raises(RecordError, match=rf"^{path}:1: {message}"):
        load_task({"name": "code", "train_path": str(path), "fields": fields}).problems("train", None, 0)


def test_code_tests_given_as_a_json_list_in_a_string_are_decoded(tmp_path):
    """MBPP's test_list from a CSV is a JSON list in a string, read like ``choices``: its asserts run."""
    rows = [{**MBPP, "test_list": json.dumps(MBPP["test_list"])},
            {**MBPP, "task_id": 12, "text": "Square, checked by one line.", "test_list": "assert sq(5) == 25"}]
    task = load_task({"name": "code", "train_path": str(jsonl(tmp_path / "mbpp.jsonl", rows)),
                      "fields": MBPP_FIELDS})
    listed, plain = sorted(task.problems("train", None, 0), key=lambda p: p.id)
    assert listed.meta["tests"] == "assert sq(3) == 9\nassert sq(-2) == 4"
    assert plain.meta["tests"] == rows[1]["test_list"]
    assert task.check(listed, "```python\ndef sq(x):\n    return x + x\n```").verdict == "wrong"
    assert task.check(listed, f"```python\n{MBPP['code']}\n```").verdict == "correct"


def test_humaneval_tests_that_call_check_themselves_need_no_entry_point(tmp_path):
    row = {**{k: v for k, v in HUMANEVAL.items() if k != "entry_point"}, "test": HUMANEVAL["test"] + "check(add)\n"}
    task = load_task({"name": "code", "train_path": str(jsonl(tmp_path / "he.jsonl", [row]))})
    p = task.problems("train", None, 0)[0]
    assert p.meta["entry_point"] is None
    assert task.check(p, "```python\ndef add(a, b):\n    return a - b\n```").verdict == "wrong"


def test_code_model_cannot_escape_through_check(tmp_path):
    """A completion that tries to write outside its sandbox is refused, not run here."""
    task = load_task({"name": "code", "test_path": str(jsonl(tmp_path / "he.jsonl", [HUMANEVAL]))})
    p = task.problems("test", None, 0)[0]
    target = tmp_path / "pwned.txt"
    evil = f"```python\nopen({str(target)!r}, 'w').write('x')\ndef add(a, b):\n    return a + b\n```"
    assert task.check(p, evil).verdict == "wrong"
    assert not target.exists()
