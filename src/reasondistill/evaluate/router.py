"""Student-first cascade: the student answers with k samples; when its vote's agreement is below a
threshold the problem goes to the teacher. Accuracy vs share of problems sent to the teacher.

Why: a distilled student is worth its cost when it can answer most problems alone and knows
when it cannot. Agreement between its own samples (the vote's share) is a free confidence; the
curve over thresholds shows how many teacher calls buy back the teacher's accuracy, and
:func:`choose_threshold` picks the threshold that keeps accuracy within ``tolerance`` (1 point) of
the teacher's own at the fewest teacher calls.

    votes = vote_table(student_sample_rows, problems, task, k=4)        # evaluate/sampled.py
    curve = cascade_curve(votes, {r["problem_id"]: r["verdict"] == "correct" for r in teacher_rows})
    curve["chosen"]  # {"threshold", "accuracy", "teacher_share", ...} or None

A problem is routed when ``share < threshold``: threshold 0 never calls the teacher, a threshold
above 1 always does (1.0 routes every problem whose k samples are not unanimous).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from reasondistill.evaluate.metrics import with_ci

DEFAULT_THRESHOLDS = tuple(i / 10 for i in range(11))


def cascade_curve(votes: Mapping[str, Mapping[str, Any]], teacher_correct: Mapping[str, bool],
                  thresholds: Sequence[float] = DEFAULT_THRESHOLDS, tolerance: float = 0.01,
                  n_boot: int = 1000, teacher_tokens: Mapping[str, tuple[int, int]] | None = None) -> dict[str, Any]:
    """Accuracy and teacher share per threshold over the problems both sides answered.

    ``votes``: per problem ``{"correct": bool, "share": float}`` (the student's k-sample vote);
    ``teacher_correct``: per problem, whether the teacher (greedy) is right; ``teacher_tokens``:
    per problem, the (prompt, completion) tokens the teacher's answer cost (an API teacher's bill),
    summed over the routed problems as ``teacher_prompt_tokens`` / ``teacher_completion_tokens``.
    """
    shared = sorted(set(votes) & set(teacher_correct))
    if not shared:
        raise ValueError("router: no problem has both student votes and a teacher answer")
    s_ok = np.array([bool(votes[p]["correct"]) for p in shared])
    conf = np.array([float(votes[p]["share"]) for p in shared])
    t_ok = np.array([bool(teacher_correct[p]) for p in shared])
    tokens = np.array([teacher_tokens.get(p, (0, 0)) if teacher_tokens else (0, 0) for p in shared],
                      dtype=np.int64).reshape(len(shared), 2)
    points = []
    for t in sorted(set(float(x) for x in thresholds)):
        routed = conf < t
        final = np.where(routed, t_ok, s_ok)
        point = {"threshold": t, "accuracy": with_ci(final.astype(float), n_boot=n_boot),
                 "teacher_share": float(routed.mean()), "teacher_calls": int(routed.sum())}
        if teacher_tokens is not None:
            point["teacher_prompt_tokens"] = int(tokens[routed, 0].sum())
            point["teacher_completion_tokens"] = int(tokens[routed, 1].sum())
        points.append(point)
    teacher_acc, student_acc = float(t_ok.mean()), float(s_ok.mean())
    result = {"n": len(shared), "teacher_accuracy": teacher_acc, "student_accuracy": student_acc,
              "tolerance": tolerance, "points": points}
    result["chosen"] = choose_threshold(points, teacher_acc, tolerance)
    return result


def choose_threshold(points: Sequence[Mapping[str, Any]], teacher_accuracy: float,
                     tolerance: float = 0.01) -> dict[str, Any] | None:
    """The point with accuracy >= teacher accuracy - tolerance and the fewest teacher calls
    (ties: higher accuracy, then lower threshold); None when no threshold gets there."""
    ok = [p for p in points if p["accuracy"]["value"] >= teacher_accuracy - tolerance - 1e-12]
    if not ok:
        return None
    best = min(ok, key=lambda p: (p["teacher_share"], -p["accuracy"]["value"], p["threshold"]))
    return {"threshold": best["threshold"], "accuracy": best["accuracy"]["value"],
            "teacher_share": best["teacher_share"], "teacher_calls": best["teacher_calls"],
            **{k: best[k] for k in ("teacher_prompt_tokens", "teacher_completion_tokens") if k in best}}


def plot_router_curve(curves: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """Accuracy against the share of problems sent to the teacher, one line per student."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.8))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for name, c in curves.items():
        pts = sorted(c["points"], key=lambda p: p["teacher_share"])
        line, = ax.plot([p["teacher_share"] for p in pts], [p["accuracy"]["value"] for p in pts], marker="o",
                        label=f"{name} → teacher")
        ax.axhline(c["teacher_accuracy"], color=line.get_color(), linestyle=":", linewidth=1)
        if c.get("chosen"):
            ax.plot([c["chosen"]["teacher_share"]], [c["chosen"]["accuracy"]], marker="*", markersize=14,
                    color=line.get_color())
    ax.set(xlim=(-0.02, 1.02), ylim=(0, 1.02), xlabel="share of problems sent to the teacher", ylabel="accuracy",
           title="Student-first cascade (dotted: teacher alone; star: chosen)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110)
    return path


def route_student(student_sample_rows: Sequence[Mapping[str, Any]], teacher_rows: Sequence[Mapping[str, Any]],
                  problems, task, k: int, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                  out_dir: str | Path | None = None, name: str = "student") -> dict[str, Any]:
    """The cascade of one student from saved rows: its sampled rows (first ``k`` samples per problem)
    and the teacher's greedy rows; writes ``router.json`` and ``router.png`` to ``out_dir``."""
    from reasondistill.evaluate.sampled import vote_table
    from reasondistill.layout import EvalFiles
    from reasondistill.records import write_json

    votes = vote_table(list(student_sample_rows), list(problems), task, k)
    short = [p for p, v in votes.items() if v["n"] < k]
    if short:
        raise ValueError(f"router: {len(short)} problems have fewer than k={k} student samples, e.g. {short[0]!r}")
    tokens = {r["problem_id"]: (int(r.get("prompt_tokens") or 0), int(r.get("completion_tokens") or 0))
              for r in teacher_rows}
    curve = cascade_curve(votes, {r["problem_id"]: r["verdict"] == "correct" for r in teacher_rows}, thresholds,
                          teacher_tokens=tokens)
    curve.update({"name": name, "k": k})
    if out_dir is not None:
        out = EvalFiles(out_dir)
        plot_router_curve({name: curve}, out.router_png)
        curve["router_png"] = out.router_png.name
        write_json(out.router, curve)
    return curve
