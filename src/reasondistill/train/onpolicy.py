"""On-policy distillation (GKD, Agarwal et al. 2024): with probability λ a batch's completions are
replaced by the student's own samples for the same prompts, and the teacher scores those.

Why: trained only on teacher text, a student never sees its own mistakes, and at test time it
must continue from them (exposure bias). Scoring the student's samples with the teacher gives a
per-token target exactly where the student goes. The λ draw for micro-batch s is a pure
function of (seed, s) (a numpy Generator keyed by both, never the global RNG), the sampling
noise is counter-based (teachers/sampling.py), and the call counter is saved with checkpoints,
so a resumed run makes the same choices and samples.

Loss composition (pinned by tests/train/test_onpolicy.py): on a batch of teacher-written traces the
configured ``α · T² · divergence + (1 − α) · CE``; on the student's own samples the divergence
alone (``T² · divergence``): cross-entropy on its own samples would be self-imitation, not GKD.

    kd = OnlineKD(teacher, make_loss(cfg))
    objective = OnPolicyKD(kd, tokenizer, lambda_on_policy=0.5, seed=0)
    train_model(student, tokenizer, train, val, out, train_cfg, seed=0, objective=objective)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from reasondistill.data.dataset import IGNORE_INDEX
from reasondistill.train.kd import STUDENT_WRITTEN


class OnPolicyKD(nn.Module):
    """Wraps an objective (``OnlineKD`` or ``FeatureKD``). In training mode each call draws
    u ~ U(0, 1) from (seed, call number); if u < λ the batch becomes prompt + a student sample
    (up to ``max_new_tokens``, default the longest answer of the batch, EOS included), labels
    = the sampled tokens. Its loss sum is rescaled by (answer tokens of the original batch) /
    (sampled tokens), so after the loop's division it is the mean over the sampled tokens.
    In eval mode (validation loss) batches are never replaced."""

    def __init__(self, inner, tokenizer, lambda_on_policy: float, seed: int, temperature: float = 1.0,
                 max_new_tokens: int | None = None):
        super().__init__()
        if not 0.0 <= lambda_on_policy <= 1.0:
            raise ValueError(f"lambda_on_policy must be in [0, 1], got {lambda_on_policy}")
        if isinstance(inner, nn.Module):
            self.inner = inner  # its projections are trained and saved with this module
        else:
            self.__dict__["inner"] = inner
        self.tokenizer, self.lam, self.seed = tokenizer, float(lambda_on_policy), int(seed)
        self.temperature, self.max_new_tokens = float(temperature), max_new_tokens
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))  # saved: resume replays the draws
        self.last_on_policy = False

    def on_policy(self, step: int) -> bool:
        """The λ draw of training call ``step``: a function of (seed, step) only."""
        return self.lam > 0 and np.random.default_rng([self.seed, step, 0x6B64]).random() < self.lam

    def forward(self, model, batch: dict[str, Tensor]) -> Tensor:
        self.last_on_policy = False
        if not model.training:
            return self.inner(model, batch)
        step = int(self.calls)
        self.calls += 1
        n_orig = int((batch["labels"] != IGNORE_INDEX).sum())
        if not self.on_policy(step) or n_orig == 0:  # (no answer token: the loop's DDP filler batch)
            return self.inner(model, batch)
        sampled = self.student_batch(model, batch, step)
        n_new = int((sampled["labels"] != IGNORE_INDEX).sum())
        self.last_on_policy = True
        return self.inner(model, sampled) * (n_orig / max(1, n_new))

    @torch.no_grad()
    def student_batch(self, model, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """The batch's prompts followed by the student's samples, in the collate() layout."""
        from transformers import GenerationConfig, LogitsProcessorList

        from reasondistill.teachers.sampling import CounterSampler, row_key

        tok = self.tokenizer
        device = batch["input_ids"].device
        lengths = batch["attention_mask"].sum(1).tolist()
        targets = batch["labels"] != IGNORE_INDEX
        plens = [int(targets[r].nonzero()[0]) if targets[r].any() else int(n) for r, n in enumerate(lengths)]
        max_new = self.max_new_tokens or max(1, max(int(n) - p for n, p in zip(lengths, plens)))
        width = max(plens)
        pad = tok.pad_token_id
        prompts = torch.full((len(plens), width), pad, dtype=torch.long, device=device)
        attn = torch.zeros_like(prompts)
        for r, p in enumerate(plens):  # left padding for generation
            prompts[r, width - p:] = batch["input_ids"][r, :p]
            attn[r, width - p:] = 1
        eos = tok.eos_token_id
        processors = LogitsProcessorList()
        if self.temperature > 0:
            keys = torch.tensor([row_key(self.seed, f"on-policy:{step}", r) for r in range(len(plens))],
                                dtype=torch.int64)
            processors.append(CounterSampler(keys, width, self.temperature, 1.0))
        gen_cfg = GenerationConfig(max_new_tokens=max_new, do_sample=False, num_beams=1, eos_token_id=eos,
                                   pad_token_id=pad, use_cache=True, temperature=None, top_p=None, top_k=None)
        student = getattr(model, "module", model)  # DDP wrapper
        was_training = student.training
        student.eval()
        try:
            out = student.generate(input_ids=prompts, attention_mask=attn, generation_config=gen_cfg,
                                   logits_processor=processors)
        finally:
            student.train(was_training)
        rows = []
        for r, p in enumerate(plens):
            new = out[r, width:].tolist()
            stop = next((j for j, t in enumerate(new) if t == eos), None)
            new = new if stop is None else new[:stop + 1]  # EOS is a target, as in the built data
            rows.append((batch["input_ids"][r, :p].tolist(), new))
        longest = max(len(a) + len(b) for a, b in rows)
        input_ids = torch.full((len(rows), longest), pad, dtype=torch.long)
        labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(rows), longest), dtype=torch.long)
        for r, (a, b) in enumerate(rows):
            ids = torch.tensor(a + b, dtype=torch.long)
            input_ids[r, :len(ids)] = ids
            labels[r, len(a):len(ids)] = ids[len(a):]
            attention[r, :len(ids)] = 1
        return {"input_ids": input_ids.to(device), "attention_mask": attention.to(device), "labels": labels.to(device),
                STUDENT_WRITTEN: torch.ones(len(rows), dtype=torch.bool, device=device)}
