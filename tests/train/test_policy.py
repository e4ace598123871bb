"""Policy training end to end on a tiny model (train/policy.py): GRPO, on-policy distillation, DPO,
exact resume, rollout backends (vLLM through fake engines with vLLM's interface)."""

import copy
import csv
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from reasondistill.models import init_model
from reasondistill.records import Trace
from reasondistill.train.pairs import build_pairs
from reasondistill.train.policy import PolicyTrainer, sequence_batch, train_policy
from reasondistill.train.policy_losses import ClippedPolicyLoss
from reasondistill.train.policy_config import PolicyConfig, RewardValues
from reasondistill.train.rollout import HFRollout, VLLMRollout, VLLMServerRollout

from conftest import TINY

SMALL = dict(steps=2, prompts_per_step=2, group_size=3, max_new_tokens=12, micro_batch=4, save_every=1, lr=1e-3)


@pytest.fixture(scope="module")
def problems(arith):
    return arith.problems("train", 8, seed=3)


def _student(tok, seed=0):
    return init_model(TINY, tok, seed=seed)


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_sequence_batch_masks_exactly_the_completion():
    b = sequence_batch([[1, 2, 3], [4]], [[5, 6], [7, 8, 9]], pad=0)
    assert b["input_ids"].tolist() == [[1, 2, 3, 5, 6], [4, 7, 8, 9, 0]]
    # mask[t] marks logits[t] -> targets[t] = input_ids[t + 1] being a completion token
    assert b["mask"].tolist() == [[False, False, True, True], [True, True, True, False]]


def test_update_forward_needs_no_padding_mask(char_tokenizer):
    """Right padding under causal attention: the logits at every real position equal the masked forward's."""
    from reasondistill.train.policy import forward_logits

    model = _student(char_tokenizer).eval()
    b = sequence_batch([[41, 42, 43], [44], [45, 46]], [[47, 48], [49, 50, 51, 52, 53], [54]], pad=0)
    with torch.no_grad():
        masked = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
        got = forward_logits(model, b)
    real = b["attention_mask"][:, :-1].bool()
    assert not real.all()  # there is padding
    torch.testing.assert_close(got[real], masked[real], rtol=1e-5, atol=1e-6)


def test_grpo_trains_logs_and_resumes_exactly(problems, arith, char_tokenizer, tmp_path):
    # an untrained student is never right: reward stopping before the limit, so the groups differ
    rewards = RewardValues(truncated=-1.0, unparseable=0.5, wrong=0.5)
    cfg = PolicyConfig(objective="grpo", updates_per_batch=2, kl_ref=0.1, rewards=rewards,
                       **{**SMALL, "steps": 4, "group_size": 4, "max_new_tokens": 10})
    full = train_policy(_student(char_tokenizer), char_tokenizer, problems, arith, cfg, tmp_path / "a", seed=0,
                        show_progress=False)
    assert full["steps"] == 4 and full["tokens_generated"] > 0 and full["tokens_trained"] > full["tokens_generated"]
    rows = _rows(tmp_path / "a/metrics.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    for r in rows:
        for k in ("reward_mean", "reward_std", "accuracy", "length", "entropy", "clip_frac", "kl_ref", "grad_norm"):
            assert r[k] != "" and float(r[k]) == float(r[k]), k
    assert float(rows[0]["kl_ref"]) == pytest.approx(0.0, abs=1e-6)  # the reference is the start model
    moved = next(i for i, r in enumerate(rows) if float(r["grad_norm"]) > 0)  # first step whose groups differed
    assert moved < 3 and float(rows[moved + 1]["kl_ref"]) > 0
    # interrupted after step 3 (step 4's checkpoint and final/ gone): resuming gives the same weights
    cut = tmp_path / "b"
    train_policy(_student(char_tokenizer), char_tokenizer, problems, arith,
                 cfg.model_copy(update={"keep_checkpoints": 5}), cut, seed=0, show_progress=False)
    import shutil

    shutil.rmtree(cut / "checkpoints/step-4")
    shutil.rmtree(cut / "final")
    again = train_policy(_student(char_tokenizer), char_tokenizer, problems, arith,
                         cfg.model_copy(update={"keep_checkpoints": 5}), cut, seed=0, show_progress=False)
    assert again["steps"] == 4
    a, b = load_file(tmp_path / "a/final/model.safetensors"), load_file(cut / "final/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["reward_mean"] for r in _rows(cut / "metrics.csv")] == [r["reward_mean"] for r in rows]


@pytest.mark.parametrize("norm", ["sequence", "constant"])
def test_clip_fraction_is_logged_under_every_loss_norm(norm, problems, arith, char_tokenizer, tmp_path):
    rewards = RewardValues(truncated=-1.0, unparseable=0.5, wrong=0.5)
    cfg = PolicyConfig(objective="grpo", updates_per_batch=2, loss_norm=norm, rewards=rewards, scale_rewards=False,
                       **{**SMALL, "steps": 3, "group_size": 4, "max_new_tokens": 10, "lr": 0.05})
    train_policy(_student(char_tokenizer), char_tokenizer, problems, arith, cfg, tmp_path, seed=0, show_progress=False)
    fracs = [float(r["clip_frac"]) for r in _rows(tmp_path / "metrics.csv")]
    assert all(0.0 <= f <= 1.0 for f in fracs) and max(fracs) > 0  # step 3 has an advantage; lr 0.05: its second update clips


def test_grpo_rewards_a_correct_group_member(problems, arith, char_tokenizer):
    """A policy that writes the reference answer for one rollout per group moves toward it."""
    cfg = PolicyConfig(objective="grpo", **SMALL)
    t = PolicyTrainer(_student(char_tokenizer), char_tokenizer, problems, arith, cfg, "/nonexistent-unused", seed=0,
                      show_progress=False)
    probs, rolls = t.rollouts(0)
    assert len(rolls) == 6 and all(r.finish_reason in ("stop", "length") for r in rolls)
    assert [p.id for p in probs[:3]] == [probs[0].id] * 3
    again = t.rollouts(0)[1]
    assert [r.completion for r in again] == [r.completion for r in rolls]  # seeded by (seed, step, problem, g)


def test_on_policy_with_the_student_as_teacher_has_zero_loss(problems, char_tokenizer, tmp_path):
    student = _student(char_tokenizer)
    for divergence in ("sampled_reverse_kl", "jsd"):
        cfg = PolicyConfig(objective="on_policy", divergence=divergence, **SMALL)
        t = PolicyTrainer(copy.deepcopy(student), char_tokenizer, problems, None, cfg, tmp_path / divergence, seed=0,
                          teacher=copy.deepcopy(student), show_progress=False)
        out = t.rollout_step(0)
        assert out["loss"] == pytest.approx(0.0, abs=1e-6) and out["kl_teacher"] == pytest.approx(0.0, abs=1e-6)
        assert out["teacher_tokens"] > 0


def _exact_reverse_kl(student, teacher, batch):
    with torch.no_grad():
        s = torch.log_softmax(student(input_ids=batch["input_ids"]).logits.float(), -1)
        t = torch.log_softmax(teacher(input_ids=batch["input_ids"]).logits.float(), -1)
    return float((s.exp() * (s - t)).sum(-1).mean())


def test_on_policy_jsd_moves_the_student_toward_the_teacher(problems, char_tokenizer, tmp_path):
    teacher = _student(char_tokenizer, seed=5)
    with torch.no_grad():
        teacher.model.norm.weight.mul_(6.0)  # a peaked teacher, far from the student
    cfg = PolicyConfig(objective="on_policy", divergence="jsd", **{**SMALL, "steps": 15, "lr": 1e-2})
    train_policy(_student(char_tokenizer), char_tokenizer, problems, None, cfg, tmp_path, seed=0, teacher=teacher,
                 show_progress=False)
    kl = [float(r["kl_teacher"]) for r in _rows(tmp_path / "metrics.csv")]
    assert sum(kl[-5:]) < 0.5 * sum(kl[:5]), kl


def test_sampled_reverse_kl_gradient_is_unbiased():
    """The per-token estimator (advantage log p_teacher − log p_student on the student's own samples)
    has the exact reverse-KL gradient as its expectation."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(6, generator=gen).requires_grad_(True)
    logp_teacher = torch.log_softmax(torch.randn(6, generator=gen) * 2, -1)
    exact = torch.autograd.grad((torch.softmax(z, -1) * (torch.log_softmax(z, -1) - logp_teacher)).sum(), z)[0]
    n = 400_000
    x = torch.multinomial(torch.softmax(z.detach(), -1), n, replacement=True, generator=gen)
    logq = torch.log_softmax(z, -1)[x][None]
    adv = (logp_teacher[x][None] - logq.detach())
    loss, _ = ClippedPolicyLoss(0.2)(logq, logq.detach(), adv, torch.full((1, n), 1.0 / n))
    est = torch.autograd.grad(loss, z)[0]
    assert torch.allclose(est, exact, atol=0.01), (est, exact)


def test_on_policy_needs_a_teacher(problems, char_tokenizer):
    with pytest.raises(ValueError, match="local teacher"):
        PolicyTrainer(_student(char_tokenizer), char_tokenizer, problems, None, PolicyConfig(objective="on_policy"),
                      "/unused", seed=0)


def test_dpo_pairs_from_own_wrong_answers_and_training_widens_the_margin(problems, arith, char_tokenizer, tmp_path):
    student = _student(char_tokenizer)
    traces = [Trace(p.id, 0, p.solution, p.answer, "", 0, 0, "stop", "solver") for p in problems]
    pairs = build_pairs(student, char_tokenizer, arith, {p.id: p for p in problems}, traces, n_problems=6, samples=2,
                        temperature=1.0, max_new_tokens=12, seed=0)
    assert len(pairs) == 6  # an untrained student is never right
    eos = char_tokenizer.eos_token_id
    for pair in pairs:
        assert pair["chosen_ids"][-1] == eos and pair["rejected_verdict"] in ("wrong", "unparseable", "truncated")
        assert char_tokenizer.decode(pair["chosen_ids"]).startswith("<think>")
    cfg = PolicyConfig(objective="dpo", steps=15, prompts_per_step=4, lr=3e-3, dpo_beta=0.5, save_every=100)
    train_policy(student, char_tokenizer, problems, arith, cfg, tmp_path, seed=0, pairs=pairs, show_progress=False)
    rows = _rows(tmp_path / "metrics.csv")
    assert float(rows[0]["dpo_margin"]) == pytest.approx(0.0, abs=1e-5)  # policy == reference at step 1
    assert float(rows[-1]["dpo_margin"]) > 0.5 and float(rows[-1]["loss"]) < float(rows[0]["loss"])
    for r in rows:  # the margin is the chosen side's implicit reward minus the rejected side's
        assert float(r["dpo_margin"]) == pytest.approx(float(r["dpo_reward_chosen"]) - float(r["dpo_reward_rejected"]),
                                                       abs=1e-5)
    assert float(rows[0]["dpo_reward_chosen"]) == pytest.approx(0.0, abs=1e-5)
    assert float(rows[-1]["dpo_reward_rejected"]) < 0  # the student's own wrong answers became less likely


def test_dpo_sft_adds_the_chosen_mean_token_nll(problems, arith, char_tokenizer):
    """RPO (TRL's loss_type [sigmoid, sft]): at step 1 the policy is the reference, so the DPO part is
    log 2 per pair and the loss is log 2 + w · (the chosen completions' mean per-token NLL)."""
    import math

    from reasondistill.train.policy_losses import token_logprobs

    student = _student(char_tokenizer)
    traces = [Trace(p.id, 0, p.solution, p.answer, "", 0, 0, "stop", "solver") for p in problems]
    pairs = build_pairs(student, char_tokenizer, arith, {p.id: p for p in problems}, traces, n_problems=6, samples=2,
                        temperature=1.0, max_new_tokens=12, seed=0)
    cfg = PolicyConfig(objective="dpo", steps=1, prompts_per_step=4, dpo_sft=0.7)
    t = PolicyTrainer(copy.deepcopy(student), char_tokenizer, problems, arith, cfg, "/unused", seed=0, pairs=pairs,
                      show_progress=False)
    picked = [pairs[i] for i in t._pick(0, len(pairs), 4)]
    b = sequence_batch([p["prompt_ids"] for p in picked], [p["chosen_ids"] for p in picked],
                       char_tokenizer.pad_token_id)
    with torch.no_grad():
        lp = token_logprobs(student(input_ids=b["input_ids"]).logits[:, :-1], b["input_ids"][:, 1:])
    nll = float(-(lp * b["mask"]).sum() / b["mask"].sum())
    out = t.dpo_step(0)
    assert out["dpo_nll_chosen"] == pytest.approx(nll, rel=1e-5)
    assert out["loss"] == pytest.approx(math.log(2) + 0.7 * nll, rel=1e-5)


def test_dpo_without_pairs_says_what_to_do(problems, arith, char_tokenizer):
    # an always-right start student: more problems alone cannot help, so the other ways are named too
    with pytest.raises(ValueError, match=r"dpo_problems.*dpo_samples.*temperature.*start_from"):
        PolicyTrainer(_student(char_tokenizer), char_tokenizer, problems, arith, PolicyConfig(objective="dpo"),
                      "/unused", seed=0, pairs=[])


class _FakeLLM:
    """vLLM's ``LLM.generate`` interface over a real HF model (vLLM itself needs a GPU)."""

    def __init__(self, model, tokenizer):
        self.inner = HFRollout(model, tokenizer)
        self.loaded = None

    def generate(self, prompts, sampling_params, use_tqdm=True):
        outs = []
        for p, sp in zip(prompts, sampling_params):
            r = self.inner.generate([p["prompt_token_ids"]], [sp.seed], sp.temperature, sp.max_tokens)[0]
            outs.append(SimpleNamespace(outputs=[SimpleNamespace(token_ids=tuple(r.completion))]))
        return outs

    def load_weights(self, weights):
        self.loaded = dict(weights)
        self.inner.model.load_state_dict(self.loaded)


class _FakeClient:
    """TRL VLLMClient's interface (generate on token ids, update_named_param, reset_prefix_cache)."""

    def __init__(self, model, tokenizer):
        self.inner, self.updated, self.resets = HFRollout(model, tokenizer), {}, 0

    def generate(self, prompts, n, temperature, max_tokens):
        rolls = self.inner.generate(prompts, list(range(len(prompts))), temperature, max_tokens)
        return {"completion_ids": [r.completion for r in rolls]}

    def update_named_param(self, name, weights):
        self.updated[name] = weights.clone()

    def reset_prefix_cache(self):
        self.resets += 1


def test_vllm_backends_generate_and_sync_the_trained_weights(problems, arith, char_tokenizer, tmp_path):
    engine_copy = _student(char_tokenizer, seed=7)  # the engine starts with other weights
    llm = _FakeLLM(engine_copy, char_tokenizer)
    backend = VLLMRollout(llm, char_tokenizer, sampling_params=SimpleNamespace, load_weights=llm.load_weights)
    student = _student(char_tokenizer)
    cfg = PolicyConfig(objective="grpo", **SMALL)
    train_policy(student, char_tokenizer, problems, arith, cfg, tmp_path / "v", seed=0, engine=backend,
                 show_progress=False)
    # synced before each step's rollouts: the engine holds the weights of the step before the last one
    assert llm.loaded is not None and set(llm.loaded) == set(student.state_dict())
    client = _FakeClient(_student(char_tokenizer, seed=7), char_tokenizer)
    server = VLLMServerRollout(client, char_tokenizer)
    server.sync(student)
    assert client.resets == 1 and all(torch.equal(client.updated[k], v) for k, v in student.state_dict().items())
    rolls = server.generate([[3, 4, 5]], [0], 1.0, 5)
    assert len(rolls) == 1 and 1 <= len(rolls[0].completion) <= 5


def test_grpo_plus_kl_to_the_teacher_adds_the_per_token_reverse_kl_advantage(problems, arith, char_tokenizer):
    """Combined objective: with kl_teacher the advantage gains kl_teacher · (log p_teacher − log p_student);
    a teacher equal to the student adds nothing, another teacher changes the loss."""
    student = _student(char_tokenizer)
    losses = {}
    for name, teacher in (("plain", None), ("same", copy.deepcopy(student)), ("other", _student(char_tokenizer, 5))):
        cfg = PolicyConfig(objective="grpo", kl_teacher=0.5 if teacher is not None else 0.0,
                           rewards=RewardValues(truncated=-1.0, unparseable=0.5, wrong=0.5), **SMALL)
        t = PolicyTrainer(copy.deepcopy(student), char_tokenizer, problems, arith, cfg, "/unused", seed=0,
                          teacher=teacher, show_progress=False)
        losses[name] = t.rollout_step(0)
    assert losses["same"]["loss"] == pytest.approx(losses["plain"]["loss"], abs=1e-6)
    assert losses["same"]["kl_teacher"] == pytest.approx(0.0, abs=1e-6)
    assert losses["other"]["loss"] != pytest.approx(losses["plain"]["loss"], abs=1e-4)
    assert losses["other"]["kl_teacher"] > 0


def test_length_chunks_cover_every_row_once_and_cut_padding():
    from reasondistill.train.policy import length_chunks

    lengths = [40, 12, 13, 41, 12, 39, 14, 11, 42, 13, 12, 40, 11, 13, 38, 12, 41, 12]
    chunks = length_chunks(lengths, micro_batch=64)
    rows = [i for c in chunks for i in c.tolist()]
    assert sorted(rows) == list(range(len(lengths)))
    padded = sum(len(c) * max(lengths[i] for i in c.tolist()) for c in chunks)
    assert len(chunks) == 2 and padded < 1.15 * sum(lengths) and padded < 0.65 * len(lengths) * max(lengths)
    assert all(len(c) <= 4 for c in length_chunks(lengths, micro_batch=4))


@pytest.mark.parametrize("objective", ["grpo", "on_policy"])
def test_micro_batch_changes_memory_not_the_update(objective, problems, arith, char_tokenizer, tmp_path):
    """The update's rows are cut into length-sorted chunks: any micro_batch gives the same weights."""
    def trained(micro_batch, out):
        teacher = _student(char_tokenizer, seed=5) if objective == "on_policy" else None
        grpo = {"kl_ref": 0.1, "rewards": RewardValues(truncated=-1.0, unparseable=0.5, wrong=0.5)}
        cfg = PolicyConfig(objective=objective, **(grpo if objective == "grpo" else {}),
                           **{**SMALL, "steps": 2, "group_size": 4, "micro_batch": micro_batch,
                              **({"divergence": "jsd", "group_size": 1, "prompts_per_step": 6}
                                 if objective == "on_policy" else {})})
        model = _student(char_tokenizer)
        train_policy(model, char_tokenizer, problems, arith, cfg, out, seed=0, teacher=teacher, show_progress=False)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    whole, pieces = trained(64, tmp_path / "a"), trained(2, tmp_path / "b")
    start = _student(char_tokenizer).state_dict()
    assert any(not torch.equal(whole[k], start[k]) for k in whole)  # it trained
    for k in whole:
        torch.testing.assert_close(pieces[k], whole[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_zero_advantage_rows_skip_the_backward_and_leave_the_update_unchanged(temperature, problems, arith,
                                                                             char_tokenizer):
    """Rows of a group that all scored alike have advantage 0: they get no backward, and the
    gradient equals the full batch's (computed here directly from the same rollouts), whose
    log-probs are those of the sampling policy, softmax(logits / T)."""
    from reasondistill.train.policy import forward_logits, sequence_batch
    from reasondistill.train.policy_losses import group_advantages, token_logprobs, token_weights

    cfg = PolicyConfig(objective="grpo", rewards=RewardValues(truncated=-1.0, unparseable=0.5, wrong=0.5),
                       temperature=temperature,
                       **{**SMALL, "prompts_per_step": 6, "group_size": 3, "max_new_tokens": 8, "micro_batch": 64})
    t = PolicyTrainer(_student(char_tokenizer), char_tokenizer, problems, arith, cfg, "/unused", seed=0,
                      show_progress=False)
    start = copy.deepcopy(t.model)
    probs, rolls = t.rollouts(0)  # what the step will sample (a function of seed, step, problem, g)
    grads = {}
    t.optimizer.register_step_pre_hook(
        lambda opt, a, kw: grads.update({n: p.grad.clone() for n, p in t.model.named_parameters()}))
    out = t.rollout_step(0)
    assert 0 < out["frac_reward_zero_std"] < 1  # both kinds of group: the test covers the split
    # the reference: every row through one forward and backward, with the same rollouts
    rewards, _ = t.reward(probs, [r.text for r in rolls], [r.finish_reason for r in rolls])
    adv = group_advantages(torch.tensor(rewards).view(-1, 3), cfg.scale_rewards).reshape(-1)
    assert float((adv == 0).float().mean()) == out["frac_reward_zero_std"]
    batch = sequence_batch([r.prompt for r in rolls], [r.completion for r in rolls], char_tokenizer.pad_token_id)
    n_tok = int(batch["mask"].sum())
    w = token_weights(batch["mask"], cfg.loss_norm, n_tok, len(rolls), cfg.max_new_tokens)
    start.train()
    logp = token_logprobs(forward_logits(start, batch) / temperature, batch["input_ids"][:, 1:])
    loss, _ = ClippedPolicyLoss()(logp, logp.detach(), adv[:, None].expand_as(logp), w)
    loss.backward()
    assert out["loss"] == pytest.approx(float(loss.detach()), abs=1e-6)
    for n, p in start.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-7)


def test_a_step_with_every_group_alike_still_applies_weight_decay(problems, arith, char_tokenizer):
    """Zero gradients, not missing ones: AdamW decays the weights as it would with the full backward."""
    same = RewardValues(correct=0.5, truncated=0.5, unparseable=0.5, wrong=0.5)
    cfg = PolicyConfig(objective="grpo", rewards=same, weight_decay=0.1, **SMALL)
    t = PolicyTrainer(_student(char_tokenizer), char_tokenizer, problems, arith, cfg, "/unused", seed=0,
                      show_progress=False)
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    out = t.rollout_step(0)
    assert out["frac_reward_zero_std"] == 1.0 and out["loss"] == 0.0 and out["entropy"] > 0
    for n, p in t.model.named_parameters():
        torch.testing.assert_close(p.detach(), before[n] * (1 - cfg.lr * 0.1))
