"""Policy training: the student learns from its own rollouts. One loop, three objectives.

* ``grpo``: G rollouts per problem, the task's verifier as reward (train/rewards.py), group-relative
  advantages, clipped importance ratio, token-level (DAPO) or constant (Dr. GRPO) normalisation,
  optional k3 KL to the frozen start model and optional per-token reverse-KL advantage to the teacher
  (``kl_teacher``: verifiable reward + KL to the teacher). Without a KL term, a group whose rollouts
  all scored alike (advantage 0: its gradient is exactly zero) gets a forward without a graph, for
  the entropy metric only; ``frac_reward_zero_std`` logs how many rows that was. A group's shared
  prompt runs once per update (train/shared_prompt.py, ``share_prompt``).
* ``on_policy``: prompts only; the teacher scores every token the student sampled. Either the sampled
  per-token reverse KL of Thinking Machines (advantage log p_teacher − log p_student, a policy
  gradient) or the full-vocabulary generalised JSD with TRL's β (β = 1 reverse KL). No CE anywhere:
  the student's own tokens are not targets.
* ``dpo``: pairs built by the pipeline (chosen: a verified teacher trace; rejected: the start
  student's own wrong / unparseable / truncated answer to the same problem), reference = the start
  model (train/pairs.py).

Rollouts go through a backend of train/rollout.py (default: the KV-cache decoder with counter-based
sampling, so a row's sample is a function of (seed, step, problem, g) and a resumed run draws the
same rollouts). Checkpoints are those of SFT (train/checkpoint.py: weights, optimizer, scheduler,
RNG, state); ``metrics.csv`` gets one row per step: reward mean/std, accuracy, completion length,
entropy, clip fraction, KL, tokens generated and trained, wall time.

A LoRA student (a ``peft.PeftModel``, train/lora.py) trains its adapters only: the optimizer holds
them, checkpoints hold them (``adapter_model.safetensors``), the KL / DPO reference is the base with
the adapters switched off (no second copy of the weights) and ``final/`` is the merged model.

    summary = train_policy(model, tokenizer, problems, task, PolicyConfig(objective="grpo"), "train/s", seed=0)
"""

from __future__ import annotations

import copy
import csv
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from reasondistill.data.dataset import IGNORE_INDEX
from reasondistill.layout import TrainFiles
from reasondistill.prompts import render_prompts
from reasondistill.records import Problem
from reasondistill.train.checkpoint import check_finite, checkpoints, prune, restore_checkpoint, save_checkpoint
from reasondistill.train.lora import AdaptersOff, is_lora, merged_for_export, param_counts
from reasondistill.train.policy_config import PolicyConfig
from reasondistill.train.policy_losses import (ClippedPolicyLoss, DPOLoss, group_advantages, k3_kl, token_entropy,
                                               token_logprobs, token_weights)
from reasondistill.train.rewards import VerifierReward
from reasondistill.train.shared_prompt import _slice, forward_logits, sequence_batch, step_rows
from reasondistill.train.step_rng import step_rng

__all__ = ["PolicyTrainer", "forward_logits", "length_chunks", "sequence_batch", "train_policy"]

FIELDS = ["step", "loss", "reward_mean", "reward_std", "frac_reward_zero_std", "accuracy", "length", "entropy",
          "clip_frac", "kl_ref", "kl_teacher", "dpo_margin", "dpo_accuracy", "dpo_reward_chosen", "dpo_reward_rejected",
          "dpo_nll_chosen", "lr", "grad_norm", "tokens_generated", "tokens_trained", "teacher_tokens", "elapsed_s"]


def length_chunks(lengths: Sequence[int], micro_batch: int, slack: float = 0.1, min_rows: int = 8,
                  rows: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Row indices per forward/backward: rows sorted by length, a chunk closed at ``micro_batch`` rows
    or (once it has ``min_rows``) when padding to its next row would cost more than ``slack`` of its
    tokens. Right padding costs compute and changes nothing else: the loss weights are global.
    ``rows`` (bool, N): chunk only these rows."""
    keep = range(len(lengths)) if rows is None else rows.nonzero().squeeze(1).tolist()
    order = sorted(keep, key=lambda i: lengths[i])
    chunks: list[list[int]] = [[]]
    total = 0
    for i in order:
        cur = chunks[-1]
        grown = lengths[i] * (len(cur) + 1)
        if cur and (len(cur) >= micro_batch or (len(cur) >= min_rows and grown > (1 + slack) * (total + lengths[i]))):
            chunks.append([])
            cur, total = chunks[-1], 0
        cur.append(i)
        total += lengths[i]
    return [torch.tensor(c) for c in chunks if c]


def _entropy_sum(logits: torch.Tensor, mask: torch.Tensor) -> float:
    """Summed per-token entropy over the completion positions ``mask`` (N, L-1)."""
    return float((token_entropy(logits) * mask.float()).sum())


def freeze(model):
    model.eval()
    model.requires_grad_(False)
    return model


class PolicyTrainer:
    """Set-up (optimizer, reference, rollouts), resume, then per step: rollouts or pairs, update(s),
    log, save; at the end ``final/`` and ``summary.json``. ``teacher``: a frozen causal LM sharing the
    student's tokenizer (on_policy, grpo with kl_teacher). ``pairs``: for dpo (train/pairs.py)."""

    def __init__(self, model, tokenizer, problems: Sequence[Problem], task, cfg: PolicyConfig, out_dir, seed: int,
                 teacher=None, pairs: list[dict[str, Any]] | None = None, engine=None, name: str = "student",
                 show_progress: bool = True):
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.model, self.tok, self.cfg, self.seed, self.name = model, tokenizer, cfg, int(seed), name
        self.files, self.show_progress = TrainFiles(out_dir), show_progress
        self.problems = list(problems)
        if cfg.objective == "dpo":
            if not pairs:
                raise ValueError(f"{name}: dpo needs preference pairs and none were built (the start student got "
                                 "every sampled problem right, or no problem had a verified trace): sample more "
                                 "(policy.dpo_problems, policy.dpo_samples), more varied answers (a higher "
                                 "policy.temperature), or start from a weaker student (policy.start_from)")
            self.pairs = pairs
        elif not self.problems:
            raise ValueError(f"{name}: no training problems for policy training")
        needs_teacher = cfg.teacher_section() is not None
        if needs_teacher and teacher is None:
            raise ValueError(f"{name}: policy.objective {cfg.objective} with kl_teacher needs a local teacher")
        self.teacher = freeze(teacher) if needs_teacher else None
        # the reference is the START model: copied before a checkpoint is restored; for a LoRA model, its
        # base with the adapters switched off (the adapters start at zero, so that is the start model)
        self.reference = None
        if cfg.kl_ref > 0 or cfg.objective == "dpo":
            self.reference = AdaptersOff(model) if is_lora(model) else freeze(copy.deepcopy(model))
        self.reward = VerifierReward(task, cfg.rewards) if task is not None else None
        self.prompt_ids = tokenizer(render_prompts(tokenizer, [p.prompt for p in self.problems]),
                                    add_special_tokens=False)["input_ids"] if self.problems else []
        if engine is None:
            from reasondistill.train.rollout import HFRollout

            engine = HFRollout(model, tokenizer)
        elif is_lora(model):
            from reasondistill.train.rollout import VLLMRollout, VLLMServerRollout

            if isinstance(engine, (VLLMRollout, VLLMServerRollout)):  # they push weights by the model's names
                raise ValueError(f"{name}: a LoRA policy student rolls out with the HF backend only (the vLLM "
                                 "backends would be sent peft's adapter weights, not merged ones)")
        self.engine = engine
        self.clip = ClippedPolicyLoss(cfg.clip_eps, cfg.clip_eps_high, cfg.kl_ref)
        self.dpo = DPOLoss(cfg.dpo_beta)
        if cfg.objective == "on_policy" and cfg.divergence == "jsd":
            from reasondistill.train.losses import GeneralizedJSD

            self.jsd = GeneralizedJSD(beta=cfg.beta)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99),
                                           fused=next(model.parameters()).device.type in ("cpu", "cuda") or None)
        warm = cfg.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
        self.state = self._resume()

    # -- set-up ---------------------------------------------------------------------------------
    def _resume(self) -> dict[str, Any]:
        fresh = {"step": 0, "elapsed_s": 0.0, "tokens_generated": 0, "tokens_trained": 0, "teacher_tokens": 0,
                 "seed": self.seed, "total_steps": self.cfg.steps}
        found = checkpoints(self.files.checkpoints) if self.cfg.resume else []
        if not found:
            return fresh
        state = restore_checkpoint(found[-1], self.model, self.optimizer, self.scheduler)
        if state.get("total_steps") != self.cfg.steps:
            raise ValueError(f"{found[-1]}: checkpoint was for {state.get('total_steps')} steps, policy.steps is "
                             f"{self.cfg.steps}; use a fresh output directory or the same number of steps")
        return state

    def _metrics_file(self) -> None:
        path, step = self.files.metrics_csv, self.state["step"]
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if path.exists() and step > 0:  # keep the curve up to the checkpoint
            with path.open() as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= step]
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, FIELDS)
            w.writeheader()
            w.writerows(rows)

    def _log(self, row: dict[str, Any]) -> None:
        with self.files.metrics_csv.open("a", newline="") as fh:
            csv.DictWriter(fh, FIELDS).writerow({k: row.get(k, "") for k in FIELDS})

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from reasondistill.progress import progress_bar

        cfg = self.cfg
        self._metrics_file()
        t0 = time.perf_counter() - self.state["elapsed_s"]
        last: dict[str, Any] = {}
        with progress_bar(f"{cfg.objective} {self.name}", cfg.steps, self.show_progress, self.state["step"]) as advance:
            while self.state["step"] < cfg.steps:
                step = self.state["step"]
                with step_rng(self.seed, step, device=next(self.model.parameters()).device):  # dropout: per step
                    last = self.dpo_step(step) if cfg.objective == "dpo" else self.rollout_step(step)
                self.state["step"] = step + 1
                self.state["elapsed_s"] = time.perf_counter() - t0
                for k in ("tokens_generated", "tokens_trained", "teacher_tokens"):
                    self.state[k] += last.pop(k, 0)
                check_finite({"loss": torch.tensor(last["loss"])}, f"{self.files.dir}: step {step + 1}",
                             f"lower policy.lr (now {cfg.lr:g}) or set policy.max_grad_norm")
                if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                    self._log({**last, "step": step + 1, "lr": self.scheduler.get_last_lr()[0],
                               "tokens_generated": self.state["tokens_generated"],
                               "tokens_trained": self.state["tokens_trained"],
                               "teacher_tokens": self.state["teacher_tokens"],
                               "elapsed_s": round(self.state["elapsed_s"], 3)})
                if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
                    check_finite(self.model.named_parameters(), f"{self.files.dir}: step {step + 1}",
                                 f"lower policy.lr (now {cfg.lr:g})")
                    save_checkpoint(self.files.checkpoints / f"step-{step + 1}", self.model, self.tok, self.optimizer,
                                    self.scheduler, self.state)
                    prune(self.files.checkpoints, cfg.keep_checkpoints)
                advance(1)
        return self._finish(last)

    def _finish(self, last: dict[str, Any]) -> dict[str, Any]:
        s = self.state
        params, trainable = param_counts(self.model)
        summary = {"name": self.name, "objective": self.cfg.objective, "steps": s["step"],
                   "wall_time_s": round(s["elapsed_s"], 2), "tokens_generated": s["tokens_generated"],
                   "tokens_trained": s["tokens_trained"], "teacher_tokens": s["teacher_tokens"],
                   "params": params, "trainable_params": trainable,
                   "last": {k: v for k, v in last.items() if isinstance(v, (int, float))}}
        exported, _ = merged_for_export(self.model, None)  # LoRA: the adapters merged into the base
        exported.save_pretrained(self.files.final, safe_serialization=True)
        self.tok.save_pretrained(self.files.final)
        self.files.summary.write_text(json.dumps(summary, indent=2))
        return summary

    def _pick(self, step: int, n: int, k: int) -> list[int]:
        """The step's items: a function of (seed, step) only, so a resumed run picks the same ones."""
        rng = np.random.default_rng([self.seed, step, 0x9E37])
        return rng.choice(n, size=k, replace=k > n).tolist()

    def _optimizer_step(self) -> float:
        norm = float("nan")
        if self.cfg.max_grad_norm:
            norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    # -- grpo / on_policy -----------------------------------------------------------------------
    def rollouts(self, step: int):
        """The step's problems, each ``group_size`` times, and the student's samples for them."""
        from reasondistill.teachers.sampling import row_key

        cfg = self.cfg
        idx = self._pick(step, len(self.problems), cfg.prompts_per_step)
        rows = [(i, g) for i in idx for g in range(cfg.group_size)]
        keys = [row_key(self.seed, f"policy:{step}:{self.problems[i].id}", g) for i, g in rows]
        self.engine.sync(self.model)
        rolls = self.engine.generate([self.prompt_ids[i] for i, _ in rows], keys, cfg.temperature, cfg.max_new_tokens)
        return [self.problems[i] for i, _ in rows], rolls

    def rollout_step(self, step: int) -> dict[str, Any]:
        cfg = self.cfg
        problems, rolls = self.rollouts(step)
        out: dict[str, Any] = {"tokens_generated": sum(len(r.completion) for r in rolls),
                               "length": float(np.mean([len(r.completion) for r in rolls]))}
        rows = step_rows(self.model, [r.prompt for r in rolls], [r.completion for r in rolls], self.tok.pad_token_id,
                         cfg.temperature, share=cfg.share_prompt)
        n_seq, n_tok = len(rolls), sum(len(r.completion) for r in rolls)
        seq_adv = torch.zeros(n_seq)
        if cfg.objective == "grpo":
            rewards, verdicts = self.reward(problems, [r.text for r in rolls], [r.finish_reason for r in rolls])
            r = torch.tensor(rewards, dtype=torch.float32)
            seq_adv = group_advantages(r.view(-1, cfg.group_size), cfg.scale_rewards).reshape(-1)
            out.update(reward_mean=float(r.mean()), reward_std=float(r.std(unbiased=False)),
                       accuracy=float(np.mean([v == "correct" for v in verdicts])))
        norm = cfg.loss_norm if cfg.objective == "grpo" else "token"
        chunks, idle_chunks = self._chunks(rows.lengths, seq_adv, out)
        fixed = self._fixed_terms(rows, chunks, out)
        trained = 0
        for update in range(cfg.updates_per_batch):
            sums = {"loss": 0.0, "clip": 0.0, "entropy": 0.0, "kl_ref": 0.0, "kl_teacher": 0.0}
            if chunks:
                rows.start(self.model)  # shared prompts: the policy's prompt pass, with a graph, at these weights
            for ch, f in zip(chunks, fixed):
                logits, targets, mask, tokens = rows.logits(self.model, ch)
                w = token_weights(mask, norm, n_tok, n_seq, cfg.max_new_tokens)
                trained += tokens
                logp = token_logprobs(logits, targets)
                old = f.get("old", logp.detach())
                if cfg.objective == "on_policy" and cfg.divergence == "jsd":
                    labels = targets.masked_fill(~mask, IGNORE_INDEX)
                    loss = self.jsd(logits, f["teacher_logits"].float(), labels) / max(1, n_tok)
                    clip = torch.zeros(())
                else:
                    adv = seq_adv[ch][:, None].expand_as(logp)
                    if self.teacher is not None:
                        coef = 1.0 if cfg.objective == "on_policy" else cfg.kl_teacher
                        adv = adv + coef * (f["teacher"] - old)
                    loss, clip = self.clip(logp, old, adv.detach(), w, f.get("ref"))
                loss.backward()
                with torch.no_grad():
                    m = mask.float()
                    sums["loss"] += float(loss)
                    sums["clip"] += float(clip)
                    sums["entropy"] += _entropy_sum(logits, mask)
                    if "ref" in f:
                        sums["kl_ref"] += float((k3_kl(logp, f["ref"]) * m).sum())
                    if "teacher" in f:
                        sums["kl_teacher"] += float(((old - f["teacher"]) * m).sum())
            if update == 0:  # before the prompts' backward: the idle rows may read the policy's prompt pass
                entropy, tokens = self._idle_entropy(rows, idle_chunks)
                sums["entropy"] += entropy
                trained += tokens
            trained += rows.backward()  # a shared prompt's share of the gradient, once all chunks are in
            if not chunks:  # every row idle: zero gradients (not none), so AdamW's momentum and decay act as ever
                for p in self.optimizer.param_groups[0]["params"]:
                    p.grad = torch.zeros_like(p)
            grad_norm = self._optimizer_step()
            if update == 0:
                out.update(loss=sums["loss"], entropy=sums["entropy"] / max(1, n_tok),
                           clip_frac=sums["clip"] / max(1, n_tok),
                           grad_norm=round(grad_norm, 5))
                if self.reference is not None:
                    out["kl_ref"] = sums["kl_ref"] / max(1, n_tok)
                if self.teacher is not None:
                    out["kl_teacher"] = sums["kl_teacher"] / max(1, n_tok)
            else:
                out["clip_frac"] = sums["clip"] / max(1, n_tok)  # the last update's: where clipping acts
        out["tokens_trained"] = trained
        return out

    def _chunks(self, lengths: list[int], seq_adv: torch.Tensor, out: dict[str, Any]) -> tuple[list, list]:
        """The update's row chunks (:func:`length_chunks` over what each row costs the update), and apart
        from them the idle rows': in GRPO a row whose group all scored alike has advantage 0, and with no
        KL term its every gradient term is exactly 0 (it is never clipped either), so it gets a forward
        without a graph, for the entropy."""
        cfg = self.cfg
        idle = torch.zeros(len(lengths), dtype=torch.bool)
        if cfg.objective == "grpo":
            zero = seq_adv == 0
            out["frac_reward_zero_std"] = float(zero.float().mean())
            if self.reference is None and self.teacher is None:
                idle = zero
        return (length_chunks(lengths, cfg.micro_batch, rows=~idle),
                length_chunks(lengths, cfg.micro_batch, rows=idle))

    @torch.no_grad()
    def _fixed_terms(self, rows, chunks, out: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        """Per chunk, what stays fixed over the mu updates: old log-probs (mu > 1), reference and
        teacher log-probs (and the teacher's logits for the JSD); counts the teacher's tokens in ``out``."""
        cfg, fixed = self.cfg, []
        for ch in chunks:
            f = {}
            if cfg.updates_per_batch > 1:
                logits, targets, _, _ = rows.logits(self.model, ch)
                f["old"] = token_logprobs(logits, targets)
            if self.reference is not None:
                logits, targets, _, _ = rows.logits(self.reference, ch)
                f["ref"] = token_logprobs(logits, targets)
            if self.teacher is not None:
                t_logits, targets, _, tokens = rows.logits(self.teacher, ch)
                out["teacher_tokens"] = out.get("teacher_tokens", 0) + tokens
                f["teacher"] = token_logprobs(t_logits, targets)
                if cfg.objective == "on_policy" and cfg.divergence == "jsd":
                    f["teacher_logits"] = t_logits
            fixed.append(f)
        return fixed

    @torch.no_grad()
    def _idle_entropy(self, rows, chunks) -> tuple[float, int]:
        """The zero-advantage rows' summed completion entropy and token count: a forward, no graph."""
        entropy, tokens = 0.0, 0
        for ch in chunks:
            logits, _, mask, n = rows.logits(self.model, ch)
            tokens += n
            entropy += _entropy_sum(logits, mask)
        return entropy, tokens

    # -- dpo ------------------------------------------------------------------------------------
    def dpo_step(self, step: int) -> dict[str, Any]:
        cfg = self.cfg
        idx = self._pick(step, len(self.pairs), cfg.prompts_per_step)
        pairs = [self.pairs[i] for i in idx]
        prompts = [p["prompt_ids"] for p in pairs] * 2
        comps = [p["chosen_ids"] for p in pairs] + [p["rejected_ids"] for p in pairs]
        batch = sequence_batch(prompts, comps, self.tok.pad_token_id)
        n = len(pairs)

        def seq_logps(model) -> torch.Tensor:
            parts = []
            for s in range(0, 2 * n, cfg.micro_batch):
                mb = _slice(batch, slice(s, s + cfg.micro_batch))
                lp = token_logprobs(forward_logits(model, mb), mb["input_ids"][:, 1:])
                parts.append((lp * mb["mask"].float()).sum(-1))
            return torch.cat(parts)

        with torch.no_grad():
            ref = seq_logps(self.reference)
        pol = seq_logps(self.model)  # one graph over the step's pairs: DPO couples chosen and rejected
        loss = self.dpo(pol[:n], pol[n:], ref[:n], ref[n:]) / n
        out = {}
        if cfg.dpo_sft:  # RPO: the chosen completions' mean per-token NLL
            nll = -pol[:n].sum() / max(1, sum(len(c) for c in comps[:n]))
            loss = loss + cfg.dpo_sft * nll
            out["dpo_nll_chosen"] = float(nll.detach())
        loss.backward()
        grad_norm = self._optimizer_step()
        margins = self.dpo.margins(pol[:n], pol[n:], ref[:n], ref[n:]).detach()
        shift = cfg.dpo_beta * (pol.detach() - ref)  # TRL's rewards/chosen, rewards/rejected: beta (pi - ref)
        return {"loss": float(loss.detach()), "dpo_margin": float(margins.mean()),
                "dpo_accuracy": float((margins > 0).float().mean()), "dpo_reward_chosen": float(shift[:n].mean()),
                "dpo_reward_rejected": float(shift[n:].mean()), "grad_norm": round(grad_norm, 5),
                "tokens_trained": int(batch["attention_mask"].sum()), "length": float(np.mean([len(c) for c in comps])),
                **out}


def train_policy(model, tokenizer, problems: Sequence[Problem], task, cfg: PolicyConfig, out_dir: str | Path,
                 seed: int, **kw) -> dict[str, Any]:
    """Train ``model`` on its own rollouts as ``cfg`` says; write checkpoints, ``final/``, metrics.csv."""
    return PolicyTrainer(model, tokenizer, problems, task, cfg, out_dir, seed, **kw).run()

