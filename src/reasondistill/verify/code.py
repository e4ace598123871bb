"""Code answers: extract the code of a completion and judge it by the problem's tests.

Why: a code completion is judged by running it, and that must happen in the sandbox
(:mod:`reasondistill.verify.sandbox`), never here. This module turns a HumanEval/MBPP-style
problem plus a completion into the program to run, and the run into a verdict.

    from reasondistill.verify.code import CodeProblem, verify_code
    problem = CodeProblem(prompt="def add(a, b):\\n", tests="assert add(1, 2) == 3", entry_point="add")
    verify_code(problem, "```python\\ndef add(a, b):\\n    return a + b\\n```")
    # -> Check(verdict="correct", reason="passed", predicted=<the code>)

Reasons: "passed" (correct); "test failed", "error", "syntax error", "timeout", "cpu time limit",
"memory limit", "output limit", "blocked: <what>", "crashed", "exited early" (wrong: the code ran
and did not pass; a timeout counts as a failure, as in HumanEval); "no code found", "sandbox
error", "reference tests do not compile: <where and why>", "reference tests check nothing: <why>"
(unparseable: we could not judge it). The problem's own tests and setup are compiled (never run)
here first, so a broken reference is never blamed on the model, and parsed with ``ast`` (never
run): tests that hold no assert and no call, or define ``check(candidate)`` with no entry point
to call it with, would pass any code (:func:`tests_gap`). Reference tests that hang cannot be
told from a model's endless loop and count as "timeout".
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from reasondistill.checks import Check
from reasondistill.verify.sandbox import Limits, run_sandboxed  # noqa: F401 (Limits: re-export)

PYTHON_TAGS = ("python", "python3", "py", "py3")


@dataclass(frozen=True)
class CodeProblem:
    """A HumanEval/MBPP-style problem: a prompt, test code, and the function under test."""

    tests: str  # e.g. HumanEval's ``def check(candidate): ...`` or MBPP's assert lines
    prompt: str = ""  # signature + docstring the completion may continue
    entry_point: str | None = None
    setup: str = ""  # MBPP's test_setup_code


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language tag, body) of every ``` fence, in order; an unclosed last fence counts."""
    blocks, tag, body = [], "", None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            if body is None:
                tag, body = stripped[3:].strip().lower(), []
            else:
                blocks.append((tag, "\n".join(body)))
                body = None
        elif body is not None:
            body.append(line)
    if body is not None:  # a completion cut off inside its code
        blocks.append((tag, "\n".join(body)))
    return blocks


def extract_code(completion: str) -> str | None:
    """The last ```python block of a completion, else its last untagged ``` block, else None."""
    blocks = fenced_blocks(completion)
    for wanted in (PYTHON_TAGS, ("",)):
        bodies = [body for tag, body in blocks if tag in wanted and body.strip()]
        if bodies:
            return bodies[-1].strip("\n") + "\n"
    return None


def build_program(problem: CodeProblem, code: str) -> tuple[str, str]:
    """(solution source, test source) for a problem and a piece of model code.

    Code that does not define ``entry_point`` is taken as the continuation of the prompt. Code
    that does follows the whole prompt (whose stub it redefines, keeping the prompt's imports and
    helpers), or only the prompt's imports if prompt + code does not compile. HumanEval-style
    tests (a top-level ``def check`` they do not call themselves) get ``check(entry_point)``
    appended. Compiling and parsing never run anything.
    """
    ep = problem.entry_point
    if ep and not re.search(rf"^\s*(async\s+)?def\s+{re.escape(ep)}\s*\(", code, re.MULTILINE):
        solution = problem.prompt + code
    else:
        solution = problem.prompt.rstrip() + "\n\n\n" + code if problem.prompt.strip() else code
        if not _compiles(solution):
            imports = [ln for ln in problem.prompt.splitlines() if re.match(r"(from\s+\S+\s+)?import\s", ln)]
            solution = "\n".join(imports + [code])
    tests = problem.setup + "\n" + problem.tests + "\n"
    defines, calls = _check_use(problem.tests)
    if ep and defines and not calls:
        tests += f"check({ep})\n"
    return solution, tests


def _check_use(tests: str) -> tuple[bool, bool]:
    """(the tests define a top-level ``check``, they call ``check(...)`` at the top level themselves);
    parsed with ``ast``, never run; (False, False) if they do not parse."""
    try:
        body = ast.parse(tests).body
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False, False
    defines = any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == "check" for n in body)
    calls = any(isinstance(n, ast.Expr) and isinstance(n.value, ast.Call) and isinstance(n.value.func, ast.Name)
                and n.value.func.id == "check" for n in body)
    return defines, calls


def tests_gap(tests: str, entry_point: str | None) -> tuple[str, str] | None:
    """Why tests that compile would pass any code, as (the field at fault, "tests" or
    "entry_point"; why), or None. They hold no assert and no call at all (only comments, a bare
    list of strings), or they define ``check(candidate)``, never call it, and there is no entry
    point to call it with. Parsed with ``ast``, never run; tests that do not parse are
    :func:`compile_error`'s to report (None here)."""
    try:
        tree = ast.parse(tests)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    if not any(isinstance(n, (ast.Assert, ast.Call)) for n in ast.walk(tree)):
        listed = (len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr)
                  and isinstance(tree.body[0].value, (ast.List, ast.Tuple)))
        return "tests", "the tests contain no assert" + (
            " (they are a list written as Python text, not a JSON list: give a list, or a JSON list in a "
            "string, of assert lines)" if listed else "")
    defines, calls = _check_use(tests)
    if defines and not calls and not entry_point:
        return "entry_point", "the tests define check(candidate) but there is no entry_point to call it with"
    return None


def compile_error(source: str) -> str | None:
    """Why ``source`` does not compile ("invalid syntax (line 1)"), or None. Compiling runs nothing."""
    try:
        compile(source, "<source>", "exec", dont_inherit=True)
        return None
    except SyntaxError as exc:
        return f"{exc.msg} (line {exc.lineno})"
    except (ValueError, MemoryError, RecursionError) as exc:  # e.g. a null byte
        return f"{type(exc).__name__}: {exc}"


def _compiles(source: str) -> bool:
    return compile_error(source) is None


def reference_error(problem: CodeProblem) -> str | None:
    """Why the problem's own setup or tests do not compile ("tests: invalid syntax (line 1)"), or None."""
    for name, source in (("setup", problem.setup), ("tests", problem.tests)):
        why = compile_error(source)
        if why is not None:
            return f"{name}: {why}"
    return None


def verify_code(problem: CodeProblem, completion: str, limits: Limits | None = None) -> Check:
    """Extract the code of a completion and judge it by the problem's tests, sandboxed.

    Reference tests (or setup) that do not compile, or tests that check nothing (:func:`tests_gap`),
    make every completion unparseable, never wrong nor correct.
    """
    broken = reference_error(problem)
    if broken is not None:
        return Check("unparseable", f"reference tests do not compile: {broken}", extract_code(completion))
    empty = tests_gap(problem.tests, problem.entry_point)
    if empty is not None:
        return Check("unparseable", f"reference tests check nothing: {empty[1]}", extract_code(completion))
    code = extract_code(completion)
    if code is None:
        return Check("unparseable", "no code found", None)
    solution, tests = build_program(problem, code)
    run = run_sandboxed(solution, tests, limits)
    if run.status == "passed":
        return Check("correct", "passed", code)
    if run.status == "sandbox error":
        return Check("unparseable", "sandbox error", code)
    return Check("wrong", run.status, code)


def check_item(item: tuple) -> Check:
    """Pool entry point: ``(problem, completion[, limits])`` -> Check (use a pool timeout well
    above ``limits.wall_seconds``: the sandbox enforces its own)."""
    problem, completion, *rest = item
    return verify_code(problem, completion, rest[0] if rest else None)
