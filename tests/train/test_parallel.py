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
