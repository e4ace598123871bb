"""The run directory's layout (layout.py) is the one users see: these literal paths are the interface."""

from __future__ import annotations

from reasondistill.layout import Layout
from reasondistill.rundir import RunDir


def test_paths_are_the_documented_ones(tmp_path):
    lay = Layout(tmp_path)
    rel = {k: str(p.relative_to(tmp_path)) for k, p in {
        "traces": lay.traces, "curated": lay.curated, "test": lay.test_problems, "report": lay.report_json,
        "built": lay.build("s1").train, "stats": lay.build("s1").stats, "topk": lay.build("s1").topk(8),
        "final": lay.train("s1").final, "curves": lay.train("s1").metrics_csv,
        "greedy": lay.eval("teacher").completions, "ood": lay.eval("s1").ood.metrics,
        "router": lay.eval("s1").router_samples}.items()}
    assert rel == {"traces": "generate/traces.jsonl", "curated": "curate/curated.jsonl", "test": "problems/test.jsonl",
                   "report": "report.json", "built": "build/s1/train.safetensors", "stats": "build/s1/stats.json",
                   "topk": "build/s1/topk/k8", "final": "train/s1/final", "curves": "train/s1/metrics.csv",
                   "greedy": "evaluate/teacher/completions.jsonl", "ood": "evaluate/s1/ood/metrics.json",
                   "router": "evaluate/s1/router_samples.jsonl"}
    assert isinstance(RunDir(tmp_path / "run"), Layout)


def test_report_inputs_are_the_existing_outputs_of_other_stages(tmp_path):
    lay = Layout(tmp_path)
    assert lay.report_inputs() == []
    for p in (lay.curate_summary, lay.train("s1").metrics_csv, lay.eval("s1").metrics, lay.eval("s1").sampled,
              lay.eval("s1").ood.metrics, lay.eval("s1").samples, lay.train_log("s1")):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("{}")
    got = {str(p.relative_to(tmp_path)) for p in lay.report_inputs()}
    assert got == {"curate/summary.json", "train/s1/metrics.csv", "evaluate/s1/metrics.json",
                   "evaluate/s1/sampled.json", "evaluate/s1/ood/metrics.json"}  # not the raw samples, not logs
