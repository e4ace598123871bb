"""Where evaluation decodes a model: transformers here, vLLM's engine, or any OpenAI-compatible server.

Why: a 1.5B student at 4096 tokens × 16 samples is slow through ``transformers.generate``; vLLM
(in process, or behind ``vllm serve``) and any served model are fast. Whatever decodes, the
evaluation is the same: the same problems, the prompt rendered with the model's chat template
(the server applies the same template), the same verifier and metrics (evaluate/accuracy.py,
evaluate/sampled.py). A backend is the teachers' ``sample`` interface turned into the
:class:`~reasondistill.teachers.sampling.Completion` batches evaluation reads, so an API or vLLM
*teacher* is evaluated through the very client that wrote its traces.

    backend = hf_backend("runs/x/train/s/final")              # or
    backend = sampler_backend(OpenAITeacher(url, "s"), tokenizer, kind="openai", label=url)
    for batch in backend.generate(problems, SamplingParams(n=1, temperature=0)): ...

``evaluation_backend(cfg, name, path)`` picks one from a run config: the teacher through its own
kind (hf, openai, vllm), a student through ``evaluate.backend``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from reasondistill.errors import UserError
from reasondistill.records import Problem
from reasondistill.teachers.sampling import Completion, SamplingParams

INGESTED = "not evaluated (ingested traces)"


class EvaluationFailed(UserError):
    """Completions failed at the backend (a server error after every retry): no metrics from them."""


@dataclass
class Backend:
    """A decoder for evaluation. ``generate(problems, params)`` yields batches of Completions
    (``index`` into ``problems``); ``tokenizer`` (may be None for a remote model whose tokenizer is
    not local) splits thinking and answer tokens; ``describe`` goes into stage fingerprints and
    provenance; ``usage`` is the API's request and token counts (openai), else None."""

    kind: str
    label: str
    tokenizer: Any
    generate: Callable[..., Iterator[list[Completion]]]  # (problems, params, system_prompt=None)
    usage: Callable[[], dict[str, Any] | None] = field(default=lambda: None)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.kind, "model": self.label}


def hf_backend(model: Any, tokenizer=None, dtype: str = "float32") -> Backend:
    """A local model (path, hub id, ``bundled:NAME``, or a loaded model with its tokenizer)."""
    from reasondistill.models import load_model, load_tokenizer
    from reasondistill.prompts import render_prompts
    from reasondistill.teachers.sampling import generate_completions

    label = str(model) if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", "model")
    if isinstance(model, str):
        tokenizer = tokenizer or load_tokenizer(model)
        model = load_model(model, dtype)
    elif tokenizer is None:
        raise ValueError("a loaded model needs its tokenizer")

    def generate(problems: Sequence[Problem], params: SamplingParams, system_prompt: str | None = None):
        prompts = render_prompts(tokenizer, [p.prompt for p in problems], system=system_prompt)
        yield from generate_completions(model, tokenizer, prompts, [p.id for p in problems], params)
    return Backend("hf", label, tokenizer, generate)


def sampler_backend(sampler: Any, tokenizer: Any, *, kind: str, label: str) -> Backend:
    """A teacher-like object (``sample(problems, params, system_prompt)`` yielding traces: the
    OpenAI client, the vLLM engine) as an evaluation backend."""
    def generate(problems: Sequence[Problem], params: SamplingParams, system_prompt: str | None = None):
        index = {p.id: i for i, p in enumerate(problems)}
        if len(index) != len(problems):
            raise ValueError("evaluation problems must have distinct ids")
        for traces in sampler.sample(list(problems), params, system_prompt):
            yield [Completion(index=index[t.problem_id], sample=t.sample, text=t.text, prompt_tokens=t.prompt_tokens,
                              completion_tokens=t.completion_tokens, finish_reason=t.finish_reason, error=t.error)
                   for t in traces]

    def usage() -> dict[str, Any] | None:
        totals = getattr(sampler, "totals", None)
        return dict(totals) if totals is not None else None
    return Backend(kind, label, tokenizer, generate, usage=usage)


def collect(backend: Backend, problems: Sequence[Problem], params: SamplingParams,
            system_prompt: str | None = None) -> list[Completion]:
    """Every completion, in (problem, sample) order; raises :class:`EvaluationFailed` when any
    failed at the backend (a server that kept failing), so no metric counts an error as wrong."""
    out = [c for batch in backend.generate(problems, params, system_prompt) for c in batch]
    failed = [c for c in out if c.finish_reason == "error"]
    if failed:
        raise EvaluationFailed(f"{len(failed)} of {len(out)} completions failed at {backend.label} "
                               f"({backend.kind}); first error: {failed[0].error}. Re-run evaluate when it answers")
    out.sort(key=lambda c: (c.index, c.sample))
    return out


def local_tokenizer(name: str):
    """The tokenizer of ``name`` when it is local (or cached); None for a model only a server knows."""
    from reasondistill.models import load_tokenizer

    try:
        return load_tokenizer(name)
    except Exception:  # not a local model, not on the hub, offline, ...: token splits are estimated instead
        return None


def evaluation_backend(cfg, name: str, path: str) -> Backend:
    """The backend of model ``name`` in a run: ``teacher`` through its own kind, a student (its
    ``final/`` at ``path``) through ``evaluate.backend``."""
    from reasondistill.teachers.factory import make_teacher

    if name == "teacher":
        t = cfg.teacher
        if t.kind == "ingested":
            raise ValueError(f"teacher: {INGESTED}")
        if t.kind == "hf":
            return hf_backend(t.model)
        label = t.base_url if t.kind == "openai" else f"vllm:{t.model}"
        sampler = make_teacher(t)
        tok = getattr(sampler, "tokenizer", None) or local_tokenizer(t.model)
        return sampler_backend(sampler, tok, kind=t.kind, label=f"{label} ({t.model})")
    ev = cfg.evaluate
    if ev.backend == "hf":
        return hf_backend(path)
    if ev.backend == "vllm":
        from reasondistill.config import VLLMOptions
        from reasondistill.teachers.vllm_backend import VLLMTeacher

        sampler = VLLMTeacher(path, "auto", name=name, **(ev.vllm or VLLMOptions()).engine_args())
        return sampler_backend(sampler, sampler.tokenizer, kind="vllm", label=path)
    from reasondistill.teachers.openai_api import OpenAITeacher

    o = ev.openai
    url, model = o.urls.get(name, o.base_url), o.model or name
    sampler = OpenAITeacher(url, model, api_key_env=o.api_key_env, concurrency=o.concurrency, timeout_s=o.timeout_s,
                            max_retries=o.max_retries, reasoning="auto", name=f"openai:{model}",
                            section="evaluate.openai")
    return sampler_backend(sampler, local_tokenizer(path), kind="openai", label=f"{url} ({model})")


def model_inputs(name: str, path: str) -> list[Path]:
    """The files a model's evaluation stages hash: a student's ``final/`` directory; a local
    teacher's config, weights and tokenizer (none for a model only a server knows)."""
    from reasondistill.models import local_files

    if name != "teacher":
        return [Path(path)]
    try:
        return local_files(path)
    except FileNotFoundError:  # an API model name that happens to look like a path
        return []


def backend_conf(cfg, name: str) -> dict[str, Any]:
    """What a model's evaluation stages add to their fingerprint for the backend ({} for hf, so a
    config without a backend fingerprints as before)."""
    if name == "teacher":  # what decides the teacher's answers (not concurrency, time-outs, retries)
        t = cfg.teacher
        if t.kind == "hf":
            return {}
        keys = ("model", "dtype", "vllm") if t.kind == "vllm" else ("base_url", "model", "reasoning", "extra_body",
                                                                     "max_tokens_field")
        return {"backend": t.kind, "teacher": t.model_dump(mode="json", include=set(keys))}
    ev = cfg.evaluate
    if ev.backend == "hf":
        return {}
    if ev.backend == "vllm":
        return {"backend": "vllm", **({"vllm": ev.vllm.engine_args()} if ev.vllm else {})}
    o = ev.openai
    return {"backend": "openai", "url": o.urls.get(name, o.base_url), "served_model": o.model or name}
