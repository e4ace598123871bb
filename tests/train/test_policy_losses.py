"""Policy-training losses and rewards (train/policy_losses.py, train/rewards.py): values by hand,
gradients, clipping, length bias, DPO, and the verifier-as-reward."""

import math

import pytest
import torch

from reasondistill.records import Problem
from reasondistill.train.policy_config import PolicyConfig, RewardValues
from reasondistill.train.policy_losses import (ClippedPolicyLoss, DPOLoss, group_advantages, k3_kl, token_entropy,
                                               token_logprobs, token_weights)
from reasondistill.train.rewards import VerifierReward, well_formatted


def test_group_advantages_centre_and_optionally_scale():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    a = group_advantages(r)
    assert torch.allclose(a.mean(-1), torch.zeros(2)) and torch.equal(a[1], torch.zeros(4))  # all right: no signal
    assert torch.allclose(a[0], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    s = group_advantages(r, scale=True)
    assert torch.allclose(s[0], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-3) and torch.equal(s[1], torch.zeros(4))


def test_token_weights_normalise_by_global_counts_and_constant_has_no_length_bias():
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    tok = token_weights(mask, "token", n_tokens=6, n_seqs=2, max_new_tokens=6)
    assert tok.sum().item() == pytest.approx(1.0) and tok[0, 0] == tok[1, 0]  # every token the same weight
    seq = token_weights(mask, "sequence", 6, 2, 6)
    assert seq[0].sum().item() == pytest.approx(0.5) and seq[1].sum().item() == pytest.approx(0.5)
    assert seq[1, 0] == 2 * seq[0, 0]  # GRPO: short sequences' tokens weigh more (the length bias)
    const = token_weights(mask, "constant", 6, 2, 6)
    assert const[0, 0] == const[1, 0] == pytest.approx(1 / 12)
    # split into two micro-batches with the step's global counts: the same weights (exact accumulation)
    assert torch.equal(token_weights(mask[:1], "token", 6, 2, 6), tok[:1])
    with pytest.raises(ValueError, match="loss_norm"):
        token_weights(mask, "mean", 6, 2, 6)


def test_clipped_loss_is_the_policy_gradient_at_ratio_one():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, requires_grad=True)
    targets = torch.randint(0, 5, (2, 3))
    logp = token_logprobs(logits, targets)
    adv = torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, -2.0]])
    w = torch.full((2, 3), 1 / 6)
    loss, clip = ClippedPolicyLoss(0.2)(logp, logp.detach(), adv, w)
    assert loss.item() == pytest.approx(-(adv * w).sum().item()) and clip.item() == 0
    g = torch.autograd.grad(loss, logits)[0]
    logits2 = logits.detach().requires_grad_(True)
    want = torch.autograd.grad(-(token_logprobs(logits2, targets) * adv * w).sum(), logits2)[0]
    assert torch.allclose(g, want, atol=1e-6)


def test_clipping_stops_the_gradient_beyond_the_trust_region():
    logp = torch.tensor([[0.0, 0.0]], requires_grad=True)
    old = torch.tensor([[-1.0, 1.0]])  # ratios e (too high) and 1/e (too low)
    adv = torch.tensor([[1.0, 1.0]])
    loss, clip = ClippedPolicyLoss(0.2)(logp, old, adv, torch.ones(1, 2))
    loss.backward()
    assert logp.grad[0, 0] == 0  # positive advantage, ratio above 1 + eps: clipped, no gradient
    assert logp.grad[0, 1] < 0  # ratio below 1 - eps with positive advantage: the min keeps the unclipped term
    assert clip.item() == 1.0
    loss_hi, _ = ClippedPolicyLoss(0.2, clip_eps_high=5.0)(logp.detach(), old, adv, torch.ones(1, 2))
    assert loss_hi.item() == pytest.approx(-(math.e + math.exp(-1)))  # clip-higher: e is inside [0.8, 6]


def test_clipped_count_does_not_depend_on_the_token_weights():
    """The second output counts clipped completion tokens: the same under token, sequence or constant
    weights (a weighted sum would give a "fraction" that depends on the loss normalisation)."""
    logp = torch.zeros(2, 3)
    old = torch.tensor([[-1.0, 0.0, 1.0], [-1.0, -1.0, 0.0]])  # ratios e, 1, 1/e; e, e, 1
    adv = torch.ones(2, 3)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    counts = {ClippedPolicyLoss(0.2)(logp, old, adv, w)[1].item()
              for w in (mask / 5, mask / torch.tensor([[3.0], [2.0]]) / 2, mask / 12)}
    assert counts == {3.0}  # e (row 0) and e, e (row 1); the masked-out position never counts


def test_k3_kl_is_zero_for_equal_and_positive_otherwise():
    a = torch.randn(10)
    assert torch.equal(k3_kl(a, a), torch.zeros(10))
    assert (k3_kl(a, a + torch.randn(10)) >= 0).all()


def test_entropy_of_uniform_is_log_v():
    assert token_entropy(torch.zeros(1, 1, 7)).item() == pytest.approx(math.log(7))


def test_dpo_loss_is_log2_at_the_reference_and_pushes_chosen_up():
    dpo = DPOLoss(beta=0.5)
    pol_c = torch.tensor([-3.0, -4.0], requires_grad=True)
    pol_r = torch.tensor([-2.0, -5.0], requires_grad=True)
    loss = dpo(pol_c, pol_r, pol_c.detach(), pol_r.detach())
    assert loss.item() == pytest.approx(2 * math.log(2))
    loss.backward()
    assert (pol_c.grad < 0).all() and (pol_r.grad > 0).all()  # descent raises chosen, lowers rejected
    m = dpo.margins(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]))
    assert m.item() == pytest.approx(0.5 * (1 - (-1)))


def test_verifier_reward_values_by_verdict_and_format_bonus(arith):
    p = Problem("p", "chained_arith", "10+2*3", "36", difficulty=2)
    values = RewardValues(correct=1.0, wrong=-0.25, unparseable=-0.5, truncated=-1.0, format=0.1)
    texts = ["<think>10+2=12\n12*3=36</think>\n\n36", "<think>x</think>\n\n35", "36", "<think>x</think>\n\nabc",
             "<think>10+2=12", "<think>a</think><think>b</think>36"]
    fins = ["stop", "stop", "stop", "stop", "length", "stop"]
    rewards, verdicts = VerifierReward(arith, values)([p] * 6, texts, fins)
    assert verdicts == ["correct", "wrong", "correct", "unparseable", "truncated", "unparseable"]
    assert rewards == pytest.approx([1.1, -0.15, 1.0, -0.4, -1.0, -0.5])
    assert well_formatted(texts[0]) and not well_formatted("36") and not well_formatted("<think>x</think>\n\n")


def test_policy_config_rejects_what_cannot_work():
    with pytest.raises(ValueError, match="group_size >= 2"):
        PolicyConfig(objective="grpo", group_size=1)
    with pytest.raises(ValueError, match="kl_teacher"):
        PolicyConfig(objective="dpo", kl_teacher=0.1)
    with pytest.raises(ValueError):
        PolicyConfig(objective="ppo")


@pytest.mark.parametrize("kw, key", [
    ({"objective": "grpo", "divergence": "jsd"}, "divergence"),
    ({"objective": "grpo", "beta": 0.5}, "beta"),
    ({"objective": "on_policy", "divergence": "jsd", "kl_ref": 0.1}, "kl_ref"),
    ({"objective": "on_policy", "divergence": "jsd", "clip_eps": 0.3}, "clip_eps"),
    ({"objective": "on_policy", "beta": 0.5}, "beta"),
    ({"objective": "on_policy", "rewards": {"format": 0.2}}, "rewards"),
    ({"objective": "on_policy", "loss_norm": "sequence"}, "loss_norm"),
    ({"objective": "dpo", "kl_ref": 0.1}, "kl_ref"),
    ({"objective": "dpo", "updates_per_batch": 2}, "updates_per_batch"),
    ({"objective": "grpo", "dpo_sft": 0.5}, "dpo_sft"),
])
def test_policy_config_rejects_a_setting_the_objective_never_reads(kw, key):
    """A key set away from its default that the objective ignores would do nothing, silently."""
    with pytest.raises(ValueError, match=rf"{key} applies to .*objective is {kw['objective']}.*remove {key}"):
        PolicyConfig(**kw)


def test_policy_config_accepts_defaults_and_keys_the_objective_reads():
    PolicyConfig(objective="dpo", kl_ref=0.0, dpo_sft=0.5, group_size=4)  # a default, a dpo key; rollout shape shared
    PolicyConfig(objective="on_policy", divergence="jsd", beta=0.5, group_size=1, updates_per_batch=2)
    PolicyConfig(objective="on_policy", kl_ref=0.1, clip_eps=0.3)  # sampled_reverse_kl: the clipped loss
    PolicyConfig(objective="grpo", kl_ref=0.1, loss_norm="sequence", rewards={"format": 0.2}, scale_rewards=True)
