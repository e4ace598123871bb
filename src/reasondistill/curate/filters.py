"""Curation: verdicts for every trace, then filters, each counted, and per-problem pass rates.

Why: only right, well-formed, not-too-long, non-duplicate traces should teach the student, and a
user must see how many each filter removed. The teacher's pass rate per problem is kept as the
problem's difficulty signal.

Filters, in order: correctness → structure (a closed ``<think>`` block) → maximum completion
tokens → exact duplicates (same problem, same text) → at most K distinct traces per problem.

    kept, verdicts, summary, pass_rates = curate(problems, traces, task, CurateConfig())
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from reasondistill.curate.verdicts import judge_many, verdict_counts
from reasondistill.records import Problem, Trace, Verdict
from reasondistill.checks import Task


def curate(problems: dict[str, Problem], traces: list[Trace], task: Task, cfg,
           count_tokens: Callable[[str], int] | None = None) -> tuple[
        list[Trace], list[Verdict], dict[str, Any], list[dict[str, Any]]]:
    """``count_tokens`` counts a completion's tokens where its source gave no count (an API answer
    without ``usage``, ingested traces), so that ``max_completion_tokens`` holds for every source."""
    verdicts = []
    counted = [0]
    dropped: Counter[str] = Counter()
    kept: list[Trace] = []
    seen: set[tuple[str, str]] = set()
    per_problem: Counter[str] = Counter()
    ordered = sorted(traces, key=lambda t: (t.problem_id, t.sample))
    judged = iter(judge_many(task, [(problems[t.problem_id], t.text, t.finish_reason, t.sample)
                                    for t in ordered if t.finish_reason != "error"]))
    for tr in ordered:
        if tr.finish_reason == "error":
            v = Verdict(tr.problem_id, tr.sample, "unparseable", f"teacher error: {tr.error}")
        else:
            v = next(judged)
        verdicts.append(v)
        if cfg.require_correct and v.verdict != "correct":
            dropped[f"not_correct:{v.verdict}"] += 1
            continue
        if cfg.require_think and (not tr.thinking or v.malformed_think):
            dropped["no_thinking"] += 1
            continue
        if cfg.max_completion_tokens and _tokens(tr, count_tokens, counted) > cfg.max_completion_tokens:
            dropped["too_long"] += 1
            continue
        key = (tr.problem_id, tr.text.strip())
        if cfg.dedup and key in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(key)
        if cfg.max_per_problem and per_problem[tr.problem_id] >= cfg.max_per_problem:
            dropped["over_max_per_problem"] += 1
            continue
        per_problem[tr.problem_id] += 1
        kept.append(tr)

    by_problem: dict[str, list[str]] = {}
    for v in verdicts:
        by_problem.setdefault(v.problem_id, []).append(v.verdict)
    pass_rates = [{"problem_id": pid, "samples": len(vs), "correct": vs.count("correct"),
                   "pass_rate": vs.count("correct") / len(vs), "difficulty": problems[pid].difficulty}
                  for pid, vs in sorted(by_problem.items())]
    counts = verdict_counts(verdicts)
    n_correct = counts["verdicts"].get("correct", 0)
    summary = {
        "traces": len(traces),
        **counts,
        "teacher_accuracy": n_correct / len(verdicts) if verdicts else float("nan"),
        "dropped": dict(dropped),
        **({"tokens_counted_locally": counted[0]} if counted[0] else {}),
        "kept": len(kept),
        "problems": len(by_problem),
        "problems_with_a_kept_trace": len(per_problem),
        "mean_pass_rate": sum(r["pass_rate"] for r in pass_rates) / len(pass_rates) if pass_rates else float("nan"),
    }
    return kept, verdicts, summary, pass_rates


def has_token_count(tr: Trace) -> bool:
    return tr.completion_tokens > 0 and not (tr.usage or {}).get("missing")


def _tokens(tr: Trace, count_tokens: Callable[[str], int] | None, counted: list[int]) -> int:
    if has_token_count(tr) or not tr.text:
        return tr.completion_tokens
    if count_tokens is None:
        raise ValueError(f"curate.max_completion_tokens: trace {tr.problem_id}#{tr.sample} has no token count "
                         "and no tokenizer was given to count it")
    counted[0] += 1
    return count_tokens(tr.text)


def kept_line(summary: dict[str, Any]) -> str:
    """The curate stage's one-line account: "curate: 0 of 120 traces kept (95 wrong, 25 unparseable
    (25 malformed <think> block))", with time-outs, truncations and dropped traces named."""
    v, parts = summary.get("verdicts", {}), []
    for key in ("wrong", "unparseable", "truncated"):
        if v.get(key):
            parts.append(f"{v[key]} {key}")
    reasons = summary.get("unparseable_reasons") or {}
    if reasons:
        top = ", ".join(f"{n} {r}" for r, n in list(reasons.items())[:3]) + (", …" if len(reasons) > 3 else "")
        parts[[p.endswith("unparseable") for p in parts].index(True)] += f": {top}"
    dropped = {k: n for k, n in (summary.get("dropped") or {}).items() if not k.startswith("not_correct:")}
    parts += [f"{n} {k.replace('_', ' ')}" for k, n in dropped.items()]
    line = f"curate: {summary.get('kept', 0)} of {summary.get('traces', 0)} traces kept"
    return line + (f" ({'; '.join(parts)})" if parts else "")

