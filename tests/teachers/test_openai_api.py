"""OpenAITeacher against a real `reasondistill serve` server on 127.0.0.1 (no mocks).

The served model is a 1-layer Llama trained for a second to answer ``<think>ab</think>7``, so
every trace's reasoning and answer are known; ``--inject-failures`` makes the server misbehave.
"""

import logging
import os
import socket
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

pytest.importorskip("httpx2")

from reasondistill import models  # noqa: E402
from reasondistill.prompts import render_prompts  # noqa: E402
from reasondistill.records import JsonlWriter, Trace, read_records  # noqa: E402
from reasondistill.serve import make_server  # noqa: E402
from reasondistill.tasks.arith import ChainedArithmetic  # noqa: E402
from reasondistill.teachers.openai_api import OpenAITeacher, TeacherError, request_seed  # noqa: E402
from reasondistill.teachers.sampling import SamplingParams  # noqa: E402

TARGET = "<think>ab</think>7"
SPEC = {"architecture": "llama", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 256}
PROBLEMS = ChainedArithmetic(min_ops=3, max_ops=4).problems("train", 4, seed=1)
GREEDY = SamplingParams(n=2, temperature=0.0, max_new_tokens=16)
SECRET = "sk-rd-SECRET-4242-do-not-log"


def build_parrot(path):
    """A tiny model that greedily answers TARGET to any arithmetic prompt (as in tests/test_serve.py)."""
    import torch

    tok = models.build_char_tokenizer()
    model = models.init_model(SPEC, tok, seed=0)
    prompts = render_prompts(tok, [p.prompt for p in ChainedArithmetic().problems("train", 16, 0)])
    target = tok(TARGET, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    rows = [(tok(p, add_special_tokens=False)["input_ids"], target) for p in prompts]
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, c) in enumerate(rows):
        ids[i, :len(p) + len(c)] = torch.tensor(p + c)
        labels[i, len(p):len(p) + len(c)] = torch.tensor(c)
        mask[i, :len(p) + len(c)] = 1
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(80):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 14k-parameter model: more threads only contend
    path = str(build_parrot(tmp_path_factory.mktemp("tiny") / "model"))
    yield models.load_model(path), models.load_tokenizer(path)
    torch.set_num_threads(threads)


@pytest.fixture
def serve(loaded):
    """Start servers on 127.0.0.1 (port 0) around the loaded model; all stopped after the test."""
    started = []

    def start(**kw):
        srv = make_server(loaded[0], loaded[1], model_name="tiny", **kw)
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.shutdown()
        srv.server_close()


def teacher(srv, **kw):
    kw = {"backoff_base_s": 0.01, "backoff_max_s": 0.2, "timeout_s": 10, **kw}
    return OpenAITeacher(srv.url, "tiny", **kw)


def run(t, params=GREEDY, problems=PROBLEMS, **kw):
    batches = list(t.sample(problems, params, **kw))
    for batch in batches:  # each batch: all samples of one problem
        assert len({tr.problem_id for tr in batch}) == 1
        assert sorted(tr.sample for tr in batch) == list(range(params.n))
    assert sorted(b[0].problem_id for b in batches) == sorted(p.id for p in problems)
    return {b[0].problem_id: sorted(b, key=lambda tr: tr.sample) for b in batches}


def test_traces_from_think_tags(serve):
    srv = serve()  # raw content: the teacher splits <think> itself
    t = teacher(srv, concurrency=3)
    out = run(t)
    tok = srv.tokenizer
    for p in PROBLEMS:
        n_prompt = len(tok(render_prompts(tok, [p.prompt])[0], add_special_tokens=False)["input_ids"])
        for s, tr in enumerate(out[p.id]):
            assert (tr.thinking, tr.answer, tr.text, tr.finish_reason) == ("ab", "7", TARGET, "stop")
            assert (tr.prompt_tokens, tr.completion_tokens, tr.error) == (n_prompt, 6, None)
            assert tr.usage["prompt_tokens"] == n_prompt and tr.usage["attempts"] == 1
            assert tr.teacher == "openai:tiny"
            assert tr.sampling["request_seed"] == request_seed(0, p.id, s)
    traces = [tr for b in out.values() for tr in b]
    assert t.totals["requests"] == 8 and t.totals["retries"] == 0 and t.totals["traces"] == 8
    assert t.totals["prompt_tokens"] == sum(tr.prompt_tokens for tr in traces)
    assert t.totals["completion_tokens"] == 48
    # a system prompt goes in front of the problem
    sys_out = run(teacher(srv), problems=PROBLEMS[:1], system_prompt="Think step by step.")
    assert sys_out[PROBLEMS[0].id][0].prompt_tokens > out[PROBLEMS[0].id][0].prompt_tokens


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_from_the_field(serve, field):
    srv, one = serve(reasoning_field=field), PROBLEMS[:1]
    tr = run(teacher(srv), problems=one)[PROBLEMS[0].id][0]
    assert (tr.thinking, tr.answer, tr.text) == ("ab", "7", TARGET)
    # cut off while thinking: the server sends no content, the trace keeps the thought unclosed
    cut = run(teacher(srv), SamplingParams(n=1, max_new_tokens=3), one)[PROBLEMS[0].id][0]
    assert (cut.thinking, cut.answer, cut.text, cut.finish_reason) == ("ab", "", "<think>ab", "length")
    # reasoning="tags" ignores the field: the content alone is the answer
    tags = run(teacher(srv, reasoning="tags"), SamplingParams(n=1), one)[PROBLEMS[0].id][0]
    assert (tags.thinking, tags.answer) == ("", "7")


def test_n_in_one_request_and_seeds(serve):
    srv = serve()
    hot = SamplingParams(n=3, temperature=50.0, max_new_tokens=8, seed=3)  # random text
    t = teacher(srv, use_n=True)
    out = run(t, hot)
    assert srv.stats["chat_requests"] == len(PROBLEMS)  # one request per problem
    traces = [tr for b in out.values() for tr in b]
    assert sum(tr.completion_tokens for tr in traces) == t.totals["completion_tokens"]
    assert all(tr.usage["shared_by"] == 3 for tr in traces)
    assert len({tr.text for tr in out[PROBLEMS[0].id]}) == 3
    again = run(teacher(srv, use_n=True), hot)  # rerun: same seeds, same samples
    assert [tr.text for p in PROBLEMS for tr in out[p.id]] == [tr.text for p in PROBLEMS for tr in again[p.id]]
    # a server that ignores n (answers one choice) is asked again for the missing samples
    short = serve(inject_failures="onechoice")
    refilled = run(teacher(short, use_n=True), hot, PROBLEMS[:2])
    assert short.stats["chat_requests"] == 2 * 3 and all(len(b) == 3 for b in refilled.values())
    assert len({tr.sampling["request_seed"] for tr in refilled[PROBLEMS[0].id]}) == 3
    # one request per sample: reproducible too, and seeded per (seed, problem, sample)
    one = run(teacher(srv), hot)
    assert [tr.text for tr in one[PROBLEMS[1].id]] == [tr.text for tr in run(teacher(srv), hot)[PROBLEMS[1].id]]


def test_retries_recover_from_injected_failures(serve, caplog):
    srv = serve(inject_failures="429=0.05@1,500@2,503@3,trunc@4,nochoices@5,drop@6,slow=5@7")
    t = teacher(srv, concurrency=2, timeout_s=1.5)
    with caplog.at_level(logging.WARNING, logger="reasondistill.teachers.openai_api"):
        out = run(t)
    traces = [tr for b in out.values() for tr in b]
    assert all((tr.thinking, tr.answer, tr.error) == ("ab", "7", None) for tr in traces)
    assert t.totals["retries"] >= 7 and t.totals["requests"] == 8 + t.totals["retries"]  # 7 unless very slow
    assert sum(tr.usage["attempts"] for tr in traces) == t.totals["requests"]
    for kind in ("status429", "status500", "status503", "trunc", "nochoices", "drop", "slow"):
        assert srv.stats[f"injected_{kind}"] == 1
    text = caplog.text
    for sign in ("HTTP 429", "HTTP 500", "HTTP 503", "not JSON", "no usable choices", "connection error",
                 "timed out after 1.5s"):
        assert sign in text


def test_retry_after_is_honoured(serve):
    srv = serve(inject_failures="429=0.5@1")
    t = teacher(srv, backoff_base_s=0.0)  # no backoff of its own: any wait is the server's
    t0 = time.monotonic()
    tr = run(t, SamplingParams(n=1), PROBLEMS[:1])[PROBLEMS[0].id][0]
    assert time.monotonic() - t0 >= 0.5
    assert tr.error is None and tr.usage["attempts"] == 2


def test_failing_problem_is_recorded_not_dropped(serve):
    bad, rejected = PROBLEMS[1], PROBLEMS[2]
    assert not any(bad.prompt in p.prompt or rejected.prompt in p.prompt for p in PROBLEMS if p not in (bad, rejected))
    srv = serve(inject_failures=f"503~{bad.prompt},400~{rejected.prompt}")
    t = teacher(srv, max_retries=2)
    out = run(t)
    for tr in out[bad.id]:
        assert tr.finish_reason == "error" and tr.text == "" and tr.usage["attempts"] == 3
        assert tr.error.startswith("HTTP 503: injected failure") and "gave up after 3 attempts" in tr.error
    for tr in out[rejected.id]:  # 400 is not retried
        assert tr.finish_reason == "error" and tr.usage["attempts"] == 1 and tr.error.startswith("HTTP 400")
    for p in (PROBLEMS[0], PROBLEMS[3]):
        assert all(tr.error is None and tr.answer == "7" for tr in out[p.id])
    assert t.totals["failed_traces"] == 4 and t.totals["traces"] == 8


def test_api_key_never_leaks(serve, monkeypatch, caplog, capsys, tmp_path):
    monkeypatch.setenv("RD_TEST_KEY", SECRET)
    monkeypatch.setenv("RD_WRONG_KEY", SECRET[::-1])
    srv = serve(api_key=SECRET, inject_failures="500@1,trunc@2")  # 401 without the right key
    caplog.set_level(logging.DEBUG)  # everything: ours, httpx2, httpcore2, the server's request log
    t = teacher(srv, api_key_env="RD_TEST_KEY")
    path = tmp_path / "traces.jsonl"
    with JsonlWriter(path) as w:
        for batch in t.sample(PROBLEMS, GREEDY):
            for tr in batch:
                w.write(tr)
    traces = read_records(path, Trace)
    assert len(traces) == 8 and all(tr.error is None for tr in traces)  # so the key was sent
    wrong = teacher(srv, api_key_env="RD_WRONG_KEY", max_consecutive_failures=2)
    with pytest.raises(TeacherError, match="HTTP 401"):
        list(wrong.sample(PROBLEMS, GREEDY))
    captured = capsys.readouterr()
    for where in (path.read_text(), caplog.text, captured.out, captured.err, repr(t), str(vars(t)),
                  str(vars(wrong))):
        assert SECRET not in where and SECRET[::-1] not in where
    assert "RD_TEST_KEY" in repr(t)


def test_unreachable_server_raises_instead_of_erroring_everything():
    with socket.socket() as s:  # a port on 127.0.0.1 that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = OpenAITeacher(f"http://127.0.0.1:{port}/v1", "tiny", max_retries=1, backoff_base_s=0.01,
                      max_consecutive_failures=3, concurrency=2)
    with pytest.raises(TeacherError, match="3 problems in a row failed.*connection error") as err:
        list(t.sample(PROBLEMS, GREEDY))
    assert f"http://127.0.0.1:{port}/v1/chat/completions" in str(err.value).split("last error:")[1]


def test_consumer_can_stop_early(serve):
    srv = serve()
    gen = teacher(srv, concurrency=1).sample(PROBLEMS, GREEDY)
    first = next(gen)
    gen.close()  # cancels what is in flight and joins the helper thread
    assert len(first) == 2
    assert not any(th.name == "openai-teacher" for th in threading.enumerate())


def test_config_is_checked(monkeypatch):
    monkeypatch.delenv("RD_MISSING_KEY", raising=False)
    with pytest.raises(ValueError, match="RD_MISSING_KEY is not set"):
        OpenAITeacher("http://127.0.0.1:1/v1", "m", api_key_env="RD_MISSING_KEY")
    with pytest.raises(ValueError, match="base_url"):
        OpenAITeacher("127.0.0.1:8000/v1", "m")
    with pytest.raises(ValueError, match="looks like a key") as err:
        OpenAITeacher("http://127.0.0.1:1/v1", "m", api_key_env=SECRET)
    assert SECRET not in str(err.value)
    with pytest.raises(ValueError, match="reasoning"):
        OpenAITeacher("http://127.0.0.1:1/v1", "m", reasoning="maybe")
