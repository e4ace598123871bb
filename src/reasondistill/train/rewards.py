"""Verifiable rewards: the task's verifier turned into a number per rollout.

Why: GRPO needs a scalar per completion, and the project already judges completions the same way
everywhere (curate/verdicts.py: correct / wrong / unparseable / truncated). The reward is the
configured value of that verdict, plus an optional bonus for the ``<think>…</think> answer`` layout.

    reward = VerifierReward(task, RewardValues(correct=1, unparseable=-0.5))
    values, verdicts = reward(problems, texts, finish_reasons)
"""

from __future__ import annotations

from typing import Sequence

from reasondistill.curate.verdicts import judge_many
from reasondistill.records import Problem
from reasondistill.thinking import OPEN, split_thinking
from reasondistill.train.policy_config import RewardValues


def well_formatted(text: str) -> bool:
    """``<think>…</think>`` first, then a non-empty answer."""
    thinking, answer, ok = split_thinking(text)
    return ok and text.lstrip().startswith(OPEN) and bool(answer)


class VerifierReward:
    """``(problems, texts, finish_reasons) -> (rewards, verdicts)``, one entry per rollout."""

    def __init__(self, task, values: RewardValues):
        self.task, self.values = task, values

    def __call__(self, problems: Sequence[Problem], texts: Sequence[str],
                 finish_reasons: Sequence[str]) -> tuple[list[float], list[str]]:
        verdicts = judge_many(self.task, [(p, t, f, i) for i, (p, t, f) in
                                          enumerate(zip(problems, texts, finish_reasons, strict=True))])
        rewards = []
        for v, text, fin in zip(verdicts, texts, finish_reasons):
            r = getattr(self.values, v.verdict)
            if self.values.format and fin != "length" and well_formatted(text):
                r += self.values.format
            rewards.append(float(r))
        return rewards, [v.verdict for v in verdicts]
