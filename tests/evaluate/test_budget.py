"""Budget forcing: the logits processor forces </think> after B thinking tokens (one or several
tokens long), suppresses an early close, and the curve is accuracy per budget."""

from __future__ import annotations

import json

import torch

from scripted import chatty_model_dir  # noqa: F401  (fixture)

from reasondistill.evaluate.budget import BudgetForcing, budget_curve, plot_budget_curve, think_ids
from reasondistill.thinking import CLOSE, OPEN

OPEN_IDS, CLOSE_IDS, EOS = [50], [51, 52, 53], 2  # a close tag that takes three tokens


def _step(proc, prompt, gen, vocab=60):
    ids = torch.tensor([prompt + gen])
    return proc(ids, torch.zeros(1, vocab))[0]


def test_processor_forces_a_multi_token_close_after_the_budget():
    proc = BudgetForcing(prompt_width=3, open_ids=OPEN_IDS, close_ids=CLOSE_IDS, budget=2, eos_ids=[EOS])
    prompt = [9, 9, 9]
    assert torch.isfinite(_step(proc, prompt, [50, 11])).all()  # 1 thinking token: free
    for gen, want in (([50, 11, 12], 51), ([50, 11, 12, 51], 52), ([50, 11, 12, 51, 52], 53)):
        scores = _step(proc, prompt, gen)
        assert scores[want] == 0 and torch.isinf(scores).sum() == 59
    assert torch.isfinite(_step(proc, prompt, [50, 11, 12, 51, 52, 53])).all()  # closed: the answer is free
    assert torch.isfinite(_step(proc, prompt, [11, 12, 13, 14])).all()  # not thinking: nothing to cap
    # thinking opened by the prompt (a template that ends with <think>)
    assert _step(proc, [9, 9, 50], [11, 12])[51] == 0


def test_processor_suppresses_an_early_close_and_can_open_the_thinking():
    proc = BudgetForcing(3, OPEN_IDS, CLOSE_IDS, budget=None, min_thinking=3, eos_ids=[EOS], force_open=True)
    assert _step(proc, [9, 9, 9], [])[50] == 0  # force_open writes <think> first
    early = _step(proc, [9, 9, 9], [50, 11])
    assert torch.isinf(early[51]) and torch.isinf(early[EOS]) and torch.isfinite(early[52])
    assert torch.isfinite(_step(proc, [9, 9, 9], [50, 11, 12, 13])).all()  # min reached


def test_think_tags_are_single_added_tokens_in_the_char_tokenizer(char_tokenizer):
    open_ids, close_ids = think_ids(char_tokenizer)
    assert len(open_ids) == len(close_ids) == 1
    assert char_tokenizer.decode(close_ids) == CLOSE and char_tokenizer.decode(open_ids) == OPEN


def test_budget_curve_with_a_real_model_caps_thinking_exactly(chatty_model_dir, char_tokenizer, arith, tmp_path):
    problems = arith.problems("test", 6, seed=1)
    res = budget_curve(str(chatty_model_dir), problems, arith, [3, 6], answer_tokens=4, force_open=True,
                       batch_size=4, out_dir=tmp_path, n_boot=100)
    assert [p["budget"] for p in res["points"]] == [3, 6]
    for p in res["points"]:
        assert p["mean_thinking_tokens"] == p["budget"] + 2  # <think> + B tokens + </think>
        assert p["forced_share"] == 1.0 and p["accuracy"]["n"] == 6
    saved = json.loads((tmp_path / "budget.json").read_text())
    assert saved["think_ids"] == {"open": think_ids(char_tokenizer)[0], "close": think_ids(char_tokenizer)[1]}
    assert saved["provenance"]["model_sha256"]
    assert plot_budget_curve({"m": res}, tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_forced_completions_have_the_budget_then_the_close(chatty_model_dir, char_tokenizer, arith):
    from reasondistill.evaluate.budget import forced_model
    from reasondistill.models import load_model
    from reasondistill.prompts import render_prompts
    from reasondistill.teachers.sampling import SamplingParams, generate_completions

    model = load_model(str(chatty_model_dir))
    problems = arith.problems("test", 3, seed=2)
    prompts = render_prompts(char_tokenizer, [p.prompt for p in problems])
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=12, batch_size=3)
    wrapped = forced_model(model, char_tokenizer, budget=5, force_open=True)
    for batch in generate_completions(wrapped, char_tokenizer, prompts, [p.id for p in problems], params):
        for c in batch:
            ids = char_tokenizer(c.text, add_special_tokens=False)["input_ids"]
            assert c.text.startswith(OPEN) and ids[6] == think_ids(char_tokenizer)[1][0], c.text
