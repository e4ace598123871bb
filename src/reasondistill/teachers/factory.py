"""The teacher object a ``teacher:`` config section describes.

Why here and not on the config class: the config layer sits below the teachers (they read their
options from it), so building a teacher belongs to the teachers package; importing a backend
(httpx for the API, vLLM) happens only when that kind is asked for.

    teacher = make_teacher(cfg.teacher)
    for traces in teacher.sample(problems, cfg.generate): ...
"""

from __future__ import annotations

from reasondistill.config import TeacherConfig, VLLMOptions


def make_teacher(cfg: TeacherConfig):
    if cfg.kind == "ingested":
        raise ValueError("teacher.kind 'ingested': the traces come from `reasondistill ingest FILE RUN_DIR`, "
                         "there is no teacher to sample")
    if cfg.kind == "openai":
        from reasondistill.teachers.openai_api import OpenAITeacher

        return OpenAITeacher(cfg.base_url, cfg.model, api_key_env=cfg.api_key_env, concurrency=cfg.concurrency,
                             timeout_s=cfg.timeout_s, max_retries=cfg.max_retries, reasoning=cfg.reasoning,
                             use_n=cfg.use_n)
    if cfg.kind == "vllm":  # raises a clear error when vllm is not installed
        from reasondistill.teachers.vllm_backend import VLLMTeacher

        return VLLMTeacher(cfg.model, cfg.dtype, **(cfg.vllm or VLLMOptions()).engine_args())
    from reasondistill.teachers.hf import HFTeacher

    return HFTeacher(cfg.model, cfg.dtype)
