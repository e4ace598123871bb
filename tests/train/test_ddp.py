"""Two DDP processes (torchrun, gloo on CPU) at batch B each train exactly like one process at 2B.

The data is chosen so that the last global batch of an epoch holds a single example: one rank
then has nothing to train on at that step (``order[b][rank::world]`` is empty) and must still
take part in the gradient all-reduce, and the token counts differ between ranks at every step
(length grouping), which the global answer-token normalisation must absorb. Validation has an odd
number of examples, so the ranks evaluate unequal shares.

The second test runs the documented CLI command (`torchrun ... -m reasondistill train RUN_DIR`),
where every rank runs the whole CLI and only rank 0 may keep the run directory's books.

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/train/test_ddp.py -q   (about 45 s)
"""

import csv
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reasondistill.data.build import Example, build_dataset

WORKER = Path(__file__).with_name("ddp_worker.py")
TORCHRUN = shutil.which("torchrun") or (str(Path(sys.executable).with_name("torchrun"))
                                        if Path(sys.executable).with_name("torchrun").exists() else None)
pytestmark = pytest.mark.skipif(
    TORCHRUN is None or not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torchrun and torch.distributed with the gloo backend")


def _run(cmd, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2] / "src"),
                                           os.environ.get("PYTHONPATH", "")]))
    # own session: on a timeout the whole group (torchrun and its ranks) is killed, no rank is left
    # waiting for ever in a collective
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:  # a rank waiting in a collective the other never joins
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"timed out (DDP hang?): {cmd}\n{stderr[-5000:]}") from None
    assert proc.returncode == 0, f"{cmd}\n{stdout[-3000:]}\n{stderr[-5000:]}"
    return stdout


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def data(tmp_path_factory, arith, char_tokenizer):
    d = tmp_path_factory.mktemp("ddp-data")
    problems = arith.problems("train", 50, seed=0)
    ex = [Example(p.id, p.prompt, p.solution + "\n" + p.answer * (i % 7)) for i, p in enumerate(problems)]
    build_dataset(ex[:41], char_tokenizer, d / "train", max_length=512, val_fraction=0.0, seed=0)  # 41 = 5*8 + 1
    build_dataset(ex[41:], char_tokenizer, d / "val", max_length=512, val_fraction=0.0, seed=0)   # 9
    (d / "train/train.safetensors").rename(d / "train.safetensors")
    (d / "val/train.safetensors").rename(d / "val.safetensors")
    return d


def test_two_processes_at_b_equal_one_process_at_2b(data, tmp_path):
    from safetensors.torch import load_file

    steps = "8"  # 6 batches per epoch: the run crosses into the second epoch
    _run([TORCHRUN, "--standalone", "--nproc_per_node", "2", str(WORKER), str(data), str(tmp_path / "ddp"),
          "--batch-size", "4", "--steps", steps], tmp_path)
    _run([sys.executable, str(WORKER), str(data), str(tmp_path / "one"), "--batch-size", "8", "--steps", steps],
         tmp_path)
    ddp, one = _rows(tmp_path / "ddp/metrics.csv"), _rows(tmp_path / "one/metrics.csv")
    assert [r["step"] for r in ddp] == [r["step"] for r in one]
    assert sum(bool(r["train_loss"]) for r in one) == 8 and sum(bool(r["val_loss"]) for r in one) == 3
    for rd, ro in zip(ddp, one):
        for key in ("train_loss", "val_loss", "lr", "target_tokens"):
            if ro[key]:
                assert float(rd[key]) == pytest.approx(float(ro[key]), rel=1e-5, abs=1e-6), (ro["step"], key)
    wd, wo = load_file(tmp_path / "ddp/final/model.safetensors"), load_file(tmp_path / "one/final/model.safetensors")
    assert wd.keys() == wo.keys()
    for k in wo:
        assert torch.allclose(wd[k], wo[k], atol=1e-5, rtol=1e-4), (k, (wd[k] - wo[k]).abs().max().item())
    start = load_file(tmp_path / "one/final/model.safetensors")  # and training did move the weights
    from conftest import TINY
    from reasondistill.models import build_char_tokenizer, init_model

    init = init_model(TINY, build_char_tokenizer(), seed=0).state_dict()
    assert any(not torch.allclose(start[k], init[k]) for k in start)


def test_documented_torchrun_command_trains_a_run_directory(tmp_path, tiny_model_dir):
    """docs/scaling.md: `torchrun --nproc_per_node N -m reasondistill train RUN_DIR` after the earlier stages.

    Every rank runs the whole CLI; only rank 0 may write the run directory's books (config.yaml,
    manifest, .stages/, progress.json, moving a stale run aside), else the ranks collide on the
    same files. Two ranks at batch 4 must train like one process at batch 8 on a copy of the run.
    """
    import json

    from safetensors.torch import load_file

    run, one = built_run(tmp_path, tiny_model_dir, layers=1, max_steps=5)
    (run / "train/s").mkdir(parents=True)
    (run / "train/s/progress.json").write_text('{"fingerprint": "an-older-config"}')  # a stale run to move aside

    out = _run([TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "reasondistill", "train", str(run),
                "--quiet"], tmp_path)
    assert out.count("[run ] train:s") == 1  # the stage lines come from rank 0 only
    _run([sys.executable, "-m", "reasondistill", "train", str(one), "students.0.train.batch_size=8", "--quiet"],
         tmp_path)
    summary = json.loads((run / "train/s/summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 5
    assert json.loads((one / "train/s/summary.json").read_text())["processes"] == 1
    ddp, single = _rows(run / "train/s/metrics.csv"), _rows(one / "train/s/metrics.csv")
    assert [r["step"] for r in ddp] == [r["step"] for r in single]
    assert sum(bool(r["train_loss"]) for r in single) == 5 and sum(bool(r["val_loss"]) for r in single) == 3
    for rd, ro in zip(ddp, single):
        for key in ("train_loss", "val_loss", "lr", "target_tokens"):
            if ro[key]:
                assert float(rd[key]) == pytest.approx(float(ro[key]), rel=1e-5, abs=1e-6), (ro["step"], key)
    wd, wo = load_file(run / "train/s/final/model.safetensors"), load_file(one / "train/s/final/model.safetensors")
    for k in wo:
        assert torch.allclose(wd[k], wo[k], atol=1e-5, rtol=1e-4), k

    # the books: written once, complete, nothing left half-written, the stale run kept exactly once
    state = json.loads((run / ".stages/train--s.json").read_text())
    assert state["result"]["processes"] == 2 and state["outputs"]
    assert "train:s" in json.loads((run / "manifest.json").read_text())["stages"]
    assert json.loads((run / "train/s/progress.json").read_text())["fingerprint"] == state["fingerprint"]
    assert [p.name for p in (run / "train").iterdir() if "stale" in p.name] == ["s.stale-1"]
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]

    again = _run([TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "reasondistill", "train", str(run),
                  "--quiet"], tmp_path)
    assert again.count("[skip] train:s") == 1 and "[run ]" not in again  # both ranks follow rank 0's decision
    assert len([p for p in (run / "train").iterdir() if "stale" in p.name]) == 1
    # the fingerprint counts the global batch: one process at batch 8 is the same training (current); so
    # is the run's own config in one process (`run` after torchrun: the finished 2-process training is kept)
    assert "[skip] train:s" in _run([sys.executable, "-m", "reasondistill", "train", str(run), "--quiet"], tmp_path)
    assert "[skip] train:s" in _run([sys.executable, "-m", "reasondistill", "train", str(run),
                                     "students.0.train.batch_size=8", "--quiet"], tmp_path)
    # an unfinished 2-process training (no stage record yet) is not resumed by one process at batch 4,
    # half its global batch: it is set aside and this one starts over
    (run / ".stages/train--s.json").unlink()
    shutil.rmtree(run / "train/s/final")
    alone = _run([sys.executable, "-m", "reasondistill", "train", str(run), "students.0.train.batch_size=4", "--quiet"],
                 tmp_path)
    assert "[run ] train:s" in alone and "config changed: kept the previous output" in alone and "resuming" not in alone
    assert len([p for p in (run / "train").iterdir() if "stale" in p.name]) == 2


def built_run(tmp_path, teacher_dir, layers: int, max_steps: int) -> tuple[Path, Path]:
    """A run directory generated, curated and built for one tiny student ``s`` (``run/``), and a copy of
    it (``one/``) for the one-process comparison."""
    from reasondistill.config import RunConfig
    from reasondistill.pipeline import Pipeline

    cfg = {"run_dir": str(tmp_path / "run"), "seed": 0,
           "task": {"name": "chained_arith", "min_ops": 3, "max_ops": 4, "n_train": 40, "n_test": 10},
           "teacher": {"model": str(teacher_dir)},
           "generate": {"n": 1, "temperature": 1.0, "max_new_tokens": 8, "batch_size": 40},
           "curate": {"require_correct": False, "require_think": False},
           "build": {"max_length": 128, "val_fraction": 0.1},
           "students": [{"name": "s", "init": {"hidden_size": 16, "num_hidden_layers": layers,
                                               "num_attention_heads": 2, "intermediate_size": 32},
                         "train": {"max_steps": max_steps, "epochs": None, "batch_size": 4, "log_every": 1,
                                   "eval_every": 2, "save_every": 2, "threads": 1, "lr": 3e-3}}]}
    pipe = Pipeline(RunConfig.model_validate(cfg), log=lambda _m: None, show_progress=False)
    pipe.generate(), pipe.curate(), pipe.build()
    run, one = tmp_path / "run", tmp_path / "one"
    shutil.copytree(run, one)
    return run, one
