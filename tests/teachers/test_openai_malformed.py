"""OpenAITeacher against a raw HTTP server on 127.0.0.1 that answers 200 with the malformed or
unusual bodies real servers send: every one becomes a trace or an error trace with its reason,
never a crashed stage, and nothing unusable is recorded as a successful trace."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("httpx2")

from reasondistill.records import Problem  # noqa: E402
from reasondistill.teachers.openai_api import OpenAITeacher, TeacherError  # noqa: E402
from reasondistill.teachers.sampling import SamplingParams  # noqa: E402

GOOD = {"message": {"role": "assistant", "content": "<think>3+4</think>7"}, "finish_reason": "stop", "index": 0}
USAGE = {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
BODIES = {  # the problem's prompt -> (status, headers, body)
    "usage-string": {"choices": [GOOD], "usage": "lots"},
    "index-string": {"choices": [GOOD | {"index": "0"}], "usage": USAGE},
    "no-usage": {"choices": [GOOD]},
    "content-filter": {"choices": [GOOD | {"finish_reason": "content_filter"}], "usage": USAGE},
    "content-null": {"choices": [{"message": {"role": "assistant", "content": None}, "finish_reason": "stop"}],
                     "usage": USAGE},
    "bad-gzip": b"this is not gzip",
    "html": b"<html><body>502 Bad Gateway</body></html>",
    "fine": {"choices": [GOOD], "usage": USAGE},
}


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        if self.headers.get("Authorization") == "Bearer wrong":
            return self._send(401, b'{"error": {"message": "invalid api key"}}')
        answer = BODIES[prompt]
        if prompt == "bad-gzip":
            return self._send(200, answer, {"Content-Encoding": "gzip"})
        self._send(200, answer if isinstance(answer, bytes) else json.dumps(answer).encode())

    def _send(self, status, payload, headers=None):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def _teacher(url, **kw):
    return OpenAITeacher(url, "m", max_retries=1, backoff_base_s=0.01, backoff_max_s=0.02, timeout_s=5,
                         max_consecutive_failures=0, **kw)


def test_every_malformed_answer_is_a_trace_or_an_error_trace(server):
    problems = [Problem(id=k, prompt=k, answer="7", task="t") for k in BODIES]
    out = {b[0].problem_id: b[0] for b in _teacher(server).sample(problems, SamplingParams(n=1, max_new_tokens=8))}
    assert set(out) == set(BODIES)
    for ok in ("usage-string", "index-string", "no-usage", "fine"):
        assert out[ok].error is None and out[ok].answer == "7" and out[ok].finish_reason == "stop", ok
    assert out["usage-string"].usage["missing"] and out["no-usage"].usage["missing"]
    assert "missing" not in out["fine"].usage and out["fine"].completion_tokens == 4
    reasons = {"content-filter": "content filter", "content-null": "no content", "bad-gzip": "malformed response",
               "html": "not JSON"}
    for name, reason in reasons.items():
        assert out[name].finish_reason == "error" and reason in out[name].error, (name, out[name].error)


def test_a_refused_api_key_stops_at_once_with_a_clear_message(server, monkeypatch):
    monkeypatch.setenv("RD_KEY", "wrong")
    problems = [Problem(id=f"p{i}", prompt="fine", answer="7", task="t") for i in range(20)]
    with pytest.raises(TeacherError, match="HTTP 401: invalid api key; check the API key.*RD_KEY"):
        list(_teacher(server, api_key_env="RD_KEY", concurrency=1).sample(problems, SamplingParams(n=1)))


