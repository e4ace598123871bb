"""Soft-distillation losses: token-level divergences between the teacher's and the student's
next-token distributions, the combined ``KD + cross-entropy`` objective, and sparse teachers
stored offline as top-k log-probabilities.

Why this file exists: hard distillation (SFT on teacher traces) learns only the sampled token;
soft distillation also matches the teacher's whole next-token distribution. The training loop
(:mod:`reasondistill.train.sft`) wants the *sum* of per-token losses so it can divide by the
number of target tokens in the whole accumulated, all-process batch; every loss here returns
exactly that.

Contract of every loss module ``loss(student_logits, teacher, labels)``:

* ``student_logits`` (B, L, V), any float dtype; ``labels`` (B, L) with ``ignore_index`` (-100)
  on positions that are not answer tokens. Inputs are ALREADY ALIGNED: position t predicts
  ``labels[t]``; the caller does the shift (``logits[:, :-1]``, ``labels[:, 1:]``).
* ``teacher`` is either dense logits (B, L, V) or a :class:`TopKTeacher` (sparse, offline).
* Returns a 0-dim fp32 tensor: the SUM over non-ignored positions (``.mean(...)`` divides by
  their count, for convenience). Ignored rows never enter the computation, so garbage there
  (even all ``-inf`` rows) cannot produce NaN values or gradients.
* Zero-probability entries follow ``0 · log 0 = 0``: ``-inf`` logits are fine wherever the
  divergence is finite. Forward KL is ``+inf`` if the student puts zero mass where the teacher
  puts some (and reverse KL vice versa), as it should be; JSD, skew KLs and TV stay finite.
* Vocabularies must match. If student and teacher differ only by padding rows of their
  embedding matrices (e.g. vocab rounded up to a multiple of 64), call :func:`align_vocab`
  explicitly to slice both to the smaller size; the losses never slice silently.

Temperature and the T² convention: divergences are computed between ``softmax(z / T)`` of
both models and returned WITHOUT any T² factor. :class:`DivergencePlusCrossEntropy` computes
``α · T² · divergence + (1 − α) · CE`` (CE at T = 1 on the labels), the Hinton et al. (2015)
convention: soft-target gradients scale as 1/T², so T² keeps the KD/CE balance roughly
independent of T. Using a divergence alone, multiply by T² yourself if you want that scaling.

Chunked mode (``chunk_size=c``): the valid tokens are processed c rows at a time in fp32, and
the gradient of each chunk is computed right away (a custom autograd function) and written into
one gradient buffer in the student's dtype. The fp32 copies, softmaxes and intermediates of the
full (B, L, V) tensors are never held at once; working memory is about ``10 · c · V · 4`` bytes
on top of the one gradient buffer (bench/kd_memory.py: KD step peak ≈ 1.02× the tensor peak of
plain SFT at V = 32000, L = 2048). On CPU 8–32 rows is fastest (cache-sized temporaries); on a
GPU use hundreds. Chunked mode differentiates the student only; one backward per forward.

Sparse teachers: :func:`topk_from_logits` turns teacher logits into a :class:`TopKTeacher`
(top-k log-probabilities, their token ids, and the log of the remaining tail mass). Any
divergence then compares k + 1 buckets (the k ids and one tail bucket) with the student's
distribution collapsed onto the same buckets. With k = V this equals the dense divergence;
for smaller k it is a lower bound (data-processing inequality) that grows with k, and
:func:`kept_kl_share` measures how much of the full-vocabulary KL survives.

    kd = DivergencePlusCrossEntropy(ForwardKL(temperature=2.0), alpha=0.5, chunk_size=16)
    s, t = align_vocab(student_out.logits[:, :-1], teacher_out.logits[:, :-1])
    loss_sum = kd(s, t, batch["labels"][:, 1:])      # divide by the global target-token count
    sparse = topk_from_logits(t, k=128, temperature=2.0).to_storage()   # capture stage
    loss_sum = kd(s, sparse, batch["labels"][:, 1:])                    # training from storage
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE_INDEX = -100
_FLOOR = -1e30  # finite stand-in for log(0) where a -inf would give NaN gradients (0 · inf)

__all__ = ["IGNORE_INDEX", "TopKTeacher", "align_vocab", "topk_from_logits", "kept_kl_share",
           "ForwardKL", "ReverseKL", "GeneralizedJSD", "SkewForwardKL", "SkewReverseKL",
           "TotalVariationDistance", "DivergencePlusCrossEntropy"]


class TopKTeacher(NamedTuple):
    """A sparse teacher: ``logprobs`` (B, L, k) float, ``ids`` (B, L, k) int64 or int32,
    ``tail_logmass`` (B, L) = log(1 − Σ exp(logprobs)), all at softmax ``temperature``."""

    logprobs: Tensor
    ids: Tensor
    tail_logmass: Tensor
    temperature: float = 1.0

    def to_storage(self) -> "TopKTeacher":
        """fp16 log-probs + int32 ids + fp16 tail: ``k · 6 + 2`` bytes per token."""
        return TopKTeacher(self.logprobs.half(), self.ids.int(), self.tail_logmass.half(), self.temperature)


def align_vocab(student_logits: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
    """Slice both (…, V) tensors to the smaller vocabulary (views, no copy).

    Only correct when the extra entries are padding rows of the larger embedding matrix (ids
    no tokenizer ever produces): dropping them renormalises the softmax over real tokens. It is
    wrong if the vocabularies differ in real tokens or order.
    """
    v = min(student_logits.size(-1), teacher_logits.size(-1))
    return student_logits[..., :v], teacher_logits[..., :v]


@torch.no_grad()
def topk_from_logits(teacher_logits: Tensor, k: int, temperature: float = 1.0,
                     chunk_size: int = 1024) -> TopKTeacher:
    """(B, L, V) logits -> :class:`TopKTeacher` (fp32 log-probs, int64 ids, fp32 tail).

    The tail is the exact log-sum-exp of the log-probs outside the top k (``-inf`` when k = V),
    not ``log(1 − Σ p)``, which loses all precision when the tail is tiny.
    """
    b, l, v = teacher_logits.shape
    if not 1 <= k <= v:
        raise ValueError(f"k={k} must be in [1, {v}]")
    flat = teacher_logits.reshape(-1, v)
    tops, ids, tails = [], [], []
    for start in range(0, flat.size(0), chunk_size):
        logp = F.log_softmax(flat[start:start + chunk_size].float() / temperature, -1)
        top, idx = logp.topk(k, -1)
        tops.append(top)
        ids.append(idx)
        tails.append(torch.logsumexp(logp.scatter(-1, idx, float("-inf")), -1))
    return TopKTeacher(torch.cat(tops).view(b, l, k), torch.cat(ids).view(b, l, k),
                       torch.cat(tails).view(b, l), float(temperature))


def _kl(logp: Tensor, logq: Tensor) -> Tensor:
    """Per row KL(P ‖ Q) = Σ p (log p − log q), with 0 · log(0/q) = 0 in value and gradient."""
    p = logp.exp()
    return (p * torch.where(p > 0, logp - logq, 0.0)).sum(-1)


def _log_mix(logp: Tensor, logq: Tensor, w: float) -> Tensor:
    """log(w · P + (1 − w) · Q), in log space; -inf entries are floored so gradients stay finite."""
    if w == 0:
        return logq
    if w == 1:
        return logp
    return torch.logaddexp(logp.clamp(min=_FLOOR) + math.log(w), logq.clamp(min=_FLOOR) + math.log1p(-w))


class _TokenLoss(nn.Module):
    """Masking, vocab checks, plain vs chunked evaluation; subclasses define ``row_losses``."""

    def __init__(self, temperature: float = 1.0, chunk_size: int | None = None,
                 ignore_index: int = IGNORE_INDEX):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
        self.temperature, self.chunk_size, self.ignore_index = float(temperature), chunk_size, ignore_index

    def row_losses(self, s: Tensor, teacher_rows: tuple[Tensor, ...], labels: Tensor) -> Tensor:
        """(n, V) fp32 student logits, teacher rows, (n,) labels -> (n,) per-token losses."""
        raise NotImplementedError

    def row_losses_and_grad(self, s: Tensor, teacher_rows: tuple[Tensor, ...], labels: Tensor) -> tuple[Tensor, Tensor]:
        """(n,) per-token losses and the (n, V) gradient of their sum w.r.t. ``s`` (chunked mode).
        Autograd here; subclasses override with closed forms where they are cheaper."""
        with torch.enable_grad():
            s = s.detach().requires_grad_(True)
            rows = self.row_losses(s, teacher_rows, labels)
            return rows.detach(), torch.autograd.grad(rows.sum(), s)[0]

    def forward(self, student_logits: Tensor, teacher: Tensor | TopKTeacher, labels: Tensor) -> Tensor:
        """(B, L, V) student logits, (B, L, V) teacher logits or TopKTeacher, (B, L) labels ->
        0-dim fp32 sum over positions with ``labels != ignore_index``."""
        parts = self._check(student_logits, teacher, labels)
        with torch.autocast(student_logits.device.type, enabled=False):  # fp32 math, whatever the context
            if self.chunk_size is None:
                keep = labels != self.ignore_index
                return self.row_losses(student_logits[keep].float(), tuple(x[keep] for x in parts),
                                       labels[keep]).sum()
            need_grad = torch.is_grad_enabled() and student_logits.requires_grad  # False under no_grad
            return _ChunkedSum.apply(self, need_grad, student_logits, labels, *parts)

    def mean(self, student_logits: Tensor, teacher: Tensor | TopKTeacher, labels: Tensor) -> Tensor:
        """Convenience: the sum divided by the number of non-ignored positions (local batch)."""
        n = (labels != self.ignore_index).sum().clamp(min=1)
        return self(student_logits, teacher, labels) / n

    def _check(self, s: Tensor, teacher: Tensor | TopKTeacher, labels: Tensor) -> tuple[Tensor, ...]:
        if s.dim() != 3 or labels.shape != s.shape[:2]:
            raise ValueError(f"want student_logits (B, L, V) and labels (B, L); got {tuple(s.shape)} "
                             f"and {tuple(labels.shape)}")
        if isinstance(teacher, TopKTeacher):
            parts = (teacher.logprobs, teacher.ids, teacher.tail_logmass)
            if teacher.logprobs.shape != teacher.ids.shape or teacher.logprobs.shape[:2] != s.shape[:2] \
                    or teacher.tail_logmass.shape != s.shape[:2] or teacher.ids.size(-1) > s.size(-1):
                raise ValueError("TopKTeacher shapes must be (B, L, k), (B, L, k), (B, L) with k <= V")
            if not math.isclose(teacher.temperature, self.temperature):
                raise ValueError(f"teacher top-k was captured at T={teacher.temperature}, loss uses "
                                 f"T={self.temperature}; capture at the training temperature")
        else:
            parts = (teacher,)
            if teacher.shape != s.shape:
                hint = " (pad rows? slice explicitly with align_vocab)" if teacher.shape[:2] == s.shape[:2] else ""
                raise ValueError(f"teacher {tuple(teacher.shape)} != student {tuple(s.shape)}{hint}")
        if self.chunk_size is not None and any(x.requires_grad for x in parts):
            raise ValueError("chunked mode differentiates the student only; detach the teacher")
        return parts


class _ChunkedSum(torch.autograd.Function):
    """Sum of ``loss.row_losses`` over valid rows, c rows at a time; the gradient of each chunk
    is taken during the forward and written into one buffer that the backward hands out."""

    @staticmethod
    def forward(ctx, loss: _TokenLoss, need_grad: bool, student: Tensor, labels: Tensor, *teacher: Tensor) -> Tensor:
        v = student.size(-1)
        flat_s = student.reshape(-1, v)
        flat_t = [x.reshape(-1, *x.shape[2:]) for x in teacher]
        flat_y = labels.reshape(-1)
        rows = (flat_y != loss.ignore_index).nonzero().squeeze(-1)
        grad = torch.zeros(flat_s.shape, dtype=student.dtype, device=student.device) if need_grad else None
        total = torch.zeros((), dtype=torch.float32, device=student.device)
        for idx in rows.split(loss.chunk_size):
            s = flat_s.index_select(0, idx).float()
            t = tuple(x.index_select(0, idx) for x in flat_t)
            y = flat_y.index_select(0, idx)
            if need_grad:
                rows_loss, g = loss.row_losses_and_grad(s, t, y)
                grad.index_copy_(0, idx, g.to(grad.dtype))
            else:
                rows_loss = loss.row_losses(s, t, y)
            total += rows_loss.sum()
        ctx.grad, ctx.shape, ctx.n_teacher = grad, student.shape, len(teacher)
        return total

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grad = ctx.grad
        if grad is None and ctx.needs_input_grad[2]:
            raise RuntimeError("a chunked loss supports one backward pass per forward")
        if grad is not None:
            ctx.grad = None  # scaled in place and handed out: no second full-size buffer
            grad = grad.mul_(grad_out.to(grad.dtype)).view(ctx.shape)
        return (None, None, grad, None) + (None,) * ctx.n_teacher


class _Divergence(_TokenLoss):
    """A divergence D(P_teacher, Q_student) between softmax(teacher / T) and softmax(student / T).

    Call: ``(student_logits (B, L, V), teacher (B, L, V) logits or TopKTeacher, labels (B, L))
    -> 0-dim fp32`` sum of per-token divergences over non-ignored positions, no T² factor.
    Arguments: ``temperature`` T > 0, ``chunk_size`` (rows per chunk, None = unchunked),
    ``ignore_index``.
    """

    def divergence(self, logp: Tensor, logq: Tensor) -> Tensor:
        """(n, m) teacher and student log-probs over the same m outcomes -> (n,)."""
        raise NotImplementedError

    def log_probs(self, s: Tensor, teacher_rows: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """Teacher and student log-probs at temperature T: over V (dense) or k + 1 buckets (top-k)."""
        logq = F.log_softmax(s / self.temperature, -1)
        if len(teacher_rows) == 1:
            return F.log_softmax(teacher_rows[0].float() / self.temperature, -1), logq
        top, ids, tail = teacher_rows
        ids = ids.long()
        # renormalise the k + 1 teacher buckets (fp16 storage does not sum to exactly 1)
        logp = F.log_softmax(torch.cat([top.float(), tail.float().unsqueeze(-1)], -1), -1)
        q_tail = torch.logsumexp(logq.scatter(-1, ids, _FLOOR), -1, keepdim=True)
        # padding (the compact cache's: log-prob -inf AND a repeat of the row's first id) is an empty bucket on
        # both sides; a real zero-probability teacher entry (a distinct id) keeps the student's mass
        pad = torch.isneginf(top) & (ids == ids[..., :1])
        pad[..., 0] = False
        q_top = torch.where(pad, float("-inf"), logq.gather(-1, ids))
        return logp, torch.cat([q_top, q_tail], -1)

    def row_losses(self, s: Tensor, teacher_rows: tuple[Tensor, ...], labels: Tensor) -> Tensor:
        return self.divergence(*self.log_probs(s, teacher_rows))


class ForwardKL(_Divergence):
    """KL(teacher ‖ student) = Σ_v p_v (log p_v − log q_v), the full KL including the teacher
    entropy term (zero iff the distributions match). Mode-covering.
    (B, L, V), (B, L, V) | TopKTeacher, (B, L) -> 0-dim fp32 sum."""

    def divergence(self, logp: Tensor, logq: Tensor) -> Tensor:
        return _kl(logp, logq)

    def row_losses_and_grad(self, s: Tensor, teacher_rows: tuple[Tensor, ...], labels: Tensor) -> tuple[Tensor, Tensor]:
        if len(teacher_rows) != 1:  # top-k buckets: autograd
            return super().row_losses_and_grad(s, teacher_rows, labels)
        logp, logq = self.log_probs(s, teacher_rows)
        p = logp.exp()
        return _kl(logp, logq), logq.exp_().sub_(p).div_(self.temperature)  # d/ds = (q − p) / T


class ReverseKL(_Divergence):
    """KL(student ‖ teacher) = Σ_v q_v (log q_v − log p_v). Mode-seeking.
    (B, L, V), (B, L, V) | TopKTeacher, (B, L) -> 0-dim fp32 sum."""

    def divergence(self, logp: Tensor, logq: Tensor) -> Tensor:
        return _kl(logq, logp)


class GeneralizedJSD(_Divergence):
    """Generalized Jensen-Shannon divergence, TRL ``GKDTrainer.generalized_jsd_loss`` definition:

        M = β · P_teacher + (1 − β) · Q_student        (mixed in log space with logaddexp)
        JSD_β = β · KL(P ‖ M) + (1 − β) · KL(Q ‖ M),   β ∈ [0, 1]

    β = 0.5 is the symmetric JSD. The endpoints are defined separately, as in TRL: β = 0 gives
    forward KL(P ‖ Q) and β = 1 gives reverse KL(Q ‖ P). They are DISCONTINUITIES: as β -> 0 or
    β -> 1 the mixture collapses onto one distribution and JSD_β -> 0 (JSD_β / β -> forward KL
    and JSD_β / (1 − β) -> reverse KL). Values near the endpoints are tiny, not near a KL.
    Bounded by log 2 at β = 0.5. (B, L, V), (B, L, V) | TopKTeacher, (B, L) -> 0-dim fp32 sum.
    """

    def __init__(self, beta: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        self.beta = float(beta)

    def divergence(self, logp: Tensor, logq: Tensor) -> Tensor:
        if self.beta == 0.0:
            return _kl(logp, logq)
        if self.beta == 1.0:
            return _kl(logq, logp)
        logm = _log_mix(logp, logq, self.beta)
        return self.beta * _kl(logp, logm) + (1 - self.beta) * _kl(logq, logm)


class SkewForwardKL(_Divergence):
    """DistiLLM α-skew KL: KL(P ‖ α · P + (1 − α) · Q), α ∈ [0, 1] (α = 0: forward KL; α = 1: 0).
    The true KL, teacher entropy term included (DistiLLM's reference code drops it), so it is
    zero for identical distributions. (B, L, V), (B, L, V) | TopKTeacher, (B, L) -> 0-dim fp32."""

    def __init__(self, alpha: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = float(alpha)

    def divergence(self, logp: Tensor, logq: Tensor) -> Tensor:
        return _kl(logp, _log_mix(logp, logq, self.alpha))


class SkewReverseKL(SkewForwardKL):
    """DistiLLM α-skew reverse KL: KL(Q ‖ (1 − α) · P + α · Q) (α = 0: reverse KL; α = 1: 0).
    (B, L, V), (B, L, V) | TopKTeacher, (B, L) -> 0-dim fp32 sum."""

    def divergence(self, logp: Tensor, logq: Tensor) -> Tensor:
        return _kl(logq, _log_mix(logp, logq, 1 - self.alpha))


class TotalVariationDistance(_Divergence):
    """TV(P, Q) = ½ Σ_v |p_v − q_v|, in [0, 1] per token.
    (B, L, V), (B, L, V) | TopKTeacher, (B, L) -> 0-dim fp32 sum."""

    def divergence(self, logp: Tensor, logq: Tensor) -> Tensor:
        return 0.5 * (logp.exp() - logq.exp()).abs().sum(-1)


class DivergencePlusCrossEntropy(_TokenLoss):
    """Per answer token: ``α · T² · divergence_T(teacher, student) + (1 − α) · CE(student, label)``.

    CE is the student's cross-entropy on ``labels`` at T = 1 over the full vocabulary (also with
    a TopKTeacher). T, ignore_index and, unless given, ``chunk_size`` come from ``divergence``;
    one chunked pass computes both terms.
    (B, L, V), (B, L, V) | TopKTeacher, (B, L) -> 0-dim fp32 sum.
    """

    def __init__(self, divergence: _Divergence, alpha: float = 0.5, chunk_size: int | None = None):
        super().__init__(divergence.temperature, chunk_size if chunk_size is not None else divergence.chunk_size,
                         divergence.ignore_index)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.divergence, self.alpha = divergence, float(alpha)

    def divergence_only(self) -> "DivergencePlusCrossEntropy":
        """The same loss with α = 1 (``T² · divergence``, no CE): what tokens the student wrote itself
        are trained on (on-policy distillation), where CE would be self-imitation."""
        return DivergencePlusCrossEntropy(self.divergence, alpha=1.0, chunk_size=self.chunk_size)

    def row_losses(self, s: Tensor, teacher_rows: tuple[Tensor, ...], labels: Tensor) -> Tensor:
        kd = self.divergence.row_losses(s, teacher_rows, labels)
        ce = torch.logsumexp(s, -1) - s.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
        return self.alpha * self.temperature ** 2 * kd + (1 - self.alpha) * ce

    def row_losses_and_grad(self, s: Tensor, teacher_rows: tuple[Tensor, ...], labels: Tensor) -> tuple[Tensor, Tensor]:
        kd, grad = self.divergence.row_losses_and_grad(s, teacher_rows, labels)
        w, y = self.alpha * self.temperature ** 2, labels.long().unsqueeze(-1)
        lse = torch.logsumexp(s, -1, keepdim=True)
        ce = (lse - s.gather(-1, y)).squeeze(-1)
        grad.mul_(w).add_(torch.exp(s - lse), alpha=1 - self.alpha)  # d CE / ds = softmax(s) − onehot
        grad.scatter_add_(-1, y, torch.full(y.shape, self.alpha - 1, dtype=grad.dtype, device=grad.device))
        return w * kd + (1 - self.alpha) * ce, grad


@torch.no_grad()
def kept_kl_share(student_logits: Tensor, teacher_logits: Tensor, k: int, temperature: float = 1.0,
                  labels: Tensor | None = None, chunk_size: int = 32) -> float:
    """Σ sparse forward KL over k + 1 buckets / Σ dense forward KL, over the non-ignored tokens.

    In [0, 1] (bucketing can only lose divergence), nondecreasing in k, 1 at k = V: the share of
    the full-vocabulary KL signal that a top-k teacher keeps for this student.
    """
    if labels is None:
        labels = torch.zeros(student_logits.shape[:2], dtype=torch.long, device=student_logits.device)
    fkl = ForwardKL(temperature=temperature, chunk_size=chunk_size)
    dense = fkl(student_logits, teacher_logits, labels)
    sparse = fkl(student_logits, topk_from_logits(teacher_logits, k, temperature), labels)
    return (sparse / dense).item() if dense > 0 else 1.0


# the machinery above, public for token losses defined elsewhere (train/cross_tokenizer.py)
TokenLoss, ChunkedSum, kl_per_row = _TokenLoss, _ChunkedSum, _kl
