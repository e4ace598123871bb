"""Curation: verdicts for every trace, then filters, each counted, and per-problem pass rates.

Why: only right, well-formed, not-too-long, non-duplicate traces should teach the student, and a
user must see how many each filter removed. The teacher's pass rate per problem is kept as the
problem's difficulty signal.

Filters, in order: per trace, correctness → structure (a closed ``<think>`` block) → maximum
completion tokens → exact duplicates (same problem, same text); per problem, the teacher's pass
rate within ``curate.pass_rate`` → not a near-duplicate of an earlier problem (``curate.near_dedup``,
:mod:`.minhash`); then at most K traces per problem, chosen by ``curate.select`` (:mod:`.select`).

    kept, verdicts, summary, pass_rates = curate(problems, traces, task, CurateConfig())
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from reasondistill.curate.select import diversity_summary, select_traces
from reasondistill.curate.verdicts import judge_many, verdict_counts
from reasondistill.records import Problem, Trace, Verdict
from reasondistill.checks import Task


def curate(problems: dict[str, Problem], traces: list[Trace], task: Task, cfg,
           count_tokens: Callable[[str], int] | None = None) -> tuple[
        list[Trace], list[Verdict], dict[str, Any], list[dict[str, Any]]]:
    """``count_tokens`` counts a completion's tokens where its source gave no count (an API answer
    without ``usage``, ingested traces), so that ``max_completion_tokens`` (and ``select:
    shortest``) holds for every source."""
    verdicts = []
    counted = [0]
    dropped: Counter[str] = Counter()
    seen: set[tuple[str, str]] = set()
    candidates: dict[str, list[Trace]] = {}  # per problem, in sample order: traces passing the trace filters
    lengths: dict[tuple[str, int], int] = {}

    def length(tr: Trace) -> int:
        key = (tr.problem_id, tr.sample)
        if key not in lengths:
            lengths[key] = _tokens(tr, count_tokens, counted)
        return lengths[key]
    ordered = sorted(traces, key=lambda t: (t.problem_id, t.sample))
    judged = iter(judge_many(task, [(problems[t.problem_id], t.text, t.finish_reason, t.sample)
                                    for t in ordered if t.finish_reason != "error"]))
    for tr in ordered:
        if tr.finish_reason == "error":
            v = Verdict(tr.problem_id, tr.sample, "unparseable", f"teacher error: {tr.error}")
        else:
            v = next(judged)
            if tr.error and v.verdict == "truncated":  # e.g. the prompt alone fills the teacher's context
                v = Verdict(tr.problem_id, tr.sample, "truncated", tr.error)
        verdicts.append(v)
        if cfg.require_correct and v.verdict != "correct":
            dropped[f"not_correct:{v.verdict}"] += 1
            continue
        if cfg.require_think and (not tr.thinking or v.malformed_think):
            dropped["no_thinking"] += 1
            continue
        if cfg.max_completion_tokens and length(tr) > cfg.max_completion_tokens:
            dropped["too_long"] += 1
            continue
        key = (tr.problem_id, tr.text.strip())
        if cfg.dedup and key in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(key)
        candidates.setdefault(tr.problem_id, []).append(tr)

    by_problem: dict[str, list[str]] = {}
    for v in verdicts:
        by_problem.setdefault(v.problem_id, []).append(v.verdict)
    pass_rates = [{"problem_id": pid, "samples": len(vs), "correct": vs.count("correct"),
                   "pass_rate": vs.count("correct") / len(vs), "difficulty": problems[pid].difficulty}
                  for pid, vs in sorted(by_problem.items())]
    extra = _problem_filters(candidates, problems, {r["problem_id"]: r["pass_rate"] for r in pass_rates}, cfg, dropped)

    kept: list[Trace] = []
    groups: dict[str, tuple[list[Trace], list[Trace]]] = {}
    shortest = cfg.select == "shortest"
    for pid in sorted(candidates):
        chosen = select_traces(candidates[pid], cfg.max_per_problem, cfg.select, length if shortest else None)
        dropped["over_max_per_problem"] += len(candidates[pid]) - len(chosen)
        groups[pid] = (chosen, candidates[pid])
        kept.extend(chosen)
    if not dropped["over_max_per_problem"]:
        del dropped["over_max_per_problem"]
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
        "problems_with_a_kept_trace": len({t.problem_id for t in kept}),
        "mean_pass_rate": sum(r["pass_rate"] for r in pass_rates) / len(pass_rates) if pass_rates else float("nan"),
        **extra,
    }
    if any(len(c) > 1 for c in candidates.values()):
        summary["select"] = {"mode": cfg.select, "max_per_problem": cfg.max_per_problem,
                             **diversity_summary(groups, length=length if shortest else None)}
    return kept, verdicts, summary, pass_rates


def _problem_filters(candidates: dict[str, list[Trace]], problems: dict[str, Problem], rates: dict[str, float],
                     cfg, dropped: Counter[str]) -> dict[str, Any]:
    """Drop (in place) the candidates of problems outside ``cfg.pass_rate`` and of near-duplicate
    problems (``cfg.near_dedup``); count the traces in ``dropped``; return the summary's notes."""
    notes: dict[str, Any] = {}
    band = getattr(cfg, "pass_rate", None)
    if band is not None:
        out = {"min": band.min, "max": band.max, "problems_below_min": 0, "problems_above_max": 0}
        for pid in list(candidates):
            side = "below_min" if rates[pid] < band.min else "above_max" if rates[pid] > band.max else None
            if side:
                dropped[f"pass_rate_{side}"] += len(candidates.pop(pid))
                out[f"problems_{side}"] += 1
        notes["pass_rate_band"] = out
    nd = getattr(cfg, "near_dedup", None)
    if nd is not None:
        from reasondistill.curate.minhash import near_duplicates

        order = [problems[pid] for pid in problems if pid in candidates]  # file order: the first copy stays
        dups = near_duplicates(order, nd.threshold, nd.num_perm, nd.shingle)
        for pid in dups:
            dropped["near_duplicate"] += len(candidates.pop(pid))
        notes["near_duplicates"] = {"threshold": nd.threshold, "num_perm": nd.num_perm, "problems": len(dups),
                                    "pairs": dict(list(dups.items())[:20])}
    return notes


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

