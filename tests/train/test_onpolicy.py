"""On-policy distillation (train/onpolicy.py): λ = 0 is off-policy, seeded draws, student samples."""

import copy
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from reasondistill.config import DistillConfig
from reasondistill.data.build import build_dataset, make_examples
from reasondistill.data.dataset import IGNORE_INDEX, TokenizedDataset, collate
from reasondistill.models import init_model
from reasondistill.records import Trace
from reasondistill.train.config import TrainConfig
from reasondistill.train.kd import OnlineKD, make_loss
from reasondistill.train.onpolicy import OnPolicyKD
from reasondistill.train.sft import train_model

from conftest import TINY


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, arith, char_tokenizer):
    d = tmp_path_factory.mktemp("onpolicy-data")
    problems = arith.problems("train", 24, seed=2)
    traces = [Trace(p.id, 0, p.solution, p.answer, "", 0, 0, "stop", "solver") for p in problems]
    build_dataset(make_examples({p.id: p for p in problems}, traces, "traces"), char_tokenizer, d,
                  max_length=512, val_fraction=0.1, seed=0)
    return d


@pytest.fixture(scope="module")
def models(char_tokenizer):
    return init_model(TINY, char_tokenizer, seed=0), init_model(TINY | {"hidden_size": 48}, char_tokenizer, seed=1)


@pytest.fixture(scope="module")
def batch(dataset, char_tokenizer):
    return collate(TokenizedDataset(dataset / "train.safetensors"), [0, 3, 4], char_tokenizer.pad_token_id)


def _kd(teacher, **kw):
    return OnlineKD(teacher, make_loss(DistillConfig(source="on_policy", **kw)))


def test_lambda_zero_is_off_policy(models, batch, char_tokenizer):
    student, teacher = models
    kd = _kd(teacher, divergence="reverse_kl")
    obj = OnPolicyKD(kd, char_tokenizer, lambda_on_policy=0.0, seed=0)
    student.train()
    for _ in range(3):
        assert obj(student, batch).item() == pytest.approx(kd(student, batch).item(), rel=1e-6)
        assert not obj.last_on_policy
    assert int(obj.calls) == 3


def test_lambda_draws_are_seeded_and_ignore_the_global_rng(char_tokenizer):
    def draws(seed):
        obj = OnPolicyKD(lambda m, b: None, char_tokenizer, lambda_on_policy=0.5, seed=seed)
        return [obj.on_policy(s) for s in range(400)]
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    a = draws(0)
    torch.manual_seed(2), random.seed(2), np.random.seed(2)
    state = np.random.get_state()
    b = draws(0)
    assert a == b and np.random.get_state()[1].tolist() == state[1].tolist()  # global RNG neither read nor moved
    assert a != draws(1)
    assert 0.42 < np.mean(a) < 0.58
    assert not any(OnPolicyKD(None, char_tokenizer, 0.0, 0).on_policy(s) for s in range(50))
    assert all(OnPolicyKD(None, char_tokenizer, 1.0, 0).on_policy(s) for s in range(50))


def test_lambda_one_trains_on_the_students_own_samples(models, batch, char_tokenizer):
    student, teacher = models
    student = copy.deepcopy(student).train()
    obj = OnPolicyKD(_kd(teacher), char_tokenizer, lambda_on_policy=1.0, seed=0, temperature=1.0)
    sampled = obj.student_batch(student, batch, step=0)
    assert student.training  # back in train mode after generating
    assert torch.equal(sampled["input_ids"], obj.student_batch(student, batch, step=0)["input_ids"])  # seeded
    assert not torch.equal(sampled["input_ids"], obj.student_batch(student, batch, step=1)["input_ids"])
    eos = char_tokenizer.eos_token_id
    answers = (batch["labels"] != IGNORE_INDEX).sum(1)
    for r in range(batch["input_ids"].shape[0]):
        plen = int((batch["labels"][r] != IGNORE_INDEX).nonzero()[0])
        n = int(sampled["attention_mask"][r].sum())
        assert torch.equal(sampled["input_ids"][r, :plen], batch["input_ids"][r, :plen])  # same prompt
        assert (sampled["labels"][r, :plen] == IGNORE_INDEX).all()  # prompt masked
        assert torch.equal(sampled["labels"][r, plen:n], sampled["input_ids"][r, plen:n])  # labels = samples
        assert (sampled["labels"][r, n:] == IGNORE_INDEX).all()
        toks = sampled["input_ids"][r, plen:n].tolist()
        assert eos not in toks[:-1] and 1 <= len(toks) <= int(answers.max())  # up to the longest answer
    loss = obj(student, batch)
    assert obj.last_on_policy and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in student.parameters())
    student.eval()
    obj(student, batch)
    assert not obj.last_on_policy and int(obj.calls) == 1  # validation never samples


def test_on_policy_through_the_loop_saves_its_counter(models, dataset, char_tokenizer, tmp_path):
    student, teacher = models
    obj = OnPolicyKD(_kd(teacher), char_tokenizer, lambda_on_policy=0.5, seed=0)
    cfg = TrainConfig(max_steps=3, epochs=None, batch_size=4, grad_accum=2, save_every=3, log_every=1, eval_every=3)
    summary = train_model(copy.deepcopy(student), char_tokenizer, dataset / "train.safetensors",
                          dataset / "val.safetensors", tmp_path, cfg, seed=0, objective=obj, show_progress=False)
    assert summary["steps"] == 3 and np.isfinite(summary["final_val_loss"])
    assert int(load_file(tmp_path / "checkpoints/step-3/objective.safetensors")["calls"]) == 6


def test_loss_composition_divergence_alone_on_own_samples_ce_only_on_teacher_traces(models, batch, char_tokenizer):
    """The pin of the composition: α·T²·div + (1−α)·CE on teacher-written traces, T²·div alone on
    the student's own samples (CE there would be self-imitation). Computed by hand from logits."""
    import torch.nn.functional as F

    student, teacher = models
    student = copy.deepcopy(student).train()
    t, alpha = 2.0, 0.3
    kd = _kd(teacher, divergence="reverse_kl", alpha=alpha, temperature=t)

    def by_hand(b, with_ce):
        with torch.no_grad():
            s = student(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
            tl = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
        y = b["labels"][:, 1:]
        keep = y != IGNORE_INDEX
        logq, logp = F.log_softmax(s[keep] / t, -1), F.log_softmax(tl[keep] / t, -1)
        rkl = (logq.exp() * (logq - logp)).sum(-1).sum()
        ce = F.cross_entropy(s[keep], y[keep], reduction="sum")
        return (alpha * t * t * rkl + (1 - alpha) * ce) if with_ce else t * t * rkl

    off = OnPolicyKD(kd, char_tokenizer, lambda_on_policy=0.0, seed=0)
    with torch.no_grad():
        assert off(student, batch).item() == pytest.approx(by_hand(batch, True).item(), rel=1e-4)
    on = OnPolicyKD(kd, char_tokenizer, lambda_on_policy=1.0, seed=0)
    sampled = on.student_batch(student, batch, step=0)
    n_orig = int((batch["labels"] != IGNORE_INDEX).sum())
    n_new = int((sampled["labels"] != IGNORE_INDEX).sum())
    with torch.no_grad():
        got = on(student, batch).item()
    assert on.last_on_policy
    want = by_hand(sampled, False).item() * n_orig / n_new
    assert got == pytest.approx(want, rel=1e-4)
    assert got != pytest.approx(by_hand(sampled, True).item() * n_orig / n_new, rel=1e-3)  # no CE mixed in
