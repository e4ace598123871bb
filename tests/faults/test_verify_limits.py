"""Hostile answers end every stage in time: curate over ingested traces with pathological math.

Before verify/checker.py, ``reasondistill curate`` called math-verify in process with its
timeouts off and ran until killed on ``\\boxed{2^{2^{2^{30}}}}``; here it must finish within the
per-answer limit plus pool overhead, each such answer "unparseable" (a timeout or another reason),
never "wrong", the time-outs counted apart in ``curate/summary.json`` and named in the log line.
"""

from __future__ import annotations

import json
import time

from pathological_answers import GOLD, by_name
from reasondistill.ingest import ingest
from tests.test_ingest import write_config, write_r1
from tests.test_pipeline import cli

LIMIT = 2.0  # verify.timeout for these runs, seconds per answer


def test_curate_finishes_on_pathological_answers_and_marks_them_unparseable(tmp_path, tiny_model_dir):
    hostile = by_name()
    rows = [{"problem": f"Problem {i}: what is 2 + 3?", "gtruth_answer": GOLD, "message_thinking": "2 + 3 = 5",
             "message_content": text} for i, (_, text) in enumerate(hostile)]
    rows += [{"problem": "Fine: 2 + 3?", "gtruth_answer": GOLD, "message_thinking": "2 + 3", "message_content": "\\boxed{5}"},
             {"problem": "Off: 2 + 3?", "gtruth_answer": GOLD, "message_thinking": "2 + 3", "message_content": "\\boxed{6}"}]
    run = tmp_path / "run"
    ingest(write_r1(tmp_path / "d.json", rows), run, "r1", config=write_config(tmp_path / "c.yaml", tiny_model_dir),
           overrides=[f"verify.timeout={LIMIT}", "verify.workers=2"], log=lambda s: None)
    start = time.monotonic()
    # each hostile answer costs at most the limit plus a worker restart (~1 s), two workers at a time;
    # the old in-process check never returned (the subprocess timeout turns that into a failure)
    out = cli("curate", run, timeout=len(hostile) * (LIMIT + 3) + 60)
    seconds = time.monotonic() - start
    assert seconds < len(hostile) * (LIMIT + 3) / 2 + 30, seconds

    summary = json.loads((run / "curate/summary.json").read_text())
    assert summary["verdicts"] == {"correct": 1, "wrong": 1, "unparseable": len(hostile)}
    assert summary["kept"] == 1
    assert summary["timeouts"] >= 2 and summary["unparseable_reasons"]["timeout"] == summary["timeouts"]
    assert "timeout" in out.stdout and f"curate: 1 of {len(rows)} traces kept" in out.stdout
    verdicts = [json.loads(line) for line in (run / "curate/verdicts.jsonl").read_text().splitlines()]
    by_problem = {v["problem_id"]: v for v in verdicts}
    problems = {json.loads(line)["prompt"]: json.loads(line)["id"]
                for line in (run / "problems/train.jsonl").read_text().splitlines()}
    for i, (name, _) in enumerate(hostile):
        v = by_problem[problems[f"Problem {i}: what is 2 + 3?"]]
        assert v["verdict"] == "unparseable", (name, v)
    assert by_problem[problems["Off: 2 + 3?"]]["verdict"] == "wrong"


def test_majority_voting_and_greedy_metrics_survive_a_hanging_comparison(tmp_path):
    from reasondistill.evaluate.accuracy import summarize
    from reasondistill.evaluate.sampled import vote_table
    from reasondistill.records import Problem
    from reasondistill.tasks.adapters import GSM8K
    from reasondistill.verify.checker import verifier_scope

    f = tmp_path / "gsm8k.jsonl"
    f.write_text(json.dumps({"question": "2 + 3?", "answer": "2 + 3 = 5\n#### 5"}) + "\n")
    task = GSM8K(path=str(f))
    p = Problem(id="gsm8k:1", task="gsm8k", prompt="2 + 3?", answer=GOLD)
    tower = "2^{2^{2^{30}}}"  # a sample judged earlier; comparing it with "5" hangs sympy
    rows = [{"problem_id": p.id, "sample": i, "verdict": v, "predicted": a}
            for i, (v, a) in enumerate([("wrong", tower), ("correct", "5"), ("correct", "5")])]
    start = time.monotonic()
    with verifier_scope(timeout=LIMIT, workers=2):
        votes = vote_table(rows, [p], task)
    assert time.monotonic() - start < 3 * (LIMIT + 3) + 10
    assert votes[p.id]["answer"] == "5" and votes[p.id]["votes"] == 2 and votes[p.id]["correct"]

    greedy = [{"verdict": v, "reason": r, "difficulty": 1, "completion_tokens": 3}
              for v, r in [("correct", "match"), ("wrong", "mismatch"), ("unparseable", "timeout")]]
    m = summarize(greedy)
    assert m["verdicts"] == {"correct": 1, "wrong": 1, "unparseable": 1} and m["timeouts"] == 1
    assert m["unparseable_reasons"] == {"timeout": 1}
