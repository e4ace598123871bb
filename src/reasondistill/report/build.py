"""Write ``report.json``, ``report.md``, ``loss_curves.png`` (SFT students) and ``policy_curves.png``
(policy students: reward, KL, DPO margin, loss) from a run directory's outputs.

Why: the result of a run is a table of models (teacher and students, on the same held-out
problems) and the training curves behind it. Everything here is read from files other stages
wrote, so a report can be rebuilt at any time: ``reasondistill report runs/demo``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from reasondistill.layout import Layout
from reasondistill.records import write_json
from reasondistill.report.fingerprints import fingerprints


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def read_curves(metrics_csv: Path) -> dict[str, list[tuple[int, float]]]:
    curves: dict[str, list[tuple[int, float]]] = {"train_loss": [], "val_loss": []}
    with metrics_csv.open() as fh:
        for row in csv.DictReader(fh):
            for key in curves:
                if row.get(key):
                    curves[key].append((int(row["step"]), float(row[key])))
    return curves


POLICY_PLOTTED = {"reward_mean": "mean reward", "accuracy": "accuracy (rollouts)", "kl_teacher": "KL to teacher",
                  "kl_ref": "KL to reference", "dpo_margin": "DPO margin", "loss": "loss"}


def read_policy_curves(metrics_csv: Path) -> dict[str, list[tuple[int, float]]]:
    """A policy student's metrics.csv (train/policy.py): every column with a finite value, as (step, value)."""
    curves: dict[str, list[tuple[int, float]]] = {}
    with metrics_csv.open() as fh:
        for row in csv.DictReader(fh):
            for key, v in row.items():
                if key != "step" and v and math.isfinite(float(v)):
                    curves.setdefault(key, []).append((int(row["step"]), float(v)))
    return curves


def plot_policy_curves(curves: dict[str, dict[str, list[tuple[int, float]]]], path: Path) -> bool:
    """One panel per quantity of :data:`POLICY_PLOTTED` any student logged, one line per student
    (False, no file, when none did)."""
    keys = [k for k in POLICY_PLOTTED if any(c.get(k) for c in curves.values())]
    if not keys:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for name, c in curves.items():
            if c.get(key):
                xs, ys = zip(*c[key])
                ax.plot(xs, ys, label=name, marker="o" if len(xs) < 20 else None, markersize=3)
        ax.set_title(POLICY_PLOTTED[key])
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_loss_curves(curves: dict[str, dict[str, list[tuple[int, float]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    palette = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20").colors  # one colour per student
    for i, (name, c) in enumerate(curves.items()):
        for ax, key in zip(axes, ("train_loss", "val_loss")):
            if c[key]:
                xs, ys = zip(*c[key])
                ax.plot(xs, ys, label=name, marker="o" if key == "val_loss" else None, markersize=3,
                        color=palette[i % len(palette)])
    # training: each student's own objective (KD terms included: not comparable across objectives);
    # validation: cross-entropy on the traces for every student
    for ax, title in zip(axes, ("training objective (per answer token)", "validation cross-entropy (per answer token)")):
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.lines:  # no validation set: no validation curve
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(x: Any, spec: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return format(x, spec)


def trained_on(s) -> str:
    """What a student learnt from, for the models table: "traces", "traces + forward_kl (online, T=1,
    α=0.5)", "grpo from student_traces"."""
    if s.policy is not None:
        return s.policy.objective + (f" from {s.policy.start_from}" if s.policy.start_from else "")
    d = s.distill
    if d is None:
        return s.target
    how = f"cross-tokenizer {d.cross_tokenizer}" if d.cross_tokenizer else d.divergence
    source = d.source + (f" top-{d.top_k}" if d.top_k else "")
    extra = " + features" if d.features is not None else ""
    return f"{s.target} + {how} ({source}, T={d.temperature:g}, α={d.alpha:g}){extra}"


def teacher_label(cfg) -> str:
    """The teacher as the report names it: its model, how it was run, and the logit teacher when
    another model gave the soft targets."""
    from reasondistill.preflight import logit_teacher

    t = cfg.teacher
    label = t.model + {"ingested": " (traces ingested, not sampled)", "openai": " (through an OpenAI-compatible "
                       "server)", "vllm": " (vLLM)"}.get(t.kind, "")
    found = logit_teacher(cfg)
    if found is not None and found[0] != "teacher" and any(s.distill is not None for s in cfg.students):
        label += f"; soft targets from {found[1]} ({found[0]})"
    return label


def task_label(task: dict[str, Any]) -> str:
    """``chained_arith (min_ops=3, max_ops=5, n_train=16000, n_test=400)``: the task's settings, unset ones left out."""
    shown = ", ".join(f"{k}={v}" for k, v in task.items() if k != "name" and v not in (None, [], {}))
    return f"{task.get('name')}" + (f" ({shown})" if shown else "")


def write_report(run_dir: str | Path, cfg) -> dict[str, Any]:
    lay = Layout(run_dir)
    root = lay.root
    skipped = _read_json(lay.skipped_path) or {}  # stage -> why it had nothing to work on (rundir.py)
    models: dict[str, Any] = {}
    configured = {s.name for s in cfg.students} | ({"teacher"} if cfg.evaluate.teacher else set())
    for m in lay.evaluated():
        if m not in configured:  # a student since removed from the config, or the teacher with evaluate.teacher off
            skipped = {**skipped, f"evaluate:{m}": f"not in this config (evaluate/{m}/ holds an earlier config's "
                       "results; left out of the report)"}
            continue
        if lay.eval(m).metrics.is_file() and f"evaluate:{m}" not in skipped and "evaluate" not in skipped:  # not stale
            models[m] = json.loads(lay.eval(m).metrics.read_text())
    if cfg.teacher.kind == "ingested" and cfg.evaluate.teacher:  # listed, never silently dropped
        from reasondistill.evaluate.backends import INGESTED

        models = {"teacher": {"accuracy": None, "n": None, "status": INGESTED}, **models}
    training: dict[str, Any] = {}
    curves, policy_curves = {}, {}
    for s in cfg.students:
        t = lay.train(s.name)
        summary = _read_json(t.summary)
        if summary:
            training[s.name] = {k: summary.get(k) for k in ("final_val_loss", "steps", "epochs", "wall_time_s",
                                                            "params", "train_examples", "processes",
                                                            "trainable_params")}
            training[s.name]["target"] = trained_on(s)
        if t.metrics_csv.exists() and s.policy is not None:
            policy_curves[s.name] = read_policy_curves(t.metrics_csv)
        elif t.metrics_csv.exists():
            curves[s.name] = read_curves(t.metrics_csv)
    manifest = _read_json(lay.manifest) or {}
    stage_seconds = {k: v["seconds"] for k, v in manifest.get("stages", {}).items()}
    report = {
        "run_dir": str(root),
        "task": cfg.task.model_dump(),
        "teacher": teacher_label(cfg),
        "models": {name: {k: m.get(k) for k in ("accuracy", "n", "correct", "mean_output_tokens", "truncation_rate",
                                               "accuracy_by_difficulty", "verdicts", "timeouts", "status", "backend",
                                               "api_usage") if k in m or k not in ("status", "backend", "api_usage")}
                   for name, m in models.items()},
        "skipped": skipped,
        "training": training,
        "curation": _read_json(lay.curate_summary),
        "stage_seconds": stage_seconds,
        "total_stage_seconds": round(sum(stage_seconds.values()), 1),
        **fingerprints(lay, cfg),  # test set and verifier hashes: `reasondistill compare` checks them
    }
    if any(v for c in curves.values() for v in c.values()):
        plot_loss_curves(curves, lay.loss_curves)
        report["loss_curves"] = lay.loss_curves.name
    if policy_curves:
        report["policy_metrics"] = policy_curves
        if plot_policy_curves(policy_curves, lay.policy_curves):
            report["policy_curves"] = lay.policy_curves.name
    from reasondistill.report import evaluation as evaluation_section, html  # sampled/OOD/budget/compare/router; report.html

    evaluation = {name: e for name, e in evaluation_section.collect(root).items() if name in models}  # none of skipped ones
    if evaluation:
        report["evaluation"] = evaluation
        report["plots"] = evaluation_section.make_plots(root, evaluation)
    from reasondistill.quantize.report import collect as quantized  # the quantize stage's variants

    if (quantization := quantized(root, cfg)) is not None:
        report["quantization"] = quantization
    write_json(lay.report_json, report)
    lay.report_md.write_text(render_markdown(report), encoding="utf-8")
    html.write_html(root, report)
    return report


def models_table(report: dict[str, Any]) -> str:
    rows = ["| model | params | trained on | accuracy | n | mean output tokens | truncated | final val loss | steps | train time |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in report["models"].items():
        t = report["training"].get(name, {})
        if m.get("status"):  # e.g. an ingested run's teacher: "not evaluated (ingested traces)"
            rows.append(f"| {name} | – | {m['status']} | – | – | – | – | – | – | – |")
            continue
        lora = t.get("trainable_params") not in (None, t.get("params"))  # adapters (LoRA) trained, not every weight
        params = _fmt(t.get('params'), ',') + (f" ({t['trainable_params']:,} trainable)" if lora else "")
        rows.append(f"| {name} | {params} | {t.get('target', 'teacher' if name == 'teacher' else '')} "
                    f"| {_fmt(m['accuracy'], '.1%')} | {m['n']} | {_fmt(m['mean_output_tokens'], '.1f')} "
                    f"| {_fmt(m['truncation_rate'], '.1%')} | {_fmt(t.get('final_val_loss'), '.4f')} "
                    f"| {_fmt(t.get('steps'), 'd')} | {_fmt(t.get('wall_time_s'), '.0f')}{'s' if t else ''} |")
    return "\n".join(rows)


def skipped_lines(skipped: dict[str, str]) -> list[str]:
    """One markdown bullet per stage that had nothing to work on, with the reason."""
    return [f"- `{stage}`: {reason}" for stage, reason in skipped.items()]


def render_markdown(report: dict[str, Any]) -> str:
    out = [f"# reasondistill report: `{report['run_dir']}`", "",
           f"Task: `{task_label(report['task'])}`; teacher: `{report['teacher']}`.", "",
           "## Models on the same held-out problems (greedy decoding)", "", models_table(report), ""]
    diffs = sorted({d for m in report["models"].values() for d in (m.get("accuracy_by_difficulty") or {})}, key=int)
    if diffs:
        out += ["## Accuracy by difficulty", "", "| model | " + " | ".join(f"difficulty {d}" for d in diffs) + " |",
                "|---|" + "---:|" * len(diffs)]
        for name, m in report["models"].items():
            acc = m.get("accuracy_by_difficulty") or {}
            out.append(f"| {name} | " + " | ".join(_fmt(acc.get(d), ".1%") for d in diffs) + " |")
        out.append("")
    if report.get("quantization"):
        from reasondistill.quantize.report import markdown as quantization_markdown

        out.append(quantization_markdown(report["quantization"]))
    cur = report.get("curation")
    if cur:
        out += ["## Curation", "", f"- teacher traces: {cur['traces']}, verdicts: {cur['verdicts']}",
                f"- teacher accuracy on training problems: {_fmt(cur['teacher_accuracy'], '.1%')}; mean pass rate "
                f"{_fmt(cur['mean_pass_rate'], '.2f')}", f"- dropped: {cur['dropped']}", f"- kept: {cur['kept']}", ""]
        if cur.get("unparseable_reasons"):  # why answers could not be verified; time-outs are not "wrong"
            out.insert(-1, f"- unparseable, by reason: {cur['unparseable_reasons']} ({cur.get('timeouts', 0)} "
                           "past the verify time limit)")
        dec = cur.get("decontamination")
        if dec:  # curate/decontam.py; the full list with the shared n-grams is in curate/decontamination.json
            ids = ", ".join(f"`{i}`" for i in dec["ids"][:20]) + (" …" if len(dec["ids"]) > 20 else "")
            out.insert(-1, f"- decontamination ({dec['ngram']}-gram overlap with {dec['eval_problems']} test "
                           f"problems): {dec['contaminated_problems']} training problems dropped"
                           + (f": {ids}" if ids else ""))
        from reasondistill.report.curation import curation_lines  # pass-rate band, selection, near-dups, benchmarks

        out[-1:-1] = curation_lines(cur)
    if report.get("skipped"):
        out += ["## Skipped", "", *skipped_lines(report["skipped"]), ""]
    if report.get("loss_curves"):
        out += ["## Loss curves", "", f"![loss curves]({report['loss_curves']})", ""]
    if report.get("policy_curves"):
        out += ["## Policy training curves", "", f"![policy training curves]({report['policy_curves']})", ""]
    if report["stage_seconds"]:
        out += ["## Time per stage (seconds, last run of each)", "",
                ", ".join(f"{k} {v:.1f}" for k, v in report["stage_seconds"].items()),
                f"\nSum of stage times: {report['total_stage_seconds']:.1f} s (students may train in parallel, so wall time is less)", ""]
    if report.get("evaluation"):
        from reasondistill.report.evaluation import render_markdown as evaluation_markdown

        out.append(evaluation_markdown(report))
    return "\n".join(out)
