"""FSDP2 on CPU, really launched: 2 torchrun processes (gloo) with ``train.sharding: fsdp`` train the
loss curve of one process at twice the batch, write mid-run checkpoints in the one-process format,
and resume from one (into a differently initialised model, so everything must come from the
checkpoint) with the same curve; a sharded checkpoint also resumes in one process.

Run: OMP_NUM_THREADS=1 PYTHONPATH=src python -m pytest tests/train/test_fsdp.py -q
"""

import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.train.test_ddp import TORCHRUN, WORKER, _rows, _run, built_run, data  # noqa: F401  (data: the fixture)

pytestmark = pytest.mark.skipif(
    TORCHRUN is None or not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torchrun and torch.distributed with the gloo backend")

STEPS = "7"  # 6 batches of 8 per epoch, 3 steps of 2: the run crosses into the third epoch


def _same_curve(a, b):
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("train_loss", "val_loss", "lr", "target_tokens"):
            if ra[key]:
                assert float(rb[key]) == pytest.approx(float(ra[key]), rel=1e-5, abs=1e-6), (ra["step"], key)


def _same_weights(a, b):
    wa, wb = load_file(a), load_file(b)
    for k in wa.keys() & wb.keys():
        assert torch.allclose(wa[k], wb[k], atol=1e-5, rtol=1e-4), (k, (wa[k] - wb[k]).abs().max().item())
    assert wa.keys() - wb.keys() <= {"lm_head.weight"} and wb.keys() - wa.keys() <= {"lm_head.weight"}  # tied


def _from_step_3(run, out):
    """A copy of ``run`` as a crash after step 3's checkpoint would have left it."""
    shutil.copytree(run, out)
    for p in ("checkpoints/step-6", "checkpoints/step-7", "final"):
        shutil.rmtree(out / p)
    (out / "summary.json").unlink()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-3"]
    return out


def test_fsdp_two_processes_checkpoint_and_resume_like_one_process(data, tmp_path):  # noqa: F811
    import json

    one, fsdp = tmp_path / "one", tmp_path / "fsdp"
    # grad_accum 2: at each epoch's end one process has one micro-batch and the other two, and the
    # sharded forwards (collectives) must still pair up
    common = ["--steps", STEPS, "--save-every", "3", "--grad-accum", "2"]
    _run([sys.executable, str(WORKER), str(data), str(one), "--batch-size", "8", *common], tmp_path)
    _run([TORCHRUN, "--standalone", "--nproc_per_node", "2", str(WORKER), str(data), str(fsdp), "--batch-size", "4",
          "--sharding", "fsdp", *common], tmp_path)
    reference = _rows(one / "metrics.csv")
    assert sum(bool(r["train_loss"]) for r in reference) == 7 and sum(bool(r["val_loss"]) for r in reference) == 3
    _same_curve(reference, _rows(fsdp / "metrics.csv"))
    summary = json.loads((fsdp / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["params"] == json.loads((one / "summary.json").read_text())["params"]
    _same_weights(one / "final/model.safetensors", fsdp / "final/model.safetensors")
    assert json.loads((fsdp / "final/config.json").read_text())["architectures"] == ["LlamaForCausalLM"]

    # mid-run checkpoints, gathered into the one-process format
    for step in (3, 6):
        a, b = one / f"checkpoints/step-{step}", fsdp / f"checkpoints/step-{step}"
        _same_weights(a / "model.safetensors", b / "model.safetensors")
        oa, ob = load_file(a / "optimizer.safetensors"), load_file(b / "optimizer.safetensors")
        assert oa.keys() == ob.keys()
        assert all(torch.allclose(oa[k], ob[k], atol=1e-6, rtol=1e-4) for k in oa)
        assert json.loads((a / "optimizer.json").read_text())["param_groups"] == \
            json.loads((b / "optimizer.json").read_text())["param_groups"]

    # resume the sharded run from step 3, into a model initialised from another seed
    resumed = _from_step_3(fsdp, tmp_path / "resumed")
    _run([TORCHRUN, "--standalone", "--nproc_per_node", "2", str(WORKER), str(data), str(resumed), "--batch-size",
          "4", "--sharding", "fsdp", "--resume", "--init-seed", "99", *common], tmp_path)
    _same_curve(reference, _rows(resumed / "metrics.csv"))
    _same_weights(one / "final/model.safetensors", resumed / "final/model.safetensors")
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["step-3", "step-6", "step-7"]

    # and the sharded checkpoint resumes in one process
    single = _from_step_3(fsdp, tmp_path / "single")
    _run([sys.executable, str(WORKER), str(data), str(single), "--batch-size", "8", "--resume", "--init-seed", "99",
          *common], tmp_path)
    _same_curve(reference, _rows(single / "metrics.csv"))


def test_fsdp_refuses_what_it_cannot_shard(tiny_model_dir, char_tokenizer):
    pytest.importorskip("peft")
    from reasondistill.models import load_model
    from reasondistill.train.fsdp import refuse
    from reasondistill.train.kd import OnlineKD, make_loss
    from reasondistill.train.lora import LoraConfig, apply_lora
    from reasondistill.train.onpolicy import OnPolicyKD
    from reasondistill.train.sft import cross_entropy_sum
    from reasondistill.config import DistillConfig

    model = load_model(str(tiny_model_dir))
    refuse(model, cross_entropy_sum)  # plain students are fine
    with pytest.raises(ValueError, match="fsdp with lora"):
        refuse(apply_lora(load_model(str(tiny_model_dir)), LoraConfig(r=2), seed=0), cross_entropy_sum)
    on_policy = OnPolicyKD(OnlineKD(load_model(str(tiny_model_dir)), make_loss(DistillConfig())), char_tokenizer,
                           lambda_on_policy=0.5, seed=0)
    with pytest.raises(ValueError, match="on_policy"):
        refuse(model, on_policy)


def test_documented_fsdp_command_trains_a_run_directory(tmp_path, tiny_model_dir):
    """docs/scaling.md: `torchrun --nproc_per_node N -m reasondistill train RUN students.0.train.sharding=fsdp`;
    the student's fingerprint leaves sharding out, so a later one-process `train` finds it current."""
    import json

    run, one = built_run(tmp_path, tiny_model_dir, layers=2, max_steps=4)
    out = _run([TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "reasondistill", "train", str(run),
                "students.0.train.sharding=fsdp", "--quiet"], tmp_path)
    assert out.count("[run ] train:s") == 1
    _run([sys.executable, "-m", "reasondistill", "train", str(one), "students.0.train.batch_size=8", "--quiet"],
         tmp_path)
    assert json.loads((run / "train/s/summary.json").read_text())["processes"] == 2
    _same_curve(_rows(one / "train/s/metrics.csv"), _rows(run / "train/s/metrics.csv"))
    _same_weights(one / "train/s/final/model.safetensors", run / "train/s/final/model.safetensors")
    assert sorted(p.name for p in (run / "train/s/checkpoints").iterdir()) == ["step-2", "step-4"]
    again = _run([sys.executable, "-m", "reasondistill", "train", str(run), "students.0.train.sharding=none",
                  "--quiet"], tmp_path)
    assert "[skip] train:s" in again
