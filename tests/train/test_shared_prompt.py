"""A GRPO group's prompt run once per update (train/shared_prompt.py): the same update as reading every
row whole, for llama / qwen2 with grouped-query heads and biases / a LoRA student, with a KL to the
reference and to a teacher, mu = 2; a teacher the shared path cannot continue from reads whole rows."""

import copy

import pytest
import torch

from reasondistill.models import init_model
from reasondistill.train.policy import PolicyTrainer
from reasondistill.train.policy_config import PolicyConfig, RewardValues
from reasondistill.train.shared_prompt import SharedPromptRows, WholeRows, shareable, step_rows

SPECS = {
    "llama": {"architecture": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
              "intermediate_size": 64, "max_position_embeddings": 256, "initializer_range": 0.2},
    "qwen2_gqa_bias": {"architecture": "qwen2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "num_key_value_heads": 2, "intermediate_size": 96, "max_position_embeddings": 256,
                       "initializer_range": 0.2},  # qwen2: q/k/v biases
}
# an untrained student is never right: reward stopping before the limit, so the groups differ
REWARDS = RewardValues(truncated=-1.0, unparseable=0.5, wrong=0.5)


@pytest.fixture(scope="module")
def problems(arith):
    return arith.problems("train", 8, seed=3)


def _model(kind, tok, seed=1):
    model = init_model(SPECS[kind.removesuffix("_eager")], tok, seed=seed)
    if kind.endswith("_eager"):
        model.config._attn_implementation = "eager"
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # biases start at zero: make them matter
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def _step(model, tok, problems, arith, share, teacher=None, **kw):
    """One GRPO step: (its metrics, the gradient at each optimizer step, name -> tensor)."""
    cfg = PolicyConfig(objective="grpo", steps=1, prompts_per_step=3, group_size=4, max_new_tokens=10, micro_batch=5,
                       lr=1e-3, rewards=REWARDS, share_prompt=share, **kw)
    t = PolicyTrainer(model, tok, problems, arith, cfg, "/unused", seed=0, teacher=teacher, show_progress=False)
    grads = []
    t.optimizer.register_step_pre_hook(lambda opt, a, k: grads.append(
        {n: p.grad.clone() for n, p in t.model.named_parameters() if p.requires_grad}))
    out = t.rollout_step(0)
    assert len(grads) == cfg.updates_per_batch
    return out, grads


def _same_gradients(a, b):
    """Equal up to float rounding (AdamW would amplify rounding in near-zero entries: compare gradients)."""
    for ga, gb in zip(a, b, strict=True):
        assert any(float(g.abs().max()) > 0 for g in ga.values())  # it trains
        for n in ga:
            torch.testing.assert_close(ga[n], gb[n], rtol=1e-4, atol=1e-6 * float(gb[n].abs().max()) + 1e-9)


@pytest.mark.parametrize("kind", ["llama", "qwen2_gqa_bias", "llama_eager"])
def test_shared_prompts_give_the_update_of_whole_rows(kind, problems, arith, char_tokenizer):
    """kl_ref (k3 to the start model), kl_teacher (a teacher scoring every token) and two updates per batch
    (old log-probs): every term reads the shared path; the weights after the step equal the plain path's."""
    student, teacher = _model(kind, char_tokenizer), _model(kind, char_tokenizer, seed=7)
    kw = dict(kl_ref=0.1, kl_teacher=0.3, updates_per_batch=2)
    shared, w_shared = _step(copy.deepcopy(student), char_tokenizer, problems, arith, True, teacher, **kw)
    whole, w_whole = _step(copy.deepcopy(student), char_tokenizer, problems, arith, False, teacher, **kw)
    assert 0 < shared["frac_reward_zero_std"] < 1 and shared["grad_norm"] > 0  # groups that differ: it trains
    for k in ("loss", "entropy", "kl_ref", "kl_teacher", "clip_frac", "grad_norm"):
        assert shared[k] == pytest.approx(whole[k], rel=1e-4, abs=1e-6), k
    _same_gradients(w_shared, w_whole)
    # what went through the model: each group's prompt once per update (and once per frozen model)
    assert shared["tokens_trained"] < whole["tokens_trained"]
    assert shared["teacher_tokens"] < whole["teacher_tokens"]


def test_a_lora_student_shares_its_prompts_too(problems, arith, char_tokenizer, tiny_model_dir):
    """peft's model under the shared path, the reference its base with the adapters off; keys no adapter
    reaches are constants of the prompt pass (no gradient to send back through them)."""
    pytest.importorskip("peft")
    from reasondistill.models import load_model
    from reasondistill.train.lora import LoraConfig, apply_lora

    def student():
        # adapters on q and v only: the keys of the prompt pass depend on no trainable weight
        lora = LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
        return apply_lora(load_model(str(tiny_model_dir)), lora, seed=0)

    assert shareable(student())
    shared, w_shared = _step(student(), char_tokenizer, problems, arith, True, kl_ref=0.1)
    whole, w_whole = _step(student(), char_tokenizer, problems, arith, False, kl_ref=0.1)
    assert shared["loss"] == pytest.approx(whole["loss"], rel=1e-4, abs=1e-7)
    assert shared["kl_ref"] == pytest.approx(whole["kl_ref"], rel=1e-4, abs=1e-7)
    assert all(".lora_" in n for n in w_shared[0])  # the adapters only
    _same_gradients(w_shared, w_whole)


def test_a_teacher_the_shared_path_cannot_continue_reads_whole_rows(problems, arith, char_tokenizer):
    """A sliding-window teacher (not a model the decoder runs): scored on whole rows, at the same positions."""
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(vocab_size=len(char_tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256, sliding_window=128,
                        pad_token_id=char_tokenizer.pad_token_id)
    torch.manual_seed(0)
    teacher = MistralForCausalLM(cfg).eval()
    assert not shareable(teacher)
    student = _model("llama", char_tokenizer)
    shared, w_shared = _step(copy.deepcopy(student), char_tokenizer, problems, arith, True, teacher, kl_teacher=0.5)
    whole, w_whole = _step(copy.deepcopy(student), char_tokenizer, problems, arith, False, teacher, kl_teacher=0.5)
    assert shared["kl_teacher"] == pytest.approx(whole["kl_teacher"], rel=1e-4)
    assert shared["teacher_tokens"] == whole["teacher_tokens"]
    _same_gradients(w_shared, w_whole)


def test_the_shared_layout_reads_the_completion_positions_of_whole_rows(char_tokenizer):
    """Per chunk: logits at the positions predicting each completion token, equal to a whole-row forward's;
    an empty completion contributes no token."""
    model = _model("qwen2_gqa_bias", char_tokenizer).eval()
    prompts = [[41, 42, 43], [41, 42, 43], [44, 45], [44, 45], [44, 45]]
    completions = [[50, 51], [52, 53, 54, 55], [56], [], [57, 58, 59]]
    rows = step_rows(model, prompts, completions, pad=0, temperature=1.5)
    assert isinstance(rows, SharedPromptRows) and rows.groups.tolist() == [0, 0, 1, 1, 1]
    whole = WholeRows(prompts, completions, pad=0, temperature=1.5)
    with torch.no_grad():
        chunk = torch.tensor([4, 1, 3])
        logits, targets, mask, tokens = rows.logits(model, chunk)
        ref = whole.batch
        full = model(input_ids=ref["input_ids"]).logits[:, :-1] / 1.5
    assert mask.tolist() == [[True, True, True, False], [True, True, True, True], [False] * 4]
    assert tokens == 7 + 5  # the completions' tokens, and the prompt pass (3 + 2), counted with the first chunk
    for r, i in enumerate(chunk.tolist()):
        n, p = len(completions[i]), len(prompts[i])
        assert targets[r, :n].tolist() == completions[i]
        torch.testing.assert_close(logits[r, :n], full[i, p - 1:p - 1 + n], rtol=1e-5, atol=1e-5)
    again = rows.logits(model, torch.tensor([0]))
    assert again[3] == 2  # the prompt pass ran once


def test_whole_rows_when_no_prompt_repeats_or_sharing_is_off(char_tokenizer):
    model = _model("llama", char_tokenizer)
    assert isinstance(step_rows(model, [[1, 2], [3]], [[4], [5]], 0, 1.0), WholeRows)  # on-policy: one per prompt
    assert isinstance(step_rows(model, [[1, 2], [1, 2]], [[4], [5]], 0, 1.0, share=False), WholeRows)
    eager = _model("llama", char_tokenizer)
    eager.config._attn_implementation = "eager"
    assert shareable(eager)
    eager.config._attn_implementation = "flash_attention_2"  # not tested with this layout: whole rows
    assert not shareable(eager)
    model.activation_checkpointing_enable()  # transformers keeps no cache under activation checkpointing
    model.train()
    rows = step_rows(model, [[1, 2], [1, 2]], [[4], [5]], 0, 1.0)
    assert isinstance(rows, WholeRows)
    rows.start(model)
    logits, _, mask, _ = rows.logits(model, torch.tensor([0, 1]))
    (logits[mask].sum()).backward()
    assert model.model.embed_tokens.weight.grad is not None
