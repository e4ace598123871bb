"""The task interface: make problems, render their prompts, and check a final answer.

Why: every other stage is task-agnostic. A task only has to say what its problems are and how
to tell a right answer from a wrong one (and, separately, from one that cannot be read:
"cannot verify" is never "wrong").

    task = load_task({"name": "chained_arith", "min_ops": 3, "max_ops": 5})
    problems = task.problems("train", n=100, seed=0)
    task.check(problems[0], "48")  # -> Check(verdict="correct", ...)

Built in: ``chained_arith`` (generated, :mod:`.arith`), ``gsm8k``/``math``/``choice``/``code``
(:mod:`.adapters`), ``file`` (any question/answer file, :mod:`.filetask`), ``mixture``
(:mod:`.mixture`). Config sections: :mod:`.config`; file formats: :mod:`.sources`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from reasondistill.records import CheckVerdict, Problem


@dataclass(frozen=True)
class Check:
    verdict: CheckVerdict
    reason: str
    predicted: str | None = None


class Task(Protocol):
    name: str

    def problems(self, split: str, n: int | None, seed: int) -> list[Problem]:
        """``n`` problems of ``split`` ("train" or "test"), deterministic given ``seed``; for
        file-backed tasks ``n`` is a cap and None means all.

        Train and test problems must be disjoint by construction.
        """
        ...

    def check(self, problem: Problem, answer: str) -> Check:
        """Judge the final-answer text of a completion against the problem's reference."""
        ...

    def describe(self) -> dict[str, Any]:
        """The task's parameters, recorded in the run manifest."""
        ...

    # Optional: ``check_job(problem, answer) -> (function, args) | None``. A check that can hang on
    # hostile text (sympy, backtracking regexes) returns the importable function and plain-data
    # arguments whose call is ``check``; every stage then runs it in a worker process with a time
    # limit (reasondistill.verify.checker). Without the method, or for None, ``check`` runs in-process.


def load_task(spec: dict[str, Any], label: str | None = None) -> Task:
    """Build a task from its config section (``name`` plus the task's own fields; see
    :mod:`reasondistill.tasks.config`). ``label`` renames it (a mixture's source label): problem
    ids and ``Problem.task`` use the label."""
    spec = dict(spec)
    name = spec.pop("name", "chained_arith")
    if name == "chained_arith":
        from reasondistill.tasks.arith import ChainedArithmetic

        return ChainedArithmetic(**spec, **({"name": label} if label else {}))
    if name == "mixture":
        from reasondistill.tasks.mixture import Mixture

        return Mixture(**spec, **({"name": label} if label else {}))
    from reasondistill.tasks.adapters import GSM8K, MATH, CodeTask, MultipleChoice
    from reasondistill.tasks.filetask import FileTask

    kinds = {"gsm8k": GSM8K, "math": MATH, "choice": MultipleChoice, "code": CodeTask, "file": FileTask}
    if name not in kinds:
        raise ValueError(f"task.name: unknown task {name!r}; built-in tasks: "
                         f"{', '.join(['chained_arith', *kinds, 'mixture'])}")
    return kinds[name](label, **spec)
