"""The logit teacher: the local model whose token distributions soft distillation learns from.

Why apart from the trace teacher: traces can come from anywhere (an API, vLLM, ingested files),
but soft (``online``), ``offline_topk`` and ``on_policy`` distillation need a model's logits on
the student's tokens, so a local Hugging Face model. ``logit_teacher:`` names it; without that
section an ``hf`` teacher doubles as the logit teacher (as before the section existed). The
config refuses a soft student with neither (config.py, ``RunConfig``).

    spec = logit_teacher_config(cfg)          # LogitTeacherConfig or None
    model, tokenizer = load_logit_teacher(spec)
"""

from __future__ import annotations

from reasondistill.config import LogitTeacherConfig, RunConfig


def logit_teacher_config(cfg: RunConfig) -> LogitTeacherConfig | None:
    """The run's logit teacher: ``logit_teacher``, else an ``hf`` teacher, else None."""
    if cfg.logit_teacher is not None:
        return cfg.logit_teacher
    if cfg.teacher.kind == "hf":
        return LogitTeacherConfig(model=cfg.teacher.model, dtype=cfg.teacher.dtype)
    return None


def require_logit_teacher(cfg: RunConfig) -> LogitTeacherConfig:
    """The run's logit teacher; a clear error when there is none (configs built in code: loading a
    config file refuses a soft student without one earlier, naming it)."""
    spec = logit_teacher_config(cfg)
    if spec is None:
        raise ValueError(cfg.no_logit_teacher())
    return spec


def load_logit_teacher(spec: LogitTeacherConfig):
    """(model in eval mode, tokenizer) of a logit teacher; any path, hub id or ``bundled:NAME``."""
    from reasondistill.models import load_model, load_tokenizer

    model = load_model(spec.model, spec.dtype, attn_implementation=spec.attn_implementation)
    model.eval()
    return model, load_tokenizer(spec.model)
