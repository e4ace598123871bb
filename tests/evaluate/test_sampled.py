"""Sampled evaluation with a tiny real model: rows, unbiased pass@k, verified maj@k, provenance,
and greedy results that do not depend on the batch size."""

from __future__ import annotations

import hashlib
import json

import pytest

from scripted import chatty_model_dir  # noqa: F401  (fixture)

from reasondistill.evaluate.accuracy import evaluate_model
from reasondistill.evaluate.metrics import pass_at_k
from reasondistill.evaluate.sampled import evaluate_sampled, split_tokens, summarize_sampled, vote_table


@pytest.fixture(scope="module")
def problems(arith):
    return arith.problems("test", 10, seed=3)


def test_greedy_results_do_not_change_with_batch_size(chatty_model_dir, problems, arith, tmp_path):
    texts = {}
    for bs in (1, 4, 10):
        evaluate_model(str(chatty_model_dir), problems, arith, batch_size=bs, max_new_tokens=20, out_dir=tmp_path / str(bs))
        texts[bs] = (tmp_path / str(bs) / "completions.jsonl").read_text()
    assert len({json.loads(line)["text"] for line in texts[1].splitlines()}) > 1  # the model writes varied text
    assert texts[1] == texts[4] == texts[10]
    m = [json.loads((tmp_path / str(bs) / "metrics.json").read_text()) for bs in (1, 10)]
    assert m[0] == m[1]


def test_sampled_evaluation_rows_metrics_and_provenance(chatty_model_dir, problems, arith, tmp_path):
    res = evaluate_sampled(str(chatty_model_dir), problems, arith, samples=4, k=[1, 2, 4], temperature=1.0,
                           max_new_tokens=12, batch_size=8, seed=7, out_dir=tmp_path, n_boot=200)
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and {r["sample"] for r in rows} == {0, 1, 2, 3}
    assert all(r["thinking_tokens"] + r["answer_tokens"] == r["completion_tokens"] for r in rows)
    for k in ("1", "2", "4"):
        for key in ("pass@k", "maj@k"):
            assert set(res[key][k]) == {"value", "ci_low", "ci_high", "n"} and res[key][k]["n"] == 10
            assert res[key][k]["ci_low"] <= res[key][k]["value"] <= res[key][k]["ci_high"]
    assert 0 <= res["truncation_rate"] <= 1 and 0 <= res["no_answer_rate"] <= 1
    prov = res["provenance"]
    want = hashlib.sha256((chatty_model_dir / "model.safetensors").read_bytes()).hexdigest()
    assert prov["model_sha256"] == want
    assert prov["prompt_template"] and "<|assistant|>" in prov["prompt_template"]
    assert prov["sampling"]["seed"] == 7 and prov["sampling"]["temperature"] == 1.0 and prov["batch_size"] == 8
    assert prov["max_new_tokens"] == 12 and "system_prompt" in prov
    saved = json.loads((tmp_path / "sampled.json").read_text())
    assert saved["pass@k"] == res["pass@k"] and (tmp_path / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    # the same samples whatever the batch size (counter-based sampling)
    again = evaluate_sampled(str(chatty_model_dir), problems, arith, samples=4, k=[4], temperature=1.0,
                             max_new_tokens=12, batch_size=3, seed=7, n_boot=200)
    assert again["avg@n"] == res["avg@n"] and again["lengths"] == res["lengths"]


def _rows(problem, answers, verdicts=None):
    verdicts = verdicts or ["correct" if a == problem.answer else "wrong" for a in answers]
    return [{"problem_id": problem.id, "sample": i, "difficulty": problem.difficulty, "thinking_tokens": 3,
             "answer_tokens": 2, "completion_tokens": 5, "finish_reason": "stop", "verdict": v, "predicted": a}
            for i, (a, v) in enumerate(zip(answers, verdicts))]


def test_summary_matches_definitions_and_votes_over_verified_equal_answers(arith):
    p, q = arith.problems("test", 2, seed=0)
    wrong = str((int(q.answer) + 1) % 100)
    # p: answers "0X" and "X" are the same number (verified equal); an unreadable sample abstains
    rows = _rows(p, [p.answer, "0" + p.answer, "99" if p.answer != "99" else "98", None],
                 ["correct", "correct", "wrong", "unparseable"]) + _rows(q, [wrong, wrong, q.answer, wrong])
    res = summarize_sampled(rows, [p, q], arith, ks=[1, 4], n_boot=100)
    assert res["pass@k"]["1"]["value"] == pytest.approx((pass_at_k(4, 2, 1) + pass_at_k(4, 1, 1)) / 2)
    assert res["pass@k"]["4"]["value"] == 1.0
    votes = vote_table(rows, [p, q], arith)
    assert votes[p.id]["votes"] == 2 and votes[p.id]["correct"] and votes[p.id]["share"] == 0.5
    assert votes[q.id]["votes"] == 3 and not votes[q.id]["correct"]
    assert res["maj@k"]["4"]["value"] == 0.5 and res["avg@n"]["value"] == pytest.approx((0.5 + 0.25) / 2)
    assert res["no_answer_rate"] == pytest.approx(1 / 8)
    assert res["calibration"]["ece"] == pytest.approx(0.5 * abs(1 - 0.5) + 0.5 * abs(0 - 0.75))
    with pytest.raises(ValueError, match="k=5"):
        summarize_sampled(rows, [p, q], arith, ks=[5])


def test_thinking_and_answer_tokens(char_tokenizer):
    text = "<think>12+3=15</think>\n\n15"
    assert split_tokens(char_tokenizer, text, 14) == (1 + 7 + 1, 5)  # <think>, 7 chars, </think> | \n\n15 + EOS
    assert split_tokens(char_tokenizer, "<think>12+3", 6) == (6, 0)  # never closed: all thinking
    assert split_tokens(char_tokenizer, "15", 3) == (0, 3)
