"""Policy students from a config, through the CLI: GRPO, on-policy distillation and DPO start from an
SFT student, train, evaluate, and a rerun skips them (train/policy_stage.py)."""

import csv
import json

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from reasondistill.config import ConfigError, StudentConfig, load_config

from test_pipeline import cli, write_config

INIT = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
POLICY = {"steps": 2, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 8, "save_every": 1}


def test_grpo_on_policy_and_dpo_students_train_from_a_config(tmp_path, tiny_model_dir):
    sft = {"max_steps": 3, "epochs": None, "batch_size": 8, "save_every": 2, "log_every": 1}
    students = [{"name": "s1", "init": INIT, "train": sft},
                {"name": "grpo", "policy": {"objective": "grpo", "start_from": "s1", "kl_ref": 0.1,
                                                          "rewards": {"truncated": -1.0}, **POLICY}},
                {"name": "onp", "policy": {"objective": "on_policy", "start_from": "s1", **POLICY}},
                {"name": "dpo", "policy": {"objective": "dpo", "start_from": "s1", "dpo_samples": 1,
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
    # the same run reached by another path (a link, another working directory, a moved run): nothing to redo
    (tmp_path / "link").symlink_to(tmp_path)
    elsewhere = cli("run", tmp_path / "link" / "run")
    for stage in ("train:grpo", "train:onp", "train:dpo", "evaluate:s1", "evaluate:grpo"):
        assert f"[skip] {stage}" in elsewhere.stdout, elsewhere.stdout


def test_policy_and_distill_are_exclusive_and_start_from_is_checked():
    with pytest.raises(ValueError, match="at most one"):
        StudentConfig(name="x", init=INIT, policy={"objective": "grpo"}, distill={"source": "online"})
    with pytest.raises(ValueError, match="group_size"):
        StudentConfig(name="x", init=INIT, policy={"objective": "grpo", "group_size": 1})


def test_keys_a_policy_student_would_ignore_are_refused():
    """train does not apply to the policy trainer: refused when the config loads, not ignored."""
    with pytest.raises(ValidationError, match="its train section is not used"):
        StudentConfig(name="x", train={"lr": 5e-2}, policy={"objective": "grpo", "start_from": "s1"})
    StudentConfig(name="x", train={}, policy={"objective": "grpo", "start_from": "s1"})  # defaults: fine
    with pytest.raises(ValidationError, match="target: answers_only says what a student trained on traces"):
        StudentConfig(name="x", target="answers_only", policy={"objective": "dpo", "start_from": "s1"})
    with pytest.raises(ValidationError, match="divergence applies to objective on_policy; this student's objective "
                                              "is grpo"):
        StudentConfig(name="x", policy={"objective": "grpo", "start_from": "s1", "divergence": "jsd"})


def test_start_from_gives_the_weights_so_model_and_init_are_refused_and_order_is_checked(tmp_path):
    """A student with policy.start_from needs no model/init (an unused one is refused, not ignored);
    start_from must name a student listed before it; check/run size it from the student it starts from."""
    with pytest.raises(ValidationError, match="'init' would not be used"):
        StudentConfig(name="x", init=INIT, policy={"objective": "grpo", "start_from": "s1"})
    with pytest.raises(ValidationError, match="'model' would not be used"):
        StudentConfig(name="x", model="m", policy={"objective": "dpo", "start_from": "s1"})
    with pytest.raises(ValidationError, match="exactly one of 'model'"):  # no start_from: weights from somewhere
        StudentConfig(name="x", policy={"objective": "grpo"})
    path = tmp_path / "c.yaml"
    path.write_text("students:\n  - {name: a, policy: {objective: grpo, start_from: b}}\n"
                    "  - {name: b, init: {hidden_size: 16}}\n")
    with pytest.raises(ConfigError, match="names a later student"):
        load_config(path)
    path.write_text("students:\n  - {name: a, policy: {objective: grpo, start_from: a}}\n")
    with pytest.raises(ConfigError, match="names the student itself"):
        load_config(path)


def test_check_names_a_missing_start_from_directory(tmp_path, tiny_model_dir):
    from reasondistill.preflight import preflight

    students = [{"name": "g", "policy": {"objective": "grpo", "start_from": str(tmp_path / "missing")}},
                {"name": "ok", "policy": {"objective": "dpo", "start_from": str(tiny_model_dir)}}]
    problems = preflight(load_config(write_config(tmp_path / "c.yaml", tiny_model_dir, students=students)))
    assert len(problems) == 1 and problems[0].startswith("students.0 (g).policy.start_from: cannot load"), problems


def test_check_suggests_the_student_a_misspelt_start_from_means(tmp_path, tiny_model_dir):
    from reasondistill.preflight import preflight

    students = [{"name": "sft_lora", "model": str(tiny_model_dir), "lora": {"r": 4}},
                {"name": "grpo", "lora": {"r": 4}, "policy": {"objective": "grpo", "start_from": "sft_lorra"}}]
    problems = preflight(load_config(write_config(tmp_path / "c.yaml", tiny_model_dir, students=students)))
    assert len(problems) == 1, problems
    assert problems[0].startswith("students.1 (grpo).policy.start_from: no student or model directory named "
                                  "'sft_lorra'"), problems
    assert "did you mean 'sft_lora'" in problems[0] and "cannot load" not in problems[0]


def test_a_lora_policy_student_needs_pretrained_start_weights(tmp_path):
    """lora adapts pretrained weights: `model` or `policy.start_from`; a fresh `init` alone is refused
    when the config loads, naming the student and both fields."""
    path = tmp_path / "c.yaml"
    path.write_text("students:\n  - {name: s, init: {hidden_size: 16}, lora: {r: 4}, policy: {objective: grpo}}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "students.0" in message and "'model'" in message and "'policy.start_from'" in message, message
    with pytest.raises(ValidationError, match="'policy.start_from'"):  # neither model nor init
        StudentConfig(name="x", lora={"r": 4}, policy={"objective": "grpo"})
    StudentConfig(name="x", lora={"r": 4}, policy={"objective": "grpo", "start_from": "s1"})
    StudentConfig(name="x", model="m", lora={"r": 4}, policy={"objective": "dpo"})
    with pytest.raises(ValidationError, match="lora adapts a pretrained model"):  # not a policy student
        StudentConfig(name="x", init=INIT, lora={"r": 4})


def test_check_refuses_a_qlora_policy_student_without_a_gpu(tmp_path, tiny_model_dir):
    """QLoRA (nf4) needs CUDA: `check` (and so `run`, before any stage) names the student; a LoRA policy
    student on another student's final/ (not trained yet) passes."""
    from reasondistill.preflight import preflight

    if torch.cuda.is_available():
        pytest.skip("QLoRA can run on this machine")
    students = [{"name": "s1", "init": INIT},
                {"name": "q", "model": str(tiny_model_dir), "lora": {"quantize": "nf4"}, "policy": {"objective": "grpo"}},
                {"name": "l", "lora": {"target_modules": ["q_proj"]},
                 "policy": {"objective": "grpo", "start_from": "s1"}}]
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, students=students)
    problems = preflight(load_config(cfg))
    assert len(problems) == 1 and problems[0].startswith("students.1 (q): lora.quantize: nf4"), problems


def test_lora_grpo_and_dpo_students_through_the_cli(tmp_path, tiny_model_dir):
    """A LoRA GRPO student (+ KL to the teacher, so every step has a gradient) on an SFT student's final/
    (start_from) and a LoRA DPO student on a pretrained model: adapters train, checkpoints hold them, final/ is merged and evaluated, the report counts them."""
    from transformers import AutoModelForCausalLM

    sft = {"max_steps": 3, "epochs": None, "batch_size": 8, "save_every": 3, "log_every": 1}
    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    students = [{"name": "s1", "init": INIT, "train": sft},
                {"name": "grpo_lora", "lora": lora,
                 "policy": {"objective": "grpo", "start_from": "s1", "kl_ref": 0.1, "kl_teacher": 0.5, "lr": 1e-2,
                            **POLICY}},
                {"name": "dpo_lora", "model": str(tiny_model_dir), "lora": lora,
                 "policy": {"objective": "dpo", "dpo_samples": 1, "dpo_problems": 8, **POLICY}}]
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, students=students)
    first = cli("run", cfg)
    run = tmp_path / "run"
    report = json.loads((run / "report.json").read_text())
    for name in ("grpo_lora", "dpo_lora"):
        assert f"{name}: LoRA r=4:" in first.stdout and f"[run ] train:{name}" in first.stdout
        t = run / f"train/{name}"
        assert (t / "checkpoints/step-2/adapter_model.safetensors").exists()
        assert not (t / "checkpoints/step-2/model.safetensors").exists()
        summary = json.loads((t / "summary.json").read_text())
        assert 0 < summary["trainable_params"] < summary["params"]
        assert report["training"][name]["trainable_params"] == summary["trainable_params"]
        assert f"{summary['params']:,} ({summary['trainable_params']:,} trainable)" in (run / "report.md").read_text()
        AutoModelForCausalLM.from_pretrained(t / "final")  # merged: plain transformers loads it
        assert json.loads((run / f"evaluate/{name}/metrics.json").read_text())["n"] == 10
    start = load_file(run / "train/s1/final/model.safetensors")
    final = load_file(run / "train/grpo_lora/final/model.safetensors")
    assert set(final) == set(start)
    assert torch.equal(final["model.layers.0.mlp.up_proj.weight"], start["model.layers.0.mlp.up_proj.weight"])
    assert not torch.equal(final["model.layers.0.self_attn.q_proj.weight"],
                           start["model.layers.0.self_attn.q_proj.weight"])  # adapted, merged
    assert (run / "train/dpo_lora/pairs.jsonl").exists()
    again = cli("run", cfg)
    for name in ("grpo_lora", "dpo_lora"):
        assert f"[skip] train:{name}" in again.stdout
