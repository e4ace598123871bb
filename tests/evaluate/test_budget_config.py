"""evaluate.budget from the config: budgets, answer allowance (default evaluate.max_new_tokens, no
longer 32), min_thinking and force_open reach the budget stage; the old evaluate.budgets still works."""

from __future__ import annotations

import json

import pytest

from scripted import chatty_model_dir  # noqa: F401  (fixture)

from reasondistill.config import ConfigError, load_config
from reasondistill.evaluate.stages import budget_stage
from reasondistill.pipeline import Pipeline


def config(tmp_path, teacher, *overrides):
    return load_config(None, [f"run_dir={tmp_path / 'run'}", f"teacher.model={teacher}", "task.n_train=4",
                              "task.n_test=4", "evaluate.batch_size=4", "evaluate.max_new_tokens=40", *overrides])


def test_old_budgets_list_still_works_and_both_spellings_are_refused(tmp_path):
    old = load_config(None, ["evaluate.budgets=[4, 8]"]).evaluate.budget_settings()
    assert old.budgets == [4, 8] and old.answer_tokens is None and old.min_thinking == 0
    with pytest.raises(ConfigError, match="give the budgets once, as budget.budgets"):
        load_config(None, ["evaluate.budgets=[4]", "evaluate.budget={budgets: [8]}"])
    with pytest.raises(ConfigError, match="evaluate.budget.budgets"):
        load_config(None, ["evaluate.budget={budgets: []}"])
    assert load_config(None, []).evaluate.budget_settings() is None


def test_the_config_reaches_the_budget_stage(tmp_path, chatty_model_dir):
    cfg = config(tmp_path, chatty_model_dir, "evaluate.budget={budgets: [3], force_open: true, min_thinking: 2}")
    pipe = Pipeline(cfg, log=lambda m: None, show_progress=False)
    pipe.problems()
    with pipe._verifying():
        budget_stage(pipe, "teacher", str(chatty_model_dir))
    res = json.loads(pipe.rd.eval("teacher").budget.read_text())
    assert res["answer_tokens"] == 40  # evaluate.max_new_tokens, not 32
    assert res["force_open"] is True and res["min_thinking"] == 2
    assert res["points"][0]["mean_thinking_tokens"] == 3 + 2  # <think>, 3 tokens, </think>: forced open and closed
    assert res["points"][0]["accuracy"]["n"] == 4
    # an explicit allowance wins; changing it re-runs the stage
    cfg = config(tmp_path, chatty_model_dir, "evaluate.budget={budgets: [3], force_open: true, answer_tokens: 7}")
    pipe = Pipeline(cfg, log=lambda m: None, show_progress=False)
    with pipe._verifying():
        budget_stage(pipe, "teacher", str(chatty_model_dir))
    assert json.loads(pipe.rd.eval("teacher").budget.read_text())["answer_tokens"] == 7
