"""The one verification path: in-process for checks that cannot hang, a pool with limits otherwise.

``check_answers`` is what curate, evaluate, voting, the router, budgets and ``score`` call; these
tests pin down which checks it sends to worker processes, that a stuck check becomes
"unparseable: timeout" within the limit, and that a scope's pool starts lazily and stops at the end.
"""

from __future__ import annotations

import time

from reasondistill.records import Problem
from reasondistill.verify import checker
from reasondistill.verify.checker import check_answers, check_job, verifier_scope


def test_arithmetic_is_checked_here_and_starts_no_pool(arith):
    p = arith.problems("test", 2, 0)
    with verifier_scope(timeout=1.0) as v:
        checks = check_answers(arith, [(p[0], p[0].answer), (p[1], "no"), (p[1], "7" * 10_000)])
        assert v.pool is None  # nothing could hang: no worker was started
    assert [c.verdict for c in checks] == ["correct", "unparseable", "wrong"]
    assert len(checks[2].reason) < 80  # a huge number is judged (no int() limit) and not echoed in full


def test_math_goes_to_the_pool_and_a_hang_is_a_timeout_not_wrong(arith):
    ingested = [Problem(id=f"ingested:{i}", task="math", prompt="q", answer="5") for i in range(3)]
    assert check_job(arith, ingested[0], "\\boxed{5}") is not None  # math recorded under another task
    start = time.monotonic()
    with verifier_scope(timeout=1.5, workers=1) as v:
        checks = check_answers(arith, list(zip(ingested, ["\\boxed{5}", "\\boxed{2^{2^{2^{30}}}}", "\\boxed{6}"])))
        first = v.pool.pool[0].proc.pid
        again = check_answers(arith, [(ingested[0], "\\boxed{5}")])  # the same pool serves the next batch
        assert v.pool.pool[0].proc.pid == first and v.pool.replaced == 1  # only the stuck worker was replaced
    assert v.pool is None
    assert [(c.verdict, c.reason) for c in checks] == [("correct", "match"), ("unparseable", "timeout"),
                                                        ("wrong", "mismatch")]
    assert again[0].verdict == "correct"
    assert time.monotonic() - start < 20


def test_tasks_say_which_checks_can_hang(tmp_path, arith):
    from reasondistill.tasks.adapters import GSM8K, CodeTask, MultipleChoice
    from reasondistill.tasks.filetask import FileTask
    from reasondistill.tasks.base import load_task

    f = tmp_path / "qa.jsonl"
    f.write_text('{"question": "1+1?", "answer": "2"}\n')
    p = Problem(id="x:1", task="x", prompt="q", answer="2", meta={"choices": ["1", "2"], "tests": "assert True"})
    assert GSM8K(path=str(f)).check_job(p, "2") is not None
    assert MultipleChoice(path=str(f)).check_job(p, "B") is not None  # backtracking patterns
    assert FileTask(path=str(f)).check_job(p, "2") is not None
    assert FileTask(path=str(f), verifier="exact").check_job(p, "2") is None
    assert CodeTask(path=str(f)).check_job(p, "") is None  # the sandbox has its own limits
    assert getattr(arith, "check_job", None) is None
    mix = load_task({"name": "mixture", "sources": [{"label": "a", "spec": {"name": "chained_arith"}},
                                                    {"label": "g", "spec": {"name": "gsm8k", "path": str(f)}}]})
    assert mix.check_job(Problem(id="g:1", task="g", prompt="q", answer="2", meta={"source": "g"}), "2")
    assert mix.check_job(Problem(id="a:1", task="a", prompt="q", answer="2", meta={"source": "a"}), "2") is None


def test_outside_a_scope_one_process_wide_verifier_is_reused():
    assert checker.verifier() is checker.verifier()
    with verifier_scope() as v:
        assert checker.verifier() is v
    assert checker.verifier() is not v
