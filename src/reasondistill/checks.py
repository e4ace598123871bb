"""What checking one answer returns (``Check``) and the ``Task`` interface every stage codes against.

Why a module of its own, at the bottom: the verifiers (``verify/``) return checks and the tasks
(``tasks/``) call the verifiers, so the types both need live below both; the registry that builds a
task from its config (``tasks.base.load_task``) imports every task and stays in ``tasks/``.

    check = task.check(problem, "48")   # Check(verdict="correct", reason="match", predicted="48")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from reasondistill.records import CheckVerdict, Problem

# reasons of an "unparseable" verdict that say the check itself could not finish (never "wrong")
TIMEOUT = "timeout"
OUT_OF_MEMORY = "out of memory"


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


def failure_check(item: object, failure: object) -> Check:
    """Pool on_failure: cannot verify, never "wrong". Reason "timeout", or "verifier crash" /
    "verifier error" when the worker died or the check raised."""
    kind = getattr(failure, "kind", "error")
    if kind == "error" and str(getattr(failure, "detail", "")).startswith("MemoryError"):
        return Check("unparseable", OUT_OF_MEMORY, None)
    return Check("unparseable", TIMEOUT if kind == "timeout" else f"verifier {kind}", None)
