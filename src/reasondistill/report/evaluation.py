"""The report's evaluation section: greedy CIs, sampled metrics, OOD, budgets, comparison, router.

Why: :mod:`.build` writes the models table; this module gathers what :mod:`reasondistill.evaluate.stages`
left in ``evaluate/<model>/`` into ``report["evaluation"]``, draws the shared plots into
``plots/`` (accuracy by difficulty with CIs, length histograms, budget curve, router curve) and
renders the matching Markdown. Every input is optional; a section without data is left out.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from reasondistill.layout import Layout
from reasondistill.records import iter_jsonl

MAJ_NOTE = ("pass@k and avg@n use all n samples of each problem (pass@k: the unbiased estimator); maj@k is the vote "
            "over each problem's first k samples (a tie goes to the smallest answer in string order), so maj@1 is the "
            "first sample's accuracy, not avg@n.")
SAMPLED_KEYS = ("samples", "problems", "pass@k", "maj@k", "avg@n", "lengths", "truncation_rate", "no_answer_rate",
                "avg@n_by_difficulty", "provenance")


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def rows(path: Path) -> list[dict[str, Any]]:
    return [obj for _, obj in iter_jsonl(path)] if path.exists() else []


def collect(root: str | Path) -> dict[str, Any]:
    """``{model: {accuracy_ci, accuracy_by_difficulty_ci, sampled, ood, budget, compare, router}}``."""
    from reasondistill.evaluate.metrics import with_ci

    lay, out = Layout(root), {}
    for name in lay.evaluated():
        f = lay.eval(name)
        greedy = rows(f.completions)
        e: dict[str, Any] = {}
        if greedy:
            e["accuracy_ci"] = with_ci([r["verdict"] == "correct" for r in greedy])
            by: dict[int, list[bool]] = {}
            for r in greedy:
                by.setdefault(r["difficulty"], []).append(r["verdict"] == "correct")
            e["accuracy_by_difficulty_ci"] = {str(k): with_ci(v) for k, v in sorted(by.items())}
        s = _json(f.sampled)
        if s:
            e["sampled"] = {k: s.get(k) for k in SAMPLED_KEYS}
            e["sampled"]["calibration"] = {k: s["calibration"].get(k) for k in ("k", "ece", "bins", "confidence")}
            if f.reliability.exists():
                e["sampled"]["reliability_png"] = str(f.reliability.relative_to(lay.root))
        ood = _json(f.ood.metrics)
        if ood:
            e["ood"] = {k: ood.get(k) for k in ("accuracy", "accuracy_ci", "n", "min_ops", "max_ops", "source",
                                                 "accuracy_by_difficulty", "truncation_rate", "note")}
        if greedy:
            e["failure_modes"] = _failure_modes(lay, name, greedy, ood)
        for key in ("budget", "compare", "router", "provenance"):
            obj = _json(getattr(f, key))
            if obj:
                e[key] = obj
        if e:
            out[name] = e
    return out


def _failure_modes(lay: Layout, name: str, greedy: list[dict[str, Any]], ood: dict[str, Any] | None) -> dict[str, Any]:
    """evaluate/failure_modes.py over the saved rows (teacher rows and samples when the teacher was evaluated)."""
    from reasondistill.evaluate.failure_modes import failure_modes

    t = lay.eval("teacher")
    limit = (_json(lay.eval(name).metrics) or {}).get("max_new_tokens") or max(r["completion_tokens"] for r in greedy)
    return failure_modes(greedy, int(limit), teacher_rows=rows(t.completions) or None,
                         ood_rows=rows(lay.eval(name).ood.completions) if ood else None,
                         teacher_ood_rows=rows(t.ood.completions) or None, teacher_samples=rows(t.samples) or None,
                         classify=name != "teacher")


def agg_figure(w: float = 6, h: float = 3.6):
    """A bare Agg figure (no pyplot, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    return fig


def make_plots(root: str | Path, evaluation: dict[str, Any]) -> dict[str, str]:
    """PNG files in ``plots/`` (paths relative to the run directory), by plot name."""
    from reasondistill.evaluate.budget import plot_budget_curve
    from reasondistill.evaluate.router import plot_router_curve

    root, plots = Path(root), {}
    plots_dir = Layout(root).plots_dir
    plots_dir.mkdir(exist_ok=True)
    with_diff = {m: e["accuracy_by_difficulty_ci"] for m, e in evaluation.items() if e.get("accuracy_by_difficulty_ci")}
    if with_diff:
        fig = agg_figure()
        ax = fig.subplots()
        for m, acc in with_diff.items():
            xs = [int(k) for k in acc]
            ys = [v["value"] for v in acc.values()]
            err = [[y - v["ci_low"] for y, v in zip(ys, acc.values())], [v["ci_high"] - y for y, v in zip(ys, acc.values())]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=m)
            ood = evaluation[m].get("ood")
            if ood and ood.get("accuracy_by_difficulty"):
                ax.plot([int(k) for k in ood["accuracy_by_difficulty"]], list(ood["accuracy_by_difficulty"].values()),
                        marker="x", linestyle="--", color=ax.lines[-1].get_color(), label=f"{m} (OOD)")
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="difficulty (number of operations)", ylabel="greedy accuracy", ylim=(0, 1.02),
               title="Accuracy by difficulty (95% CI; dashed: OOD levels)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(plots_dir / "accuracy_by_difficulty.png", dpi=110)
        plots["accuracy_by_difficulty"] = str((plots_dir / "accuracy_by_difficulty.png").relative_to(root))
    lengths = {m: [r["completion_tokens"] for r in rows(Layout(root).eval(m).completions)] for m in evaluation}
    lengths = {m: v for m, v in lengths.items() if v}
    if lengths:
        fig = agg_figure()
        ax = fig.subplots()
        top = max(max(v) for v in lengths.values())
        bins = list(range(0, top + 2, max(1, (top + 1) // 30)))
        for m, v in lengths.items():
            ax.hist(v, bins=bins, alpha=0.5, label=m)
        ax.set(xlabel="output tokens (greedy)", ylabel="problems", title="Length of completions")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(plots_dir / "lengths.png", dpi=110)
        plots["lengths"] = str((plots_dir / "lengths.png").relative_to(root))
    budgets = {m: e["budget"] for m, e in evaluation.items() if e.get("budget")}
    if budgets:
        plots["budget"] = str(plot_budget_curve(budgets, plots_dir / "budget.png").relative_to(root))
        plots["budget_tokens"] = str(plot_budget_curve(budgets, plots_dir / "budget_tokens.png",
                                                       x="thinking_tokens").relative_to(root))
    routers = {m: e["router"] for m, e in evaluation.items() if e.get("router")}
    if routers:
        plots["router"] = str(plot_router_curve(routers, plots_dir / "router.png").relative_to(root))
    for m, e in evaluation.items():
        if e.get("sampled", {}).get("reliability_png"):
            plots[f"reliability:{m}"] = e["sampled"]["reliability_png"]
    return plots


def fmt_ci(m: dict[str, Any] | None, spec: str = ".1%") -> str:
    if not m or m.get("value") is None or (isinstance(m["value"], float) and math.isnan(m["value"])):
        return "–"
    return f"{format(m['value'], spec)} [{format(m['ci_low'], spec)}, {format(m['ci_high'], spec)}]"


def _ood_source(o: dict[str, Any]) -> str:
    return o.get("source") or f"chained_arith, {o.get('min_ops')}-{o.get('max_ops')} operations"


def render_markdown(report: dict[str, Any]) -> str:
    ev = report.get("evaluation") or {}
    out: list[str] = []
    if any(e.get("accuracy_ci") for e in ev.values()):
        out += ["## Greedy accuracy with 95% Wilson interval", "", "| model | accuracy [95% CI] | n |", "|---|---:|---:|"]
        out += [f"| {m} | {fmt_ci(e['accuracy_ci'])} | {e['accuracy_ci']['n']} |" for m, e in ev.items() if e.get("accuracy_ci")]
        out.append("")
    sampled = {m: e["sampled"] for m, e in ev.items() if e.get("sampled")}
    if sampled:
        ks = sorted({k for s in sampled.values() for k in s["pass@k"]}, key=int)
        out += ["## Sampled evaluation (95% CIs: Wilson for maj@k, bootstrap over problems for pass@k and avg@n)", "",
                "| model | n | " + " | ".join(f"pass@{k} | maj@{k}" for k in ks) + " | avg@n | thinking tok | answer tok "
                "| truncated | no answer | ECE |", "|---|---:|" + "---:|" * (2 * len(ks) + 6)]
        for m, s in sampled.items():
            cells = " | ".join(f"{fmt_ci(s['pass@k'].get(k))} | {fmt_ci(s['maj@k'].get(k))}" for k in ks)
            out.append(f"| {m} | {s['samples']} | {cells} | {fmt_ci(s['avg@n'])} | {s['lengths']['mean_thinking_tokens']:.1f} "
                       f"| {s['lengths']['mean_answer_tokens']:.1f} | {s['truncation_rate']:.1%} | {s['no_answer_rate']:.1%} "
                       f"| {s['calibration']['ece']:.3f} |")
        out += ["", MAJ_NOTE, ""]
    ood = {m: e["ood"] for m, e in ev.items() if e.get("ood")}
    if ood:
        out += ["## Out-of-distribution split, beside in-distribution", "",
                "| model | OOD source | in-distribution accuracy [95% CI] | OOD accuracy [95% CI] |", "|---|---|---:|---:|"]
        out += [f"| {m} | {_ood_source(o)} | {fmt_ci(ev[m].get('accuracy_ci'))} | {fmt_ci(o['accuracy_ci'])} |"
                for m, o in ood.items()]
        out.append("")
    from reasondistill.evaluate.failure_modes import render_markdown as failure_markdown

    out += failure_markdown({m: e["failure_modes"] for m, e in ev.items() if e.get("failure_modes")})
    cmp = {m: e["compare"] for m, e in ev.items() if e.get("compare")}
    if cmp:
        out += ["## Students vs teacher", "", "| student | answer agreement | same wrong answer | ROUGE-L of thinking "
                "| edit distance of thinking | first fall-off (difficulty) |", "|---|---:|---:|---:|---:|---:|"]
        for m, c in cmp.items():
            out.append(f"| {m} | {c['agreement']['agreement']:.1%} | {c['agreement']['same_wrong']} "
                       f"| {fmt_ci(c['chain_similarity']['rouge_l'], '.3f')} | {fmt_ci(c['chain_similarity']['edit_distance'], '.3f')} "
                       f"| {c['falloff']['first_falloff'] if c['falloff']['first_falloff'] is not None else 'none'} |")
        out.append("")
    routers = {m: e["router"] for m, e in ev.items() if e.get("router")}
    for m, r in routers.items():
        c = r.get("chosen")
        out += [f"- router {m} (k={r['k']}): " + (f"threshold {c['threshold']:.2f} sends {c['teacher_share']:.1%} of problems "
                f"to the teacher for accuracy {c['accuracy']:.1%} (teacher alone {r['teacher_accuracy']:.1%})" if c
                else "no threshold reaches the teacher's accuracy within 1 point")]
    if routers:
        out.append("")
    plots = report.get("plots") or {}
    if plots:
        out += ["## Plots", ""] + [f"![{k}]({v})" for k, v in plots.items()] + [""]
    return "\n".join(out)
