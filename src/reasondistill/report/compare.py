"""``reasondistill compare RUN... --out DIR``: several runs in one table and one set of plots.

Why: the question after a sweep is "which run's students did best, and by how much"; that needs
every run's models side by side on one scale, with their confidence intervals. Each RUN is a run
directory with a ``report.json`` (``reasondistill report RUN`` writes it). Writes to DIR:
``compare.json``, ``compare.md``, ``compare.html`` (self-contained) and the PNGs it shows:
``accuracy.png`` (greedy accuracy with 95% CI per run and model), ``accuracy_by_difficulty.png``,
and, when the runs have them, ``budget.png`` and ``router.png``. Runs whose test sets or verifiers
differ (hashes in report.json, :mod:`.fingerprints`) are refused, or with ``--allow-mismatch``
compared under a loud warning.

    reasondistill compare runs/a runs/b --out runs/compare-ab
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

from reasondistill.errors import UserError
from reasondistill.layout import Layout
from reasondistill.records import write_json
from reasondistill.report.fingerprints import mismatches
from reasondistill.report.evaluation import agg_figure, fmt_ci
from reasondistill.report.html import esc, figure, page


def load_runs(runs: Sequence[str | Path]) -> dict[str, dict[str, Any]]:
    """report.json of every run, keyed by a short unique label (the directory name, else the path)."""
    out: dict[str, dict[str, Any]] = {}
    names = [Path(r).name for r in runs]
    for r, name in zip(runs, names):
        path = Layout(r).report_json
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run `reasondistill report {r}` first")
        label = name if names.count(name) == 1 else str(r)
        base, i = label, 2
        while label in out:  # the same run given twice
            label, i = f"{base}#{i}", i + 1
        out[label] = json.loads(path.read_text())
    return out


def table_rows(reports: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for run, rep in reports.items():
        ev = rep.get("evaluation") or {}
        for model, m in rep["models"].items():
            e = ev.get(model, {})
            s = e.get("sampled") or {}
            top = max(s.get("pass@k", {}), key=int, default=None)
            rows.append({"run": run, "model": model, "accuracy": e.get("accuracy_ci") or
                         {"value": m.get("accuracy"), "ci_low": m.get("accuracy"), "ci_high": m.get("accuracy"), "n": m.get("n")},
                         "n": m.get("n"), "k": top, "pass@k": s.get("pass@k", {}).get(top) if top else None,
                         "maj@k": s.get("maj@k", {}).get(top) if top else None, "avg@n": s.get("avg@n"),
                         "ood": (e.get("ood") or {}).get("accuracy_ci"),
                         "agreement": ((e.get("compare") or {}).get("agreement") or {}).get("agreement"),
                         "router": (e.get("router") or {}).get("chosen"),
                         "accuracy_by_difficulty": m.get("accuracy_by_difficulty") or {},
                         "mean_output_tokens": m.get("mean_output_tokens")})
    return rows


def plot_accuracy(rows: list[dict[str, Any]], path: Path) -> Path:
    fig = agg_figure(max(5.0, 0.6 * len(rows) + 2), 3.8)
    ax = fig.subplots()
    labels = [f"{r['run']}\n{r['model']}" for r in rows]
    vals = [r["accuracy"]["value"] or 0 for r in rows]
    err = [[v - (r["accuracy"]["ci_low"] if r["accuracy"]["ci_low"] is not None else v) for v, r in zip(vals, rows)],
           [(r["accuracy"]["ci_high"] if r["accuracy"]["ci_high"] is not None else v) - v for v, r in zip(vals, rows)]]
    runs = sorted({r["run"] for r in rows})
    colors = [f"C{runs.index(r['run']) % 10}" for r in rows]
    ax.bar(range(len(rows)), vals, yerr=err, capsize=3, color=colors)
    ax.set_xticks(range(len(rows)), labels, fontsize=7, rotation=45, ha="right")
    ax.set(ylim=(0, 1.02), ylabel="greedy accuracy", title="Accuracy per run and model (95% CI)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_by_difficulty(rows: list[dict[str, Any]], path: Path) -> Path | None:
    have = [r for r in rows if r["accuracy_by_difficulty"]]
    if not have:
        return None
    fig = agg_figure()
    ax = fig.subplots()
    for r in have:
        acc = r["accuracy_by_difficulty"]
        ax.plot([int(k) for k in acc], list(acc.values()), marker="o", label=f"{r['run']}: {r['model']}")
    ax.set(xlabel="difficulty", ylabel="greedy accuracy", ylim=(0, 1.02), title="Accuracy by difficulty")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


class IncomparableRuns(UserError):
    """The runs were measured on different test sets or judged by different verifiers."""


def check_comparable(reports: dict[str, dict[str, Any]], allow_mismatch: bool = False) -> list[str]:
    """Warnings to print with the comparison; raises :class:`IncomparableRuns` when test sets or
    verifiers differ, unless ``allow_mismatch`` (then the differences are the warnings)."""
    diffs, unknown = mismatches(reports)
    if diffs and not allow_mismatch:
        raise IncomparableRuns("compare: the runs are not comparable: " + "; ".join(diffs) +
                               ". Their numbers were measured on different problems or judged differently; "
                               "pass --allow-mismatch to put them side by side anyway")
    warnings = [f"WARNING: NOT COMPARABLE: {d}" for d in diffs]
    if unknown:
        warnings.append(f"WARNING: cannot check that the runs share a test set and verifier: {', '.join(unknown)} "
                        "have no hashes in report.json (re-run `reasondistill report` on them)")
    return warnings


def compare_runs(runs: Sequence[str | Path], out: str | Path, allow_mismatch: bool = False) -> dict[str, Any]:
    from reasondistill.evaluate.budget import plot_budget_curve
    from reasondistill.evaluate.router import plot_router_curve

    out = Path(out)
    reports = load_runs(runs)
    warnings = check_comparable(reports, allow_mismatch)
    out.mkdir(parents=True, exist_ok=True)
    rows = table_rows(reports)
    plots = {"accuracy": plot_accuracy(rows, out / "accuracy.png")}
    if plot_by_difficulty(rows, out / "accuracy_by_difficulty.png"):
        plots["accuracy_by_difficulty"] = out / "accuracy_by_difficulty.png"
    for key, plot in (("budget", plot_budget_curve), ("router", plot_router_curve)):
        curves = {f"{run}: {m}": e[key] for run, rep in reports.items()
                  for m, e in (rep.get("evaluation") or {}).items() if e.get(key)}
        if curves:
            plots[key] = plot(curves, out / f"{key}.png")
    result = {"runs": {label: rep["run_dir"] for label, rep in reports.items()}, "rows": rows,
              "plots": {k: p.name for k, p in plots.items()}, "warnings": warnings,
              "hashes": {label: {"test_set": (rep.get("test_set") or {}).get("sha256"),
                                 "verifier": (rep.get("verifier") or {}).get("sha256")} for label, rep in reports.items()}}
    write_json(out / "compare.json", result)
    (out / "compare.md").write_text(markdown(result), encoding="utf-8")
    (out / "compare.html").write_text(render_html(result, out), encoding="utf-8")
    return result


HEAD = ["run", "model", "greedy accuracy [95% CI]", "n", "pass@k", "maj@k", "avg@n", "OOD accuracy",
        "agreement with teacher", "router (threshold → teacher share)"]


def _cells(r: dict[str, Any]) -> list[str]:
    k = f" (k={r['k']})" if r["k"] else ""
    route = (f"{r['router']['threshold']:.2f} → {r['router']['teacher_share']:.0%}" if r["router"] else "–")
    return [r["run"], r["model"], fmt_ci(r["accuracy"]), str(r["n"]), fmt_ci(r["pass@k"]) + (k if r["pass@k"] else ""),
            fmt_ci(r["maj@k"]), fmt_ci(r["avg@n"]), fmt_ci(r["ood"]),
            "–" if r["agreement"] is None else f"{r['agreement']:.1%}", route]


def markdown(result: dict[str, Any]) -> str:
    lines = ["# reasondistill: runs compared", ""] + [f"**{w}**\n" for w in result.get("warnings", [])]
    lines += ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in result["rows"]]
    lines += ["", *[f"![{k}]({v})" for k, v in result["plots"].items()], ""]
    return "\n".join(lines)


def render_html(result: dict[str, Any], out: Path) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in HEAD)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in _cells(r)) + "</tr>" for r in result["rows"])
    figs = "".join(figure(out / p, k) for k, p in result["plots"].items())
    runs = "".join(f"<li><b>{esc(k)}</b>: <code>{esc(v)}</code></li>" for k, v in result["runs"].items())
    warn = "".join(f'<p class="warning" style="color:#b00;font-weight:bold">{esc(w)}</p>' for w in result.get("warnings", []))
    return page("reasondistill: runs compared",
                f"<h1>Runs compared</h1>{warn}<ul>{runs}</ul><table id=\"models-table\"><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table><h2>Plots</h2><div class=\"plots\">{figs}</div>")


def main(argv: list[str] | None = None) -> int:
    from reasondistill.hints import HintingParser

    ap = HintingParser(prog="reasondistill compare", description="Put several runs' models in one table and "
                       "one set of plots: writes compare.json, compare.md, compare.html and the PNGs to DIR. "
                       "Each RUN needs a report.json (reasondistill report RUN writes it).")
    ap.add_argument("runs", nargs="+", metavar="RUN", help="run directories (each with report.json)")
    ap.add_argument("--out", required=True, metavar="DIR", help="output directory (created if missing)")
    ap.add_argument("--allow-mismatch", action="store_true", help="compare runs whose test sets or verifiers "
                    "differ (refused otherwise); the output then warns about it")
    args = ap.parse_args(argv)
    from reasondistill.errors import run_verb

    def body() -> int:
        result = compare_runs(args.runs, args.out, args.allow_mismatch)
        for w in result["warnings"]:
            print(w, file=sys.stderr)
        print(markdown(result))
        print(f"\ncompare: {Path(args.out) / 'compare.html'}")
        return 0
    return run_verb("compare", body)


if __name__ == "__main__":
    sys.exit(main())
