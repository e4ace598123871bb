"""OOD for any task and failure modes for any task: by verdict, teacher pass rate and length, and each
student failure classified as capacity or distribution mismatch, with counts and examples."""

from __future__ import annotations

import json

import pytest

from scripted import chatty_model_dir  # noqa: F401  (fixture)

from reasondistill.config import ConfigError, load_config
from reasondistill.evaluate.failure_modes import failure_modes, render_markdown


def row(pid, verdict, tokens=10, reason="", answer="1"):
    return {"problem_id": pid, "prompt": f"q {pid}", "reference": "1", "answer": answer, "verdict": verdict,
            "reason": reason, "completion_tokens": tokens}


def test_failure_modes_by_verdict_bucket_length_and_class():
    student = [row("a", "correct"), row("b", "wrong", 30, answer="2"), row("c", "unparseable", 90, "timeout"),
               row("d", "truncated", 100), row("e", "wrong", 5)]
    teacher = [row(p, "correct") for p in "abcd"] + [row("e", "wrong")]
    samples = [dict(row("b", v), sample=i) for i, v in enumerate(["correct", "correct", "wrong", "correct"])]
    ood = [row("x", "wrong"), row("y", "correct")]
    fm = failure_modes(student, 100, teacher_rows=teacher, ood_rows=ood, teacher_samples=samples)
    ind = fm["splits"]["in_distribution"]
    assert ind["by_verdict"] == {"n": 5, "correct": 1, "wrong": 2, "unparseable": 0, "truncated": 1, "timeout": 1,
                                 "accuracy": 0.2}
    assert {k: v["n"] for k, v in ind["by_teacher_pass_rate"].items()} == {"1": 3, "[0.5, 1)": 1, "0": 1}
    assert {k: v["n"] for k, v in ind["by_length"].items()} == {"0-25": 2, "25-50": 1, "75-100": 2}
    assert fm["pass_rate_source"] == "teacher samples"
    cls = fm["classes"]
    assert {c: cls[c]["count"] for c in cls} == {"capacity": 3, "distribution_mismatch": 1, "teacher_fails_too": 1}
    assert [e["problem_id"] for e in cls["capacity"]["examples"]] == ["b", "c", "d"]
    assert cls["capacity"]["examples"][0]["teacher_pass_rate"] == 0.75
    assert cls["distribution_mismatch"]["examples"][0]["problem_id"] == "x"
    md = "\n".join(render_markdown({"s1": fm}))
    assert "| s1 | in_distribution | 5 | 1 | 2 | 0 | 1 | 1 |" in md and "| s1 | 3 | 1 | 1 |" in md
    assert "- s1, capacity: `b` answered `2`" in md
    # without a teacher nothing is called capacity: there is no one to say the problem is solvable
    alone = failure_modes(student, 100)
    assert alone["classes"]["capacity"]["count"] == 0 and alone["pass_rate_source"] is None


def test_ood_takes_any_task_section_and_is_checked_by_that_task(tmp_path, chatty_model_dir):
    from reasondistill.evaluate.stages import ood_stage
    from reasondistill.pipeline import Pipeline

    ood_file = tmp_path / "harder.jsonl"
    ood_file.write_text("".join(json.dumps({"question": f"Spell the number {i} backwards", "answer": str(i)[::-1]})
                                + "\n" for i in range(100, 106)))
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"teacher.model={chatty_model_dir}", "task.n_train=4",
                             "task.n_test=4", "evaluate.batch_size=6", "evaluate.max_new_tokens=6",
                             f"evaluate.ood={{task: {{name: file, test_path: {ood_file}, verifier: exact}}, n: 5}}"])
    pipe = Pipeline(cfg, log=lambda m: None, show_progress=False)
    pipe.problems()
    with pipe._verifying():
        ood_stage(pipe, "teacher", str(chatty_model_dir))
    m = json.loads(pipe.rd.eval("teacher").ood.metrics.read_text())
    assert m["n"] == 5 and m["source"] == f"file ({ood_file})" and m["accuracy_ci"]["n"] == 5
    rows = [json.loads(x) for x in pipe.rd.eval("teacher").ood.completions.read_text().splitlines()]
    assert {r["reference"] for r in rows} <= {str(i)[::-1] for i in range(100, 106)}
    assert {r["reason"] for r in rows} <= {"match", "mismatch", "no answer found", "hit the token limit before the end",
                                           "malformed <think> block"}
    # the harder-levels form stays chained_arith-only, with a message saying what to use instead
    with pytest.raises(ConfigError, match="give the OOD problems as evaluate.ood.task"):
        load_config(None, ["task={name: file, path: x.jsonl}", "evaluate.ood={min_ops: 6, max_ops: 7}"])
    with pytest.raises(ConfigError, match="set either task"):
        load_config(None, ["evaluate.ood={n: 5}"])
