"""``report.html``: one self-contained page per run (inline CSS/JS, plots as base64 PNG, no CDN).

Why: a reviewer should be able to open one file, offline, and see the models table with CIs, every
plot, and the outputs behind the numbers. The trace viewer shows the teacher's and the students'
greedy completions for each held-out problem side by side with their verdicts and failure modes,
filterable by model verdict, failure mode and difficulty, and searchable by text. Opening the
page with ``#selftest`` makes it test itself (see :mod:`.html_assets`).

    write_html("runs/demo", report)   # called by report/build.py write_report
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any, Mapping

from reasondistill.layout import Layout
from reasondistill.report.build import task_label
from reasondistill.report.evaluation import MAJ_NOTE, fmt_ci, rows
from reasondistill.report.html_assets import CSS, JS

PLOT_TITLES = {"loss_curves": "Training and validation loss", "policy_curves": "Policy training curves",
               "accuracy_by_difficulty": "Accuracy by difficulty",
               "lengths": "Length histograms", "budget": "Accuracy vs thinking budget",
               "budget_tokens": "Accuracy vs thinking tokens used",
               "router": "Student-first cascade: accuracy vs teacher share"}


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def img_tag(path: Path, alt: str) -> str:
    """An ``<img>`` with the PNG inlined as base64 ('' if the file is missing)."""
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def figure(path: Path, title: str) -> str:
    tag = img_tag(path, title)
    return f"<figure>{tag}<figcaption>{esc(title)}</figcaption></figure>" if tag else ""


def page(title: str, body: str, script: str = "") -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{CSS}</style></head><body>{body}{script}</body></html>\n")


def _num(x: Any, spec: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return format(x, spec)


def _ci_cell(m: Mapping[str, Any] | None, spec: str = ".1%") -> str:
    if not m:
        return "<td>–</td>"
    text = fmt_ci(m, spec)
    if " [" in text:
        v, rest = text.split(" [", 1)
        return f'<td>{esc(v)} <span class="ci">[{esc(rest)}</span></td>'
    return f"<td>{esc(text)}</td>"


def models_table(report: Mapping[str, Any]) -> str:
    ev = report.get("evaluation") or {}
    ks = sorted({k for e in ev.values() for k in (e.get("sampled") or {}).get("pass@k", {})}, key=int)
    top = ks[-1] if ks else None
    head = ["model", "params", "trained on", "greedy accuracy [95% CI]", "n", "mean output tokens", "truncated"]
    if top:
        head += [f"pass@{top}", f"maj@{top}", "avg@n", "thinking tok", "answer tok", "ECE"]
    if any(e.get("ood") for e in ev.values()):
        head += ["OOD accuracy"]
    head += ["final val loss", "steps"]
    body = []
    for name, m in report["models"].items():
        t, e = report.get("training", {}).get(name, {}), ev.get(name, {})
        acc = e.get("accuracy_ci") or {"value": m.get("accuracy"), "ci_low": None, "ci_high": None}
        lora = t.get("trainable_params") not in (None, t.get("params"))  # adapters trained (LoRA)
        params = _num(t.get('params'), ',') + (f" ({_num(t['trainable_params'], ',')} trainable)" if lora else "")
        cells = [f"<td>{esc(name)}</td>", f"<td>{params}</td>",
                 f"<td>{esc(m.get('status') or t.get('target', 'teacher' if name == 'teacher' else ''))}</td>",
                 _ci_cell(acc) if acc.get("ci_low") is not None else f"<td>{_num(acc['value'], '.1%')}</td>",
                 f"<td>{m.get('n')}</td>", f"<td>{_num(m.get('mean_output_tokens'), '.1f')}</td>",
                 f"<td>{_num(m.get('truncation_rate'), '.1%')}</td>"]
        if top:
            s = e.get("sampled") or {}
            ln = s.get("lengths") or {}
            cells += [_ci_cell((s.get("pass@k") or {}).get(top)), _ci_cell((s.get("maj@k") or {}).get(top)),
                      _ci_cell(s.get("avg@n")), f"<td>{_num(ln.get('mean_thinking_tokens'), '.1f')}</td>",
                      f"<td>{_num(ln.get('mean_answer_tokens'), '.1f')}</td>",
                      f"<td>{_num((s.get('calibration') or {}).get('ece'), '.3f')}</td>"]
        if "OOD accuracy" in head:
            cells.append(_ci_cell((e.get("ood") or {}).get("accuracy_ci")))
        cells += [f"<td>{_num(t.get('final_val_loss'), '.4f')}</td>", f"<td>{_num(t.get('steps'), 'd')}</td>"]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table id="models-table"><thead><tr>{"".join(f"<th>{esc(h)}</th>" for h in head)}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def compare_table(report: Mapping[str, Any]) -> str:
    ev = report.get("evaluation") or {}
    rows_ = []
    for name, e in ev.items():
        c = e.get("compare")
        if not c:
            continue
        r = e.get("router") or {}
        chosen = r.get("chosen")
        route = (f"{chosen['threshold']:.2f} → {chosen['teacher_share']:.0%} to teacher" if chosen
                 else ("none within 1 pt" if r else "–"))
        rows_.append(f"<tr><td>{esc(name)}</td><td>{_num(c['agreement']['agreement'], '.1%')}</td>"
                     f"<td>{c['agreement']['same_wrong']}</td>{_ci_cell(c['chain_similarity']['rouge_l'], '.3f')}"
                     f"{_ci_cell(c['chain_similarity']['edit_distance'], '.3f')}"
                     f"<td>{esc(c['falloff']['first_falloff'] if c['falloff']['first_falloff'] is not None else 'none')}</td>"
                     f"<td>{_num((c.get('calibration') or {}).get('ece'), '.3f')}</td><td>{esc(route)}</td></tr>")
    if not rows_:
        return ""
    head = ["student", "answer agreement", "same wrong answer", "ROUGE-L (thinking)", "edit distance (thinking)",
            "first fall-off (difficulty)", "ECE (vote)", "router threshold"]
    return ("<h2>Students vs teacher</h2><p class=\"muted\">ROUGE-L: F1 of the longest common subsequence of "
            "whitespace tokens of the thinking; edit distance: Levenshtein over characters / longer length "
            "(lower is closer). Fall-off: first difficulty where the student trails the teacher by &gt; 10 points.</p>"
            f'<table id="compare-table"><thead><tr>{"".join(f"<th>{esc(h)}</th>" for h in head)}</tr></thead>'
            f"<tbody>{''.join(rows_)}</tbody></table>")


def failure_table(report: Mapping[str, Any]) -> str:
    """Failure modes for any task (evaluate/failure_modes.py): verdicts per split and the students'
    failure classes with examples ('' when none)."""
    from reasondistill.evaluate.failure_modes import CLASSES, VERDICTS

    ev = {m: e["failure_modes"] for m, e in (report.get("evaluation") or {}).items() if e.get("failure_modes")}
    if not ev:
        return ""
    rows_ = "".join(f"<tr><td>{esc(m)}</td><td>{esc(split)}</td><td>{sp['n']}</td>"
                    + "".join(f"<td>{sp['by_verdict'].get(v, 0)}</td>" for v in VERDICTS) + "</tr>"
                    for m, fm in ev.items() for split, sp in fm["splits"].items())
    head = "".join(f"<th>{esc(h)}</th>" for h in ("model", "split", "n", *VERDICTS))
    out = f'<h2>Failure modes</h2><table id="failure-table"><thead><tr>{head}</tr></thead><tbody>{rows_}</tbody></table>'
    students = {m: fm for m, fm in ev.items() if fm.get("classes")}
    if students:
        rule = next(iter(students.values()))["classes_rule"]
        cls = "".join(f"<tr><td>{esc(m)}</td>" + "".join(f"<td>{fm['classes'][c]['count']}</td>" for c in CLASSES)
                      + "</tr>" for m, fm in students.items())
        examples = "".join(f"<li>{esc(m)}, {esc(c)}: <code>{esc(e['problem_id'])}</code> answered "
                           f"<code>{esc(e['answer'].strip()[:60])}</code> ({esc(e['verdict'])}, reference "
                           f"<code>{esc(e['reference'])}</code>)</li>"
                           for m, fm in students.items() for c in CLASSES for e in fm["classes"][c]["examples"])
        out += (f'<p class="muted">{esc(rule)}</p><table id="failure-classes"><thead><tr><th>student</th>'
                + "".join(f"<th>{esc(c)}</th>" for c in CLASSES) + f"</tr></thead><tbody>{cls}</tbody></table>"
                + f"<ul>{examples}</ul>")
    return out


def trace_data(root: Path, report: Mapping[str, Any]) -> dict[str, Any]:
    """Problems with every model's greedy output, verdict and failure mode, for the viewer."""
    from reasondistill.evaluate.failures import FAILURE_MODES, annotate
    from reasondistill.records import Problem, read_records
    from reasondistill.tasks.base import load_task

    lay = Layout(root)
    problems_path = lay.test_problems
    problems = {p.id: p for p in read_records(problems_path, Problem)} if problems_path.exists() else {}
    task = None
    try:
        from pydantic import TypeAdapter

        from reasondistill.tasks.config import TaskConfig

        task = load_task(TypeAdapter(TaskConfig).validate_python(report["task"]).task_spec())  # no file is read
    except (KeyError, ValueError, TypeError):
        pass
    models = [m for m in report["models"] if lay.eval(m).completions.exists()]
    entries: dict[str, dict[str, Any]] = {}
    for m in models:
        got = rows(lay.eval(m).completions)
        if task is not None and problems and all(r["problem_id"] in problems for r in got):
            got = annotate(got, problems, task)
        for r in got:
            e = entries.setdefault(r["problem_id"], {"id": r["problem_id"], "prompt": r.get("prompt", ""),
                                                     "reference": r.get("reference", ""),
                                                     "difficulty": r.get("difficulty"), "outputs": {}})
            e["outputs"][m] = {"text": r["text"], "verdict": r["verdict"], "failure": r.get("failure", r["verdict"]),
                               "predicted": r.get("predicted")}
    diffs = sorted({e["difficulty"] for e in entries.values() if e["difficulty"] is not None})
    return {"models": models, "modes": list(FAILURE_MODES), "difficulties": diffs,
            "problems": sorted(entries.values(), key=lambda e: (e["difficulty"] or 0, e["id"]))}


def viewer(data: Mapping[str, Any]) -> str:
    payload = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")
    return ('<h2>Trace viewer</h2><div id="filters">'
            '<label>model <select id="f-model"></select></label>'
            '<label>verdict <select id="f-verdict"><option value="">all</option><option value="correct">correct'
            '</option><option value="wrong">not correct</option></select></label>'
            '<label>failure mode <select id="f-mode"><option value="">all</option></select></label>'
            '<label>difficulty <select id="f-diff"><option value="">all</option></select></label>'
            '<label>search <input id="f-q" type="search" placeholder="text in prompt or outputs"></label>'
            '<span id="shown-count"></span></div><div id="traces"></div>'
            f'<script type="application/json" id="trace-data">{payload}</script>')


def provenance(report: Mapping[str, Any]) -> str:
    """What determined each model's numbers (greedy and sampled), folded away."""
    parts = []
    for name, e in (report.get("evaluation") or {}).items():
        for kind, prov in (("greedy", e.get("provenance")), ("sampled", (e.get("sampled") or {}).get("provenance"))):
            if prov:
                parts.append(f"<details><summary>{esc(name)}: {kind}</summary><pre>{esc(json.dumps(prov, indent=1))}"
                             "</pre></details>")
    return "<h2>Provenance</h2>" + "".join(parts) if parts else ""


def quantization(report: Mapping[str, Any]) -> str:
    """The quantized students' table ('' when there are none; quantize/report.py)."""
    from reasondistill.quantize.report import html as quantization_html

    return quantization_html(report.get("quantization"))


def skipped_list(report: Mapping[str, Any]) -> str:
    """The stages that had nothing to work on and why ('' when none)."""
    skipped = report.get("skipped") or {}
    if not skipped:
        return ""
    items = "".join(f"<li><code>{esc(stage)}</code>: {esc(reason)}</li>" for stage, reason in skipped.items())
    return f'<h2>Skipped</h2><ul id="skipped">{items}</ul>'


def render_html(root: Path, report: Mapping[str, Any]) -> str:
    plots = dict(report.get("plots") or {})
    curves = {k: report[k] for k in ("loss_curves", "policy_curves") if report.get(k)}
    plots = {**curves, **plots}
    figs = "".join(figure(root / p, PLOT_TITLES.get(k, "Calibration: " + k.split(":", 1)[-1] + " (vote confidence)"))
                   for k, p in plots.items())
    body = (f"<h1>reasondistill report: <code>{esc(report['run_dir'])}</code></h1>"
            f"<p>Task <code>{esc(task_label(report['task']))}</code>; teacher <code>{esc(report['teacher'])}</code>. "
            "All models on the same held-out problems; 95% CIs: Wilson for proportions (accuracy, maj@k), bootstrap "
            f"over problems for pass@k and avg@n. {MAJ_NOTE}</p>"
            f'<div id="status" data-status="loading">loading…</div><pre id="selftest"></pre>'
            f"{skipped_list(report)}<h2>Models</h2>{models_table(report)}{quantization(report)}{compare_table(report)}"
            f"{failure_table(report)}"
            f'<h2>Plots</h2><div class="plots">{figs}</div>{viewer(trace_data(root, report))}{provenance(report)}')
    return page(f"reasondistill report: {report['run_dir']}", body, f"<script>{JS}</script>")


def write_html(root: str | Path, report: Mapping[str, Any]) -> Path:
    root = Path(root)
    out = Layout(root).report_html
    out.write_text(render_html(root, report), encoding="utf-8")
    return out
