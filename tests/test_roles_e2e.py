"""End to end with the roles a real set-up has: an API teacher writes the traces, a local logit
teacher gives the soft targets, the trained students are evaluated through servers.

- teacher: `reasondistill serve bundled:tiny-arith-teacher` (the CLI, a separate process on
  127.0.0.1) behind `teacher.kind: openai`: generate samples it, evaluate scores it through the API;
- logit_teacher: the same bundled model loaded locally: online soft distillation of student `kd`
  (a LoRA student: adapters on a small pretrained model, merged into `final/`), and top-8 log-probs
  captured for student `topk` (offline_topk, a tiny fresh Llama);
- the students: after training each `final/` is served by `reasondistill serve`
  (one server each: `evaluate.openai.urls`) and evaluated with `evaluate.backend: openai`, the
  router included (it counts the API teacher's calls and tokens);
- report.json shows the teacher and the students, each with a 95% CI.

Sizes are tiny (24 training problems, 12 test problems, one epoch): ~25 s of CPU here.
Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_roles_e2e.py -q
"""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

pytest.importorskip("httpx2")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def teacher_server():
    """`reasondistill serve bundled:tiny-arith-teacher --port 0` as a user runs it; yields its URL."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "reasondistill.cli", "serve", "bundled:tiny-arith-teacher",
                             "--port", "0", "--threads", "1", "--served-model-name", "tiny-teacher"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        line = proc.stdout.readline()  # "serving tiny-teacher at http://127.0.0.1:PORT/v1"
        assert line.startswith("serving tiny-teacher at http://127.0.0.1:"), line
        yield line.split(" at ")[1].strip()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 256}
TRAIN = {"epochs": 1, "batch_size": 8, "lr": 3e-3, "threads": 1, "log_every": 1, "eval_every": 2, "save_every": 100}


def config(tmp_path: Path, teacher_url: str, base_model: Path) -> Path:
    cfg = {
        "run_dir": str(tmp_path / "run"),
        "seed": 0,
        "task": {"name": "chained_arith", "min_ops": 2, "max_ops": 3, "n_train": 24, "n_test": 12},
        "teacher": {"kind": "openai", "base_url": teacher_url, "model": "tiny-teacher", "concurrency": 4,
                    "timeout_s": 120, "name": "served-teacher"},
        "logit_teacher": {"model": "bundled:tiny-arith-teacher"},
        "generate": {"n": 1, "temperature": 0.7, "max_new_tokens": 96},
        "curate": {"decontaminate": None},
        "build": {"max_length": 160, "val_fraction": 0.1},
        "students": [{"name": "kd", "model": str(base_model), "lora": {"r": 4, "alpha": 8}, "train": TRAIN,
                      "distill": {"source": "online", "alpha": 0.5, "chunk_size": None}},
                     {"name": "topk", "init": TINY, "train": TRAIN,  # top-8 captured from the logit teacher
                      "distill": {"source": "offline_topk", "top_k": 8, "alpha": 0.5, "chunk_size": None}}],
        "evaluate": {"backend": "openai", "openai": {"base_url": "http://127.0.0.1:9/v1", "concurrency": 4},
                     "batch_size": 16, "max_new_tokens": 48, "router": {"k": 2, "thresholds": [0.0, 1.0]},
                     "budgets": [8]},  # budget forcing needs the logits: skipped for served models, with a line
        "verify": {"workers": 1},
    }
    path = tmp_path / "roles.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_api_teacher_logit_teacher_served_student(tmp_path, teacher_server, tiny_model_dir):
    from reasondistill.config import load_config
    from reasondistill.pipeline import Pipeline
    from reasondistill.records import Trace, read_records
    from reasondistill.serve import make_server

    path = config(tmp_path, teacher_server, tiny_model_dir)
    logs: list[str] = []
    pipe = Pipeline(load_config(path), log=logs.append, show_progress=False)
    pipe.generate()
    traces = read_records(pipe.rd.traces, Trace)
    assert len(traces) == 24 and {t.teacher for t in traces} == {"served-teacher"}  # written through the API
    assert all(t.usage.get("completion_tokens") for t in traces)
    pipe.curate()
    pipe.build()
    pipe.train()
    for name in ("kd", "topk"):
        trained = pipe.rd.stage_state(f"train:{name}")
        assert trained["config"]["logit_teacher"]["model"] == "bundled:tiny-arith-teacher"  # in its fingerprint
        assert json.loads(pipe.rd.train(name).summary.read_text())["steps"] >= 2
        assert (pipe.rd.train(name).final / "model.safetensors").exists()
    lora = json.loads(pipe.rd.train("kd").summary.read_text())  # adapters trained, merged on export
    assert 0 < lora["trainable_params"] < lora["params"]
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(pipe.rd.train("kd").final)  # plain transformers, no peft
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    assert pipe.rd.stage_state("capture:topk")["config"]["teacher"] == "bundled:tiny-arith-teacher"

    servers = {}  # what `reasondistill serve train/NAME/final --served-model-name NAME` runs, one per student
    for name in ("kd", "topk"):
        servers[name] = make_server(str(pipe.rd.train(name).final), model_name=name)
        threading.Thread(target=servers[name].serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        pipe = Pipeline(load_config(path, [f"evaluate.openai.base_url={servers['kd'].url}",
                                           f"evaluate.openai.urls={{topk: '{servers['topk'].url}'}}"]),
                        log=logs.append, show_progress=False)
        pipe.evaluate()
        pipe.report()
    finally:
        for srv in servers.values():
            srv.shutdown()
            srv.server_close()
    # every test problem went to each served student: greedy, then k=2 samples each for the router
    assert servers["kd"].stats["chat_requests"] == servers["topk"].stats["chat_requests"] == 12 + 2 * 12
    student = servers["kd"]

    report = json.loads(pipe.rd.report_json.read_text())
    assert set(report["models"]) == {"teacher", "kd", "topk"}
    for name in ("teacher", "kd", "topk"):
        ci = report["evaluation"][name]["accuracy_ci"]
        assert ci["n"] == 12 and ci["ci_low"] <= ci["value"] <= ci["ci_high"]
        metrics = json.loads(pipe.rd.eval(name).metrics.read_text())
        assert metrics["backend"]["backend"] == "openai" and metrics["api_usage"]["requests"] == 12
    assert report["models"]["teacher"]["accuracy"] >= 0.5  # the bundled teacher, scored through its API
    assert "teacher" in pipe.rd.report_md.read_text() and "kd" in pipe.rd.report_md.read_text()
    assert f"({lora['trainable_params']:,} trainable)" in pipe.rd.report_md.read_text()
    assert pipe.rd.stage_state("evaluate:kd")["config"]["url"] == student.url
    # the router works with the API teacher and counts what routing to it costs
    from reasondistill.evaluate.sampled import vote_table
    from reasondistill.records import Problem

    router = json.loads(pipe.rd.eval("kd").router.read_text())
    samples = [json.loads(x) for x in pipe.rd.eval("kd").router_samples.open()]
    problems = read_records(pipe.rd.test_problems, Problem)
    with pipe._verifying():
        routed = {pid for pid, v in vote_table(samples, problems, pipe.task, 2).items() if v["share"] < 1.0}
    teacher_rows = [json.loads(x) for x in pipe.rd.eval("teacher").completions.open()]
    point = next(p for p in router["points"] if p["threshold"] == 1.0)  # non-unanimous votes go to the teacher
    assert point["teacher_calls"] == len(routed)
    assert point["teacher_prompt_tokens"] == sum(r["prompt_tokens"] for r in teacher_rows if r["problem_id"] in routed)
    assert point["teacher_completion_tokens"] == sum(r["completion_tokens"] for r in teacher_rows
                                                     if r["problem_id"] in routed)
    assert all(r["prompt_tokens"] > 0 for r in teacher_rows)  # the API's usage, recorded per row
    assert next(p for p in router["points"] if p["threshold"] == 0.0)["teacher_prompt_tokens"] == 0
    assert set(pipe.route()) == {"kd", "topk"}
    for name in ("teacher", "kd", "topk"):
        assert any(line.startswith(f"[skip] budget:{name}: thinking budgets force </think> through the logits")
                   for line in logs)
        assert not pipe.rd.eval(name).budget.exists()  # `reasondistill route` works with the API teacher (up to date here)
