"""A mixture of problem sources with ratios and per-source caps, deterministic given a seed.

Why: a student is often distilled on several sources at once (say 70% GSM8K, 30% MATH, at most
200 of MATH level 5). The mixture draws each source's share, keeps ids unique across sources
(every id starts with the source's label) and records each problem's source in
``meta["source"]``, so :meth:`Mixture.check` sends it to the right verifier.

How many problems a source gives, per split: ``n`` is shared out by the normalised ratios
(largest remainders), then each share is cut to the source's ``cap`` and to what the source has.
A shortfall is not filled from the other sources (the ratios stay honest); it shows in
:meth:`Mixture.select`'s composition (``wanted`` vs ``taken``), which the pipeline writes to
``problems/composition.json``. With ``n`` None, the mixture is as large as the ratios allow:
the source that runs out first (its size or cap over its share) sets the total.

    mix = load_task({"name": "mixture", "sources": [
        {"label": "gsm8k", "ratio": 0.7, "spec": {"name": "gsm8k", "path": ...}},
        {"label": "math", "ratio": 0.3, "cap": 200, "spec": {"name": "math", "path": ...}}]})
    problems, composition = mix.select("train", 1000, seed=0)
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any, Callable

from reasondistill.records import Problem
from reasondistill.checks import Check, Task


def apportion(n: int, weights: list[float]) -> list[int]:
    """Split ``n`` into integers proportional to ``weights`` (largest remainders, ties by order)."""
    total = sum(weights)
    exact = [n * w / total for w in weights]
    counts = [math.floor(x) for x in exact]
    for i in sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))[:n - sum(counts)]:
        counts[i] += 1
    return counts


def composition_of(problems: list[Problem]) -> dict[str, int]:
    """Problems per source (``meta["source"]``, else the task name)."""
    return dict(sorted(Counter(p.meta.get("source", p.task) for p in problems).items()))


def left_out(task: Task, split: str) -> dict[str, Any] | None:
    """What reading the task's ``split`` left out (bad rows skipped, repeated questions), or None."""
    report = getattr(task, "left_out", None)
    return report(split) if report is not None else None


def select_problems(task: Task, split: str, n: int | None, seed: int) -> tuple[list[Problem], dict[str, Any]]:
    """``task.problems`` plus its composition: a mixture's own (:meth:`Mixture.select`), else the
    problems counted per source; ``skipped`` (only when something was): per source, what reading
    left out (:meth:`RowTask.left_out <reasondistill.tasks.filetask.RowTask.left_out>`)."""
    select = getattr(task, "select", None)
    if select is not None:
        return select(split, n, seed)
    problems = task.problems(split, n, seed)
    comp = {"split": split, "requested": n, "total": len(problems), "sources": composition_of(problems)}
    if (skipped := left_out(task, split)) is not None:
        comp["skipped"] = {task.name: skipped}
    return problems, comp


def composition_warnings(comp: dict[str, Any]) -> list[str]:
    """Lines worth printing about one split's composition: rows skipped or kept once per source, and
    mixture sources that gave fewer problems than their share."""
    split, out = comp["split"], []
    for label, s in (comp.get("skipped") or {}).items():
        line = f"{label} {split}: "
        if s["bad_rows"]:
            line += f"skipped {s['bad_rows']} malformed row{'s' if s['bad_rows'] != 1 else ''} (task.skip_bad_rows; the first: {s['first_bad_rows'][0]})"
        if s["repeated_questions"]:
            line += ("; " if s["bad_rows"] else "") + f"kept {s['repeated_questions']} repeated questions once"
        out.append(line)
    for label, s in comp["sources"].items():
        if isinstance(s, dict) and s["taken"] < s["wanted"]:  # a mixture's source (else a plain count)
            has = f"it has {s['available']}" + ("" if s["cap"] is None else " after its cap")
            out.append(f"warning: mixture source {label!r} {split}: {s['taken']} of the {s['wanted']} wanted "
                       f"({has}; the shortfall is not filled from the other sources)")
    return out


class Mixture:
    kind = "mixture"

    def __init__(self, sources: list[dict[str, Any]], load: Callable[..., Task], name: str = "mixture"):
        """``sources``: the config's list (label, ratio, cap, spec); ``load(spec, label=...)`` builds each
        source's task (``tasks.base.load_task``, handed in: the registry knows this class, not back)."""
        if not sources:
            raise ValueError("task.sources: a mixture needs at least one source")
        self.name = name
        self.sources: list[tuple[str, float, int | None, Task]] = []
        for i, s in enumerate(sources):
            spec = dict(s["spec"])
            if spec.get("name") == "mixture":
                raise ValueError(f"task.sources.{i}: a mixture cannot contain a mixture")
            label = s.get("label") or spec["name"]
            if any(label == other for other, *_ in self.sources):
                raise ValueError(f"task.sources.{i}.label: {label!r} is used twice")
            if not s.get("ratio", 1.0) > 0:
                raise ValueError(f"task.sources.{i}.ratio: must be > 0")
            self.sources.append((label, float(s.get("ratio", 1.0)), s.get("cap"), load(spec, label=label)))
        self.by_label = {label: task for label, _, _, task in self.sources}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "sources": [{"label": label, "ratio": ratio, "cap": cap, "task": task.describe()}
                                               for label, ratio, cap, task in self.sources]}

    def input_files(self) -> list:
        return [f for *_, task in self.sources for f in getattr(task, "input_files", lambda: [])()]

    def _available(self, task: Task, split: str, cap: int | None, seed: int) -> int:
        if hasattr(task, "capacity"):  # generated tasks (chained_arith) hold about capacity // 2 usable problems
            size = task.capacity(split) // 2
        else:
            size = len(task.problems(split, None, seed))
        return size if cap is None else min(size, cap)

    def select(self, split: str, n: int | None, seed: int) -> tuple[list[Problem], dict[str, Any]]:
        """The mixture's problems of ``split`` (seeded order) and its composition per source."""
        weights = [ratio for _, ratio, _, _ in self.sources]
        avail = [self._available(task, split, cap, seed) for _, _, cap, task in self.sources]
        if n is None:
            shares = [w / sum(weights) for w in weights]
            n = min(math.floor(a / s) for a, s in zip(avail, shares))
        wanted = apportion(n, weights)
        out: list[Problem] = []
        comp: dict[str, Any] = {}
        skips: dict[str, Any] = {}
        for (label, ratio, cap, task), want, have in zip(self.sources, wanted, avail):
            take = min(want, have)
            got = task.problems(split, take, seed) if take else []
            for p in got:
                p.meta["source"] = label
            out.extend(got)
            comp[label] = {"ratio": ratio / sum(weights), "cap": cap, "available": have, "wanted": want,
                           "taken": len(got)}
            if (skipped := left_out(task, split)) is not None:
                skips[label] = skipped
        ids = [p.id for p in out]
        if len(set(ids)) != len(ids):  # labels prefix every id, so this is a bug, not bad data
            raise RuntimeError(f"mixture {split}: problem ids repeat across sources")
        random.Random(f"{self.name}:{split}:{seed}").shuffle(out)
        return out, {"split": split, "requested": n, "total": len(out), "sources": comp,
                     **({"skipped": skips} if skips else {})}

    def problems(self, split: str, n: int | None, seed: int) -> list[Problem]:
        return self.select(split, n, seed)[0]

    def task_for(self, problem: Problem) -> Task:
        label = problem.meta.get("source", problem.task)
        if label not in self.by_label:
            raise KeyError(f"problem {problem.id!r}: source {label!r} is not in this mixture "
                           f"({sorted(self.by_label)})")
        return self.by_label[label]

    def check(self, problem: Problem, answer: str) -> Check:
        return self.task_for(problem).check(problem, answer)

    def check_job(self, problem: Problem, answer: str) -> tuple | None:
        job = getattr(self.task_for(problem), "check_job", None)
        return job(problem, answer) if job is not None else None

    def first_wrong_step(self, problem: Problem, thinking: str) -> int | None:
        locate = getattr(self.task_for(problem), "first_wrong_step", None)
        return locate(problem, thinking) if locate else None
