"""The decoding engine behind ``reasondistill serve``: requests that arrive together are decoded together.

Why: the API teacher and the ``openai`` evaluation backend keep several requests in flight; one
model decoding them one at a time wastes the batch dimension. One engine thread owns the model
and its tokenizer. Each round it takes every waiting request (waiting ``window_s`` for more after
the first), groups them by sampling settings (temperature, top_p; greedy apart), expands each
request's ``n`` samples into rows and decodes up to ``max_rows`` rows in one
:func:`~reasondistill.teachers.sampling.generate_completions` call. A row's tokens do not depend
on its batch: sampling is counter-based per (seed, sample, prompt), so a request answers the same
alone or batched (tests/test_serve_engine.py). Longer ``max_tokens`` of a batch-mate are cut back
to the request's own. Streaming requests get each token's text as it is decoded (``events``).

    engine = Engine(model, tokenizer); engine.start()
    job = engine.submit(Job(messages=[{"role": "user", "content": "2+3"}], max_tokens=32))
    job.wait(); job.choices  # [Choice(sample=0, text=..., finish_reason=..., completion_tokens=...)]

For development and tests: one process, one model, no paged KV cache and no continuous batching
(a request waits for the batch in flight to finish); serve real models with vLLM or SGLang.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("reasondistill.serve")


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


@dataclass
class Choice:
    sample: int
    text: str
    finish_reason: str  # "stop" | "length"
    completion_tokens: int


@dataclass
class Job:
    """One request: chat ``messages`` (rendered with the chat template) or a raw ``prompt``."""

    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int = 0
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    # filled by the engine
    prompt_tokens: int = 0
    choices: list[Choice] | None = None
    error: Exception | None = None
    events: "queue.Queue[tuple]" = field(default_factory=queue.Queue)  # stream: ("delta", s, text), ("done",)
    _done: threading.Event = field(default_factory=threading.Event)

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def finish(self, error: Exception | None = None) -> None:
        self.error = error
        self._done.set()
        self.events.put(("done",))


class _Row:
    """Streaming state of one (job, sample) row."""

    def __init__(self, job: Job, sample: int):
        self.job, self.sample = job, sample
        self.tokens: list[int] = []
        self.sent = ""
        self.finished = False


def cut(tokenizer, tokens: list[int], stopped: bool, max_tokens: int, stop: list[str]) -> tuple[str, str, int]:
    """(text, finish_reason, completion tokens) of a row decoded to ``tokens`` (``stopped``: it
    ended with the end-of-sequence token), as if it had been decoded alone with ``max_tokens`` and
    ``stop`` strings. The end-of-sequence token counts as a completion token, as in ``generate``."""
    if len(tokens) + stopped > max_tokens:  # a batch-mate asked for more: cut back to this request's limit
        tokens, stopped = tokens[:max_tokens], False
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    finish, used = ("stop" if stopped else "length"), len(tokens) + stopped
    at = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    if at >= 0:
        text, finish = text[:at], "stop"
        used = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return text, finish, used


class Engine:
    """The engine thread (see the module docstring). ``stats``: batches, rows, largest batch."""

    def __init__(self, model, tokenizer, max_rows: int = 64, window_s: float = 0.01):
        self.model, self.tokenizer, self.max_rows, self.window_s = model, tokenizer, max_rows, window_s
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.stats = {"batches": 0, "rows": 0, "max_batch_rows": 0, "max_batch_requests": 0}
        self._thread: threading.Thread | None = None

    def start(self) -> "Engine":
        self._thread = threading.Thread(target=self._loop, name="serve-engine", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def submit(self, job: Job) -> Job:
        if self._thread is None:
            raise RuntimeError("the engine is not running")
        self.queue.put(job)
        return job

    # -- the engine thread -------------------------------------------------------------------------
    def _take(self) -> list[Job] | None:
        first = self.queue.get()
        if first is None:
            return None
        jobs, rows = [first], first.n
        deadline = time.monotonic() + self.window_s
        while rows < self.max_rows:
            try:
                job = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                self.queue.put(None)  # stop after this round
                break
            jobs.append(job)
            rows += job.n
        return jobs

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            ready = [j for j in jobs if self._prepare(j)]
            groups: dict[tuple, list[Job]] = {}
            for j in ready:
                groups.setdefault((j.temperature == 0, j.temperature, j.top_p), []).append(j)
            for group in groups.values():
                try:
                    self._decode(group)
                except Exception as exc:  # the model failing: every request of the batch gets a 500
                    log.exception("decoding a batch of %d requests failed", len(group))
                    for j in group:
                        if not j._done.is_set():
                            j.finish(ApiError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error"))

    def _prepare(self, job: Job) -> bool:
        """Render and measure the prompt; False (and the job finished with an error) when unusable."""
        tok = self.tokenizer
        try:
            if job.messages is not None:
                try:
                    job.prompt = tok.apply_chat_template(job.messages, tokenize=False, add_generation_prompt=True)
                except Exception as exc:  # no template, bad roles, ...
                    raise ApiError(400, f"cannot apply the chat template: {exc}") from None
            job.prompt_tokens = len(tok(job.prompt, add_special_tokens=False)["input_ids"])
            limit = getattr(self.model.config, "max_position_embeddings", None)
            if limit:
                if job.prompt_tokens >= limit:
                    raise ApiError(400, f"prompt is {job.prompt_tokens} tokens; the model's context is {limit}")
                job.max_tokens = min(job.max_tokens, limit - job.prompt_tokens)
        except ApiError as exc:
            job.finish(exc)
            return False
        return True

    def _decode(self, jobs: list[Job]) -> None:
        from reasondistill.teachers.sampling import SamplingParams, generate_completions

        rows = [_Row(j, s) for j in jobs for s in range(j.n)]
        prompts = [r.job.prompt for r in rows]
        keys = [f"{r.job.seed}\x00{r.sample}\x00{r.job.prompt}" for r in rows]  # one stream per (seed, sample, prompt)
        first = jobs[0]
        params = SamplingParams(n=1, temperature=first.temperature, top_p=first.top_p,
                                max_new_tokens=max(j.max_tokens for j in jobs), batch_size=max(len(rows), 1), seed=0)
        eos = {self.tokenizer.eos_token_id}
        self.stats["batches"] += 1
        self.stats["rows"] += len(rows)
        self.stats["max_batch_rows"] = max(self.stats["max_batch_rows"], len(rows))
        self.stats["max_batch_requests"] = max(self.stats["max_batch_requests"], len(jobs))

        def on_step(batch_rows: list[tuple[int, int]], tokens: list[int]) -> None:
            for (i, _s), t in zip(batch_rows, tokens):
                row = rows[i]
                if not row.job.stream or row.finished:
                    continue
                if t in eos or len(row.tokens) >= row.job.max_tokens:
                    row.finished = True
                    continue
                row.tokens.append(t)
                self._stream(row)

        out = [c for batch in generate_completions(self.model, self.tokenizer, prompts, keys, params, on_step=on_step)
               for c in batch]
        results: dict[int, list[Choice]] = {id(j): [] for j in jobs}
        for c in out:
            row = rows[c.index]
            stopped = c.finish_reason == "stop"
            text, finish, used = cut(self.tokenizer, c.tokens or [], stopped, row.job.max_tokens, row.job.stop)
            if row.job.stream:
                if len(text) > len(row.sent) and text.startswith(row.sent):
                    row.job.events.put(("delta", row.sample, text[len(row.sent):]))
                row.job.events.put(("finish", row.sample, finish))
            results[id(row.job)].append(Choice(row.sample, text, finish, used))
        for j in jobs:
            j.choices = sorted(results[id(j)], key=lambda ch: ch.sample)
            j.finish()

    def _stream(self, row: _Row) -> None:
        """Send the text decoded so far that no stop string can still take back."""
        text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a character split over tokens: wait for the rest
            return
        stops = row.job.stop
        if stops:
            at = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
            if at >= 0:
                text, row.finished = text[:at], True
            else:
                text = text[: max(len(row.sent), len(text) - max(len(s) for s in stops) + 1)]
        if len(text) > len(row.sent) and text.startswith(row.sent):
            row.job.events.put(("delta", row.sample, text[len(row.sent):]))
            row.sent = text


def partial_split(text: str, open_tag: str = "<think>", close_tag: str = "</think>") -> tuple[str, str]:
    """(reasoning, content) of a completion decoded so far, for streaming a reasoning field: what
    is inside an open ``<think>`` block is reasoning, the rest content; a tail that may still become
    a tag is held back."""
    body = text.lstrip()
    if not body:
        return "", ""
    if open_tag.startswith(body) and body != open_tag:
        return "", ""  # "<thi": maybe the tag
    if not body.startswith(open_tag):
        return "", text
    inner = body[len(open_tag):]
    if close_tag in inner:
        reasoning, _, content = inner.partition(close_tag)
        return reasoning, content
    for k in range(min(len(close_tag) - 1, len(inner)), 0, -1):  # hold back a possible "</thi"
        if close_tag.startswith(inner[-k:]):
            return inner[:-k], ""
    return inner, ""


def usage(prompt_tokens: int, choices: list[Choice]) -> dict[str, int]:
    completion = sum(c.completion_tokens for c in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def describe_stats(stats: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in stats.items())
