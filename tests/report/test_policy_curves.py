"""A policy student's training curves (reward, KL, DPO margin, loss from train/policy.py's
metrics.csv) reach report.json, report.md and report.html; with no SFT curves there is no
(empty) loss_curves.png and no link to one."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

from reasondistill.config import RunConfig
from reasondistill.report.build import write_report

_spec = importlib.util.spec_from_file_location("fake_run", Path(__file__).parent / "fake_run.py")
fake_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake_run)

HEADER = "step,loss,reward_mean,reward_std,accuracy,kl_ref,kl_teacher,dpo_margin,lr\n"


def policy_run(root: Path, *, with_sft: bool) -> RunConfig:
    cfg = fake_run.make_fake_run(root)
    if not with_sft:
        (root / "train/student/metrics.csv").unlink()
    for name, rows in (("grpo", [f"{s},{0.5 / s:.3f},{0.1 * s:.2f},0.2,{0.1 * s:.2f},0.01,,,1e-5" for s in (1, 2, 3)]),
                       ("dpo", [f"{s},{0.7 / s:.3f},,,,,,{0.3 * s:.2f},1e-5" for s in (1, 2)])):
        t = root / "train" / name
        t.mkdir(parents=True)
        (t / "metrics.csv").write_text(HEADER + "\n".join(rows) + "\n")
    students = [{"name": "student", "init": {}},
                {"name": "grpo", "init": {}, "policy": {"objective": "grpo"}},
                {"name": "dpo", "init": {}, "policy": {"objective": "dpo"}}]
    if not with_sft:
        students = students[1:]
    return cfg.model_copy(update={"students": RunConfig.model_validate(
        {"run_dir": str(root), "task": {"min_ops": 3, "max_ops": 5}, "students": students}).students})


def test_policy_curves_reach_every_report_format(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "No artists with labels found to put in legend"
        report = write_report(tmp_path, policy_run(tmp_path, with_sft=True))
    saved = json.loads((tmp_path / "report.json").read_text())["policy_metrics"]
    assert saved["grpo"]["reward_mean"] == [[1, 0.1], [2, 0.2], [3, 0.3]]
    assert saved["grpo"]["kl_ref"] == [[1, 0.01], [2, 0.01], [3, 0.01]]
    assert "dpo_margin" not in saved["grpo"] and "step" not in saved["grpo"]
    assert saved["dpo"]["dpo_margin"] == [[1, 0.3], [2, 0.6]] and saved["dpo"]["loss"] == [[1, 0.7], [2, 0.35]]
    assert "student" not in saved and report["loss_curves"] == "loss_curves.png"
    assert (tmp_path / report["policy_curves"]).stat().st_size > 0
    md = (tmp_path / "report.md").read_text()
    assert f"]({report['policy_curves']})" in md and "](loss_curves.png)" in md
    assert html_alts(tmp_path) >= {"Policy training curves", "Training and validation loss"}


def test_only_policy_students_make_no_loss_curves(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = write_report(tmp_path, policy_run(tmp_path, with_sft=False))
    assert "loss_curves" not in report and not (tmp_path / "loss_curves.png").exists()
    assert "loss_curves" not in (tmp_path / "report.md").read_text()
    assert "Training and validation loss" not in html_alts(tmp_path)
    assert set(report["policy_metrics"]) == {"grpo", "dpo"} and (tmp_path / "policy_curves.png").exists()


def html_alts(root: Path) -> set[str]:
    import re

    return set(re.findall(r'<img alt="([^"]+)"', (root / "report.html").read_text()))


def test_models_no_longer_in_the_config_are_left_out_and_listed_as_skipped(tmp_path):
    """A student removed from the config (its evaluate/ directory still on disk), and the teacher with
    evaluate.teacher off, are not in the tables: the report lists them under Skipped."""
    cfg = fake_run.make_fake_run(tmp_path)
    cfg = cfg.model_copy(update={"students": [], "evaluate": cfg.evaluate.model_copy(update={"teacher": False})})
    report = write_report(tmp_path, cfg)
    assert report["models"] == {} and "evaluation" not in report
    assert set(report["skipped"]) >= {"evaluate:student", "evaluate:teacher"}
    md = (tmp_path / "report.md").read_text()
    assert "| student |" not in md and "| teacher |" not in md
    assert "`evaluate:student`: not in this config" in md


def test_the_report_names_each_students_objective_and_the_task_settings():
    from reasondistill.report.build import task_label, teacher_label, trained_on

    cfg = RunConfig.model_validate({
        "task": {"name": "chained_arith", "min_ops": 3, "max_ops": 5},
        "teacher": {"kind": "openai", "model": "big", "base_url": "http://127.0.0.1:9/v1"},
        "logit_teacher": {"model": "bundled:tiny-arith-teacher"},
        "students": [{"name": "hard", "init": {}},
                     {"name": "kd", "init": {}, "distill": {"source": "offline_topk", "top_k": 8, "temperature": 2.0}},
                     {"name": "rl", "policy": {"objective": "grpo", "start_from": "hard"}}]})
    assert [trained_on(s) for s in cfg.students] == [
        "traces", "traces + forward_kl (offline_topk top-8, T=2, α=0.5)", "grpo from hard"]
    assert teacher_label(cfg) == ("big (through an OpenAI-compatible server); soft targets from "
                                  "bundled:tiny-arith-teacher (logit_teacher)")
    assert task_label(cfg.task.model_dump()).startswith("chained_arith (min_ops=3, max_ops=5, ")
