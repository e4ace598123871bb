"""LoRA policy students (train/policy.py with a peft model, train/lora.py): only the adapters train,
the KL / DPO reference is the base with the adapters switched off (no copy), checkpoints hold the
adapters and resume exactly, final/ is the merged model plain transformers loads.

The "pretrained" base is the tests' tiny Llama saved to a directory (conftest.tiny_model_dir).
The pipeline / CLI path is in tests/train/test_policy_pipeline.py.

Run: PYTHONPATH=src python -m pytest tests/train/test_policy_lora.py -q
"""

import csv
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("peft")

from reasondistill.models import load_model  # noqa: E402
from reasondistill.records import Trace  # noqa: E402
from reasondistill.train.lora import AdaptersOff, LoraConfig, apply_lora, param_counts  # noqa: E402
from reasondistill.train.pairs import build_pairs  # noqa: E402
from reasondistill.train.policy import PolicyTrainer, forward_logits, sequence_batch  # noqa: E402
from reasondistill.train.policy_config import PolicyConfig, RewardValues  # noqa: E402
from reasondistill.train.rollout import VLLMServerRollout  # noqa: E402

LORA = LoraConfig(r=4, alpha=8)
# an untrained student is never right: reward stopping before the limit, so the groups differ
GRPO = PolicyConfig(objective="grpo", steps=4, prompts_per_step=2, group_size=4, max_new_tokens=10, micro_batch=4,
                    save_every=1, keep_checkpoints=5, lr=1e-2, kl_ref=0.1,
                    rewards=RewardValues(truncated=-1.0, unparseable=0.5, wrong=0.5))


@pytest.fixture(scope="module")
def problems(arith):
    return arith.problems("train", 8, seed=3)


def _student(base_dir, seed=0):
    return apply_lora(load_model(str(base_dir)), LORA, seed=seed)


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory, problems, arith, char_tokenizer, tiny_model_dir):
    """An uninterrupted 4-step LoRA GRPO run: (its directory, its summary, the adapters before)."""
    out = tmp_path_factory.mktemp("lora-grpo")
    model = _student(tiny_model_dir)
    assert not [n for n, p in model.named_parameters() if p.requires_grad and ".lora_" not in n]
    trainer = PolicyTrainer(model, char_tokenizer, problems, arith, GRPO, out, seed=0, show_progress=False)
    assert isinstance(trainer.reference, AdaptersOff)  # no deep copy of the weights
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == \
        {id(p) for n, p in model.named_parameters() if ".lora_" in n}
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_" in n}
    summary = trainer.run()
    return out, summary, lora_before


def test_lora_grpo_trains_only_the_adapters_and_exports_the_merged_model(grpo_run, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    out, summary, lora_before = grpo_run
    rows = _rows(out / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[0]["kl_ref"]) == pytest.approx(0.0, abs=1e-7)  # adapters at zero: policy == reference
    moved = next(i for i, r in enumerate(rows) if float(r["grad_norm"]) > 0)  # first step whose groups differed
    assert moved < 3 and float(rows[moved + 1]["kl_ref"]) > 0  # the reference stayed the base
    expected_trainable = param_counts(_student(tiny_model_dir))[1]
    assert summary["trainable_params"] == expected_trainable
    assert summary["params"] == sum(p.numel() for p in load_model(str(tiny_model_dir)).parameters())

    ckpt = out / "checkpoints/step-4"
    assert (ckpt / "adapter_model.safetensors").exists() and not (ckpt / "model.safetensors").exists()
    adapters = load_file(ckpt / "adapter_model.safetensors")
    assert sum(v.numel() for v in adapters.values()) == expected_trainable  # adapters only
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapters.items())  # B starts at zero: it moved
    assert any("lora_A" in k and not torch.equal(v, lora_before[_param_name(k, lora_before)])
               for k, v in adapters.items())

    base = load_file(tiny_model_dir / "model.safetensors")
    final = load_file(out / "final/model.safetensors")
    assert set(final) == set(base) and not [k for k in final if "lora" in k or "base_layer" in k]
    assert torch.equal(final["model.embed_tokens.weight"], base["model.embed_tokens.weight"])  # not adapted
    assert torch.equal(final["model.norm.weight"], base["model.norm.weight"])
    assert not torch.allclose(final["model.layers.0.self_attn.q_proj.weight"],
                              base["model.layers.0.self_attn.q_proj.weight"])  # adapted and merged
    # base frozen: final/ is exactly the start weights plus the checkpoint's adapter delta (alpha / r) B A
    for proj in ("self_attn.q_proj", "mlp.down_proj"):
        stem = f"base_model.model.model.layers.0.{proj}"
        delta = LORA.alpha / LORA.r * adapters[f"{stem}.lora_B.weight"] @ adapters[f"{stem}.lora_A.weight"]
        key = f"model.layers.0.{proj}.weight"
        assert torch.allclose(final[key], base[key] + delta, atol=1e-6), proj
    plain = AutoModelForCausalLM.from_pretrained(out / "final")  # no peft involved
    assert sum(p.numel() for p in plain.parameters()) == summary["params"]


def _param_name(adapter_key, names):
    """The peft parameter name of a key of adapter_model.safetensors (saved without the adapter name)."""
    stem = adapter_key.removesuffix(".weight")
    return next(n for n in names if n.startswith(stem + "."))


def test_lora_grpo_resumes_exactly(grpo_run, problems, arith, char_tokenizer, tiny_model_dir, tmp_path):
    out, *_ = grpo_run
    cut = tmp_path / "cut"
    PolicyTrainer(_student(tiny_model_dir), char_tokenizer, problems, arith, GRPO, cut, seed=0,
                  show_progress=False).run()
    shutil.rmtree(cut / "checkpoints/step-4")  # interrupted after step 3's checkpoint
    shutil.rmtree(cut / "final")
    # adapters initialised differently: everything must come from the checkpoint
    again = PolicyTrainer(_student(tiny_model_dir, seed=99), char_tokenizer, problems, arith, GRPO, cut, seed=0,
                          show_progress=False)
    assert again.state["step"] == 3
    again.run()
    a, b = load_file(out / "final/model.safetensors"), load_file(cut / "final/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = _rows(out / "metrics.csv"), _rows(cut / "metrics.csv")
    for key in ("reward_mean", "loss", "kl_ref", "grad_norm"):
        assert [r[key] for r in rb] == [r[key] for r in ra], key


def test_lora_dpo_reference_is_the_base_with_adapters_off(problems, arith, char_tokenizer, tiny_model_dir, tmp_path):
    base = load_model(str(tiny_model_dir))
    traces = [Trace(p.id, 0, p.solution, p.answer, "", 0, 0, "stop", "solver") for p in problems]
    pairs = build_pairs(base, char_tokenizer, arith, {p.id: p for p in problems}, traces, n_problems=4, samples=1,
                        temperature=1.0, max_new_tokens=12, seed=0)
    assert len(pairs) == 4
    cfg = PolicyConfig(objective="dpo", steps=6, prompts_per_step=4, lr=2e-2, dpo_beta=0.5, save_every=100)
    model = _student(tiny_model_dir)
    t = PolicyTrainer(model, char_tokenizer, problems, arith, cfg, tmp_path, seed=0, pairs=pairs, show_progress=False)
    assert isinstance(t.reference, AdaptersOff)
    batch = sequence_batch([p["prompt_ids"] for p in pairs], [p["rejected_ids"] for p in pairs],
                           char_tokenizer.pad_token_id)
    with torch.no_grad():
        ref0, pol0 = forward_logits(t.reference, batch), forward_logits(model, batch)
    assert torch.equal(ref0, pol0)  # B starts at zero: the adapted model computes exactly the base
    steps = [t.dpo_step(step) for step in range(cfg.steps)]
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # -log sigmoid(0)
    assert steps[0]["dpo_margin"] == pytest.approx(0, abs=1e-6)
    assert steps[-1]["dpo_margin"] > 0.1 and steps[-1]["loss"] < math.log(2)
    # trained: the policy moved, the reference is still exactly the base, the model is back in train mode
    with torch.no_grad():
        ref, plain, pol = forward_logits(t.reference, batch), forward_logits(base.eval(), batch), \
            forward_logits(model, batch)
    assert model.training
    assert torch.allclose(ref, plain, atol=1e-6) and torch.equal(ref, ref0)
    assert not torch.allclose(pol, plain, atol=1e-4)


def test_lora_on_policy_with_its_own_base_as_teacher_starts_at_zero(problems, char_tokenizer, tiny_model_dir, tmp_path):
    """On-policy distillation through the adapters: with the base as the teacher the adapted student
    (B = 0) is the teacher, so step 0 has zero loss and zero KL; no reference is built (kl_ref 0)."""
    for divergence in ("sampled_reverse_kl", "jsd"):
        cfg = PolicyConfig(objective="on_policy", divergence=divergence, steps=1, prompts_per_step=2, group_size=2,
                           max_new_tokens=10, micro_batch=4)
        t = PolicyTrainer(_student(tiny_model_dir), char_tokenizer, problems, None, cfg, tmp_path / divergence,
                          seed=0, teacher=load_model(str(tiny_model_dir)), show_progress=False)
        assert t.reference is None
        out = t.rollout_step(0)
        assert out["loss"] == pytest.approx(0.0, abs=1e-6) and out["kl_teacher"] == pytest.approx(0.0, abs=1e-6)


def test_rollouts_come_from_the_adapted_model(problems, arith, char_tokenizer, tiny_model_dir):
    """The trainer's rollout engine samples the policy *with* its adapters: the same completions as the
    merged model, not the base's (a decoder that read the base weights alone would fail here)."""
    import copy

    model = _student(tiny_model_dir)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
    cfg = PolicyConfig(objective="grpo", steps=1, prompts_per_step=4, group_size=2, max_new_tokens=12)

    def completions(m):
        trainer = PolicyTrainer(m, char_tokenizer, problems, arith, cfg, "/unused", seed=0, show_progress=False)
        return [r.completion for r in trainer.rollouts(0)[1]]
    adapted = completions(model)
    assert adapted == completions(copy.deepcopy(model).merge_and_unload().requires_grad_(True))
    assert adapted != completions(load_model(str(tiny_model_dir)))


def test_a_lora_student_refuses_the_vllm_backends(problems, arith, char_tokenizer, tiny_model_dir):
    with pytest.raises(ValueError, match="HF backend only"):
        PolicyTrainer(_student(tiny_model_dir), char_tokenizer, problems, arith, GRPO, "/unused", seed=0,
                      engine=VLLMServerRollout(None, char_tokenizer), show_progress=False)
