"""``reasondistill serve MODEL``: a small OpenAI-compatible server for any local Hugging Face model.

Why: the API teacher (:mod:`reasondistill.teachers.openai_api`) talks to vLLM, SGLang, Ollama or a
hosted API. This server speaks the same protocol from a local model on a laptop, so the whole
API path can be run and tested offline, and ``--inject-failures`` makes it misbehave on purpose
(rate limits, 5xx, stalls, broken bodies) to prove the client's retries.

    reasondistill serve bundled:tiny-arith-teacher --port 8000 --reasoning-field
    curl -s localhost:8000/v1/chat/completions -d '{"messages":[{"role":"user","content":"47+5*3"}]}'

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` and ``POST /v1/completions`` (``n``,
``temperature``, ``top_p``, ``max_tokens``/``max_completion_tokens``, ``seed``, ``stop``, ``stream``
with server-sent events and ``stream_options.include_usage``), ``GET /health``. Requests in flight
together are decoded in one batch by :mod:`reasondistill.serve_engine`; a given ``seed`` gives the
same text alone or batched. A development and test server: for throughput serve with vLLM or SGLang.

Failure injection, ``--inject-failures SPEC``: comma-separated ``KIND[SELECTOR]``; the first
item that matches a chat-completion request decides its fate.

    KIND      429[=S]   HTTP 429 with ``Retry-After: S`` (default 0)
              NNN       any HTTP error status, e.g. 500, 503, 400
              slow[=S]  wait S seconds (default 5), then answer normally
              trunc     HTTP 200 whose JSON body is cut in half
              nochoices HTTP 200 with valid JSON but no ``choices``
              nousage   HTTP 200 without ``usage`` (token counts the client must not take as 0)
              html      HTTP 502 with an HTML error page (as a proxy in front of a server sends)
              onechoice only the first of the ``n`` choices (as servers that ignore ``n``)
              drop      close the connection without answering
    SELECTOR  @N / @N-M the N-th (to M-th) chat-completion request, counted from 1
              %P        each request with probability P (a hash of the request number: repeatable)
              ~TEXT     every request whose messages contain TEXT, which has no comma
                        (a problem that always fails)
              (none)    every request

    e.g.  --inject-failures '429=0.1@1,500@2-3,slow=3@4,trunc@5,drop@6,503~13+7'
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from reasondistill.serve_engine import ApiError, Engine, Job, partial_split, usage
from reasondistill.thinking import split_thinking

log = logging.getLogger("reasondistill.serve")

REASONING_FIELDS = ("reasoning_content", "reasoning")
MAX_BODY = 8 << 20
_ITEM = re.compile(r"^(?P<kind>\d{3}(?:=[\d.]+)?|slow(?:=[\d.]+)?|trunc|nochoices|nousage|onechoice|html|drop)"
                   r"(?:@(?P<a>\d+)(?:-(?P<b>\d+))?|%(?P<p>[\d.]+)|~(?P<text>.+))?$")


@dataclass
class Failure:
    kind: str  # "status" | "slow" | "trunc" | "nochoices" | "nousage" | "onechoice" | "html" | "drop"
    status: int = 0
    seconds: float = 0.0
    first: int | None = None
    last: int | None = None
    rate: float | None = None
    text: str | None = None

    def matches(self, number: int, index: int, haystack: str) -> bool:
        if self.first is not None:
            return self.first <= number <= (self.last if self.last is not None else self.first)
        if self.rate is not None:
            h = hashlib.blake2b(f"{index}:{number}".encode(), digest_size=8).digest()
            return int.from_bytes(h, "little") / 2**64 < self.rate
        if self.text is not None:
            return self.text in haystack
        return True


def parse_failures(spec: str | None) -> list[Failure]:
    """Parse an ``--inject-failures`` SPEC (see the module docstring)."""
    out: list[Failure] = []
    for item in filter(None, (s.strip() for s in (spec or "").split(","))):
        m = _ITEM.match(item)
        if not m:
            raise ValueError(f"--inject-failures: cannot read {item!r}; expected KIND[@N[-M]|%P|~TEXT] "
                             "with KIND one of NNN[=S], slow[=S], trunc, nochoices, nousage, onechoice, html, drop")
        kind, _, arg = m["kind"].partition("=")
        f = Failure(kind="status", status=int(kind)) if kind.isdigit() else Failure(kind=kind)
        f.seconds = float(arg) if arg else (5.0 if kind == "slow" else 0.0)
        if m["a"]:
            f.first, f.last = int(m["a"]), int(m["b"] or m["a"])
        elif m["p"]:
            f.rate = float(m["p"])
        elif m["text"]:
            f.text = m["text"]
        out.append(f)
    return out


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise ApiError(400, "message content must be a string or a list of content parts")


def _haystack(raw: bytes) -> str:
    """The text of a request's messages (what ``~TEXT`` failures look for), else the raw body."""
    try:
        return "\n".join(_text(m.get("content", "")) for m in json.loads(raw)["messages"])
    except Exception:
        return raw.decode("utf-8", "replace")


class ModelServer(ThreadingHTTPServer):
    """The HTTP server; holds the decoding engine (serve_engine.py), the failure schedule and request counters."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address, model, tokenizer, model_name: str, reasoning_field: str | None,
                 failures: list[Failure], api_key: str | None, max_batch_rows: int = 64, batch_window_s: float = 0.01):
        super().__init__(address, Handler)
        self.model, self.tokenizer, self.model_name = model, tokenizer, model_name
        self.reasoning_field, self.failures, self._api_key = reasoning_field, failures, api_key
        self.count_lock, self.closing = threading.Lock(), threading.Event()
        self.engine = Engine(model, tokenizer, max_rows=max_batch_rows, window_s=batch_window_s).start()
        self.stats: dict[str, int] = {"chat_requests": 0, "completion_requests": 0, "completions": 0}
        self.created = int(time.time())

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def count(self, key: str, k: int = 1) -> int:
        with self.count_lock:
            self.stats[key] = self.stats.get(key, 0) + k
            return self.stats[key]

    def handle_error(self, request, client_address) -> None:
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up: not our problem
            log.info("%s hung up", client_address[0])
        else:
            super().handle_error(request, client_address)

    def server_close(self) -> None:
        self.closing.set()
        super().server_close()
        self.engine.close()

    def job(self, req: dict[str, Any], chat: bool) -> Job:
        """The engine job of a chat-completion (``chat``) or completion request body (already parsed)."""
        if req.get("model") not in (None, self.model_name):
            raise ApiError(404, f"The model `{req.get('model')}` does not exist; this server has "
                                f"`{self.model_name}`", "model_not_found")
        messages, prompt = None, None
        if chat:
            msgs = req.get("messages")
            if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) and "role" in m for m in msgs):
                raise ApiError(400, "messages must be a non-empty list of {role, content} objects")
            messages = [{"role": m["role"], "content": _text(m.get("content", ""))} for m in msgs]
        else:
            prompt = req.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if not isinstance(prompt, str) or not prompt:
                raise ApiError(400, "prompt must be a non-empty string (one prompt per request here)")
        stop = req.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        try:
            def get(key: str, default: Any) -> Any:
                return default if req.get(key) is None else req[key]

            n, temperature, top_p = int(get("n", 1)), float(get("temperature", 1.0)), float(get("top_p", 1.0))
            max_tokens = int(get("max_completion_tokens", get("max_tokens", 256 if chat else 16)))
            seed = int(get("seed", secrets.randbits(62)))
            if not (1 <= n <= 128 and max_tokens >= 1 and 0 < top_p <= 1 and temperature >= 0):
                raise ValueError
            if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
                raise ValueError
        except (TypeError, ValueError):
            raise ApiError(400, "bad sampling parameters: need 1<=n<=128, max_tokens>=1, 0<top_p<=1, "
                                "temperature>=0, integer seed, stop a string or list of strings") from None
        return Job(messages=messages, prompt=prompt, n=n, temperature=temperature, top_p=top_p,
                   max_tokens=max_tokens, seed=seed, stop=stop, stream=bool(req.get("stream")))

    def run(self, job: Job) -> Job:
        self.engine.submit(job)
        if not job.stream:
            job.wait()
            if job.error is not None:
                raise job.error
            self.count("completions", len(job.choices))
        return job

    def message(self, text: str) -> dict[str, Any]:
        if not self.reasoning_field:
            return {"role": "assistant", "content": text}
        thinking, answer, _ = split_thinking(text)
        return {"role": "assistant", "content": answer if (answer or not thinking) else None,
                self.reasoning_field: thinking or None}

    def chat_response(self, job: Job) -> dict[str, Any]:
        choices = [{"index": c.sample, "message": self.message(c.text), "finish_reason": c.finish_reason,
                    "logprobs": None} for c in job.choices]
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": self.model_name, "choices": choices, "usage": usage(job.prompt_tokens, job.choices)}

    def completion_response(self, job: Job) -> dict[str, Any]:
        choices = [{"index": c.sample, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None}
                   for c in job.choices]
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": self.model_name, "choices": choices, "usage": usage(job.prompt_tokens, job.choices)}

    def complete(self, req: dict[str, Any]) -> dict[str, Any]:
        """Answer one chat-completion request body (already parsed, not streamed) with a response body."""
        return self.chat_response(self.run(self.job({**req, "stream": False}, chat=True)))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every response carries a Content-Length
    server: ModelServer

    def log_message(self, format: str, *args: Any) -> None:  # request line and status only, never headers
        log.info("%s %s", self.client_address[0], format % args)

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode(), headers)

    def _error(self, status: int, message: str, kind: str = "invalid_request_error",
               headers: dict[str, str] | None = None) -> None:
        self._json(status, {"error": {"message": message, "type": kind, "code": status}}, headers)

    def _authorized(self) -> bool:
        key = self.server._api_key
        if key and not secrets.compare_digest(self.headers.get("Authorization", ""), f"Bearer {key}"):
            self._error(401, "missing or wrong API key", "authentication_error")
            return False
        return True

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/health":
            return self._json(200, {"status": "ok"})
        if not self._authorized():
            return None
        if self.path.rstrip("/") == "/v1/models":
            return self._json(200, {"object": "list", "data": [
                {"id": self.server.model_name, "object": "model", "created": self.server.created,
                 "owned_by": "reasondistill"}]})
        self._error(404, f"no route GET {self.path}", "not_found")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            return self._error(413, "request body too large")
        raw = self.rfile.read(length)
        route = self.path.rstrip("/")
        if route not in ("/v1/chat/completions", "/v1/completions"):
            return self._error(404, f"no route POST {self.path}", "not_found")
        chat = route == "/v1/chat/completions"
        if not self._authorized():
            return None
        number = self.server.count("chat_requests" if chat else "completion_requests")
        failure = None
        if chat:  # injected failures apply to chat completions (what the API teacher sends)
            failure = next((f for i, f in enumerate(self.server.failures)
                            if f.matches(number, i, _haystack(raw))), None)
        if failure is not None:
            self.server.count(f"injected_{failure.kind}{failure.status or ''}")
            if failure.kind == "status":
                extra = {"Retry-After": f"{failure.seconds:g}"} if failure.status == 429 else None
                return self._error(failure.status, f"injected failure (request {number})", "server_error", extra)
            if failure.kind == "drop":
                self.close_connection = True
                return None
            if failure.kind == "html":
                return self._send(502, b"<html><head><title>502 Bad Gateway</title></head><body>bad gateway</body>"
                                       b"</html>", content_type="text/html")
            if failure.kind == "slow" and self.server.closing.wait(failure.seconds):
                return None
        try:
            req = json.loads(raw or b"null")
            if not isinstance(req, dict):
                raise ApiError(400, "the body must be a JSON object")
            job = self.server.run(self.server.job(req, chat))
            if job.stream:
                return self._stream(job, chat, req)
            resp = self.server.chat_response(job) if chat else self.server.completion_response(job)
        except json.JSONDecodeError as exc:
            return self._error(400, f"body is not valid JSON: {exc.msg}")
        except ApiError as exc:
            return self._error(exc.status, exc.message, exc.kind)
        except Exception as exc:  # a bug or the model failing: report it, keep serving
            log.exception("request %d failed", number)
            return self._error(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")
        if failure is not None and failure.kind == "nochoices":
            resp.pop("choices")
        if failure is not None and failure.kind == "nousage":
            resp.pop("usage", None)
        if failure is not None and failure.kind == "onechoice":
            resp["choices"] = resp["choices"][:1]
        body = json.dumps(resp, ensure_ascii=False).encode()
        if failure is not None and failure.kind == "trunc":
            body = body[: len(body) // 2]
        self._send(200, body)

    # -- server-sent events (stream: true) ------------------------------------------------------------
    def _event(self, obj: Any) -> None:
        data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
        self.wfile.write(f"data: {data}\n\n".encode())
        self.wfile.flush()

    def _stream(self, job: Job, chat: bool, req: dict[str, Any]) -> None:
        """Answer ``stream: true`` as OpenAI does: one ``data: {chunk}`` event per piece of text as it is
        decoded, a chunk with the finish_reason per choice, usage last when ``stream_options.include_usage``,
        then ``data: [DONE]``. An error before the first token is an ordinary JSON error response."""
        first = job.events.get()
        if first[0] == "done" and job.error is not None:
            err = job.error if isinstance(job.error, ApiError) else ApiError(500, str(job.error), "server_error")
            return self._error(err.status, err.message, err.kind)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        base = {"id": ident, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": self.server.model_name}
        texts: dict[int, str] = {}
        sent: dict[int, tuple[str, str]] = {}  # per choice: (reasoning, content) sent so far

        def chunk(sample: int, delta: dict[str, Any] | None = None, text: str | None = None,
                  finish: str | None = None) -> dict[str, Any]:
            choice = {"index": sample, "finish_reason": finish, "logprobs": None}
            choice.update({"delta": delta or {}} if chat else {"text": text or ""})
            return {**base, "choices": [choice]}

        if chat:
            for s in range(job.n):
                self._event(chunk(s, {"role": "assistant", "content": ""}))
        event = first
        while event[0] != "done":
            kind, sample = event[0], event[1]
            if kind == "delta":
                texts[sample] = texts.get(sample, "") + event[2]
                if not chat:
                    self._event(chunk(sample, text=event[2]))
                elif not self.server.reasoning_field:
                    self._event(chunk(sample, {"content": event[2]}))
                else:
                    reasoning, content = partial_split(texts[sample])
                    r0, c0 = sent.get(sample, ("", ""))
                    delta = {}
                    if len(reasoning) > len(r0):
                        delta[self.server.reasoning_field] = reasoning[len(r0):]
                    if len(content) > len(c0):
                        delta["content"] = content[len(c0):]
                    if delta:
                        sent[sample] = (reasoning, content)
                        self._event(chunk(sample, delta))
            elif kind == "finish":
                self._event(chunk(sample, finish=event[2]))
            event = job.events.get()
        if job.error is None:
            self.server.count("completions", len(job.choices))
            if (req.get("stream_options") or {}).get("include_usage"):
                self._event({**base, "choices": [], "usage": usage(job.prompt_tokens, job.choices)})
        self._event("[DONE]")


def make_server(model: str | Any, tokenizer: Any = None, *, host: str = "127.0.0.1", port: int = 0,
                model_name: str | None = None, reasoning_field: str | None = None,
                inject_failures: str | None = None, api_key: str | None = None,
                dtype: str = "float32", max_batch_rows: int = 64, batch_window_s: float = 0.01) -> ModelServer:
    """Build (not start) a server. ``model`` is a path, hub name or ``bundled:NAME`` (loaded with
    :func:`reasondistill.models.load_model`), or an already loaded model given with its ``tokenizer``.
    Start it with ``threading.Thread(target=srv.serve_forever, daemon=True).start()``; stop it with
    ``srv.shutdown(); srv.server_close()``. ``srv.url`` is the base URL (``http://host:port/v1``).
    """
    from reasondistill.models import load_model, load_tokenizer

    if reasoning_field is not None and reasoning_field not in REASONING_FIELDS:
        raise ValueError(f"reasoning_field must be one of {REASONING_FIELDS} or None, got {reasoning_field!r}")
    failures = parse_failures(inject_failures)
    if isinstance(model, str):
        name = model_name or model
        tokenizer, model = load_tokenizer(model), load_model(model, dtype=dtype)
    else:
        if tokenizer is None:
            raise ValueError("make_server: pass the tokenizer with an already loaded model")
        name = model_name or getattr(model.config, "_name_or_path", None) or "model"
    model.eval()
    return ModelServer((host, port), model, tokenizer, name, reasoning_field, failures, api_key,
                       max_batch_rows=max_batch_rows, batch_window_s=batch_window_s)


def main(argv: list[str] | None = None) -> int:
    import os

    from reasondistill.hints import HintingParser

    ap = HintingParser(prog="reasondistill serve", description="Serve a local Hugging Face model over an "
                       "OpenAI-compatible HTTP API (GET /v1/models, POST /v1/chat/completions, POST /v1/completions, "
                       "stream: true as server-sent events, GET /health), so the API teacher and the openai "
                       "evaluation backend run offline; requests in flight together are decoded as one batch; "
                       "--inject-failures makes it misbehave on purpose. This is a development and test server "
                       "(one process, batches decoded to the end before the next starts, no paged KV cache): "
                       "to serve a large model for throughput use vllm serve or SGLang (docs/teachers.md).")
    ap.add_argument("model", help="local path, hub name or bundled:NAME")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    ap.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    ap.add_argument("--served-model-name", default=None, help="the model id clients send (default: MODEL)")
    ap.add_argument("--reasoning-field", action="store_true", help="return the <think> part in a separate "
                    "message field and only the answer in content (without it: the raw text in content)")
    ap.add_argument("--reasoning-field-name", default="reasoning_content", choices=REASONING_FIELDS,
                    help="that field's name: reasoning_content (vLLM, DeepSeek) or reasoning (Ollama, OpenRouter)")
    ap.add_argument("--inject-failures", metavar="SPEC", default=None,
                    help="for tests: fail requests on purpose, e.g. 429@1,trunc@5,500%%0.1 (the first request "
                    "gets HTTP 429, the fifth a cut-off body, each one HTTP 500 with probability 0.1; all kinds "
                    "and selectors: docs/teachers.md)")
    ap.add_argument("--api-key-env", default=None, metavar="VAR",
                    help="require 'Authorization: Bearer $VAR' (the key is read from this variable)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"],
                    help="auto: bfloat16 where the CPU or GPU computes it natively, else float32")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--max-batch-rows", type=int, default=64, help="most sequences decoded in one batch "
                    "(a request with n samples is n rows; default: 64)")
    ap.add_argument("--batch-window-ms", type=float, default=10.0, help="how long the first waiting request waits "
                    "for others to join its batch (default: 10)")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    api_key = None
    if args.api_key_env:
        from reasondistill.redact import env_name_problem

        if env_name_problem(args.api_key_env):
            ap.error(f"--api-key-env: {env_name_problem(args.api_key_env)}")
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            ap.error(f"--api-key-env: environment variable {args.api_key_env} is not set")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        srv = make_server(args.model, host=args.host, port=args.port, model_name=args.served_model_name,
                          reasoning_field=args.reasoning_field_name if args.reasoning_field else None,
                          inject_failures=args.inject_failures,
                          api_key=api_key, dtype=args.dtype, max_batch_rows=args.max_batch_rows,
                          batch_window_s=args.batch_window_ms / 1000)
    except ValueError as exc:
        ap.error(str(exc))
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        log.warning("listening on %s without --api-key-env: anyone who can reach it can use it", args.host)
    print(f"serving {srv.model_name} at {srv.url}" + (f" (injecting: {args.inject_failures})"
                                                      if args.inject_failures else ""), flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
