"""Policy students from a config, through the CLI: GRPO, on-policy distillation and DPO start from an
SFT student, train, evaluate, and a rerun skips them (train/policy_stage.py)."""

import csv
import json

import pytest

from pydantic import ValidationError

from reasondistill.config import StudentConfig

from test_pipeline import cli, write_config

INIT = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
POLICY = {"steps": 2, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 8, "save_every": 1}


def test_grpo_on_policy_and_dpo_students_train_from_a_config(tmp_path, tiny_model_dir):
    sft = {"max_steps": 3, "epochs": None, "batch_size": 8, "save_every": 2, "log_every": 1}
    students = [{"name": "s1", "init": INIT, "train": sft},
                {"name": "grpo", "init": INIT, "policy": {"objective": "grpo", "start_from": "s1", "kl_ref": 0.1,
                                                          "rewards": {"truncated": -1.0}, **POLICY}},
                {"name": "onp", "init": INIT, "policy": {"objective": "on_policy", "start_from": "s1", **POLICY}},
                {"name": "dpo", "init": INIT, "policy": {"objective": "dpo", "start_from": "s1", "dpo_samples": 1,
                                                         "dpo_problems": 8, **POLICY}}]
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, students=students)
    first = cli("run", cfg)
    run = tmp_path / "run"
    for name in ("grpo", "onp", "dpo"):
        assert f"[run ] train:{name}" in first.stdout
        assert (run / f"train/{name}/final/model.safetensors").exists()
        rows = list(csv.DictReader((run / f"train/{name}/metrics.csv").open()))
        assert [int(r["step"]) for r in rows] == [1, 2]
        assert json.loads((run / f"evaluate/{name}/metrics.json").read_text())["n"] == 10
    assert rows[0]["dpo_margin"] != "" and (run / "train/dpo/pairs.jsonl").exists()
    kl = float(next(csv.DictReader((run / "train/onp/metrics.csv").open()))["kl_teacher"])
    assert kl == kl  # scored by the run's teacher (not NaN, not empty)
    again = cli("run", cfg)
    for name in ("grpo", "onp", "dpo"):
        assert f"[skip] train:{name}" in again.stdout


def test_policy_and_distill_are_exclusive_and_start_from_is_checked():
    with pytest.raises(ValueError, match="at most one"):
        StudentConfig(name="x", init=INIT, policy={"objective": "grpo"}, distill={"source": "online"})
    with pytest.raises(ValueError, match="group_size"):
        StudentConfig(name="x", init=INIT, policy={"objective": "grpo", "group_size": 1})


def test_keys_a_policy_student_would_ignore_are_refused():
    """lora and train do not apply to the policy trainer: refused when the config loads, not ignored."""
    with pytest.raises(ValidationError, match="lora is not supported with policy"):
        StudentConfig(name="x", model="m", lora={"r": 4}, policy={"objective": "grpo", "start_from": "s1"})
    with pytest.raises(ValidationError, match="its train section is not used"):
        StudentConfig(name="x", init=INIT, train={"lr": 5e-2}, policy={"objective": "grpo", "start_from": "s1"})
    StudentConfig(name="x", init=INIT, train={}, policy={"objective": "grpo", "start_from": "s1"})  # defaults: fine
