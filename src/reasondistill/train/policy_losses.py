"""Losses of policy training (train/policy.py): clipped policy gradient (GRPO / Dr. GRPO / DAPO),
group advantages, the k3 KL estimate, and DPO.

Why a module apart from train/losses.py: those compare two full next-token distributions on fixed
text; these weight the log-probability of tokens the student sampled by an advantage. Every loss
returns a SUM weighted by caller-given per-token weights, so the caller normalises by global counts
(all micro-batches of a step) and gradient accumulation is exact.

    adv = group_advantages(rewards.view(-1, G), scale=False).view(-1)        # Dr. GRPO
    loss = ClippedPolicyLoss(0.2)(logp, old_logp, adv[:, None].expand_as(logp), weights)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def group_advantages(rewards: Tensor, scale: bool = False, eps: float = 1e-4) -> Tensor:
    """(P, G) rewards -> (P, G) advantages: reward minus its group's mean, divided by the group's std
    when ``scale`` (GRPO; Dr. GRPO drops it: it up-weights groups that are nearly all right or wrong)."""
    adv = rewards - rewards.mean(-1, keepdim=True)
    if scale:
        adv = adv / (rewards.std(-1, keepdim=True, unbiased=False) + eps)
    return adv


def token_weights(mask: Tensor, norm: str, n_tokens: int, n_seqs: int, max_new_tokens: int) -> Tensor:
    """(N, L) completion mask -> (N, L) weights whose weighted sum is the step's loss.

    ``n_tokens``/``n_seqs`` count the WHOLE step (every micro-batch): token (DAPO) 1/n_tokens;
    constant (Dr. GRPO) 1/(n_seqs · max_new_tokens); sequence (GRPO) 1/(len_i · n_seqs)."""
    m = mask.float()
    if norm == "token":
        return m / max(1, n_tokens)
    if norm == "constant":
        return m / (n_seqs * max_new_tokens)
    if norm == "sequence":
        return m / (m.sum(-1, keepdim=True).clamp(min=1) * n_seqs)
    raise ValueError(f"loss_norm must be token, constant or sequence, not {norm!r}")


def token_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """(N, L, V) logits predicting (N, L) targets -> (N, L) fp32 log-probabilities."""
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)


def token_entropy(logits: Tensor) -> Tensor:
    """(N, L, V) -> (N, L) entropy of softmax(logits), fp32."""
    logp = F.log_softmax(logits.float(), -1)
    return -(logp.exp() * logp).sum(-1)


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token unbiased, non-negative estimate of KL(π ‖ π_ref) from samples of π (Schulman's k3):
    exp(ref − logp) − (ref − logp) − 1. Zero where the two agree."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


class ClippedPolicyLoss(nn.Module):
    """PPO-style clipped surrogate per token, weighted and summed:

        ℓ_t = −min(r_t · A_t, clip(r_t, 1 − ε_low, 1 + ε_high) · A_t) + kl_coef · k3(logp, ref),
        r_t = exp(logp_t − old_logp_t)

    Inputs (N, L): ``logp`` (differentiable), ``old_logp`` and ``advantages`` (detached), ``weights``
    (0 off the completion; see :func:`token_weights`), optional ``ref_logp``. Returns
    ``(loss sum, number of clipped completion tokens)`` as 0-dim fp32 tensors (the count, not a
    weighted sum, so that the clip fraction means the same under every ``loss_norm``). With
    ``old_logp = logp.detach()`` (one update per batch) r = 1 in value and the gradient is the plain
    policy gradient ``−A ∇logp``."""

    def __init__(self, clip_eps: float = 0.2, clip_eps_high: float | None = None, kl_coef: float = 0.0):
        super().__init__()
        self.low, self.high, self.kl_coef = clip_eps, clip_eps if clip_eps_high is None else clip_eps_high, kl_coef

    def forward(self, logp: Tensor, old_logp: Tensor, advantages: Tensor, weights: Tensor,
                ref_logp: Tensor | None = None) -> tuple[Tensor, Tensor]:
        ratio = torch.exp(logp - old_logp)
        clipped = ratio.clamp(1 - self.low, 1 + self.high)
        per_token = -torch.minimum(ratio * advantages, clipped * advantages)
        if self.kl_coef and ref_logp is not None:
            per_token = per_token + self.kl_coef * k3_kl(logp, ref_logp)
        was_clipped = ((ratio * advantages) > (clipped * advantages)).float()
        return (per_token * weights).sum(), (was_clipped * (weights > 0)).sum().detach()


class DPOLoss(nn.Module):
    """Direct preference optimisation (Rafailov et al. 2023), summed over pairs:

        −log σ(β · ((π_c − ref_c) − (π_r − ref_r)))

    Inputs (P,): summed completion log-probs of the policy and the frozen reference on the chosen and
    the rejected completion. Returns the 0-dim fp32 sum (divide by the step's pair count)."""

    def __init__(self, beta: float = 0.1):
        super().__init__()
        self.beta = beta

    def margins(self, pol_c: Tensor, pol_r: Tensor, ref_c: Tensor, ref_r: Tensor) -> Tensor:
        return self.beta * ((pol_c - ref_c) - (pol_r - ref_r))

    def forward(self, pol_c: Tensor, pol_r: Tensor, ref_c: Tensor, ref_r: Tensor) -> Tensor:
        return -F.logsigmoid(self.margins(pol_c, pol_r, ref_c, ref_r)).sum()
