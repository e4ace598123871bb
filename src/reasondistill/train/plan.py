"""How many optimizer steps a training run takes, and how they divide into epochs.

Why a module of its own: the training loop (``train/sft.py``) runs the plan and the parent of
parallel students (``train/parallel.py``) shows progress bars against it before any child has
started; both must agree to the step, so the arithmetic lives here once.

    plan = StepPlan.for_dataset(n_examples=1000, cfg=TrainConfig(), world=1)
    plan.total_steps, plan.steps_per_epoch
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class StepPlan:
    global_batch: int  # examples per micro-step over all processes
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int

    @classmethod
    def for_dataset(cls, n_examples: int, cfg, world: int = 1) -> "StepPlan":
        """``cfg``: a TrainConfig (batch_size, grad_accum, epochs, max_steps, warmup_ratio)."""
        global_batch = cfg.batch_size * world
        batches_per_epoch = math.ceil(n_examples / global_batch)
        steps_per_epoch = max(1, batches_per_epoch // cfg.grad_accum)
        total = cfg.max_steps or max(1, round(cfg.epochs * steps_per_epoch))
        return cls(global_batch, steps_per_epoch, total, round(cfg.warmup_ratio * total))
