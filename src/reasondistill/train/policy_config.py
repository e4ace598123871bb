"""The ``policy:`` section of a student: training on the student's own rollouts (GRPO with verifiable
rewards, prompt-only on-policy distillation, DPO on pipeline-built pairs). Validated on creation, so
a bad value fails before any work starts; train/policy.py runs it.

    students:
      - name: student_grpo
        init: {...}                      # or model: PATH
        policy: {objective: grpo, start_from: student_traces, steps: 200, group_size: 8}
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RewardValues(BaseModel):
    """Reward of a rollout by the task's verdict (curate/verdicts.py), plus an optional format bonus."""

    model_config = ConfigDict(extra="forbid")

    correct: float = Field(1.0, description="reward of a verified correct answer")
    wrong: float = Field(0.0, description="reward of a parsed but wrong answer")
    unparseable: float = Field(0.0, description="reward when no answer can be parsed (or <think> is malformed)")
    truncated: float = Field(0.0, description="reward when the token limit cut the completion off")
    format: float = Field(0.0, description="bonus added when the completion is <think>…</think> then a "
                                           "non-empty answer (0: no format reward)")


class PolicyConfig(BaseModel):
    """A student trained on its own samples. ``grpo``: group-relative policy optimisation on the task's
    verifier (optionally plus a per-token reverse KL to the teacher, ``kl_teacher``); ``on_policy``:
    distillation on prompts only, the teacher scoring every token the student samples; ``dpo``: pairs
    (verified teacher trace, the student's own wrong answer) built by the pipeline."""

    model_config = ConfigDict(extra="forbid")

    objective: Literal["grpo", "on_policy", "dpo"] = Field(description="what the student is trained on")
    start_from: str | None = Field(None, description="initial weights: another student's name (its train/<name>/"
                                   "final/, trained first) or a model directory; null: the student's model/init")
    steps: int = Field(100, gt=0, description="optimizer steps")
    prompts_per_step: int = Field(8, gt=0, description="problems per step (dpo: pairs per step)")
    group_size: int = Field(8, gt=0, description="rollouts per problem (G); grpo needs >= 2")
    micro_batch: int = Field(64, gt=0, description="sequences per forward/backward (gradient accumulation is exact)")
    share_prompt: bool = Field(True, description="run a group's shared prompt once per update, its keys/values "
                               "reused by the group's rollouts (the same gradient up to float rounding; llama-family "
                               "models with sdpa or eager attention; train/shared_prompt.py); false: every row whole")
    max_new_tokens: int = Field(96, gt=0, description="rollout length limit (tokens)")
    temperature: float = Field(1.0, gt=0, description="rollout sampling temperature; the loss takes every log-prob "
                               "(policy, old, reference, teacher) and the entropy at it, softmax(logits / T), the "
                               "policy the rows were drawn from (TRL's convention)")
    lr: float = Field(1e-4, gt=0, description="peak learning rate (AdamW, constant after warm-up)")
    warmup_steps: int = Field(0, ge=0, description="steps of linear warm-up")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping norm (null: none)")
    updates_per_batch: int = Field(1, gt=0, description="optimizer passes over one batch of rollouts (mu); "
                                   "> 1 makes the importance ratio differ from 1 and clipping matter")
    clip_eps: float = Field(0.2, gt=0, description="PPO clip: ratio kept in [1 - clip_eps, 1 + clip_eps_high]")
    clip_eps_high: float | None = Field(None, gt=0, description="upper clip (DAPO clip-higher; null: clip_eps)")
    loss_norm: Literal["token", "constant", "sequence"] = Field(
        "token", description="token: sum over all tokens / their count (DAPO); constant: / (sequences x "
                             "max_new_tokens) (Dr. GRPO); sequence: mean per sequence then over sequences (GRPO, "
                             "length-biased)")
    scale_rewards: bool = Field(False, description="divide group advantages by the group's reward std (GRPO); "
                                "false: centred only (Dr. GRPO)")
    kl_ref: float = Field(0.0, ge=0, description="weight of the k3 KL estimate to the frozen start model")
    kl_teacher: float = Field(0.0, ge=0, description="grpo: weight of the per-token reverse-KL advantage "
                              "log p_teacher - log p_student (verifiable reward + KL to the teacher)")
    divergence: Literal["sampled_reverse_kl", "jsd"] = Field(
        "sampled_reverse_kl", description="on_policy: sampled_reverse_kl (per-token advantage log p_teacher - "
        "log p_student, Thinking Machines) or jsd (full-vocabulary generalised JSD, TRL's definition)")
    beta: float = Field(1.0, ge=0, le=1, description="on_policy jsd: 0 forward KL, 1 reverse KL (TRL's beta)")
    dpo_beta: float = Field(0.1, gt=0, description="dpo: inverse temperature of the implicit reward")
    dpo_sft: float = Field(0.0, ge=0, description="dpo: weight of the chosen completions' mean per-token NLL added "
                           "to the DPO loss (RPO; TRL's loss_type [sigmoid, sft]): keeps the verified traces likely "
                           "while the margin grows (DPO alone can lower both sides, docs/rl.md)")
    dpo_samples: int = Field(4, gt=0, description="dpo: student samples per problem searched for a wrong answer")
    dpo_problems: int = Field(512, gt=0, description="dpo: problems with a verified teacher trace used for pairs")
    rewards: RewardValues = Field(RewardValues(), description="reward values by verdict (grpo)")
    rollout: Literal["hf"] = Field("hf", description="rollout backend: hf (the policy itself through the lean KV-cache "
                                   "decoder of decoder.py, transformers' generate for other architectures). vLLM "
                                   "backends are library-level (train/rollout.py)")
    threads: int | None = Field(None, gt=0, description="torch CPU threads; None keeps torch's default")
    log_every: int = Field(1, gt=0, description="steps between metrics.csv rows")
    save_every: int = Field(50, gt=0, description="steps between checkpoints")
    keep_checkpoints: int = Field(2, gt=0, description="checkpoints kept")
    resume: bool = Field(True, description="continue from the last checkpoint when there is one")

    def teacher_section(self) -> str | None:
        """The setting that makes a local teacher score the student's tokens, or None (grpo without
        kl_teacher, dpo)."""
        if self.objective == "on_policy":
            return "policy.objective on_policy"
        return "policy.kl_teacher" if self.kl_teacher > 0 else None

    @model_validator(mode="after")
    def _consistent(self) -> "PolicyConfig":
        if self.objective == "grpo" and self.group_size < 2:
            raise ValueError("grpo needs group_size >= 2 (advantages are relative to the group)")
        if self.objective != "grpo" and self.kl_teacher:
            raise ValueError("kl_teacher applies to objective 'grpo' (on_policy is the KL to the teacher alone)")
        for key, where in self._ignored():
            raise ValueError(f"{key} applies to {where}; this student's objective is {self.objective}"
                             + (f" with divergence {self.divergence}" if self.objective == "on_policy" else "")
                             + f", which does not read it: remove {key}")
        return self

    def _ignored(self) -> list[tuple[str, str]]:
        """Keys set to something other than their default that this objective never reads (a setting
        that would silently do nothing), with what they apply to."""
        sampled = self.objective == "grpo" or (self.objective == "on_policy" and self.divergence != "jsd")
        rules = [(k, "objective grpo", self.objective == "grpo") for k in ("loss_norm", "scale_rewards", "rewards")]
        rules += [(k, "objective dpo", self.objective == "dpo") for k in ("dpo_beta", "dpo_sft", "dpo_samples",
                                                                          "dpo_problems")]
        rules += [("updates_per_batch", "objectives grpo and on_policy", self.objective != "dpo")]
        rules += [("divergence", "objective on_policy", self.objective == "on_policy"),
                  ("beta", "objective on_policy with divergence jsd", self.objective == "on_policy"
                   and self.divergence == "jsd")]
        rules += [(k, "objective grpo, and on_policy with divergence sampled_reverse_kl (the clipped policy loss)",
                   sampled) for k in ("clip_eps", "clip_eps_high", "kl_ref")]
        fields = type(self).model_fields
        return [(k, where) for k, where, used in rules
                if not used and k in self.model_fields_set and getattr(self, k) != fields[k].get_default(
                    call_default_factory=True)]
