"""Evaluation backends (evaluate/backends.py): the same greedy verdicts whichever decodes.

hf decodes in this process; openai goes through the API client to a real `reasondistill serve`
on 127.0.0.1; vllm runs our vLLM code (VLLMTeacher, request_output_to_traces) around a stand-in
engine (fake_vllm.py: vLLM needs a GPU and cannot be installed here).

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/evaluate/test_backends.py -q
"""

import threading

import pytest

from fake_vllm import FakeLLM, SamplingParams as FakeSamplingParams
from reasondistill.evaluate.accuracy import evaluate_model
from reasondistill.evaluate.backends import EvaluationFailed, hf_backend, sampler_backend
from reasondistill.evaluate.sampled import evaluate_sampled
from reasondistill.models import load_model, load_tokenizer
from reasondistill.tasks.arith import ChainedArithmetic

TEACHER = "bundled:tiny-arith-teacher"
PROBLEMS = ChainedArithmetic(min_ops=2, max_ops=4).problems("test", 6, seed=3)


@pytest.fixture(scope="module")
def teacher():
    return load_model(TEACHER), load_tokenizer(TEACHER)


@pytest.fixture(scope="module")
def server(teacher):
    from reasondistill.serve import make_server

    srv = make_server(teacher[0], teacher[1], model_name="teacher")
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def openai_backend(url, model="teacher", tokenizer=None, **kw):
    from reasondistill.teachers.openai_api import OpenAITeacher

    client = OpenAITeacher(url, model, concurrency=4, max_retries=kw.pop("max_retries", 2), backoff_base_s=0, **kw)
    return sampler_backend(client, tokenizer, kind="openai", label=url)


def vllm_backend(teacher):
    from reasondistill.teachers.vllm_backend import VLLMTeacher

    engine = VLLMTeacher(TEACHER, llm=FakeLLM(*teacher), sampling_params_cls=FakeSamplingParams)
    return sampler_backend(engine, engine.tokenizer, kind="vllm", label="fake"), engine


def test_backends_give_the_same_greedy_verdicts(teacher, server, arith, tmp_path):
    kw = dict(batch_size=8, max_new_tokens=96)
    hf = evaluate_model(hf_backend(*teacher), PROBLEMS, arith, out_dir=tmp_path / "hf", **kw)
    api = evaluate_model(openai_backend(server.url, tokenizer=teacher[1]), PROBLEMS, arith, out_dir=tmp_path / "api", **kw)
    vb, engine = vllm_backend(teacher)
    vl = evaluate_model(vb, PROBLEMS, arith, out_dir=tmp_path / "vllm", **kw)
    assert engine.llm.calls >= 1
    rows = {}
    for name in ("hf", "api", "vllm"):
        rows[name] = [__import__("json").loads(line) for line in (tmp_path / name / "completions.jsonl").open()]
    for a, b, c in zip(rows["hf"], rows["api"], rows["vllm"], strict=True):
        assert a["problem_id"] == b["problem_id"] == c["problem_id"]
        assert a["text"] == b["text"] == c["text"]
        assert a["verdict"] == b["verdict"] == c["verdict"]
        assert a["completion_tokens"] == b["completion_tokens"] == c["completion_tokens"]
        assert a["prompt_tokens"] == b["prompt_tokens"] == c["prompt_tokens"]
    assert hf["accuracy"] == api["accuracy"] == vl["accuracy"] and hf["n"] == 6
    assert hf["correct"] >= 3  # the bundled teacher solves most of these: the comparison is not of empty answers
    assert "backend" not in hf and api["backend"]["backend"] == "openai" and vl["backend"]["backend"] == "vllm"
    assert api["api_usage"]["requests"] == 6 and api["api_usage"]["completion_tokens"] == sum(
        r["completion_tokens"] for r in rows["api"])


def test_sampled_evaluation_through_the_server(teacher, server, arith):
    """pass@k / maj@k through the API: seeded per (problem, sample), so two runs agree."""
    kw = dict(samples=2, k=[1, 2], temperature=0.8, max_new_tokens=96, seed=5)
    a = evaluate_sampled(openai_backend(server.url, tokenizer=teacher[1]), PROBLEMS[:3], arith, **kw)
    b = evaluate_sampled(openai_backend(server.url), PROBLEMS[:3], arith, **kw)  # no local tokenizer: still works
    assert a["samples"] == 2 and a["problems"] == 3
    assert a["pass@k"] == b["pass@k"] and a["maj@k"] == b["maj@k"]
    assert a["provenance"]["backend"]["backend"] == "openai" and a["provenance"]["api_usage"]["requests"] == 6


def test_a_server_that_keeps_failing_is_an_error_not_wrong_answers(teacher, arith):
    from reasondistill.serve import make_server

    srv = make_server(teacher[0], teacher[1], model_name="teacher", inject_failures="503")
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        with pytest.raises(EvaluationFailed, match=r"6 of 6 completions failed .*HTTP 503"):
            evaluate_model(openai_backend(srv.url, max_retries=0, max_consecutive_failures=None), PROBLEMS, arith,
                           max_new_tokens=8)
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_run_config_picks_each_models_backend():
    import importlib.util

    from reasondistill.config import RunConfig
    from reasondistill.evaluate.backends import backend_conf, evaluation_backend
    from reasondistill.teachers.vllm_backend import VLLMUnavailable

    cfg = RunConfig.model_validate({
        "teacher": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "big"},
        "students": [{"name": "a", "init": {}}, {"name": "b", "init": {}}],
        "evaluate": {"backend": "openai", "openai": {"base_url": "http://127.0.0.1:8001/v1",
                                                     "urls": {"b": "http://127.0.0.1:8002/v1"}}}})
    assert evaluation_backend(cfg, "a", "/nonexistent/a").label == "http://127.0.0.1:8001/v1 (a)"
    assert evaluation_backend(cfg, "b", "/nonexistent/b").label == "http://127.0.0.1:8002/v1 (b)"
    teacher = evaluation_backend(cfg, "teacher", "big")
    assert (teacher.kind, teacher.label, teacher.tokenizer) == ("openai", "http://127.0.0.1:9/v1 (big)", None)
    assert backend_conf(cfg, "b") == {"backend": "openai", "url": "http://127.0.0.1:8002/v1", "served_model": "b"}
    assert backend_conf(RunConfig(), "a") == {} and backend_conf(RunConfig(), "teacher") == {}  # hf: as before
    if importlib.util.find_spec("vllm") is None:
        vcfg = RunConfig.model_validate({"evaluate": {"backend": "vllm", "vllm": {"tensor_parallel_size": 2}}})
        with pytest.raises(VLLMUnavailable, match="pip install vllm"):
            evaluation_backend(vcfg, "a", "/nonexistent/a")
        with pytest.raises(VLLMUnavailable, match="pip install vllm"):
            evaluation_backend(RunConfig.model_validate({"teacher": {"kind": "vllm", "model": "m"}}), "teacher", "m")


def test_a_student_the_server_lacks_is_named_by_the_evaluate_keys(server, arith):
    """The 404 for a student's evaluation names evaluate.openai.model (the student's name by default),
    not teacher.model: the teacher's section has nothing to do with it."""
    from reasondistill.config import RunConfig
    from reasondistill.evaluate.backends import evaluation_backend

    cfg = RunConfig.model_validate({"students": [{"name": "warm_kd", "init": {}}],
                                    "evaluate": {"backend": "openai", "openai": {"base_url": server.url}}})
    backend = evaluation_backend(cfg, "warm_kd", "/nonexistent/warm_kd")
    with pytest.raises(Exception, match=r"is evaluate\.openai\.model \('warm_kd'\) a model the server has") as err:
        evaluate_model(backend, PROBLEMS[:2], arith, batch_size=2, max_new_tokens=8)
    assert "teacher." not in str(err.value)


def test_an_evaluation_stopped_part_way_resumes_with_the_same_completions(teacher, arith, tmp_path):
    """Completions are appended to partial.jsonl batch by batch: after a Ctrl-C in the third batch
    only the problems not yet decoded are decoded again (under the same key), and the results equal
    an evaluation never stopped; another key starts over."""
    import dataclasses

    problems = ChainedArithmetic(min_ops=2, max_ops=4).problems("test", 10, seed=5)
    kw = dict(batch_size=3, max_new_tokens=64, resume_key="fp-1")
    whole = evaluate_model(hf_backend(*teacher), problems, arith, out_dir=tmp_path / "whole", **kw)
    asked = []

    def stopping_after(batches):
        backend = hf_backend(*teacher)
        inner = backend.generate

        def generate(todo, params, system_prompt=None):
            asked.extend(p.id for p in todo)
            for i, batch in enumerate(inner(todo, params, system_prompt)):
                if i == batches:
                    raise KeyboardInterrupt
                yield batch
        return dataclasses.replace(backend, generate=generate)
    with pytest.raises(KeyboardInterrupt):
        evaluate_model(stopping_after(2), problems, arith, out_dir=tmp_path / "cut", **kw)
    partial = (tmp_path / "cut/partial.jsonl").read_text().splitlines()
    assert len(partial) == 1 + 6 and not (tmp_path / "cut/completions.jsonl").exists()
    asked.clear()
    again = evaluate_model(stopping_after(99), problems, arith, out_dir=tmp_path / "cut", **kw)
    assert len(asked) == 4 and not (tmp_path / "cut/partial.jsonl").exists()  # only the 4 not done
    assert again == whole
    assert (tmp_path / "cut/completions.jsonl").read_text() == (tmp_path / "whole/completions.jsonl").read_text()
    with pytest.raises(KeyboardInterrupt):
        evaluate_model(stopping_after(1), problems, arith, out_dir=tmp_path / "other", **kw)
    asked.clear()
    evaluate_model(stopping_after(99), problems, arith, out_dir=tmp_path / "other", **(kw | {"resume_key": "fp-2"}))
    assert len(asked) == 10  # another config: nothing reused
