"""Chained modular arithmetic: a built-in reasoning task that needs no download.

A problem is a start number 10–99 and k operations (+, −, × by a digit 2–9) applied left to
right, keeping the result mod 100 after every step; difficulty = k. The reference solver writes
one line per step (``52*3=56``), then the final answer. Hard to guess in one go, easy step by
step: the task on which reasoning traces visibly matter for a small student.

Train and test problems are disjoint by construction: a problem's split is a hash of its text,
so no seed or size can put a test problem in training.

    task = ChainedArithmetic(min_ops=3, max_ops=5)
    task.problems("test", n=3, seed=0)
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

from reasondistill.records import Problem
from reasondistill.checks import Check

OPS = "+-*"
DIGITS = range(2, 10)
TEST_BUCKETS = 1  # of 10 hash buckets, how many are test problems
_INT = re.compile(r"-?\d+")


def apply_op(value: int, op: str, digit: int) -> int:
    if op == "+":
        return (value + digit) % 100
    if op == "-":
        return (value - digit) % 100
    return (value * digit) % 100


def split_of(text: str) -> str:
    bucket = hashlib.blake2b(text.encode(), digest_size=8).digest()[0] % 10
    return "test" if bucket < TEST_BUCKETS else "train"


def solve(start: int, ops: list[tuple[str, int]]) -> tuple[list[str], int]:
    """The step lines and the final value."""
    lines, value = [], start
    for op, digit in ops:
        new = apply_op(value, op, digit)
        lines.append(f"{value}{op}{digit}={new}")
        value = new
    return lines, value


def canonical_int(digits: str) -> str:
    """An integer's text without leading zeros or a minus on zero: equal iff ``int()`` is equal, and
    linear for any length (``int()`` refuses more than 4,300 digits)."""
    negative = digits.startswith("-")
    body = digits.lstrip("-").lstrip("0") or "0"
    return "-" + body if negative and body != "0" else body


def parse_prompt(prompt: str) -> tuple[int, list[tuple[str, int]]]:
    start = int(prompt[:2])
    rest = prompt[2:]
    return start, [(rest[i], int(rest[i + 1])) for i in range(0, len(rest), 2)]


@dataclass
class ChainedArithmetic:
    min_ops: int = 3
    max_ops: int = 5
    name: str = "chained_arith"
    strategy: str | None = None  # a system prompt for the teacher only (tasks/strategy.py)

    def __post_init__(self) -> None:
        if not 1 <= self.min_ops <= self.max_ops:
            raise ValueError(f"task: need 1 <= min_ops <= max_ops, got {self.min_ops}, {self.max_ops}")

    def describe(self) -> dict:
        return {"name": self.name, "min_ops": self.min_ops, "max_ops": self.max_ops,
                "rule": "start 10-99, ops +,-,* by a digit 2-9, left to right, mod 100 after each step",
                **({"strategy": self.strategy} if self.strategy else {})}

    def capacity(self, split: str) -> int:
        """Roughly how many distinct problems the split holds."""
        total = sum(90 * 24**k for k in range(self.min_ops, self.max_ops + 1))
        return total // 10 if split == "test" else total * 9 // 10

    def make(self, start: int, ops: list[tuple[str, int]]) -> Problem:
        prompt = f"{start}" + "".join(f"{op}{d}" for op, d in ops)
        lines, value = solve(start, ops)
        return Problem(id=f"{self.name}:{prompt}", task=self.name, prompt=prompt, answer=str(value),
                       solution="\n".join(lines), difficulty=len(ops))

    def problems(self, split: str, n: int, seed: int) -> list[Problem]:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if n > self.capacity(split) // 2:
            raise ValueError(f"task: {n} {split} problems asked, the split holds ~{self.capacity(split)}; "
                             "raise max_ops or ask for fewer")
        rng = random.Random(f"{self.name}:{split}:{seed}")
        seen: set[str] = set()
        out: list[Problem] = []
        while len(out) < n:
            k = rng.randint(self.min_ops, self.max_ops)
            start = rng.randint(10, 99)
            ops = [(rng.choice(OPS), rng.choice(DIGITS)) for _ in range(k)]
            p = self.make(start, ops)
            if p.prompt in seen or split_of(p.prompt) != split:
                continue
            seen.add(p.prompt)
            if self.strategy:
                p.meta["strategy"] = self.strategy
            out.append(p)
        return out

    def check(self, problem: Problem, answer: str) -> Check:
        found = _INT.findall(answer)
        if not found:
            return Check("unparseable", "no integer in the answer", None)
        if len(found) > 1 or _INT.fullmatch(answer.strip()) is None:
            # be strict: the answer must be just the number
            return Check("unparseable", f"answer is not a bare integer: {answer.strip()[:40]!r}", found[-1])
        pred = found[0]
        if canonical_int(pred) == canonical_int(problem.answer):
            return Check("correct", "matches reference", pred)
        return Check("wrong", f"expected {problem.answer}, got {pred[:40]}{'…' if len(pred) > 40 else ''}", pred)

    def first_wrong_step(self, problem: Problem, thinking: str) -> int | None:
        """Index of the first step line that disagrees with the solver, or None if all agree."""
        want = problem.solution.splitlines()
        got = [ln.strip() for ln in thinking.splitlines() if ln.strip()]
        for i, line in enumerate(want):
            if i >= len(got) or got[i] != line:
                return i
        return None
