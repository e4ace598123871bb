"""A teacher behind any OpenAI-compatible chat API: vLLM, SGLang, Ollama, DeepSeek, OpenRouter, ...

Why: real teachers are big and live behind an HTTP API, which rate-limits, times out and now and
then answers garbage. This client keeps ``concurrency`` requests in flight, retries what can be
retried (429, 5xx, timeouts, dropped connections, unreadable bodies) with exponential backoff,
full jitter and ``Retry-After``, turns a problem that keeps failing into error traces instead
of losing it, and stops at once on an answer no retry can change (401, 402, 403, 404: the key, the
account, the model name or the URL). ``probe()`` asks ``GET /models`` once (``reasondistill check``).
Reasoning comes from the ``reasoning_content``/``reasoning`` field when the server
splits it out, else from ``<think>…</think>`` in the content. The API key is read from the
environment variable named by ``api_key_env`` when requests are made; it is never stored on the
object, logged, or written into a trace.

    teacher = OpenAITeacher("http://127.0.0.1:8000/v1", "Qwen/Qwen3-8B", concurrency=16)
    for traces in teacher.sample(problems, SamplingParams(n=4, temperature=0.6)):
        ...  # all 4 traces of one problem, in completion order
    teacher.totals  # requests, retries, tokens, failed traces
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import queue
import random
import threading
import time
from typing import Any, AsyncIterator, Iterator
from urllib.parse import urlsplit

try:  # huggingface_hub (so transformers 5) installs httpx2, the maintained fork with httpx's API
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

from reasondistill.errors import UserError
from reasondistill.hints import did_you_mean
from reasondistill.records import Problem, Trace
from reasondistill.redact import env_name_problem
from reasondistill.teachers.sampling import SamplingParams, row_key
from reasondistill.thinking import CLOSE, OPEN, split_thinking

log = logging.getLogger(__name__)
REASONING_MODES = ("auto", "field", "tags")
REASONING_KEYS = ("reasoning_content", "reasoning")
RETRY_STATUS = {408, 409, 425, 429}  # and every 5xx
# answers no retry and no other problem can change (the key, the credit, the model or the URL): stop
STOP_STATUS = {401, 402, 403, 404}
RETRY_AFTER_CAP_S = 600.0  # a longer Retry-After is taken as this


class TeacherError(UserError):
    """The teacher cannot go on (e.g. every problem fails: server down, wrong key or model)."""


class _Retry(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Failed(Exception):
    def __init__(self, message: str, attempts: int):
        super().__init__(message)
        self.attempts = attempts


def request_seed(seed: int, problem_id: str, sample: int) -> int:
    """The ``seed`` sent for (run seed, problem, sample): stable across runs, 31 bits for any server."""
    return row_key(seed, problem_id, sample) & 0x7FFFFFFF


def _retry_after(headers: Any) -> float | None:
    if ms := headers.get("retry-after-ms"):
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _content_text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _unusable(choice: dict[str, Any], text: str, finish: str) -> str | None:
    """Why a choice the server did return is no trace (then recorded as an error and retried by a
    re-run), else None. An empty string is a completion (the model said nothing); null is not."""
    if finish == "content_filter":
        return "the server's content filter withheld the completion (finish_reason content_filter)"
    if not text and choice["message"].get("content") is None:
        return "the server returned no content (content null, no reasoning)"
    return None


def _int(value: Any) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def _apportion(total: int, weights: list[int]) -> list[int]:
    """Split ``total`` in proportion to ``weights`` into integers that add up to it."""
    weights = weights if sum(weights) else [1] * len(weights)
    exact = [total * w / sum(weights) for w in weights]
    out = [int(x) for x in exact]
    for i in sorted(range(len(out)), key=lambda i: out[i] - exact[i])[: total - sum(out)]:
        out[i] += 1
    return out


class OpenAITeacher:
    """Sample traces from ``model`` at ``base_url`` (the URL that ends in ``/v1``).

    ``reasoning``: "auto" takes the ``reasoning_content``/``reasoning`` field when the server
    fills it, else splits ``<think>`` tags in the content; "field" only the field; "tags" only
    the tags. ``use_n`` asks for all samples of a problem in one request (vLLM, SGLang, OpenAI);
    servers that return fewer choices are asked again for the rest. ``max_consecutive_failures``
    problems failing in a row raise :class:`TeacherError` instead of writing error traces for the
    whole set. ``totals`` accumulates over calls.
    """

    def __init__(self, base_url: str, model: str, api_key_env: str | None = None, concurrency: int = 8,
                 timeout_s: float = 60, max_retries: int = 6, backoff_base_s: float = 0.5,
                 backoff_max_s: float = 30, reasoning: str = "auto", use_n: bool = False,
                 extra_body: dict[str, Any] | None = None, max_tokens_field: str = "max_tokens",
                 max_consecutive_failures: int | None = 32, name: str | None = None, section: str = "teacher"):
        self.section = section  # the config section its errors name ("evaluate.openai" when evaluating a student)
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{section}.base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, "
                             f"got {base_url!r}")
        if reasoning not in REASONING_MODES:
            raise ValueError(f"{section}.reasoning must be one of {REASONING_MODES}, got {reasoning!r}")
        if concurrency < 1 or timeout_s <= 0 or max_retries < 0 or backoff_base_s < 0 or backoff_max_s < 0:
            raise ValueError(f"{section}: need concurrency >= 1, timeout_s > 0, max_retries >= 0, backoffs >= 0")
        if api_key_env and env_name_problem(api_key_env):
            raise ValueError(f"{section}.api_key_env: {env_name_problem(api_key_env)}")
        if api_key_env and not os.environ.get(api_key_env):
            raise ValueError(f"{section}.api_key_env: environment variable {api_key_env} is not set")
        self.base_url, self.model, self.api_key_env = base_url.rstrip("/"), model, api_key_env
        self.concurrency, self.timeout_s, self.max_retries = concurrency, float(timeout_s), max_retries
        self.backoff_base_s, self.backoff_max_s = float(backoff_base_s), float(backoff_max_s)
        self.reasoning, self.use_n, self.extra_body = reasoning, use_n, dict(extra_body or {})
        self.max_tokens_field, self.max_consecutive_failures = max_tokens_field, max_consecutive_failures
        self.name = name or f"openai:{model}"
        # a server on this machine never needs a proxy: ignore HTTP(S)_PROXY for loopback URLs
        self._trust_env = not (parts.hostname == "localhost" or parts.hostname == "::1"
                               or parts.hostname.startswith("127."))
        self._rng = random.Random()
        self.totals: dict[str, float] = {"requests": 0, "retries": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                         "total_tokens": 0, "reasoning_tokens": 0, "traces": 0, "failed_traces": 0}

    def __repr__(self) -> str:
        return (f"OpenAITeacher(base_url={self.base_url!r}, model={self.model!r}, "
                f"api_key_env={self.api_key_env!r}, concurrency={self.concurrency})")

    def _key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def _scrub(self, text: str) -> str:
        key = self._key()
        return text.replace(key, "***") if key else text

    def _headers(self) -> dict[str, str]:
        key = self._key()
        return {"User-Agent": "reasondistill"} | ({"Authorization": f"Bearer {key}"} if key else {})

    def probe(self, timeout_s: float = 5.0) -> list[str]:
        """Problems found by one ``GET {base_url}/models`` (with the key the requests send), each a
        line naming the config key: the server cannot be reached, refuses the key, has no such URL
        (a base_url without ``/v1``), or lists models and ``model`` is not among them. [] when fine."""
        return [message for _, message in self._probe(timeout_s)]

    def unreachable(self, timeout_s: float = 5.0) -> str | None:
        """What would fail every request (the server cannot be reached, or refuses the key), from one
        ``GET /models``, or None. ``generate`` asks before sampling, so a dead port costs seconds, not
        every request's retries. A server without ``/models`` or not listing the model is no reason."""
        return next((message for fatal, message in self._probe(timeout_s) if fatal), None)

    def _probe(self, timeout_s: float) -> list[tuple[bool, str]]:
        url = f"{self.base_url}/models"
        try:
            with httpx.Client(headers=self._headers(), timeout=min(timeout_s, self.timeout_s),
                              trust_env=self._trust_env) as client:
                r = client.get(url)
        except httpx.HTTPError as exc:
            return [(True, self._scrub(f"{self.section}.base_url: cannot reach {url} ({type(exc).__name__}: {exc}); is "
                                       "the server running, on this host and port?"))]
        if r.status_code >= 400:
            detail = self._scrub(r.text[:200].strip())
            if r.status_code in (401, 403):
                return [(True, f"{self.section}.api_key_env: {url} answered HTTP {r.status_code} ({detail}); check the "
                               f"API key ({self.section}.api_key_env: {self.api_key_env or 'not set'})")]
            hint = "; does base_url end in /v1?" if r.status_code == 404 else ""
            return [(False, f"{self.section}.base_url: GET {url} answered HTTP {r.status_code} ({detail}){hint}")]
        try:
            ids = [m["id"] for m in r.json()["data"]]
        except Exception:  # noqa: BLE001 - a server that lists no models in OpenAI's form: nothing to compare
            return []
        if ids and self.model not in ids:
            hint = did_you_mean(self.model, ids)
            shown = ", ".join(repr(i) for i in ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
            return [(False, f"{self.section}.model: {self.model!r} is not among the models {url} lists ({shown})"
                            + (f"; {hint}" if hint else ""))]
        return []

    # -- the sync entry point: an event loop in a helper thread, traces handed over by a queue --
    def sample(self, problems: list[Problem], params: SamplingParams,
               system_prompt: str | None = None) -> Iterator[list[Trace]]:
        """Yield the ``params.n`` traces of each problem as it finishes (completion order)."""
        out: queue.Queue = queue.Queue()
        started = threading.Event()
        state: dict[str, Any] = {}

        async def pump() -> None:
            state["loop"], state["task"] = asyncio.get_running_loop(), asyncio.current_task()
            started.set()
            async for traces in self.asample(problems, params, system_prompt):
                out.put(("traces", traces))

        def run() -> None:
            try:
                asyncio.run(pump())
                out.put(("done", None))
            except BaseException as exc:  # handed to the consumer, raised there
                out.put(("error", exc))
            finally:
                started.set()

        thread = threading.Thread(target=run, name="openai-teacher", daemon=True)
        thread.start()
        try:
            while True:
                kind, value = out.get()
                if kind == "error":
                    raise value
                if kind == "done":
                    return
                yield value
        finally:  # the consumer stopped early (or failed): cancel what is in flight
            started.wait()
            if thread.is_alive() and "loop" in state:
                try:
                    state["loop"].call_soon_threadsafe(state["task"].cancel)
                except RuntimeError:  # the loop closed meanwhile: nothing left to cancel
                    pass
            thread.join(timeout=30)

    async def asample(self, problems: list[Problem], params: SamplingParams,
                      system_prompt: str | None = None) -> AsyncIterator[list[Trace]]:
        """The async version of :meth:`sample`."""
        headers = self._headers()
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        window = 2 * self.concurrency  # problems in flight: bounded memory for any number of problems
        async with httpx.AsyncClient(headers=headers, timeout=self.timeout_s, limits=limits,
                                     trust_env=self._trust_env) as client:
            sem, todo, pending, failed_in_row = asyncio.Semaphore(self.concurrency), iter(problems), set(), 0
            done: set = set()
            try:
                while True:
                    for p in todo:
                        pending.add(asyncio.create_task(self._problem(client, sem, p, params, system_prompt)))
                        if len(pending) >= window:
                            break
                    if not pending:
                        return
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        traces = task.result()
                        failed_in_row = failed_in_row + 1 if all(t.error for t in traces) else 0
                        if self.max_consecutive_failures and failed_in_row >= self.max_consecutive_failures:
                            raise TeacherError(f"{failed_in_row} problems in a row failed at {self.base_url}; "
                                               f"last error: {traces[-1].error}")
                        yield traces
            finally:
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, *done, return_exceptions=True)  # retrieved: no stray warnings

    # -- one problem ----------------------------------------------------------------------------
    async def _problem(self, client, sem, problem: Problem, params: SamplingParams,
                       system_prompt: str | None) -> list[Trace]:
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + \
                   [{"role": "user", "content": problem.prompt}]
        if not (self.use_n and params.n > 1):
            return [tr for one in await asyncio.gather(*(self._request(client, sem, problem, messages, params,
                                                                      [s], s) for s in range(params.n)))
                    for tr in one]
        traces: list[Trace] = []
        rounds = 0
        while len(traces) < params.n:  # a server may return fewer choices than asked: ask for the rest
            samples = list(range(len(traces), params.n))
            traces += await self._request(client, sem, problem, messages, params, samples, -1 - rounds)
            rounds += 1
        return traces

    async def _request(self, client, sem, problem: Problem, messages: list[dict], params: SamplingParams,
                       samples: list[int], seed_slot: int) -> list[Trace]:
        """One request (with its retries) for ``samples``; traces for as many choices as came back."""
        seed = request_seed(params.seed, problem.id, seed_slot)
        body = {"model": self.model, "messages": messages, "temperature": params.temperature,
                "top_p": params.top_p, self.max_tokens_field: params.max_new_tokens, "seed": seed}
        if len(samples) > 1:
            body["n"] = len(samples)
        body.update(self.extra_body)  # extra fields; a None value removes a field (e.g. "seed")
        body = {k: v for k, v in body.items() if v is not None}
        sampling = {"n": params.n, "temperature": params.temperature, "top_p": params.top_p,
                    "max_new_tokens": params.max_new_tokens, "seed": params.seed, "request_seed": seed,
                    "model": self.model}
        t0 = time.monotonic()
        try:
            data, attempts = await self._post(client, sem, body, f"{problem.id} sample {samples[0]}")
        except _Failed as exc:
            self.totals["traces"] += len(samples)
            self.totals["failed_traces"] += len(samples)
            traces = [Trace(problem_id=problem.id, sample=s, thinking="", answer="", text="", prompt_tokens=0,
                            completion_tokens=0, finish_reason="error", teacher=self.name, sampling=sampling,
                            error=str(exc), usage={"attempts": exc.attempts}) for s in samples]
            return traces
        raw_usage = data.get("usage")
        usage = {k: v for k, v in raw_usage.items() if v is not None} if isinstance(raw_usage, dict) else {}
        if not usage:
            usage = {"missing": True}  # recorded as such: token limits cannot rely on a count of 0
        for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
            self.totals[k] += _int(usage.get(k))
        details = usage.get("completion_tokens_details")
        self.totals["reasoning_tokens"] += _int(details.get("reasoning_tokens") if isinstance(details, dict) else 0)
        choices = sorted(data["choices"], key=lambda c: _int(c.get("index")))[: len(samples)]
        parts = [self._parse(c) for c in choices]
        # a request's completion tokens are split over its choices by text length (exact when n=1)
        shares = _apportion(_int(usage.get("completion_tokens")), [len(p[0]) for p in parts])
        traces = []
        for s, choice, (text, thinking, answer, finish), c_tok in zip(samples, choices, parts, shares):
            trace_usage = usage | {"attempts": attempts, "latency_s": round(time.monotonic() - t0, 3)}
            if len(parts) > 1:
                trace_usage["shared_by"] = len(parts)
            error = _unusable(choice, text, finish)
            traces.append(Trace(problem_id=problem.id, sample=s, thinking=thinking, answer=answer, text=text,
                                prompt_tokens=_int(usage.get("prompt_tokens")), completion_tokens=c_tok,
                                finish_reason="error" if error else finish, teacher=self.name, sampling=sampling,
                                usage=trace_usage, error=error))
        self.totals["traces"] += len(traces)
        self.totals["failed_traces"] += sum(t.error is not None for t in traces)
        return traces

    def _parse(self, choice: dict[str, Any]) -> tuple[str, str, str, str]:
        """(text, thinking, answer, finish_reason) of one choice."""
        msg = choice["message"]
        content = _content_text(msg.get("content"))
        raw_finish = choice.get("finish_reason")
        finish = raw_finish if raw_finish in ("length", "content_filter") else "stop"
        field = None
        if self.reasoning != "tags":
            field = next((msg[k] for k in REASONING_KEYS if isinstance(msg.get(k), str) and msg[k].strip()), None)
        if field is not None:
            # rebuild the completion as decoded; a thought cut off by the length limit stays unclosed
            closed = bool(content) or finish != "length"
            return (f"{OPEN}{field}{CLOSE}{content}" if closed else f"{OPEN}{field}",
                    field.strip(), content.strip(), finish)
        if self.reasoning == "field":
            return content, "", content.strip(), finish
        thinking, answer, _ = split_thinking(content)
        return content, thinking, answer, finish

    # -- one HTTP request with retries ------------------------------------------------------------
    async def _post(self, client, sem, body: dict[str, Any], what: str) -> tuple[dict[str, Any], int]:
        url = f"{self.base_url}/chat/completions"
        last = "no attempt made"
        for attempt in range(1, self.max_retries + 2):
            try:
                async with sem:
                    self.totals["requests"] += 1
                    async with asyncio.timeout(self.timeout_s):
                        r = await client.post(url, json=body)
                return self._check(r), attempt
            except _Retry as exc:
                last, retry_after = str(exc), exc.retry_after
            except (httpx.TimeoutException, TimeoutError):
                last, retry_after = f"timed out after {self.timeout_s:g}s", None
            except httpx.TransportError as exc:
                last, retry_after = f"connection error ({url}): {type(exc).__name__}: {exc}", None
            except httpx.HTTPError as exc:  # e.g. a body that does not decode (bad gzip)
                last, retry_after = f"malformed response: {type(exc).__name__}: {exc}", None
            except _Failed as exc:
                raise _Failed(self._scrub(f"{exc} (attempt {attempt})"), attempt) from None
            last = self._scrub(last)
            if attempt > self.max_retries:
                break
            delay = self._rng.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1)))
            if retry_after is not None:  # the server knows best, within reason
                delay = max(delay, min(retry_after, RETRY_AFTER_CAP_S))
            self.totals["retries"] += 1
            log.warning("%s: %s; retry %d/%d in %.2fs", what, last, attempt, self.max_retries, delay)
            await asyncio.sleep(delay)
        raise _Failed(f"{last} (gave up after {self.max_retries + 1} attempts)", self.max_retries + 1)

    def _check(self, r) -> dict[str, Any]:
        """The response's JSON if usable; raise _Retry (transient) or _Failed (permanent)."""
        if r.status_code >= 400:
            try:
                detail = r.json()["error"]["message"]
            except Exception:
                detail = r.text[:200]
            message = f"HTTP {r.status_code}: {detail}"
            if r.status_code in RETRY_STATUS or r.status_code >= 500:
                raise _Retry(message, _retry_after(r.headers))
            if r.status_code == 404:  # every request would fail the same way: stop now
                raise TeacherError(self._scrub(f"{r.url}: {message}; does base_url end in /v1, and is {self.section}.model "
                                               f"({self.model!r}) a model the server has (GET {self.base_url}/models "
                                               "lists them)?"))
            if r.status_code in STOP_STATUS:
                raise TeacherError(self._scrub(f"{self.base_url}: {message}; check the API key and its account "
                                               f"({self.section}.api_key_env: {self.api_key_env or 'not set'})"))
            raise _Failed(message, 0)
        try:
            data = r.json()
        except ValueError as exc:
            raise _Retry(f"malformed response: not JSON ({exc}); body starts {r.text[:80]!r}") from None
        if not isinstance(data, dict) or data.get("error"):
            raise _Retry(f"malformed response: {str(data)[:200]}")
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or \
                not all(isinstance(c, dict) and isinstance(c.get("message"), dict) for c in choices):
            raise _Retry(f"malformed response: no usable choices in {str(data)[:200]}")
        return data
