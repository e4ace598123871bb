"""The evaluation extras through the CLI, as a user runs them: sampled metrics, OOD split, thinking
budgets, student vs teacher and the router land in evaluate/<model>/ and report.json/report.html;
greedy evaluation is untouched by them; `route` and `compare` verbs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

from scripted import chatty_model_dir  # noqa: F401  (fixture)

EXTRAS = {"samples": 4, "k": [1, 4], "temperature": 1.0, "ood": {"min_ops": 5, "max_ops": 6, "n": 6},
          "budgets": [2, 4], "router": {"k": 4, "thresholds": [0, 0.5, 1.0]}}


def write_config(path, teacher, evaluate):
    cfg = {"run_dir": str(path.parent / "run"), "seed": 0,
           "task": {"name": "chained_arith", "min_ops": 3, "max_ops": 4, "n_train": 24, "n_test": 8},
           "teacher": {"model": str(teacher)},
           "generate": {"n": 1, "temperature": 1.0, "max_new_tokens": 8, "batch_size": 24},
           "curate": {"require_correct": False, "require_think": False},
           "build": {"max_length": 128, "val_fraction": 0.1},
           "students": [{"name": "s1", "init": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                                 "intermediate_size": 32},
                         "train": {"max_steps": 2, "epochs": None, "batch_size": 8, "save_every": 2, "log_every": 1}}],
           "evaluate": {"batch_size": 16, "max_new_tokens": 8, **evaluate}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "reasondistill", *map(str, args)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def in_process(capsys, *args):
    """A verb run in this process (the CLI's own entry point), to save an interpreter start."""
    from reasondistill.cli import main

    capsys.readouterr()
    assert main([*map(str, args)]) == 0
    return capsys.readouterr().out


def test_extras_through_the_cli(tmp_path, chatty_model_dir, capsys):
    cfg = write_config(tmp_path / "c.yaml", chatty_model_dir, EXTRAS)
    cli("run", cfg, "--quiet")
    run = tmp_path / "run"
    for name in ("teacher", "s1"):
        d = run / "evaluate" / name
        for f in ("metrics.json", "completions.jsonl", "sampled.json", "samples.jsonl", "reliability.png",
                  "budget.json", "ood/metrics.json", "ood/completions.jsonl"):
            assert (d / f).exists(), d / f
    for f in ("compare.json", "router.json", "router.png"):
        assert (run / "evaluate/s1" / f).exists()
    ood = json.loads((run / "evaluate/s1/ood/metrics.json").read_text())
    assert ood["split"] == "ood" and set(ood["accuracy_by_difficulty"]) <= {"5", "6"}
    report = json.loads((run / "report.json").read_text())
    ev = report["evaluation"]
    assert set(ev) == {"teacher", "s1"} and ev["s1"]["sampled"]["pass@k"]["4"]["n"] == 8
    assert ev["s1"]["sampled"]["provenance"]["model_sha256"] and ev["s1"]["accuracy_ci"]["n"] == 8
    assert {"budget", "compare", "router", "ood"} <= set(ev["s1"])
    assert {"accuracy_by_difficulty", "lengths", "budget", "router"} <= set(report["plots"])
    html = (run / "report.html").read_text()
    assert "trace-data" in html and "data:image/png;base64," in html and "http://" not in html.split("<body>")[1]
    assert "## Sampled evaluation" in (run / "report.md").read_text()

    # more samples: only the sampled stages (and what reads them) run again; greedy is skipped
    again = in_process(capsys, "evaluate", run, "evaluate.samples=6", "evaluate.k=[1,6]", "--quiet")
    assert "[skip] evaluate:s1" in again and "[skip] evaluate:teacher" in again
    assert "[run ] evaluate-sampled:s1" in again and "[skip] evaluate-budget:s1" in again
    assert "[skip] evaluate-ood:s1" in again

    routed = in_process(capsys, "route", run, "--k", "2", "--thresholds", "0,0.6,1.01", "--quiet")
    assert "[run ] route:s1" in routed
    router = json.loads((run / "evaluate/s1/router.json").read_text())
    assert router["k"] == 2 and [p["threshold"] for p in router["points"]] == [0.0, 0.6, 1.01]
    assert router["points"][-1]["teacher_share"] == 1.0

    out = in_process(capsys, "compare", run, run, "--out", tmp_path / "cmp")
    assert "| s1 |" in out and str(tmp_path / "cmp/compare.html") in out
    cmp = json.loads((tmp_path / "cmp/compare.json").read_text())
    assert len(cmp["rows"]) == 4 and {"accuracy", "accuracy_by_difficulty", "budget", "router"} <= set(cmp["plots"])
    assert (tmp_path / "cmp/compare.html").read_text().count("data:image/png;base64,") >= 4
