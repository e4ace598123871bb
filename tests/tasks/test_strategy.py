"""Prompt erasure end to end: the teacher gets each source's strategy, the student's prompt never does."""

import json
import threading

import pytest

from reasondistill.config import RunConfig
from reasondistill.data.dataset import TokenizedDataset
from reasondistill.models import load_tokenizer
from reasondistill.pipeline import Pipeline
from reasondistill.prompts import render_prompts
from reasondistill.records import Problem, Trace, read_records
from reasondistill.tasks.strategy import group_by_system_prompt, system_prompt_for

STRATEGY = "Work one step per line; check each step. STRATEGY-7Q"


def config(tmp_path, teacher, **teacher_kw):
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"question": f"{10 + i}+{i % 7}*2", "answer": str(10 + i + 2 * (i % 7))}) + "\n"
                          for i in range(60)))
    return RunConfig.model_validate({
        "run_dir": str(tmp_path / "run"), "seed": 0,
        "task": {"name": "mixture", "n_train": 12, "n_test": 4, "sources": [
            {"name": "file", "label": "qa", "path": str(qa), "ratio": 1, "strategy": STRATEGY},
            {"name": "chained_arith", "label": "arith", "min_ops": 2, "max_ops": 3, "ratio": 1}]},
        "teacher": {"model": str(teacher), **teacher_kw},
        "generate": {"n": 2, "temperature": 1.0, "max_new_tokens": 6, "batch_size": 8, "max_failed_share": 1.0},
        "curate": {"require_correct": False, "require_think": False, "max_per_problem": 2},
        "build": {"max_length": 256, "val_fraction": 0.0},
        "students": [{"name": "s1", "init": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                              "intermediate_size": 32}}],
    })


def test_grouping_joins_the_teacher_prompt_and_keeps_order():
    ps = [Problem(id=str(i), task="t", prompt="p", answer="1", meta={"strategy": "S"} if i % 2 else {})
          for i in range(5)]
    groups = group_by_system_prompt(ps, "Base.")
    assert [(s, [p.id for p in g]) for s, g in groups] == [("Base.", ["0", "2", "4"]), ("Base.\n\nS", ["1", "3"])]
    assert system_prompt_for(ps[0]) is None and system_prompt_for(ps[1]) == "S"


def test_teacher_sees_the_strategy_and_the_student_prompt_does_not(tmp_path, tiny_model_dir):
    cfg = config(tmp_path, tiny_model_dir)
    pipe = Pipeline(cfg, log=lambda *_: None, show_progress=False)
    stats = pipe.problems()
    assert stats["composition"]["train"]["sources"]["qa"]["taken"] == 6
    comp = json.loads((tmp_path / "run/problems/composition.json").read_text())
    assert {k: v["taken"] for k, v in comp["train"]["sources"].items()} == {"qa": 6, "arith": 6}
    pipe.generate()
    pipe.curate()
    pipe.build()

    problems = {p.id: p for p in read_records(tmp_path / "run/problems/train.jsonl", Problem)}
    with_strategy = {i for i, p in problems.items() if p.meta.get("strategy") == STRATEGY}
    assert len(with_strategy) == 6 and all(problems[i].meta["source"] == "qa" for i in with_strategy)
    tok = load_tokenizer(str(tiny_model_dir))
    traces = read_records(tmp_path / "run/generate/traces.jsonl", Trace)
    assert len(traces) == 24
    for tr in traces:
        p = problems[tr.problem_id]
        bare, told = (len(tok(render_prompts(tok, [p.prompt], system=s)[0], add_special_tokens=False)["input_ids"])
                      for s in (None, STRATEGY))
        if tr.problem_id in with_strategy:  # the teacher's prompt held the strategy, and the trace says so
            assert tr.sampling["system_prompt"] == STRATEGY and tr.prompt_tokens == told
        else:
            assert "system_prompt" not in tr.sampling and tr.prompt_tokens == bare

    ds = TokenizedDataset(tmp_path / "run/build/s1/train.safetensors")
    assert {ds.problem_ids[i] for i in range(len(ds))} & with_strategy  # strategy problems were trained on
    for i in range(len(ds)):
        ids, prompt_len = ds[i]
        prompt = tok.decode(ids[:prompt_len].tolist())
        assert prompt == render_prompts(tok, [problems[ds.problem_ids[i]].prompt])[0]
        assert "STRATEGY-7Q" not in prompt and "<|system|>" not in prompt


def test_api_teacher_receives_the_strategy(tmp_path, tiny_model_dir):
    """The server rejects (HTTP 400, not retried) any request whose messages hold the strategy's marker:
    exactly the strategy source's problems fail, so exactly they were sent the strategy."""
    pytest.importorskip("httpx2")
    from reasondistill.serve import make_server

    srv = make_server(str(tiny_model_dir), port=0, model_name="tiny", inject_failures="400~STRATEGY-7Q")
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        cfg = config(tmp_path, "tiny", kind="openai", base_url=srv.url, concurrency=2, max_retries=1)
        pipe = Pipeline(cfg, log=lambda *_: None, show_progress=False)
        stats = pipe.generate()
    finally:
        srv.shutdown()
        srv.server_close()
    problems = {p.id: p for p in read_records(tmp_path / "run/problems/train.jsonl", Problem)}
    traces = read_records(tmp_path / "run/generate/traces.jsonl", Trace)
    failed = {t.problem_id for t in traces if t.finish_reason == "error"}
    assert failed == {i for i, p in problems.items() if p.meta["source"] == "qa"} and stats["failed"] == 12
    assert all(t.error.startswith("HTTP 400") for t in traces if t.finish_reason == "error")
    assert all(t.sampling.get("system_prompt") == (STRATEGY if t.problem_id in failed else None) for t in traces)
