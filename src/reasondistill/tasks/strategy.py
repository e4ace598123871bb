"""Strategy prompts with prompt erasure (Orca 2): the teacher is told how to reason, the student is not.

Why: a careful system prompt ("work step by step, check each step, end with '#### N'") makes the
teacher's traces better, but a student trained *with* that prompt learns to depend on it. With
prompt erasure the strategy is given to the teacher at generate time only; the student's
training prompt (``data/build.py``) is the bare problem, so the student must learn to pick the
strategy itself.

A task (or each source of a mixture) sets ``strategy`` in its config; the task stores it in
``problem.meta["strategy"]``. :func:`group_by_system_prompt` joins it to the teacher's own
``system_prompt`` (teacher's first) and groups problems so each teacher call gets one system
prompt; :func:`record_system_prompt` notes on every trace which one was used.

    for system, batch in sample_by_system_prompt(teacher, problems, params, cfg.teacher.system_prompt):
        traces = [record_system_prompt(t, system) for t in batch]
"""

from __future__ import annotations

import dataclasses

from reasondistill.records import Problem, Trace


def system_prompt_for(problem: Problem, base: str | None = None) -> str | None:
    """The teacher's system prompt for ``problem``: ``base`` and the problem's strategy, joined."""
    parts = [x for x in (base, problem.meta.get("strategy")) if x]
    return "\n\n".join(parts) if parts else None


def group_by_system_prompt(problems: list[Problem], base: str | None = None) -> list[tuple[str | None, list[Problem]]]:
    """Problems grouped by their system prompt, groups in order of first appearance (order kept inside)."""
    groups: dict[str | None, list[Problem]] = {}
    for p in problems:
        groups.setdefault(system_prompt_for(p, base), []).append(p)
    return list(groups.items())


def record_system_prompt(trace: Trace, system: str | None) -> Trace:
    """``trace`` with ``sampling["system_prompt"]`` set (a copy; nothing recorded when there is none)."""
    if system is None:
        return trace
    return dataclasses.replace(trace, sampling={**trace.sampling, "system_prompt": system})


def sample_by_system_prompt(teacher, problems: list[Problem], params, base: str | None = None):
    """``teacher.sample`` once per system prompt group; yields ``(system prompt, batch of traces)``."""
    for system, group in group_by_system_prompt(problems, base):
        for batch in teacher.sample(group, params, system):
            yield system, batch
