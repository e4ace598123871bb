"""Soft-distillation objectives (train/kd.py, train/features.py) with tiny real models."""

import copy

import pytest
import torch
from safetensors.torch import load_file

from reasondistill.config import DistillConfig
from reasondistill.data.build import build_dataset, make_examples
from reasondistill.data.dataset import TokenizedDataset, collate
from reasondistill.data.topk import TopKReader, capture_topk
from reasondistill.models import build_char_tokenizer, init_model
from reasondistill.records import Trace
from reasondistill.train.config import TrainConfig
from reasondistill.train.features import FeatureKD
from reasondistill.train.kd import DIVERGENCES, OfflineTopKKD, OnlineKD, make_loss, shared_vocab_size
from reasondistill.train.sft import cross_entropy_sum, train_model

from conftest import TINY

TEACHER = TINY | {"hidden_size": 48, "num_hidden_layers": 2}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, arith, char_tokenizer):
    d = tmp_path_factory.mktemp("kd-data")
    problems = arith.problems("train", 40, seed=0)
    traces = [Trace(p.id, 0, p.solution, p.answer, "", 0, 0, "stop", "solver") for p in problems]
    build_dataset(make_examples({p.id: p for p in problems}, traces, "traces"), char_tokenizer, d,
                  max_length=512, val_fraction=0.1, seed=0)
    return d


@pytest.fixture(scope="module")
def batch(dataset, char_tokenizer):
    return collate(TokenizedDataset(dataset / "train.safetensors"), [0, 5, 9], char_tokenizer.pad_token_id)


def _ce(model, batch):
    with torch.no_grad():
        return cross_entropy_sum(model, batch).item()


@pytest.mark.parametrize("divergence", sorted(DIVERGENCES))
def test_teacher_equal_to_student_gives_zero_divergence(divergence, char_tokenizer, batch):
    student = init_model(TINY, char_tokenizer, seed=0)
    cfg = DistillConfig(divergence=divergence, alpha=1.0, temperature=2.0)
    kd = OnlineKD(copy.deepcopy(student), make_loss(cfg), char_tokenizer, char_tokenizer)
    loss = kd(student, batch)
    assert abs(loss.item()) < 1e-3
    half = OnlineKD(copy.deepcopy(student), make_loss(DistillConfig(divergence=divergence, alpha=0.5)))
    assert half(student, batch).item() == pytest.approx(0.5 * _ce(student, batch), rel=1e-4)  # only the CE part


def test_teacher_is_frozen_and_gradients_reach_the_student(char_tokenizer, batch):
    student = init_model(TINY, char_tokenizer, seed=0)
    teacher = init_model(TEACHER, char_tokenizer, seed=1)
    kd = OnlineKD(teacher, make_loss(DistillConfig()))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    loss = kd(student, batch)
    assert loss.item() > 0
    loss.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_vocabulary_padding_rows_are_sliced(char_tokenizer, batch):
    student = init_model(TINY, char_tokenizer, seed=0)
    teacher = copy.deepcopy(student)
    teacher.resize_token_embeddings(len(char_tokenizer) + 27, mean_resizing=False)  # e.g. rounded up to 132
    with torch.no_grad():
        teacher.get_input_embeddings().weight[len(char_tokenizer):].normal_(0, 5.0)  # loud padding rows
    assert teacher(input_ids=batch["input_ids"], use_cache=False).logits.shape[-1] == len(char_tokenizer) + 27
    assert shared_vocab_size(student, teacher, char_tokenizer) == len(char_tokenizer)
    kd = OnlineKD(teacher, make_loss(DistillConfig(alpha=1.0)), char_tokenizer, char_tokenizer)
    assert abs(kd(student, batch).item()) < 1e-3  # same model on the real tokens: nothing to learn
    small = copy.deepcopy(student)
    small.resize_token_embeddings(len(char_tokenizer) - 5)
    with pytest.raises(ValueError, match="output rows"):
        shared_vocab_size(small, teacher, char_tokenizer)


def test_a_different_tokenizer_is_refused_before_training(char_tokenizer):
    other = build_char_tokenizer()
    other.add_tokens(["<tool>"])
    teacher = init_model(TEACHER, other, seed=1)
    with pytest.raises(ValueError, match="needs the teacher's tokenizer.*hard distillation.*still works") as err:
        OnlineKD(teacher, make_loss(DistillConfig()), char_tokenizer, other)
    assert "1 only in the teacher" in str(err.value)


def test_offline_topk_with_k_equal_to_vocab_matches_online(dataset, char_tokenizer, batch, tmp_path):
    student = init_model(TINY, char_tokenizer, seed=0)
    teacher = init_model(TEACHER, char_tokenizer, seed=1)
    v = len(char_tokenizer)
    cfg = DistillConfig(source="offline_topk", top_k=v, divergence="jsd", beta=0.3, temperature=1.5, alpha=0.7,
                        chunk_size=8)
    splits = {"train": dataset / "train.safetensors", "val": dataset / "val.safetensors"}
    capture_topk(teacher, splits, tmp_path, k=v, temperature=1.5, vocab_size=v, pad_id=char_tokenizer.pad_token_id,
                 shard_size=7)
    reader = TopKReader(tmp_path)
    offline = OfflineTopKKD(make_loss(cfg), reader)
    online = OnlineKD(teacher, make_loss(cfg))
    s1, s2 = copy.deepcopy(student), copy.deepcopy(student)
    a, b = offline(s1, batch), online(s2, batch)
    assert a.item() == pytest.approx(b.item(), rel=2e-3)
    a.backward()
    b.backward()
    for (n, p1), p2 in zip(s1.named_parameters(), s2.parameters()):
        assert torch.allclose(p1.grad, p2.grad, rtol=2e-2, atol=1e-4), n
    # the same rows through the batch path (topk_* tensors, e.g. from a custom collate)
    idx = [0, 5, 9]
    lp, ids, tail = reader.get("train", idx)
    with_topk = batch | {"topk_logprobs": lp, "topk_ids": ids, "topk_tail": tail}
    assert OfflineTopKKD(make_loss(cfg), reader)(copy.deepcopy(student), with_topk).item() == pytest.approx(a.item())
    # the loop's path: the lookup happens on the host batch (prepare_batch) before it moves to the device,
    # so it never reads a device batch back; on the "meta" device any read of a moved batch would fail
    from reasondistill.train.sft import to_device

    on_meta = to_device(batch, offline, torch.device("meta"))
    assert {"topk_logprobs", "topk_ids", "topk_tail"} <= on_meta.keys()
    assert on_meta["topk_ids"].is_meta and on_meta["topk_ids"].shape == (*batch["input_ids"].shape, v)
    prepared = offline.prepare_batch(batch)
    assert torch.equal(prepared["topk_ids"], reader.for_batch(batch)[1])
    assert offline(copy.deepcopy(student), prepared).item() == pytest.approx(a.item())


def test_offline_topk_trains_through_the_loop(dataset, char_tokenizer, tmp_path):
    teacher = init_model(TEACHER, char_tokenizer, seed=1)
    splits = {"train": dataset / "train.safetensors", "val": dataset / "val.safetensors"}
    capture_topk(teacher, splits, tmp_path / "topk", k=8, temperature=1.0, pad_id=char_tokenizer.pad_token_id)
    objective = OfflineTopKKD(make_loss(DistillConfig(source="offline_topk", top_k=8)), TopKReader(tmp_path / "topk"))
    cfg = TrainConfig(max_steps=3, epochs=None, batch_size=8, save_every=3, log_every=1, eval_every=3)
    summary = train_model(init_model(TINY, char_tokenizer, seed=0), char_tokenizer, splits["train"], splits["val"],
                          tmp_path / "out", cfg, seed=0, objective=objective, show_progress=False)
    assert summary["steps"] == 3 and summary["final_val_loss"] > 0
    import csv

    rows = [r for r in csv.DictReader(open(tmp_path / "out" / "metrics.csv")) if r["val_loss"]]
    # val_loss stays the answer-token CE (comparable with hard students); the KD objective sits beside it
    assert rows and all(r["val_objective"] and float(r["val_objective"]) != float(r["val_loss"]) for r in rows)
    assert float(rows[-1]["val_loss"]) == pytest.approx(summary["final_val_loss"], rel=1e-5)


def test_feature_projection_is_trained_checkpointed_and_not_exported(dataset, char_tokenizer, tmp_path):
    student = init_model(TINY, char_tokenizer, seed=0)
    teacher = init_model(TEACHER, char_tokenizer, seed=1)
    kd = OnlineKD(teacher, make_loss(DistillConfig()))
    objective = FeatureKD(kd, student, layers=[(1, 2), (-1, 1)], loss="mse", weight=1.0, seed=0)
    assert [type(p).__name__ for p in objective.proj] == ["Linear", "Linear"]
    assert not any("teacher" in k or "base" in k for k in objective.state_dict())  # the teacher is not saved
    before = {k: v.clone() for k, v in objective.state_dict().items()}
    cfg = TrainConfig(max_steps=4, epochs=None, batch_size=8, save_every=2, log_every=1, eval_every=4)
    train_model(student, char_tokenizer, dataset / "train.safetensors", dataset / "val.safetensors", tmp_path, cfg,
                seed=0, objective=objective, show_progress=False)
    after = objective.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)  # the projections learned
    saved = load_file(tmp_path / "checkpoints/step-4/objective.safetensors")
    assert saved.keys() == after.keys() and all(torch.equal(saved[k], after[k]) for k in saved)
    assert (tmp_path / "checkpoints/step-2/objective.safetensors").exists()
    final = load_file(tmp_path / "final/model.safetensors")
    assert set(final) <= set(student.state_dict()) and not any(k.startswith("proj.") for k in final)
    assert not (tmp_path / "final/objective.safetensors").exists()
    # resuming restores the projections from the checkpoint
    fresh = FeatureKD(kd, student, layers=[(1, 2), (-1, 1)], seed=5)
    train_model(init_model(TINY, char_tokenizer, seed=3), char_tokenizer, dataset / "train.safetensors",
                dataset / "val.safetensors", tmp_path, cfg, seed=0, objective=fresh, show_progress=False)
    assert all(torch.equal(fresh.state_dict()[k], after[k]) for k in after)


def test_feature_loss_is_zero_for_identical_models_and_cosine_works(char_tokenizer, batch):
    student = init_model(TINY, char_tokenizer, seed=0)
    kd = OnlineKD(copy.deepcopy(student), make_loss(DistillConfig(alpha=1.0)))
    for kind in ("mse", "cosine"):
        obj = FeatureKD(kd, student, layers=[(1, 1), (0, 0)], loss=kind)
        assert len(list(obj.parameters())) == 0  # same width: no projection
        assert abs(obj(student, batch).item()) < 1e-3
    with pytest.raises(ValueError, match="teacher layer 7 out of range"):
        FeatureKD(kd, student, layers=[(1, 7)])


def test_distill_config_validation():
    from pydantic import ValidationError

    for bad, msg in [({"source": "offline_topk"}, "needs top_k"), ({"top_k": 8}, "'offline_topk' only"),
                     ({"divergence": "forward_kl", "beta": 0.2}, "'jsd' only"),
                     ({"lambda_on_policy": 0.3}, "'on_policy' only"),
                     ({"source": "offline_topk", "top_k": 4, "features": {"layers": [[1, 1]]}}, "hidden states"),
                     ({"features": {"layers": []}}, "at least 1"), ({"alpha": 1.5}, "less than or equal"),
                     ({"divergence": "skew_forward_kl", "skew_alpha": 1.0}, "less than 1"),
                     ({"alpha": 0.0}, "remove the distill section")]:
        with pytest.raises(ValidationError, match=msg):
            DistillConfig(**bad)
    cfg = DistillConfig(source="on_policy", divergence="skew_reverse_kl", skew_alpha=0.2, lambda_on_policy=1.0,
                        features={"layers": [[1, 2]], "loss": "cosine"})
    loss = make_loss(cfg)
    assert type(loss.divergence).__name__ == "SkewReverseKL" and loss.divergence.alpha == 0.2
    DistillConfig(source="on_policy", alpha=0.0)  # on-policy samples get the divergence whatever alpha is
    assert loss.chunk_size == 16 and cfg.defaulted("lambda_on_policy") == 1.0
    assert make_loss(DistillConfig(divergence="jsd")).divergence.beta == 0.5  # default when unset
    for ok in (cfg, DistillConfig(), DistillConfig(source="offline_topk", top_k=8)):  # run dirs reload their dump
        assert DistillConfig.model_validate(ok.model_dump(mode="json")) == ok


# -- the pipeline through the CLI ---------------------------------------------------------------------------

from tests.test_pipeline import cli, write_config  # noqa: E402  (one copy of the CLI helpers)


def test_offline_topk_student_runs_through_the_pipeline(tmp_path, tiny_model_dir):
    import json

    base = write_config(tmp_path / "c.yaml", tiny_model_dir)
    student = yaml_load(base)["students"][0] | {"distill": {"source": "offline_topk", "top_k": 8}}
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, students=[student])
    first = cli("run", cfg)
    assert "[run ] capture:s1" in first.stdout and "[run ] train:s1" in first.stdout
    topk = tmp_path / "run/build/s1/topk/k8"
    index = json.loads((topk / "index.json").read_text())
    assert index["k"] == 8 and index["splits"]["train"]["examples"] > 0
    assert (topk / "train/shard-00000.safetensors").exists()
    report = json.loads((tmp_path / "run/report.json").read_text())
    assert set(report["models"]) == {"teacher", "s1"}
    state = json.loads((tmp_path / "run/.stages/capture--s1.json").read_text())
    assert state["result"]["payload_bytes_per_token"] == 50
    again = cli("capture", tmp_path / "run", "--student", "s1")
    assert "[skip] capture:s1" in again.stdout
    refused = cli("capture", tmp_path / "run", "--student", "nobody", check=False)
    assert refused.returncode == 2 and "no student named 'nobody'" in refused.stderr


def yaml_load(path):
    import yaml

    return yaml.safe_load(path.read_text())
