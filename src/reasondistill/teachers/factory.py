"""The teacher object a ``teacher:`` config section describes.

Why here and not on the config class: the config layer sits below the teachers (they read their
options from it), so building a teacher belongs to the teachers package; importing a backend
(httpx for the API, vLLM) happens only when that kind is asked for. Every key of the section
reaches the constructor (tests/teachers/test_roles.py checks each constructor parameter has its key).

    teacher = make_teacher(cfg.teacher)
    for traces in teacher.sample(problems, cfg.generate.sampling()): ...
"""

from __future__ import annotations

from reasondistill.config import TeacherConfig, VLLMOptions


def openai_kwargs(cfg: TeacherConfig) -> dict:
    """The :class:`~reasondistill.teachers.openai_api.OpenAITeacher` keyword arguments of a section."""
    return {"api_key_env": cfg.api_key_env, "concurrency": cfg.concurrency, "timeout_s": cfg.timeout_s,
            "max_retries": cfg.max_retries, "backoff_base_s": cfg.backoff_base_s, "backoff_max_s": cfg.backoff_max_s,
            "reasoning": cfg.reasoning, "use_n": cfg.use_n, "extra_body": cfg.extra_body,
            "max_tokens_field": cfg.max_tokens_field, "max_consecutive_failures": cfg.max_consecutive_failures,
            "name": cfg.name}


def make_teacher(cfg: TeacherConfig):
    if cfg.kind == "ingested":
        raise ValueError("teacher.kind 'ingested': the traces come from `reasondistill ingest FILE RUN_DIR`, "
                         "there is no teacher to sample")
    if cfg.kind == "openai":
        from reasondistill.teachers.openai_api import OpenAITeacher

        return OpenAITeacher(cfg.base_url, cfg.model, **openai_kwargs(cfg))
    if cfg.kind == "vllm":  # raises a clear error when vllm is not installed
        from reasondistill.teachers.vllm_backend import VLLMTeacher

        return VLLMTeacher(cfg.model, cfg.dtype, name=cfg.name, **(cfg.vllm or VLLMOptions()).engine_args())
    from reasondistill.teachers.hf import HFTeacher

    return HFTeacher(cfg.model, cfg.dtype, name=cfg.name)
