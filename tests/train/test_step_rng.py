"""Dropout in training (train/step_rng.py): the masks are a function of (seed, step), so two runs of
the same config train the same weights whatever the global generator held, and a resumed run
matches an uninterrupted one. Without per-step seeding both fail (LoRA dropout draws from torch's
global generator).

Run: PYTHONPATH=src python -m pytest tests/train/test_step_rng.py -q
"""

import csv

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("peft")

from reasondistill.models import load_model  # noqa: E402
from reasondistill.train.config import TrainConfig  # noqa: E402
from reasondistill.train.lora import LoraConfig, apply_lora  # noqa: E402
from reasondistill.train.policy import train_policy  # noqa: E402
from reasondistill.train.policy_config import PolicyConfig, RewardValues  # noqa: E402
from reasondistill.train.sft import train_model  # noqa: E402
from reasondistill.train.step_rng import step_rng, step_seed  # noqa: E402
from tests.train.test_lora import Crash, crashing_at, dataset  # noqa: E402,F401  (dataset: the fixture)

DROPOUT = LoraConfig(r=4, alpha=8, dropout=0.3)


def _cfg():
    return TrainConfig(max_steps=6, epochs=None, batch_size=8, lr=1e-2, save_every=3, keep_checkpoints=5,
                       log_every=1, eval_every=3)


def _losses(run):
    with open(run / "metrics.csv") as fh:
        return [float(r["train_loss"]) for r in csv.DictReader(fh) if r["train_loss"]]


def _weights(run):
    return load_file(run / "final/model.safetensors")


def test_step_rng_restores_the_global_generator_and_differs_by_step():
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    with step_rng(0, 1):
        a = torch.rand(4)
    with step_rng(0, 1):
        assert torch.equal(torch.rand(4), a)
    with step_rng(0, 2):
        assert not torch.equal(torch.rand(4), a)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert len({step_seed(0, s, r) for s in range(50) for r in range(2)} | {step_seed(1, 0)}) == 101


def test_lora_dropout_sft_is_reproducible_and_resumes_exactly(dataset, char_tokenizer, tiny_model_dir, tmp_path):
    args = (char_tokenizer, dataset / "train.safetensors", dataset / "val.safetensors")

    def run(out, **kw):
        return train_model(apply_lora(load_model(str(tiny_model_dir)), DROPOUT, seed=0), *args, out, _cfg(),
                           seed=0, show_progress=False, **kw)
    torch.manual_seed(1)
    run(tmp_path / "a")
    torch.manual_seed(2)  # a different global generator: must not matter
    run(tmp_path / "b")
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    with pytest.raises(Crash):
        run(tmp_path / "c", objective=crashing_at(5))  # dies in step 5, after the step-3 checkpoint
    torch.manual_seed(3)
    run(tmp_path / "c")
    assert _losses(tmp_path / "c") == pytest.approx(_losses(tmp_path / "a"), rel=1e-6)
    wc = _weights(tmp_path / "c")
    assert all(torch.allclose(wa[k], wc[k], atol=1e-6) for k in wa)
    # and the dropout acts: without it the run trains differently
    off = train_model(apply_lora(load_model(str(tiny_model_dir)), LoraConfig(r=4, alpha=8), seed=0), *args,
                      tmp_path / "d", _cfg(), seed=0, show_progress=False)
    assert off and _losses(tmp_path / "d") != _losses(tmp_path / "a")


def test_lora_dropout_grpo_is_reproducible(arith, char_tokenizer, tiny_model_dir, tmp_path):
    cfg = PolicyConfig(objective="grpo", steps=3, prompts_per_step=2, group_size=4, max_new_tokens=10, micro_batch=4,
                       lr=1e-2, rewards=RewardValues(truncated=-1.0, unparseable=0.5, wrong=0.5))
    problems = arith.problems("train", 8, seed=3)
    for name, seed in (("a", 1), ("b", 2)):
        torch.manual_seed(seed)
        train_policy(apply_lora(load_model(str(tiny_model_dir)), DROPOUT, seed=0), char_tokenizer, problems, arith,
                     cfg, tmp_path / name, seed=0, show_progress=False)
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
