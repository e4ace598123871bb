"""Thinking budgets (s1-style budget forcing): cap the thinking at B tokens, then force ``</think>``
and let the model answer; accuracy as a function of B.

Why: a reasoning model trades tokens for accuracy. Forcing the end of thinking after B tokens
(Muennighoff et al. 2025, "s1") measures that trade-off on one model without retraining: a curve
that rises with B says the thinking is doing work; a flat one says the answer does not depend on it.

How ``</think>`` is forced: :class:`BudgetForcing` is a Hugging Face logits processor. It encodes
``<think>`` and ``</think>`` with the model's tokenizer (one added token each in the bundled
tokenizers and in Qwen-style ones; several ordinary tokens elsewhere, which are then forced one per
step). Per row it finds where the thinking started (the prompt ends with ``<think>``, or the model
wrote it, or with ``force_open`` it is written for the model), counts the thinking tokens since,
and once B were generated without a close it forces the close sequence token by token. With
``min_thinking`` the first token of ``</think>`` and EOS are suppressed until that many thinking
tokens were written. After the close the model decodes freely (answer allowance
``answer_tokens``). The processor is stateless (all from ``input_ids``), so it works with any
batch composition.

    curve = budget_curve("runs/demo/train/s1/final", problems, task, budgets=[4, 8, 16, 32])
    plot_budget_curve({"s1": curve}, "budget.png")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from reasondistill.evaluate.metrics import with_ci
from reasondistill.evaluate.sampled import completion_rows, load, provenance
from reasondistill.layout import EvalFiles
from reasondistill.records import Problem, write_json
from reasondistill.checks import Task
from reasondistill.teachers.sampling import SamplingParams, generate_completions
from reasondistill.thinking import CLOSE, OPEN


def think_ids(tokenizer) -> tuple[list[int], list[int]]:
    """Token ids of ``<think>`` and ``</think>`` as this tokenizer writes them."""
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in (OPEN, CLOSE)]
    if not ids[0] or not ids[1]:
        raise ValueError("the tokenizer encodes <think> or </think> as nothing")
    return ids[0], ids[1]


def _find(seq: list[int], sub: list[int], start: int = 0) -> int:
    """Index just past the first occurrence of ``sub`` in ``seq[start:]``, or -1."""
    n = len(sub)
    for i in range(start, len(seq) - n + 1):
        if seq[i:i + n] == sub:
            return i + n
    return -1


class BudgetForcing:
    """Logits processor: at most ``budget`` thinking tokens, then ``</think>`` (see module docstring)."""

    def __init__(self, prompt_width: int, open_ids: list[int], close_ids: list[int], budget: int | None,
                 min_thinking: int = 0, eos_ids: Sequence[int] = (), force_open: bool = False):
        self.width, self.open, self.close = prompt_width, list(open_ids), list(close_ids)
        self.budget, self.min_thinking, self.eos, self.force_open = budget, min_thinking, list(eos_ids), force_open

    def _forced(self, prompt_tail: list[int], gen: list[int]) -> tuple[int | None, bool]:
        """(token to force or None, whether to suppress an early close) for one row."""
        if prompt_tail == self.open:
            start = 0
        else:
            start = _find(gen, self.open)
            if start < 0:
                if self.force_open and gen == self.open[:len(gen)]:
                    return self.open[len(gen)], False
                return None, False  # the model is not thinking: nothing to cap
        if _find(gen, self.close, start) >= 0:
            return None, False  # thinking closed: the answer is free
        used = len(gen) - start
        if self.budget is not None and used >= self.budget:
            forced = gen[start + self.budget:]
            if forced == self.close[:len(forced)] and len(forced) < len(self.close):
                return self.close[len(forced)], False
            return None, False
        return None, used < self.min_thinking

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        tails = input_ids[:, max(0, self.width - len(self.open)):self.width].tolist()
        gens = input_ids[:, self.width:].tolist()
        for row, (tail, gen) in enumerate(zip(tails, gens)):
            token, suppress = self._forced(tail, gen)
            if token is not None:
                scores[row] = float("-inf")
                scores[row, token] = 0.0
            elif suppress:
                scores[row, [self.close[0], *self.eos]] = float("-inf")
        return scores


class _WithProcessor:
    """A model whose ``generate`` appends one more logits processor (built from the prompt width)."""

    def __init__(self, model, make):
        self._model, self._make = model, make

    def __getattr__(self, name):
        return getattr(self._model, name)

    def generate(self, *, input_ids, logits_processor=None, **kwargs):
        from transformers import LogitsProcessorList

        processors = LogitsProcessorList(list(logits_processor or []))
        processors.append(self._make(input_ids.shape[1]))
        return self._model.generate(input_ids=input_ids, logits_processor=processors, **kwargs)


def forced_model(model, tokenizer, budget: int | None, min_thinking: int = 0, force_open: bool = False):
    """``model`` wrapped so that :func:`generate_completions` decodes under budget forcing."""
    open_ids, close_ids = think_ids(tokenizer)
    eos = [tokenizer.eos_token_id]
    return _WithProcessor(model, lambda width: BudgetForcing(width, open_ids, close_ids, budget, min_thinking,
                                                             eos, force_open))


def budget_curve(model: Any, problems: Sequence[Problem], task: Task, budgets: Sequence[int], *,
                 answer_tokens: int = 256, min_thinking: int = 0, force_open: bool = False, batch_size: int = 64,
                 tokenizer=None, system_prompt: str | None = None, out_dir: str | Path | None = None,
                 name: str = "model", n_boot: int = 1000) -> dict[str, Any]:
    """Greedy accuracy (95% CI), mean thinking tokens and truncation per thinking budget."""
    model, tokenizer, path = load(model, tokenizer)
    open_ids, close_ids = think_ids(tokenizer)
    points = []
    for b in sorted(budgets):
        params = SamplingParams(n=1, temperature=0.0, batch_size=batch_size,
                                max_new_tokens=len(open_ids) + b + len(close_ids) + answer_tokens)
        wrapped = forced_model(model, tokenizer, b, min_thinking, force_open)
        rows = completion_rows(wrapped, tokenizer, problems, task, params, system_prompt, generate_completions)
        acc = with_ci([r["verdict"] == "correct" for r in rows], n_boot=n_boot)
        points.append({"budget": b, "accuracy": acc,
                       "mean_thinking_tokens": sum(r["thinking_tokens"] for r in rows) / max(len(rows), 1),
                       "forced_share": sum(r["thinking_tokens"] >= b for r in rows) / max(len(rows), 1),
                       "truncation_rate": sum(r["finish_reason"] == "length" for r in rows) / max(len(rows), 1)})
    result = {"name": name, "points": points, "answer_tokens": answer_tokens, "min_thinking": min_thinking,
              "force_open": force_open, "think_ids": {"open": open_ids, "close": close_ids},
              "provenance": provenance(path, tokenizer, SamplingParams(n=1, temperature=0.0, batch_size=batch_size),
                                       system_prompt, max_new_tokens="budget + think tags + answer_tokens")}
    if out_dir is not None:
        write_json(EvalFiles(out_dir).budget, result)
    return result


def plot_budget_curve(curves: dict[str, dict[str, Any]], path: str | Path, x: str = "budget") -> Path:
    """Accuracy (with its 95% CI band) against the thinking budget (``x="budget"``) or against the
    thinking tokens actually spent on average at each budget (``x="thinking_tokens"``), one line per model."""
    key = {"budget": "budget", "thinking_tokens": "mean_thinking_tokens"}[x]
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.8))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for name, c in curves.items():
        xs = [p[key] for p in c["points"]]
        ax.plot(xs, [p["accuracy"]["value"] for p in c["points"]], marker="o", label=name)
        ax.fill_between(xs, [p["accuracy"]["ci_low"] for p in c["points"]],
                        [p["accuracy"]["ci_high"] for p in c["points"]], alpha=0.2)
    if x == "budget":
        budgets = sorted({p["budget"] for c in curves.values() for p in c["points"]})
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.minorticks_off()
        ax.set(xlabel="thinking budget (tokens)", title="Accuracy vs thinking budget (budget forcing)")
    else:
        ax.set(xlabel="mean thinking tokens used", title="Accuracy vs thinking tokens (budget forcing)")
    ax.set(ylabel="accuracy", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110)
    return path
