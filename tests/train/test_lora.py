"""LoRA students (train/lora.py): only the adapters train, with every objective; checkpoints hold the
adapters and resume the same curve; final/ is the merged model that plain transformers loads.

The "pretrained" base is the tests' tiny Llama saved to a directory (conftest.tiny_model_dir).

Run: PYTHONPATH=src python -m pytest tests/train/test_lora.py -q
"""

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("peft")

from reasondistill.config import ConfigError, DistillConfig, load_config  # noqa: E402
from reasondistill.data.build import build_dataset, make_examples  # noqa: E402
from reasondistill.data.dataset import TokenizedDataset, collate  # noqa: E402
from reasondistill.models import init_model, load_model  # noqa: E402
from reasondistill.records import Trace  # noqa: E402
from reasondistill.train.config import TrainConfig  # noqa: E402
from reasondistill.train.kd import OfflineTopKKD, OnlineKD, make_loss  # noqa: E402
from reasondistill.train.lora import (LoraConfig, apply_lora, is_lora, load_base, param_counts,  # noqa: E402
                                      quantize_problem, target_problem)
from reasondistill.train.sft import cross_entropy_sum, train_model  # noqa: E402

from conftest import TINY  # noqa: E402

LORA = LoraConfig(r=4, alpha=8)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, arith, char_tokenizer):
    d = tmp_path_factory.mktemp("lora-data")
    problems = arith.problems("train", 40, seed=0)
    traces = [Trace(p.id, 0, p.solution, p.answer, "", 0, 0, "stop", "solver") for p in problems]
    build_dataset(make_examples({p.id: p for p in problems}, traces, "traces"), char_tokenizer, d,
                  max_length=512, val_fraction=0.1, seed=0)
    return d


def _cfg(**kw):
    return TrainConfig(**({"max_steps": 6, "epochs": None, "batch_size": 8, "lr": 1e-2, "save_every": 3,
                           "keep_checkpoints": 5, "log_every": 1, "eval_every": 3} | kw))


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def _student(base_dir, seed=0, cfg=LORA):
    return apply_lora(load_model(str(base_dir)), cfg, seed=seed)


def test_adapters_count_and_only_they_train(tiny_model_dir):
    model = _student(tiny_model_dir)
    assert is_lora(model)
    h, ff, r = TINY["hidden_size"], TINY["intermediate_size"], LORA.r
    # all-linear on one Llama layer: q, k, v, o (h -> h) and gate, up (h -> ff), down (ff -> h); each r x (in + out)
    expected = 4 * r * (h + h) + 2 * r * (h + ff) + r * (ff + h)
    total, trainable = param_counts(model)
    assert trainable == expected
    assert total == sum(p.numel() for p in load_model(str(tiny_model_dir)).parameters())
    assert all(".lora_" in n for n, p in model.named_parameters() if p.requires_grad)


def test_sft_trains_adapters_and_final_is_the_merged_model(dataset, char_tokenizer, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model = _student(tiny_model_dir)
    summary = train_model(model, char_tokenizer, dataset / "train.safetensors", dataset / "val.safetensors",
                          tmp_path, _cfg(max_steps=12, save_every=12, log_every=4, eval_every=12), seed=0,
                          show_progress=False)
    train = [float(r["train_loss"]) for r in _rows(tmp_path / "metrics.csv") if r["train_loss"]]
    assert train[-1] < train[0]
    assert summary["trainable_params"] == param_counts(_student(tiny_model_dir))[1]
    assert summary["params"] == sum(p.numel() for p in load_model(str(tiny_model_dir)).parameters())

    ckpt = tmp_path / "checkpoints/step-12"
    assert (ckpt / "adapter_model.safetensors").exists() and not (ckpt / "model.safetensors").exists()
    assert "adapter_model.safetensors" in json.loads((ckpt / "checksums.json").read_text())
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "final")  # plain transformers, no peft
    weights = load_file(tmp_path / "final/model.safetensors")
    assert not [k for k in weights if "lora" in k or "base_layer" in k]
    base = load_file(tiny_model_dir / "model.safetensors")
    assert set(weights) == set(base)
    assert torch.equal(weights["model.embed_tokens.weight"], base["model.embed_tokens.weight"])  # not adapted
    assert not torch.allclose(weights["model.layers.0.self_attn.q_proj.weight"],
                              base["model.layers.0.self_attn.q_proj.weight"])  # adapted, merged
    # the merged model computes what base + adapters compute
    adapted = _student(tiny_model_dir, seed=5)
    from reasondistill.train.lora import load_adapter

    load_adapter(adapted, ckpt / "adapter_model.safetensors")
    batch = collate(TokenizedDataset(dataset / "val.safetensors"), [0, 1], char_tokenizer.pad_token_id)
    with torch.no_grad():
        a = adapted(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        b = final(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    assert torch.allclose(a, b, atol=1e-5)


class Crash(RuntimeError):
    pass


def crashing_at(call: int):
    """Cross-entropy that raises :class:`Crash` at its ``call``-th micro-batch (a killed run)."""
    calls = {"n": 0}

    def objective(model, batch):
        calls["n"] += 1
        if calls["n"] == call:
            raise Crash("killed")
        return cross_entropy_sum(model, batch)
    return objective


def test_resume_restores_the_adapters_and_the_same_curve(dataset, char_tokenizer, tiny_model_dir, tmp_path):
    args = (char_tokenizer, dataset / "train.safetensors", dataset / "val.safetensors")
    train_model(_student(tiny_model_dir), *args, tmp_path / "a", _cfg(), seed=0, show_progress=False)
    crashing = crashing_at(5)  # dies in step 5, after the step-3 checkpoint
    with pytest.raises(Crash):
        train_model(_student(tiny_model_dir), *args, tmp_path / "b", _cfg(), seed=0, objective=crashing,
                    show_progress=False)
    assert (tmp_path / "b/checkpoints/step-3").exists() and not (tmp_path / "b/final").exists()
    # adapters initialised differently: everything must come from the checkpoint
    train_model(_student(tiny_model_dir, seed=99), *args, tmp_path / "b", _cfg(), seed=0, show_progress=False)
    a, b = _rows(tmp_path / "a/metrics.csv"), _rows(tmp_path / "b/metrics.csv")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("train_loss", "val_loss", "lr"):
            if ra[key]:
                assert float(ra[key]) == pytest.approx(float(rb[key]), rel=1e-5, abs=1e-7), (ra["step"], key)
    wa, wb = load_file(tmp_path / "a/final/model.safetensors"), load_file(tmp_path / "b/final/model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_a_damaged_adapter_checkpoint_is_refused(dataset, char_tokenizer, tiny_model_dir, tmp_path):
    args = (char_tokenizer, dataset / "train.safetensors", dataset / "val.safetensors")
    train_model(_student(tiny_model_dir), *args, tmp_path, _cfg(max_steps=3), seed=0, show_progress=False)
    adapter = tmp_path / "checkpoints/step-3/adapter_model.safetensors"
    data = bytearray(adapter.read_bytes())
    data[-3] ^= 0xFF
    adapter.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="adapter_model.safetensors: does not match the checksum"):
        train_model(_student(tiny_model_dir), *args, tmp_path, _cfg(max_steps=3), seed=0, show_progress=False)


@pytest.mark.parametrize("source", ["online", "offline_topk", "on_policy"])
def test_soft_and_on_policy_objectives_train_the_adapters(source, dataset, char_tokenizer, tiny_model_dir, tmp_path):
    teacher = init_model(TINY | {"hidden_size": 48}, char_tokenizer, seed=3)
    cfg = DistillConfig(source=source, **({"top_k": 8} if source == "offline_topk" else {}))
    loss = make_loss(cfg)
    if source == "offline_topk":
        from reasondistill.data.topk import TopKReader, capture_topk

        splits = {x: dataset / f"{x}.safetensors" for x in ("train", "val")}
        capture_topk(teacher, splits, tmp_path / "topk", 8, 1.0, vocab_size=len(char_tokenizer),
                     pad_id=char_tokenizer.pad_token_id, teacher_id="t")
        objective = OfflineTopKKD(loss, TopKReader(tmp_path / "topk"))
    else:
        objective = OnlineKD(teacher, loss, student_tokenizer=char_tokenizer, teacher_tokenizer=char_tokenizer)
    if source == "on_policy":
        from reasondistill.train.onpolicy import OnPolicyKD

        objective = OnPolicyKD(objective, char_tokenizer, lambda_on_policy=1.0, seed=0, max_new_tokens=6)
    model = _student(tiny_model_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    summary = train_model(model, char_tokenizer, dataset / "train.safetensors", dataset / "val.safetensors",
                          tmp_path / "out", _cfg(max_steps=3, save_every=3), seed=0, objective=objective,
                          show_progress=False)
    assert summary["steps"] == 3 and summary["trainable_params"] > 0
    rows = _rows(tmp_path / "out/metrics.csv")
    assert all(torch.isfinite(torch.tensor(float(r["train_loss"]))) for r in rows if r["train_loss"])
    assert rows[-1]["val_objective"]
    ckpt = load_file(tmp_path / "out/checkpoints/step-3/adapter_model.safetensors")
    moved = [k for k, v in ckpt.items() if "lora_B" in k and v.abs().sum() > 0]  # B starts at zero
    assert moved
    final = load_file(tmp_path / "out/final/model.safetensors")
    assert torch.equal(final["model.norm.weight"], before["base_model.model.model.norm.weight"])  # base frozen


def test_qlora_validates_but_refuses_without_a_gpu(tiny_model_dir):
    q = LoraConfig(quantize="nf4")
    assert "needs a CUDA GPU" in quantize_problem(q, cuda=False)
    assert quantize_problem(LoraConfig(), cuda=False) is None
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="set lora.quantize: none"):
            load_base(str(tiny_model_dir), q)


def test_each_target_module_must_match_and_a_tied_output_layer_is_refused(tiny_model_dir, char_tokenizer):
    """An entry that matches no layer is named with the closest layer name, even beside one that
    matches; adapters on an output layer tied to the input embedding are refused (merging them into
    final/ would rewrite the embedding too), at check and when they are attached."""
    conf = load_model(str(tiny_model_dir)).config
    problem = target_problem(conf, LoraConfig(target_modules=["q_proj", "vv_proj"]))
    assert problem is not None and "['vv_proj'] match no layer" in problem and "did you mean 'v_proj'" in problem
    assert target_problem(conf, LoraConfig(target_modules=["q_proj", "model.layers.0.mlp.down_proj"])) is None
    tied = target_problem(conf, LoraConfig(target_modules=["q_proj", "lm_head"]))
    assert tied is not None and "lm_head" in tied and "tied" in tied and "drop lm_head" in tied
    with pytest.raises(ValueError, match="tied to the input embedding"):
        apply_lora(load_model(str(tiny_model_dir)), LoraConfig(target_modules=["lm_head"]), seed=0)
    untied = init_model(TINY | {"tie_word_embeddings": False}, char_tokenizer, seed=0)
    assert target_problem(untied.config, LoraConfig(target_modules=["lm_head"])) is None


def test_lora_config_is_validated(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("students: [{name: s, init: {hidden_size: 16}, lora: {r: 4}}]\n")
    with pytest.raises(ConfigError, match="lora adapts a pretrained model"):
        load_config(path)
    path.write_text("students: [{name: s, model: some/model, lora: {r: 0, alpa: 3}}]\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "students.0.lora.r" in str(err.value) and "did you mean 'alpha'" in str(err.value)
    path.write_text("students: [{name: s, model: some/model, lora: {r: 4, target_modules: [q_proj], "
                    "quantize: nf4}}]\n")
    cfg = load_config(path)
    assert cfg.students[0].lora.target_modules == ["q_proj"] and cfg.students[0].lora.quantize == "nf4"


def test_lora_student_with_soft_distillation_through_the_cli(tmp_path, tiny_model_dir):
    from tests.test_pipeline import cli, write_config

    student = {"name": "lora", "model": str(tiny_model_dir), "lora": {"r": 4, "alpha": 8},
               "distill": {"source": "online"},
               "train": {"max_steps": 3, "epochs": None, "batch_size": 8, "save_every": 2, "log_every": 1}}
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, students=[student])
    out = cli("run", cfg)
    assert "lora: LoRA r=4:" in out.stdout and "trainable of" in out.stdout
    summary = json.loads((tmp_path / "run/train/lora/summary.json").read_text())
    assert 0 < summary["trainable_params"] < summary["params"]
    report = json.loads((tmp_path / "run/report.json").read_text())
    assert report["training"]["lora"]["trainable_params"] == summary["trainable_params"]
    shown = f"{summary['params']:,} ({summary['trainable_params']:,} trainable)"
    assert shown in (tmp_path / "run/report.md").read_text() and shown in (tmp_path / "run/report.html").read_text()
