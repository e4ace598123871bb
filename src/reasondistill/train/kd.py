"""Soft-distillation objectives for :func:`reasondistill.train.sft.train_model`.

Why: an objective maps ``(model, batch)`` to the SUM of per-token losses over answer tokens and
the loop divides by the global answer-token count, so soft distillation plugs into the same
loop, accumulation and checkpoints as hard distillation. Two teachers:

* :class:`OnlineKD` runs a frozen teacher beside the student on every batch (dense logits).
* :class:`OfflineTopKKD` reads the teacher's top-k log-probs captured once by
  :mod:`reasondistill.data.topk` (no teacher in memory while training).

Both shift like next-token CE (``logits[:, :-1]`` against ``labels[:, 1:]``) and call a loss
from :mod:`reasondistill.train.losses` with ``chunk_size`` so memory stays bounded.

    loss = make_loss(student_cfg.distill)                    # α·T²·div + (1 − α)·CE
    objective = OnlineKD(teacher_model, loss, student_tokenizer=tok, teacher_tokenizer=ttok)
    train_model(student, tok, train_path, val_path, out_dir, cfg, seed=0, objective=objective)
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch import Tensor

from reasondistill.data.dataset import IGNORE_INDEX
from reasondistill.train.losses import (DivergencePlusCrossEntropy, ForwardKL, GeneralizedJSD, ReverseKL,
                                        SkewForwardKL, SkewReverseKL, TopKTeacher, TotalVariationDistance,
                                        align_vocab)

DIVERGENCES = {"forward_kl": ForwardKL, "reverse_kl": ReverseKL, "jsd": GeneralizedJSD,
               "skew_forward_kl": SkewForwardKL, "skew_reverse_kl": SkewReverseKL, "tvd": TotalVariationDistance}

# a batch key marking completions the student sampled itself (train/onpolicy.py): no CE on them
STUDENT_WRITTEN = "student_written"

HARD_STILL_WORKS = ("hard distillation (train on the teacher's traces: remove the student's `distill` "
                    "section) still works with any tokenizer")


def make_loss(cfg) -> DivergencePlusCrossEntropy:
    """The per-token loss a :class:`~reasondistill.config.DistillConfig` describes."""
    kw: dict[str, Any] = {"temperature": cfg.temperature, "chunk_size": cfg.chunk_size}
    if cfg.divergence == "jsd":
        kw["beta"] = cfg.defaulted("beta")
    elif cfg.divergence.startswith("skew_"):
        kw["alpha"] = cfg.defaulted("skew_alpha")
    return DivergencePlusCrossEntropy(DIVERGENCES[cfg.divergence](**kw), alpha=cfg.alpha)


def vocabulary_difference(student_tokenizer, teacher_tokenizer) -> tuple[int, int, str] | None:
    """None when both tokenizers map the same strings to the same ids (what soft distillation, and a
    teacher scoring a policy student's tokens, need); else the two vocabulary sizes and how they
    differ, in counts."""
    s, t = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if s == t:
        return None
    only_s, only_t = len(s.keys() - t.keys()), len(t.keys() - s.keys())
    moved = sum(1 for k in s.keys() & t.keys() if s[k] != t[k])
    counts = f"{only_s} tokens only in the student, {only_t} only in the teacher, {moved} with different ids"
    return len(s), len(t), counts


def check_same_tokenizer(student_tokenizer, teacher_tokenizer, needs: str = "soft distillation",
                         fix: str | None = None) -> None:
    """Raise unless both tokenizers map the same strings to the same ids (soft distillation, and a
    teacher scoring a policy student's tokens, compare distributions id by id). ``needs`` names what
    needs it and ``fix`` what to do (default: soft distillation's choices)."""
    diff = vocabulary_difference(student_tokenizer, teacher_tokenizer)
    if diff is None:
        return
    n_s, n_t, counts = diff
    fix = fix or ("Use the teacher's tokenizer for the student, or set `distill.cross_tokenizer` (uld | aligned | "
                  f"projection) to distil across tokenizers; {HARD_STILL_WORKS}")
    raise ValueError(f"{needs} needs the teacher's tokenizer: the student's vocabulary ({n_s} tokens) differs from "
                     f"the teacher's ({n_t}): {counts}. {fix}")


def shared_vocab_size(student_model, teacher_model, tokenizer=None) -> int:
    """The vocabulary both models' logits are sliced to: the smaller of the two output sizes.
    Extra rows are padding (ids no tokenizer produces); the slice must keep every real token."""
    vs, vt = (m.get_output_embeddings().weight.shape[0] for m in (student_model, teacher_model))
    v = min(vs, vt)
    if tokenizer is not None and v < len(tokenizer):
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the {'student' if vs < vt else 'teacher'} "
                         f"has only {v} output rows; {HARD_STILL_WORKS}")
    return v


def model_forward(model, batch: dict[str, Tensor], hidden: bool = False):
    """A causal LM's forward on a collated batch (no cache; hidden states when asked)."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                 output_hidden_states=hidden)


class OnlineKD:
    """Teacher and student on the same batch; loss(student logits, teacher logits, labels) summed
    over answer tokens. The teacher is frozen (eval mode, no gradients) and must share the
    student's tokenizer; pass both tokenizers to have that checked before training starts.
    Vocabularies that differ only by padding rows are sliced to the shared size."""

    def __init__(self, teacher_model, loss, student_tokenizer=None, teacher_tokenizer=None):
        if student_tokenizer is not None and teacher_tokenizer is not None:
            check_same_tokenizer(student_tokenizer, teacher_tokenizer)
        self.teacher, self.loss = freeze(teacher_model), loss
        self.tokenizer = student_tokenizer

    def teacher_forward(self, batch: dict[str, Tensor], hidden: bool = False):
        device = batch["input_ids"].device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        with torch.no_grad():
            return model_forward(self.teacher, batch, hidden)

    def logit_loss(self, student_logits: Tensor, teacher_logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """The loss summed over answer tokens; on a batch the student wrote itself (``STUDENT_WRITTEN`` in
        it, set by train/onpolicy.py) the divergence alone: CE on its own samples would be self-imitation."""
        s, t = align_vocab(*[x[:, :-1] for x in (student_logits, teacher_logits)])
        loss = self.loss
        if STUDENT_WRITTEN in batch and hasattr(loss, "divergence_only"):
            loss = loss.divergence_only()
        return loss(s, t.detach(), batch["labels"][:, 1:])

    def __call__(self, model, batch: dict[str, Tensor]) -> Tensor:
        t = self.teacher_forward(batch)
        s = model_forward(model, batch)
        return self.logit_loss(s.logits, t.logits, batch)


def freeze(model):
    model.eval()
    model.requires_grad_(False)
    return model


def example_key(ids: Tensor, prompt_len: int) -> str:
    """Content key of one example (its int32 tokens and prompt length): the offline teacher is a
    function of the tokens alone, so a batch row finds its captured top-k by this key."""
    arr = np.ascontiguousarray(np.asarray(ids, dtype=np.int32))
    return hashlib.blake2b(arr.tobytes() + int(prompt_len).to_bytes(8, "little"), digest_size=16).hexdigest()


def batch_keys(batch: dict[str, Tensor]) -> list[str]:
    """:func:`example_key` of every row of a collated (right-padded) batch."""
    keys = []
    lengths = batch["attention_mask"].sum(1).tolist()
    targets = batch["labels"] != IGNORE_INDEX
    for row, n in enumerate(lengths):
        nz = targets[row].nonzero()
        plen = int(nz[0]) if len(nz) else int(n)
        keys.append(example_key(batch["input_ids"][row, :int(n)].cpu().numpy(), plen))
    return keys


class OfflineTopKKD:
    """The loss against a sparse teacher stored offline (``reasondistill capture``).

    The teacher's top-k comes from the batch when it holds ``topk_logprobs``/``topk_ids``/
    ``topk_tail`` (B, L, k)/(B, L, k)/(B, L) aligned with ``labels`` (entry t = the teacher's
    distribution for token t), else from ``reader`` (a :class:`reasondistill.data.topk.TopKReader`),
    which finds each row by its content key, so no change to the batch layout is needed."""

    def __init__(self, loss, reader=None):
        self.loss, self.reader = loss, reader

    def prepare_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The host-side batch with the reader's top-k rows added (the training loop calls this before
        moving the batch to the device, so the lookup never reads a device batch back)."""
        if self.reader is None or "topk_logprobs" in batch:
            return batch
        lp, ids, tail = self.reader.for_batch(batch)
        return {**batch, "topk_logprobs": lp, "topk_ids": ids, "topk_tail": tail}

    def teacher_for(self, batch: dict[str, Tensor]) -> TopKTeacher:
        if "topk_logprobs" in batch:
            lp, ids, tail = batch["topk_logprobs"], batch["topk_ids"], batch["topk_tail"]
            temperature = self.reader.temperature if self.reader is not None else self.loss.temperature
        else:
            if self.reader is None:
                raise ValueError("OfflineTopKKD: the batch has no topk_* tensors and no reader was given")
            lp, ids, tail = self.reader.for_batch(batch)
            temperature = self.reader.temperature
        device = batch["input_ids"].device
        return TopKTeacher(lp[:, 1:].to(device), ids[:, 1:].to(device), tail[:, 1:].to(device), temperature)

    def __call__(self, model, batch: dict[str, Tensor]) -> Tensor:
        teacher = self.teacher_for(batch)
        s = model_forward(model, batch).logits[:, :-1]
        if self.reader is not None and self.reader.vocab_size is not None and s.size(-1) > self.reader.vocab_size:
            s = s[..., :self.reader.vocab_size]  # padding rows the capture sliced away
        return self.loss(s, teacher, batch["labels"][:, 1:])
