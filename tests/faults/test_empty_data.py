"""Empty and degenerate data end cleanly: one clear line each, the rest of the run goes on, and
the report says what was skipped and why.

The most common first run of all is a teacher too weak for a new task: zero traces kept. Before,
``build`` crashed with a raw ``IndexError`` from the tokenizer; now students without data are
skipped, the teacher is still evaluated and the report is written.
"""

from __future__ import annotations

import dataclasses
import json

import yaml

from reasondistill.config import load_config
from reasondistill.curate.filters import curate, kept_line
from reasondistill.ingest import ingest
from reasondistill.pipeline import Pipeline
from reasondistill.records import Trace
from tests.test_ingest import write_config as ingest_config
from tests.test_ingest import write_r1
from tests.test_pipeline import cli, write_config


def test_a_teacher_that_gets_everything_wrong_still_ends_with_a_report(tmp_path, tiny_model_dir):
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, curate={"require_correct": True, "require_think": True})
    out = cli("run", cfg)  # exit 0: the untrained tiny teacher solves nothing
    assert "curate: 0 of 80 traces kept (" in out.stdout
    assert "[skip] build:s1: no training data: 0 of 80 traces kept" in out.stdout
    assert "[skip] train:s1: no training data" in out.stdout
    assert "[run ] evaluate:teacher" in out.stdout and "Traceback" not in out.stderr
    run = tmp_path / "run"
    report = json.loads((run / "report.json").read_text())
    assert set(report["models"]) == {"teacher"}
    assert set(report["skipped"]) == {"build:s1", "train:s1", "evaluate:s1"}
    assert "no training data" in report["skipped"]["evaluate:s1"]
    assert "## Skipped" in (run / "report.md").read_text()
    assert 'id="skipped"' in (run / "report.html").read_text()
    assert not (run / "build/s1/train.safetensors").exists()


def test_a_teacher_that_never_closes_think_is_named_in_the_curate_line(arith):
    from reasondistill.config import CurateConfig

    problems = {p.id: p for p in arith.problems("train", 2, 0)}
    traces = [Trace(problem_id=pid, sample=0, thinking="", answer="", text="<think>47+5=52 and on and on",
                    prompt_tokens=3, completion_tokens=9, finish_reason="stop", teacher="t") for pid in problems]
    kept, _, summary, _ = curate(problems, traces, arith, CurateConfig())
    assert not kept
    assert kept_line(summary) == "curate: 0 of 2 traces kept (2 unparseable: 2 malformed <think> block)"
    # without require_correct, require_think drops them by the verdict's malformed_think flag
    kept, verdicts, summary, _ = curate(problems, [dataclasses.replace(t, thinking="47+5=52") for t in traces], arith,
                                        CurateConfig(require_correct=False))
    assert not kept and all(v.malformed_think for v in verdicts) and summary["dropped"] == {"no_thinking": 2}


def test_zero_problems_left_after_decontamination_skip_the_student(tmp_path, tiny_model_dir):
    cfg = ingest_config(tmp_path / "c.yaml", tiny_model_dir)
    test_problems = Pipeline(load_config(cfg, [f"run_dir={tmp_path / 'probe'}"]), log=lambda s: None).task.problems(
        "test", 6, 0)
    rows = [{"problem": p.prompt, "gtruth_answer": p.answer, "message_thinking": p.solution,
             "message_content": f"\\boxed{{{p.answer}}}"} for p in test_problems]  # every one copied from the test set
    run = tmp_path / "run"
    ingest(write_r1(tmp_path / "d.json", rows), run, "r1", config=cfg, log=lambda s: None)
    logs: list[str] = []
    pipe = Pipeline(load_config(run / "config.yaml"), log=logs.append, show_progress=False)
    summary = pipe.curate()
    assert summary["kept"] == 0 and summary["dropped"]["contaminated"] == 6
    assert "       curate: 0 of 6 traces kept (6 contaminated)" in logs
    assert pipe.build()["s1"]["skipped"] == "no training data: 0 of 6 traces kept (6 contaminated)"
    assert pipe.train() == {"s1": {"skipped": "no training data: 0 of 6 traces kept (6 contaminated)"}}
    assert pipe.rd.skipped()["train:s1"].startswith("no training data")


def test_an_empty_test_split_skips_evaluation_and_the_report_says_so(tmp_path, tiny_model_dir):
    # one file split by a hash of each question: with a tiny test fraction no problem lands in test
    # (an empty *file* is an error instead: tests/faults/malformed_inputs.py)
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(4)))
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir)
    conf = yaml.safe_load(cfg.read_text())
    conf["task"] = {"name": "file", "path": str(data), "test_fraction": 0.0001}
    cfg.write_text(yaml.safe_dump(conf))
    logs: list[str] = []
    pipe = Pipeline(load_config(cfg), log=logs.append, show_progress=False)
    assert pipe.evaluate() == {}
    assert any(line.startswith("[skip] evaluate: the test split is empty (0 problems") for line in logs)
    report = pipe.report()
    assert "evaluate" in report["skipped"] and report["models"] == {}
    assert "the test split is empty" in (tmp_path / "run/report.md").read_text()


def test_a_student_whose_examples_are_all_too_long_is_skipped(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    ingest(write_r1(tmp_path / "d.json"), run, "r1", config=ingest_config(tmp_path / "c.yaml", tiny_model_dir),
           overrides=["build.max_length=4"], log=lambda s: None)
    logs: list[str] = []
    pipe = Pipeline(load_config(run / "config.yaml"), log=logs.append, show_progress=False)
    assert pipe.curate()["kept"] == 3
    reason = "no training example: 3 of 3 are longer than build.max_length=4"
    assert pipe.build()["s1"]["skipped"] == reason and f"[skip] build:s1: {reason}" in logs
    assert pipe.train()["s1"] == {"skipped": reason}
