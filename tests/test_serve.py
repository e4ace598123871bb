"""`reasondistill serve`: a real OpenAI-compatible server on 127.0.0.1 around a tiny local model.

The model is a 1-layer Llama trained for a second to answer every prompt with
``<think>ab</think>7``, so greedy answers (and their reasoning split) are known exactly.
"""

import json
import os
import subprocess
import sys
import threading

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

httpx = pytest.importorskip("httpx2")

from reasondistill import models  # noqa: E402
from reasondistill.prompts import render_prompts  # noqa: E402
from reasondistill.serve import make_server, parse_failures  # noqa: E402

TARGET = "<think>ab</think>7"
SPEC = {"architecture": "llama", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 256}


def build_parrot(path):
    """A tiny model that greedily answers TARGET to any arithmetic prompt (~80 Adam steps)."""
    import torch
    from reasondistill.tasks.arith import ChainedArithmetic

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


def start(srv):
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return srv


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 14k-parameter model: more threads only contend (20x slower on 2 busy cores)
    yield build_parrot(tmp_path_factory.mktemp("tiny") / "model")
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def server(model_dir):
    srv = start(make_server(str(model_dir), model_name="tiny"))
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def side_server(server):
    """Another server on the same loaded model, configured per test."""
    made = []

    def make(**kw):
        made.append(start(make_server(server.model, server.tokenizer, model_name="tiny", **kw)))
        return made[-1]

    yield make
    for srv in made:
        srv.shutdown()
        srv.server_close()


def chat(url, content="47+5*3", **body):
    body = {"model": "tiny", "messages": [{"role": "user", "content": content}], **body}
    return httpx.post(f"{url}/chat/completions", json=body, timeout=30)


def test_models_and_health(server):
    assert server.url.startswith("http://127.0.0.1:")
    r = httpx.get(f"{server.url}/models")
    assert r.status_code == 200
    assert [m["id"] for m in r.json()["data"]] == ["tiny"]
    assert httpx.get(server.url.removesuffix("/v1") + "/health").json() == {"status": "ok"}


def test_chat_round_trip_with_usage(server):
    r = chat(server.url, temperature=0, max_tokens=32)
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "chat.completion" and data["model"] == "tiny"
    (choice,) = data["choices"]
    assert choice["message"] == {"role": "assistant", "content": TARGET}
    assert choice["finish_reason"] == "stop"
    prompt = render_prompts(server.tokenizer, ["47+5*3"])[0]
    n_prompt = len(server.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    # 5 tokens (<think> a b </think> 7) plus the end-of-sequence token
    assert data["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": 6, "total_tokens": n_prompt + 6}


def test_max_tokens_and_stop(server):
    r = chat(server.url, temperature=0, max_tokens=3).json()
    assert r["choices"][0]["message"]["content"] == "<think>ab"
    assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 3
    r = chat(server.url, temperature=0, stop=["</think>"]).json()
    assert r["choices"][0]["message"]["content"] == "<think>ab"
    assert r["choices"][0]["finish_reason"] == "stop" and r["usage"]["completion_tokens"] == 3


def test_n_samples_are_seeded(server):
    body = dict(n=3, temperature=50.0, max_tokens=8, seed=7)  # hot enough to be random text
    a, b, c = chat(server.url, **body).json(), chat(server.url, **body).json(), \
        chat(server.url, **{**body, "seed": 8}).json()
    assert [ch["index"] for ch in a["choices"]] == [0, 1, 2]
    texts = [ch["message"]["content"] for ch in a["choices"]]
    assert len(set(texts)) == 3  # the samples differ from each other...
    assert texts == [ch["message"]["content"] for ch in b["choices"]]  # ...and reproduce with the seed
    assert texts != [ch["message"]["content"] for ch in c["choices"]]
    assert 3 <= a["usage"]["completion_tokens"] <= 3 * 8


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_field(side_server, field):
    srv = side_server(reasoning_field=field)
    msg = chat(srv.url, temperature=0).json()["choices"][0]["message"]
    assert msg == {"role": "assistant", "content": "7", field: "ab"}
    cut = chat(srv.url, temperature=0, max_tokens=3).json()["choices"][0]  # thought cut off: no content
    assert cut["message"] == {"role": "assistant", "content": None, field: "ab"}
    assert cut["finish_reason"] == "length"


def test_request_errors(server, side_server):
    url = server.url
    r = httpx.post(f"{url}/chat/completions", content=b"{not json", timeout=10)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    assert chat(url, n=0).status_code == 400
    assert chat(url, max_tokens=0).status_code == 400
    assert chat(url, stop=[""]).status_code == 400
    r = httpx.post(f"{url}/chat/completions", json={"model": "gpt-9", "messages": [{"role": "user", "content": "1"}]})
    assert r.status_code == 404 and r.json()["error"]["type"] == "model_not_found"
    assert httpx.get(f"{url}/nowhere").status_code == 404
    assert httpx.post(f"{url}/chat/completions", json={"model": "tiny", "messages": []}).status_code == 400
    assert chat(url, content="9" * 300).status_code == 400  # longer than the model's 256 positions
    locked = side_server(api_key="sk-test-0123")
    assert chat(locked.url).status_code == 401
    assert httpx.get(f"{locked.url}/models").status_code == 401
    ok = httpx.get(f"{locked.url}/models", headers={"Authorization": "Bearer sk-test-0123"})
    assert ok.status_code == 200


def sse(url, path, body):
    """The data of each server-sent event of a streamed request."""
    events = []
    with httpx.stream("POST", f"{url}/{path}", json={"model": "tiny", "stream": True, **body}, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: "):])
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_stream_chat(server):
    body = {"messages": [{"role": "user", "content": "47+5*3"}], "temperature": 0, "n": 2,
            "stream_options": {"include_usage": True}}
    chunks = sse(server.url, "chat/completions", body)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    for i in range(2):
        mine = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == i]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        pieces = [ch["delta"].get("content", "") for ch in mine]
        assert "".join(pieces) == TARGET and sum(bool(p) for p in pieces) >= 3  # token by token, not one piece
        assert [ch["finish_reason"] for ch in mine] == [None] * (len(mine) - 1) + ["stop"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 12  # 2 x (5 + EOS)
    full = chat(server.url, temperature=0, n=2).json()
    assert chunks[-1]["usage"] == full["usage"]


def test_stream_reasoning_field_and_stop(side_server):
    srv = side_server(reasoning_field="reasoning_content")
    chunks = sse(srv.url, "chat/completions", {"messages": [{"role": "user", "content": "47+5*3"}], "temperature": 0})
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "ab"
    assert "".join(d.get("content", "") for d in deltas) == "7"
    chunks = sse(srv.url, "completions", {"prompt": render_prompts(srv.tokenizer, ["47+5*3"])[0], "temperature": 0,
                                           "max_tokens": 32, "stop": ["</think>"]})
    assert "".join(c["choices"][0]["text"] for c in chunks) == "<think>ab"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_completions_endpoint(server):
    prompt = render_prompts(server.tokenizer, ["47+5*3"])[0]  # the chat template, applied by the client
    r = httpx.post(f"{server.url}/completions", json={"model": "tiny", "prompt": prompt, "temperature": 0,
                                                       "max_tokens": 32}, timeout=30).json()
    assert r["object"] == "text_completion"
    assert r["choices"][0]["text"] == TARGET and r["choices"][0]["finish_reason"] == "stop"
    assert r["usage"]["completion_tokens"] == 6
    short = httpx.post(f"{server.url}/completions", json={"prompt": prompt, "temperature": 0}, timeout=30).json()
    assert short["choices"][0]["text"] == TARGET  # default max_tokens 16 is enough here
    assert httpx.post(f"{server.url}/completions", json={"prompt": ""}).status_code == 400


def test_concurrent_requests_are_batched_and_answer_as_alone(side_server):
    from concurrent.futures import ThreadPoolExecutor

    srv = side_server(batch_window_s=0.5)  # a wide window: all six requests join one batch
    bodies = [dict(content=f"{i}+{i}*3", n=2, temperature=5.0, max_tokens=4 + i, seed=i) for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda b: chat(srv.url, **b).json(), bodies))
    assert srv.engine.stats["max_batch_requests"] >= 2
    assert srv.engine.stats["batches"] < 6
    alone = side_server(max_batch_rows=1)  # one request per batch
    for b, got in zip(bodies, together):
        ref = chat(alone.url, **b).json()
        assert [c["message"]["content"] for c in got["choices"]] == [c["message"]["content"] for c in ref["choices"]]
        assert got["usage"] == ref["usage"]
        assert all(c["finish_reason"] in ("stop", "length") for c in got["choices"])
        assert all(len(srv.tokenizer(c["message"]["content"], add_special_tokens=False)["input_ids"]) <= b["max_tokens"]
                   for c in got["choices"])


def test_failure_injection_schedule(side_server):
    srv = side_server(inject_failures="429=1.5@1,500@2,trunc@3,nochoices@4,drop@5,503~13+7")
    r = chat(srv.url)
    assert r.status_code == 429 and r.headers["Retry-After"] == "1.5"
    assert chat(srv.url).status_code == 500
    r = chat(srv.url, temperature=0)
    assert r.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.content)
    r = chat(srv.url, temperature=0)
    assert r.status_code == 200 and "choices" not in r.json() and "usage" in r.json()
    with pytest.raises(httpx.RemoteProtocolError):
        chat(srv.url)
    assert chat(srv.url, temperature=0).json()["choices"][0]["message"]["content"] == TARGET
    assert chat(srv.url, content="13+7*2").status_code == 503  # every time: a problem that always fails
    assert chat(srv.url, content="13+7*2").status_code == 503
    assert srv.stats["chat_requests"] == 8 and srv.stats["injected_status503"] == 2


def test_failure_injection_rate_and_slow(side_server):
    import time

    srv = side_server(inject_failures="slow=0.6@1,500%0.5")
    t0 = time.monotonic()
    assert chat(srv.url, temperature=0).status_code == 200
    assert time.monotonic() - t0 >= 0.6
    codes = [chat(srv.url, max_tokens=1).status_code for _ in range(20)]
    assert 3 <= codes.count(500) <= 17 and set(codes) == {200, 500}


def test_parse_failures():
    fs = parse_failures("429=2@3-5, 500%0.25,slow~13+7,trunc,drop@1")
    assert [(f.kind, f.status, f.seconds) for f in fs] == [
        ("status", 429, 2.0), ("status", 500, 0.0), ("slow", 0, 5.0), ("trunc", 0, 0.0), ("drop", 0, 0.0)]
    assert (fs[0].first, fs[0].last, fs[1].rate, fs[2].text, fs[4].first) == (3, 5, 0.25, "13+7", 1)
    assert fs[3].matches(99, 3, "anything")  # no selector: every request
    assert parse_failures(None) == [] and parse_failures("") == []
    with pytest.raises(ValueError, match="cannot read 'timeout@1'"):
        parse_failures("500@2,timeout@1")


def test_cli_serves(model_dir):
    """`python -m reasondistill.serve MODEL --port 0` prints its URL and answers."""
    proc = subprocess.Popen([sys.executable, "-m", "reasondistill.serve", str(model_dir), "--port", "0",
                             "--served-model-name", "tiny", "--reasoning-field", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving tiny at http://127.0.0.1:"), line
        url = line.split(" at ")[1].split()[0]
        msg = chat(url, temperature=0).json()["choices"][0]["message"]
        assert (msg["content"], msg["reasoning_content"]) == ("7", "ab")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
