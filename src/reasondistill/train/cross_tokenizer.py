"""Soft-distillation losses between a student and a teacher with DIFFERENT tokenizers.

Why: the id-by-id divergences of train/losses.py need one vocabulary. These modules compare the
two models' next-token distributions at the positions where both predict the same next text:
the first token of each aligned group (data/token_alignment.py). Three ways to compare a
teacher distribution P over V_t with a student distribution Q over V_s (both at temperature T):

* :class:`SortedL1` (``uld``, Boizard et al. 2024, Universal Logit Distillation): ``Σ_r
  |P_(r) − Q_(r)|`` over both distributions sorted in decreasing order, the shorter one padded with
  zeros (the closed form of their Wasserstein-1 bound). Token identity is ignored: it matches
  the SHAPE of the teacher's distribution, not which token it favours.
* :class:`SharedVocabKL` (``aligned``, in the spirit of TRL's GOLD): exact forward KL over the
  ids whose strings both vocabularies share, plus one bucket each for the mass outside them
  (``KL([P_shared, P_rest] ‖ [Q_shared, Q_rest])``), plus ``unmatched_weight`` × the sorted L1
  of the unshared parts (when both sides have unshared ids, as in GOLD). Unlike GOLD, the teacher's distribution is not rescaled by the
  probabilities of the later tokens of a group. With identical tokenizers every id is shared and
  this is exactly plain forward KL (tested).
* :class:`ProjectedKL` (``projection``, X-Token style): each teacher id's probability is moved to
  the student id of the first token of its text (a sparse V_t -> V_s map), giving a target R over
  the student's vocabulary; then forward KL(R ‖ Q). Chain rule for the observed token: where the
  student's token σ is longer than the teacher's first token t (σ = "123", t = "1"), the teacher's
  probability of writing σ is ``P(t) · Π P(later teacher tokens inside σ)``; that much of the mass
  projected onto head(t) moves to σ. With identical tokenizers this is plain forward KL.

Every module's call::

    loss(student_logits (B, L, V_s), teacher, labels (B, L), aligned (B, L) bool,
         head (B, L) long, chain (B, L) float) -> 0-dim fp32

``teacher`` is dense logits (B, L, V_t) or a :class:`~reasondistill.train.losses.TopKTeacher`
(B, L, k) whose tail mass is spread evenly over the ids outside its k. Row t of the teacher is the
teacher's distribution at the group start that student position t predicts (garbage where
``aligned`` is False). ``head``: the teacher's observed first token of the group; ``chain``: log of
the probability of the rest of the student's token under the teacher (``-inf``: no transfer).
Only ProjectedKL reads ``head``/``chain``. Returns the SUM over ``labels != -100`` of
``alpha · T² · D · aligned + (1 − alpha) · CE`` (CE at T = 1 on every answer token), so the loop's
division by the global token count stays exact. ``chunk_size`` rows at a time (train/losses.py's
chunked sum: only the student is differentiated, one gradient buffer).

    loss = ProjectedKL(maps.head, teacher_vocab=V_t, temperature=1.0, alpha=0.5, chunk_size=16)
    total = loss(s_logits[:, :-1], gathered_teacher, labels[:, 1:], aligned, head, chain)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from reasondistill.train.losses import IGNORE_INDEX, ChunkedSum, TokenLoss, TopKTeacher, kl_per_row


def dense_teacher_logprobs(rows: tuple[Tensor, ...], vocab: int, temperature: float) -> Tensor:
    """(n, V_t) teacher log-probs at T from dense logits ``(logits,)`` or a top-k row
    ``(logprobs, ids, tail)`` (captured at T; the tail spread evenly over the ids not listed;
    padding entries, -inf at a repeat of the row's first id, list nothing)."""
    if len(rows) == 1:
        return F.log_softmax(rows[0].float() / temperature, -1)
    lp, ids, tail = rows
    lp, ids = lp.float(), ids.long()
    pad = torch.isneginf(lp) & (ids == ids[:, :1])  # the compact cache's padding: -inf at a repeat of the first id
    pad[:, 0] = False
    n_listed = (~pad).sum(-1, keepdim=True)
    rest = tail.float().unsqueeze(-1) - torch.log((vocab - n_listed).clamp(min=1).float())
    out = rest.expand(-1, vocab).clone()
    # a padding entry points at the row's first id: write that id's own value there too
    out.scatter_(-1, ids, torch.where(pad, lp[:, :1].expand_as(lp), lp))
    return torch.log_softmax(out, -1)  # renormalise (fp16 storage does not sum to exactly 1)


def sorted_l1(p: Tensor, q: Tensor) -> Tensor:
    """(n, a) and (n, b) probabilities -> (n,) Σ_r |sort(p)_r − sort(q)_r|, zero-padded."""
    width = max(p.size(-1), q.size(-1))
    ps = F.pad(p.sort(-1, descending=True).values, (0, width - p.size(-1)))
    qs = F.pad(q.sort(-1, descending=True).values, (0, width - q.size(-1)))
    return (ps - qs).abs().sum(-1)


class _CrossTokenizerLoss(TokenLoss):
    """Shared call: masks, T² · alpha, CE, chunking; subclasses define ``divergence``."""

    def __init__(self, teacher_vocab: int, temperature: float = 1.0, alpha: float = 0.5,
                 chunk_size: int | None = None, ignore_index: int = IGNORE_INDEX):
        super().__init__(temperature, chunk_size, ignore_index)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.teacher_vocab, self.alpha = int(teacher_vocab), float(alpha)

    def divergence(self, logp: Tensor, logq: Tensor, head: Tensor, chain: Tensor, labels: Tensor) -> Tensor:
        """(n, V_t) teacher and (n, V_s) student log-probs at T -> (n,)."""
        raise NotImplementedError

    def row_losses(self, s: Tensor, rows: tuple[Tensor, ...], labels: Tensor) -> Tensor:
        *teacher, aligned, head, chain = rows
        ce = torch.logsumexp(s, -1) - s.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
        if self.alpha == 0:
            return ce
        logp = dense_teacher_logprobs(tuple(teacher), self.teacher_vocab, self.temperature)
        logq = F.log_softmax(s / self.temperature, -1)
        d = self.divergence(logp, logq, head.long(), chain.float(), labels.long())
        d = torch.where(aligned.bool(), d, torch.zeros_like(d))
        return self.alpha * self.temperature ** 2 * d + (1 - self.alpha) * ce

    def forward(self, student_logits: Tensor, teacher: Tensor | TopKTeacher, labels: Tensor, aligned: Tensor,
                head: Tensor | None = None, chain: Tensor | None = None) -> Tensor:
        if student_logits.dim() != 3 or labels.shape != student_logits.shape[:2] or aligned.shape != labels.shape:
            raise ValueError(f"want student_logits (B, L, V), labels and aligned (B, L); got "
                             f"{tuple(student_logits.shape)}, {tuple(labels.shape)}, {tuple(aligned.shape)}")
        parts = (teacher.logprobs, teacher.ids, teacher.tail_logmass) if isinstance(teacher, TopKTeacher) else (teacher,)
        if isinstance(teacher, TopKTeacher) and not math.isclose(teacher.temperature, self.temperature):
            raise ValueError(f"teacher top-k was captured at T={teacher.temperature}, loss uses T={self.temperature}")
        if parts[0].shape[:2] != labels.shape or (len(parts) == 1 and parts[0].size(-1) != self.teacher_vocab):
            raise ValueError(f"teacher rows {tuple(parts[0].shape)} do not fit labels {tuple(labels.shape)} "
                             f"and teacher vocabulary {self.teacher_vocab}")
        if head is None:
            head = torch.zeros_like(labels)
        if chain is None:
            chain = torch.full(labels.shape, float("-inf"), device=labels.device)
        parts = tuple(x.detach() for x in parts) + (aligned, head, chain)
        with torch.autocast(student_logits.device.type, enabled=False):
            if self.chunk_size is None:
                keep = labels != self.ignore_index
                return self.row_losses(student_logits[keep].float(), tuple(x[keep] for x in parts), labels[keep]).sum()
            need_grad = torch.is_grad_enabled() and student_logits.requires_grad
            return ChunkedSum.apply(self, need_grad, student_logits, labels, *parts)


class SortedL1(_CrossTokenizerLoss):
    """``uld``: Σ_r |P_(r) − Q_(r)| of the sorted distributions (zero-padded), per aligned row.
    (B, L, V_s), (B, L, V_t) | TopKTeacher, (B, L), (B, L) [, head, chain] -> 0-dim fp32 sum."""

    def divergence(self, logp, logq, head, chain, labels):
        return sorted_l1(logp.exp(), logq.exp())


class SharedVocabKL(_CrossTokenizerLoss):
    """``aligned``: KL over the shared ids + one rest bucket per side, plus ``unmatched_weight`` ×
    sorted L1 of the unshared parts. ``shared_teacher``/``shared_student`` (M,) long id pairs.
    (B, L, V_s), (B, L, V_t) | TopKTeacher, (B, L), (B, L) [, head, chain] -> 0-dim fp32 sum."""

    def __init__(self, shared_teacher: Tensor, shared_student: Tensor, student_vocab: int,
                 unmatched_weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.register_buffer("shared_t", shared_teacher.long(), persistent=False)
        self.register_buffer("shared_s", shared_student.long(), persistent=False)
        mask_t = torch.ones(self.teacher_vocab, dtype=torch.bool)
        mask_t[self.shared_t] = False
        mask_s = torch.ones(student_vocab, dtype=torch.bool)
        mask_s[self.shared_s] = False
        self.register_buffer("rest_t", mask_t.nonzero().squeeze(-1), persistent=False)
        self.register_buffer("rest_s", mask_s.nonzero().squeeze(-1), persistent=False)
        self.unmatched_weight = float(unmatched_weight)

    def divergence(self, logp, logq, head, chain, labels):
        lp, lq = logp[:, self.shared_t], logq[:, self.shared_s]
        rest_p = torch.logsumexp(logp[:, self.rest_t], -1, keepdim=True) if len(self.rest_t) else \
            torch.full_like(lp[:, :1], float("-inf"))
        rest_q = torch.logsumexp(logq[:, self.rest_s], -1, keepdim=True) if len(self.rest_s) else \
            torch.full_like(lq[:, :1], float("-inf"))
        d = kl_per_row(torch.cat([lp, rest_p], -1), torch.cat([lq, rest_q], -1))
        if self.unmatched_weight and len(self.rest_t) and len(self.rest_s):
            d = d + self.unmatched_weight * sorted_l1(logp[:, self.rest_t].exp(), logq[:, self.rest_s].exp())
        return d


class ProjectedKL(_CrossTokenizerLoss):
    """``projection``: forward KL(R ‖ Q), R = the teacher's distribution moved onto the student's
    vocabulary by ``head`` (V_t,) long (teacher id -> student id of its text's first token), with
    the chain-rule transfer of the observed token (module docstring).
    (B, L, V_s), (B, L, V_t) | TopKTeacher, (B, L), (B, L), (B, L), (B, L) -> 0-dim fp32 sum."""

    def __init__(self, head_map: Tensor, student_vocab: int, **kwargs):
        super().__init__(**kwargs)
        self.register_buffer("head_map", head_map.long(), persistent=False)
        self.student_vocab = int(student_vocab)

    def target(self, logp: Tensor, head: Tensor, chain: Tensor, labels: Tensor) -> Tensor:
        """(n, V_t) teacher log-probs -> (n, V_s) projected probabilities R."""
        p = logp.exp()
        r = torch.zeros(p.size(0), self.student_vocab, dtype=p.dtype, device=p.device)
        r.index_add_(1, self.head_map, p)
        moved = p.gather(-1, head.unsqueeze(-1)).squeeze(-1) * chain.exp()  # exp(-inf) = 0: no transfer
        src = self.head_map[head]
        rows = torch.arange(p.size(0), device=p.device)
        moved = torch.minimum(moved, r[rows, src])
        r[rows, src] -= moved
        r[rows, labels] += moved
        return r

    def divergence(self, logp, logq, head, chain, labels):
        r = self.target(logp, head, chain, labels)
        logr = torch.where(r > 0, r.clamp(min=1e-30).log(), torch.full_like(r, float("-inf")))
        return kl_per_row(logr, logq)
