"""A config with ``quantize:`` runs end to end through the CLI: the student trains, PTQ/QAT/QAD
variants are converted to real quantized weights, the converted models are loaded as plain
transformers loads them and evaluated with the project's evaluation, and the report shows them.
Re-runs skip; a changed variant re-runs alone (never the student); a re-run fine-tune resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

VARIANTS = [{"method": "ptq", "bits": 4, "group_size": 16, "speed_prompts": 2},
            {"method": "qat", "bits": 8, "group_size": None, "speed_prompts": 0,
             "train": {"max_steps": 2, "epochs": None, "batch_size": 8, "save_every": 1}},
            {"method": "qad", "bits": 4, "group_size": 16, "speed_prompts": 0,
             "train": {"max_steps": 2, "epochs": None, "batch_size": 8, "save_every": 1}},
            {"method": "qad", "bits": 4, "group_size": 16, "speed_prompts": 0, "teacher": "logit", "name": "qad-logit",
             "train": {"max_steps": 1, "epochs": None, "batch_size": 8}}]


def write_config(tmp_path):
    cfg = {"run_dir": str(tmp_path / "run"), "seed": 0,
           "task": {"name": "chained_arith", "min_ops": 3, "max_ops": 4, "n_train": 32, "n_test": 8},
           "generate": {"n": 1, "temperature": 0.7, "max_new_tokens": 96, "batch_size": 32},
           "build": {"max_length": 160, "val_fraction": 0.1},
           "students": [{"name": "s1", "init": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                                 "intermediate_size": 32},
                         "train": {"max_steps": 3, "epochs": None, "batch_size": 8, "save_every": 3, "log_every": 1},
                         "quantize": VARIANTS}],
           "evaluate": {"batch_size": 8, "max_new_tokens": 24}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "reasondistill", *map(str, args)], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def test_quantize_end_to_end(tmp_path, arith):
    from reasondistill.evaluate.accuracy import evaluate_model
    from reasondistill.models import load_tokenizer
    from reasondistill.quantize.scheme import is_quantized, load_quantized
    from reasondistill.records import Problem, read_records
    from reasondistill.verify.checker import verifier_scope

    cfg = write_config(tmp_path)
    first = cli("run", cfg, "--quiet")
    assert "Failed to load" not in first.stderr  # torchao's import noise is silenced in the CLI
    run = tmp_path / "run"
    labels = ["ptq-int4", "qat-int8", "qad-int4", "qad-logit"]
    for label in labels:
        d = run / "quantize/s1" / label
        for f in ("model/model.safetensors", "model/config.json", "eval/metrics.json", "eval/completions.jsonl",
                  "summary.json"):
            assert (d / f).exists(), d / f
    summary = json.loads((run / "quantize/s1/ptq-int4/summary.json").read_text())
    assert summary["quantized_layers"] == 7 and "IntxUnpackedToInt8Tensor" in summary["format"]
    assert summary["quantized"]["weight_bytes"] < summary["reference"]["weight_bytes"]
    assert summary["quantized"]["tokens_per_s"] > 0 and summary["reference"]["tokens_per_s"] > 0
    qad = json.loads((run / "quantize/s1/qad-int4/summary.json").read_text())
    assert qad["finetune"]["steps"] == 2 and qad["teacher"] == "self"
    assert json.loads((run / "quantize/s1/qad-logit/summary.json").read_text())["teacher"] == "bundled:tiny-arith-teacher"

    # the converted model as plain transformers loads it gives the stage's numbers again
    model_dir = run / "quantize/s1/qad-int4/model"
    model = load_quantized(model_dir)
    assert is_quantized(model.model.layers[0].mlp.up_proj.weight)
    with verifier_scope(workers=1):
        again = evaluate_model(model, read_records(run / "problems/test.jsonl", Problem), arith, batch_size=8,
                               max_new_tokens=24, tokenizer=load_tokenizer(str(model_dir)))
    stage = json.loads((run / "quantize/s1/qad-int4/eval/metrics.json").read_text())
    assert again["accuracy"] == stage["accuracy"] and again["n"] == stage["n"] == 8

    report = json.loads((run / "report.json").read_text())
    variants = report["quantization"]["students"]["s1"]["variants"]
    assert list(variants) == labels and variants["ptq-int4"]["accuracy_ci"]["n"] == 8
    assert variants["qat-int8"]["delta_ci"]["n"] == 8 and "fp32" in report["quantization"]["note"]
    assert 'id="quantize-table"' in (run / "report.html").read_text()
    assert "## Quantized students" in (run / "report.md").read_text()

    # unchanged: every variant skips; one variant changed: it alone re-runs, the student is not retrained
    assert all(f"[skip] quantize:s1:{v}" in cli("quantize", run, "--quiet").stdout for v in labels)
    changed = cli("run", cfg, "students.0.quantize.0.bits=3", "--quiet").stdout
    assert "[skip] train:s1" in changed and "[run ] quantize:s1:ptq-int3" in changed
    assert "[skip] quantize:s1:qad-int4" in changed

    # a lost output re-runs the variant, and its fine-tune resumes from its last checkpoint (no new steps)
    (run / "quantize/s1/qat-int8/summary.json").unlink()
    rerun = cli("quantize", run, "--student", "s1", "--quiet").stdout
    assert "[run ] quantize:s1:qat-int8" in rerun and "[skip] quantize:s1:qad-int4" in rerun
    resumed = json.loads((run / "quantize/s1/qat-int8/train/summary.json").read_text())
    assert resumed["steps"] == 2 and resumed["micro_batches"] == 0


def test_quantize_without_a_section_says_so(tmp_path):
    cfg = write_config(tmp_path)
    data = yaml.safe_load(cfg.read_text())
    data["students"][0].pop("quantize")
    cfg.write_text(yaml.safe_dump(data))
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "reasondistill", "quantize", str(cfg), "--student", "s1"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2 and "student 's1' has no `quantize` section" in out.stderr
