"""Built-in adapters for public benchmarks: GSM8K, MATH / MATH-500, multiple choice, code.

Why: each benchmark stores its question, reference and metadata its own way; an adapter maps a
row to a :class:`~reasondistill.records.Problem` and checks an answer with the matching verifier
(:mod:`reasondistill.verify`). The field names default to the public releases and can be remapped
in the config (``task.fields``). Verdicts keep "unparseable" (cannot verify: no answer, parse
failure, sandbox error) apart from "wrong".

* ``gsm8k``: ``question``; ``answer`` = worked solution ending in ``#### N``, N a number (else
  the row is refused). Problem.answer is N, Problem.solution the text before ``####`` without the
  ``<<48/2=24>>`` calculator notes; difficulty = number of solution lines (reasoning steps).
  Checked with ``verify_math``.
* ``math``: ``problem``; ``solution`` with ``\\boxed{}``; ``answer`` if present, else the last
  ``\\boxed{}`` of the solution (refused if it never closes); ``level`` ("Level 3" or 3) →
  difficulty; ``subject`` → meta. A reference with unbalanced braces or an empty ``\\frac{}``
  argument is refused (:func:`latex_answer_error`).
* ``choice``: ``question``; ``choices`` (a list, a JSON list in a string, or several columns),
  each option text or a number (an empty, null or list option is refused); ``answer`` a letter,
  an int index (0-based) or an option's text (refused if it is the text of several options).
  The prompt lists the options as "A. ...", one a line; checked with ``verify_choice``.
* ``code``: HumanEval (``prompt``, ``test`` with ``def check``, ``entry_point``) or MBPP
  (``fields: {prompt: text, tests: test_list, setup: test_setup_code}``); checked by running the
  extracted code against the tests in the sandbox (``verify_code``), never in this process.
  ``test_list`` may be a list or a JSON list in a string (as from CSV). A row is refused whose
  tests or setup do not compile (compiled only, never run), or whose tests would pass any code
  (parsed with ``ast``, never run): no assert and no call at all, or ``def check(candidate)``
  that nothing calls and no ``entry_point`` to call it with.

    task = GSM8K(train_path="data/gsm8k/train.jsonl", test_path="data/gsm8k/test.jsonl")
    task.check(task.problems("test", 1, 0)[0], "The answer is 18.")
"""

from __future__ import annotations

import json
import math
import re
import string
from typing import Any

from reasondistill.records import Problem, RecordError
from reasondistill.checks import Check
from reasondistill.tasks.config import ChoiceFields, CodeFields, GSM8KFields, MathFields
from reasondistill.tasks.filetask import RowTask, math_job
from reasondistill.tasks.sources import Row, field_value

_CALC = re.compile(r"<<[^<>]*>>")
_LEVEL = re.compile(r"(\d+)")
_GSM_NUMBER = re.compile(r"-?(?:\d+(?:\.\d+)?|\.\d+)(?:/\d+)?%?")  # after clean_answer: 1,234 → 1234
_EMPTY_ARG = re.compile(r"\\(?:[dt]?frac|sqrt|binom)\s*\{\s*\}")  # \frac{}{3}, \sqrt{}: no usable answer


class GSM8K(RowTask):
    kind = "gsm8k"
    fields_cls = GSM8KFields

    def parse(self, row: Row) -> dict[str, Any]:
        from reasondistill.verify.math import clean_answer

        f = self.fields
        full = field_value(row, "answer", f.answer)
        if "####" not in full:
            raise RecordError(f"{row.where}: field {f.answer!r} (task.fields.answer) has no '#### <answer>' "
                              f"line: {full[-60:]!r}")
        body, _, final = full.rpartition("####")
        answer = clean_answer(final)
        if not answer:
            raise RecordError(f"{row.where}: field {f.answer!r} (task.fields.answer): nothing after '####'")
        if not _GSM_NUMBER.fullmatch(answer):
            raise RecordError(f"{row.where}: field {f.answer!r} (task.fields.answer): the answer after '####' "
                              f"should be a number, got {final.strip()!r:.60}")
        solution = _CALC.sub("", body).strip()
        return {"question": field_value(row, "question", f.question), "answer": answer, "solution": solution,
                "difficulty": sum(1 for ln in solution.splitlines() if ln.strip()),
                "id": field_value(row, "id", f.id, required=False)}

    def check_job(self, problem: Problem, answer: str) -> tuple:
        return math_job(problem, answer)


def math_level(value: Any) -> int:
    """MATH's "Level 3" (or 3) → 3; "Level ?" or nothing → 0."""
    if value is None:
        return 0
    m = _LEVEL.search(str(value))
    return int(m.group(1)) if m else 0


def latex_answer_error(answer: str) -> str | None:
    """Why a reference answer in LaTeX cannot be right whatever is compared to it, or None: its
    braces do not balance (``\\{`` and ``\\}`` aside), or a fraction, root or binomial has an empty
    argument (``\\frac{}{}``)."""
    depth = 0
    for m in re.finditer(r"\\.|[{}]", answer, re.DOTALL):
        if m.group() in "{}":
            depth += 1 if m.group() == "{" else -1
            if depth < 0:
                break
    if depth:
        return f"unbalanced braces in {answer!r:.60}"
    empty = _EMPTY_ARG.search(answer)
    return f"an empty argument in {empty.group()!r} of {answer!r:.60}" if empty else None


class MATH(RowTask):
    kind = "math"
    fields_cls = MathFields

    def parse(self, row: Row) -> dict[str, Any]:
        from reasondistill.verify.math import final_box_is_unclosed, last_boxed

        f = self.fields
        solution = field_value(row, "solution", f.solution)
        given = field_value(row, "answer", f.answer, required=False)
        if given is None and final_box_is_unclosed(solution):  # an earlier \boxed{} is not the answer
            raise RecordError(f"{row.where}: field {f.solution!r} (task.fields.solution): its last \\boxed{{ "
                              f"never closes and the row has no {f.answer!r} field")
        answer = given or last_boxed(solution)
        if not answer:
            raise RecordError(f"{row.where}: field {f.solution!r} (task.fields.solution) has no \\boxed{{}} "
                              f"answer (or an empty one) and the row has no {f.answer!r} field")
        why = latex_answer_error(answer)
        if why is not None:
            where = f"field {f.answer!r} (task.fields.answer)" if given else \
                f"field {f.solution!r} (task.fields.solution): its last \\boxed{{}}"
            raise RecordError(f"{row.where}: {where}: {why}")
        subject = field_value(row, "subject", f.subject, required=False)
        level = field_value(row, "level", f.level, required=False, kind="any")
        return {"question": field_value(row, "question", f.question), "answer": answer, "solution": solution,
                "difficulty": math_level(level), "id": field_value(row, "id", f.id, required=False),
                "meta": {k: v for k, v in (("subject", subject), ("level", level)) if v is not None}}

    def check_job(self, problem: Problem, answer: str) -> tuple:
        return math_job(problem, answer)


class MultipleChoice(RowTask):
    kind = "choice"
    fields_cls = ChoiceFields

    def parse(self, row: Row) -> dict[str, Any]:
        f = self.fields
        options = field_value(row, "choices", f.choices, kind="list")
        if len(options) > 26:
            raise RecordError(f"{row.where}: field {f.choices!r} (task.fields.choices): {len(options)} options, "
                              "at most 26 (A-Z)")
        letters = string.ascii_uppercase[:len(options)]
        for i, (L, o) in enumerate(zip(letters, options)):
            why = _bad_option(o)
            if why is not None:
                raise RecordError(f"{row.where}: field {f.choices!r} (task.fields.choices): option {i} ({L}) {why}")
        options = [str(o) for o in options]
        raw = field_value(row, "answer", f.answer, kind="any")
        letter = reference_letter(raw, options)
        if letter is None:
            same = [L for L, o in zip(letters, options) if o.strip().casefold() == str(raw).strip().casefold()]
            if len(same) > 1:
                raise RecordError(f"{row.where}: field {f.answer!r} (task.fields.answer): {raw!r} is the text of "
                                  f"options {', '.join(same)}: give the letter or the 0-based index")
            raise RecordError(f"{row.where}: field {f.answer!r} (task.fields.answer): {raw!r} is not a letter "
                              f"{letters[0]}-{letters[-1]}, an index 0-{len(options) - 1} or one option's text")
        question = field_value(row, "question", f.question)
        rendered = question.rstrip() + "\n\n" + "\n".join(f"{L}. {o}" for L, o in zip(letters, options))
        subject = field_value(row, "subject", f.subject, required=False)
        return {"question": rendered, "answer": letter, "solution": "", "difficulty": 0,
                "id": field_value(row, "id", f.id, required=False),
                "meta": {"choices": options, **({"subject": subject} if subject else {})}}

    def check_job(self, problem: Problem, answer: str) -> tuple:
        from reasondistill.verify.choice import verify_choice  # backtracking patterns: time-limited

        return verify_choice, (problem.answer, answer, problem.meta.get("choices"))


def _bad_option(option: Any) -> str | None:
    """Why a multiple-choice option is not one (text, or a number written as text), or None."""
    if isinstance(option, str):
        return "is empty" if not option.strip() else None
    if option is None:
        return "is null"
    if isinstance(option, bool) or not isinstance(option, (int, float)):
        return f"should be text, got {type(option).__name__} {option!r:.60}"
    return None if math.isfinite(option) else f"is {option!r}, not a usable option"


def reference_letter(raw: Any, options: list[str]) -> str | None:
    """The letter of a reference answer: an int is a 0-based index; a string is a letter, else
    exactly one option's text, else a 0-based index in digits."""
    letters = string.ascii_uppercase[:len(options)]
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int) or (isinstance(raw, float) and raw.is_integer()):
        i = int(raw)
        return letters[i] if 0 <= i < len(options) else None
    text = str(raw).strip()
    bare = text.strip("()[]*. ")
    if len(bare) == 1 and bare.upper() in letters and bare.isupper():
        return bare
    same = [L for L, o in zip(letters, options) if o.strip().casefold() == text.casefold()]
    if len(same) == 1:
        return same[0]
    if text.isdigit() and int(text) < len(options):
        return letters[int(text)]
    return None


class CodeTask(RowTask):
    kind = "code"
    fields_cls = CodeFields

    def __init__(self, name: str | None = None, *, wall_seconds: float = 10.0, memory_mb: int = 1024, **kw: Any):
        super().__init__(name, **kw)
        self.wall_seconds, self.memory_mb = wall_seconds, memory_mb

    def parse(self, row: Row) -> dict[str, Any]:
        from reasondistill.verify.code import compile_error, tests_gap

        f = self.fields
        prompt = field_value(row, "prompt", f.prompt)
        tests = field_value(row, "tests", f.tests, kind="any")
        if isinstance(tests, str) and tests.lstrip().startswith("["):  # MBPP's test_list as a JSON list (CSV)
            try:
                tests = json.loads(tests)
            except json.JSONDecodeError:
                pass  # test code that starts with "[" (tests_gap names a list written as Python text)
        if isinstance(tests, (list, tuple)) or hasattr(tests, "tolist"):  # MBPP's test_list
            tests = "\n".join(str(t) for t in (tests.tolist() if hasattr(tests, "tolist") else tests))
        if not isinstance(tests, str) or not tests.strip():
            raise RecordError(f"{row.where}: field {f.tests!r} (task.fields.tests) should be test code or a "
                              f"list of assert lines, got {tests!r:.60}")
        setup = field_value(row, "setup", f.setup, required=False) or ""
        for field, name, source in ((f.tests, "tests", tests), (f.setup, "setup", setup)):
            why = compile_error(source)  # compiled, never run: a broken reference would fail every answer
            if why is not None:
                raise RecordError(f"{row.where}: field {field!r} (task.fields.{name}) does not compile: {why}")
        entry_point = field_value(row, "entry_point", f.entry_point, required=False)
        gap = tests_gap(tests, entry_point)  # parsed, never run: tests that check nothing pass every answer
        if gap is not None:
            raise RecordError(f"{row.where}: {_gap_message(row, f, *gap)}")
        solution = field_value(row, "solution", f.solution, required=False) or ""
        meta = {"tests": tests, "code_prompt": prompt, "entry_point": entry_point, "setup": setup}
        return {"question": prompt, "answer": solution, "solution": solution, "difficulty": 0,
                "id": field_value(row, "id", f.id, required=False), "meta": meta}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "wall_seconds": self.wall_seconds, "memory_mb": self.memory_mb}

    def check(self, problem: Problem, answer: str) -> Check:
        from reasondistill.verify.code import CodeProblem, Limits, verify_code

        m = problem.meta
        spec = CodeProblem(tests=m["tests"], prompt=m.get("code_prompt", ""), entry_point=m.get("entry_point"),
                           setup=m.get("setup", ""))
        limits = Limits(wall_seconds=self.wall_seconds, cpu_seconds=max(1, math.ceil(self.wall_seconds)),
                        memory_mb=self.memory_mb)
        return verify_code(spec, answer, limits)


def _gap_message(row: Row, f: CodeFields, field: str, why: str) -> str:
    """A code row's tests that would pass any code (verify.code.tests_gap), naming the field at fault."""
    if field == "tests":
        return f"field {f.tests!r} (task.fields.tests): {why}"
    why = "tests define check(candidate) but the row has no entry_point"
    if f.entry_point is None:
        return f"field {f.tests!r} (task.fields.tests): {why} (task.fields.entry_point is null)"
    known = ", ".join(sorted(map(str, row.data))[:12])
    return f"field {f.entry_point!r} (task.fields.entry_point): {why}; the row has: {known}"
