"""Students trained in parallel processes (train_workers) equal students trained one after another."""

import json
import shutil

from safetensors.torch import load_file

from reasondistill.config import load_config
from reasondistill.pipeline import Pipeline

from tests.test_pipeline import cli, write_config

STUDENT = {"init": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32},
           "train": {"max_steps": 4, "epochs": None, "batch_size": 8, "save_every": 2, "log_every": 1, "threads": 1}}


def _config(path, teacher, workers, names="abc"):
    students = [{"name": "a", **STUDENT}, {"name": "b", "seed": 7, **STUDENT},
                {"name": "c", "target": "answers_only", **STUDENT}]
    return write_config(path, teacher, students=[s for s in students if s["name"] in names], train_workers=workers)


def _prepare(cfg):
    """generate, curate and build in this process (the parallel part under test is training)."""
    pipe = Pipeline(load_config(cfg), log=lambda _msg: None, show_progress=False)
    pipe.generate()
    pipe.curate()
    pipe.build()


def test_parallel_students_match_sequential_and_keep_the_books(tmp_path, tiny_model_dir):
    cfg = _config(tmp_path / "c.yaml", tiny_model_dir, 1)
    _prepare(cfg)
    runs = {1: tmp_path / "run", 2: tmp_path / "run2"}
    shutil.copytree(runs[1], runs[2])
    cli("train", runs[1])
    out = cli("train", runs[2], "train_workers=2")
    assert "training in its own process" in out.stdout
    for name in "abc":
        seq = load_file(str(runs[1] / "train" / name / "final" / "model.safetensors"))
        par = load_file(str(runs[2] / "train" / name / "final" / "model.safetensors"))
        assert seq.keys() == par.keys() and all((seq[k] == par[k]).all() for k in seq), name
    manifest = json.loads((runs[2] / "manifest.json").read_text())
    assert {"train:a", "train:b", "train:c"} <= set(manifest["stages"])  # no lost update between processes
    again = cli("train", runs[2], "train_workers=2")
    assert all(f"[skip] train:{n}" in again.stdout for n in "abc")


def test_a_failing_student_is_reported_and_the_others_finish(tmp_path, tiny_model_dir):
    cfg = _config(tmp_path / "c.yaml", tiny_model_dir, 2, names="ab")
    _prepare(cfg)
    (tmp_path / "run/build/b/val.safetensors").write_bytes(b"not a safetensors file")
    out = cli("train", cfg, check=False)
    assert out.returncode != 0 and "training b failed" in out.stderr
    assert (tmp_path / "run/train/a/final/model.safetensors").exists()


def test_ctrl_c_lets_each_student_save_its_step_then_resume(tmp_path, tiny_model_dir):
    """Ctrl-C (SIGINT to the terminal's process group) during `train` with train_workers: each student
    ends its step and saves it (no save_every step lost), the parent waits for them, exit 130;
    `train` again resumes both from there, and their logs keep both sessions."""
    import os
    import signal
    import subprocess
    import sys
    import time

    long = {**STUDENT, "train": {**STUDENT["train"], "max_steps": 1000, "save_every": 10_000}}
    students = [{"name": "a", **long}, {"name": "b", "seed": 7, **long}]
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, students=students, train_workers=2)
    _prepare(cfg)
    run = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "reasondistill", "train", str(run), "--quiet"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 180
    rows = lambda n: (run / f"train/{n}/metrics.csv").read_text().count("\n") if (  # noqa: E731
        run / f"train/{n}/metrics.csv").exists() else 0
    while time.time() < deadline and min(rows("a"), rows("b")) < 4:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the parent and both students
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    steps = {n: [int(p.name.split("-")[1]) for p in (run / f"train/{n}/checkpoints").iterdir()] for n in "ab"}
    assert all(len(s) == 1 and 3 <= s[0] < 1000 for s in steps.values()), (steps, out)
    assert not (run / "train/a/final").exists()
    again = cli("train", run, timeout=900)  # resumes both to the end
    for n in "ab":
        log = (run / f"train/{n}.log").read_text()
        assert f"resuming from step-{steps[n][0]}" in log and (run / f"train/{n}/final/model.safetensors").exists()
    assert "training in its own process" in again.stdout
