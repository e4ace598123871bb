"""Teacher roles in the config: every teacher constructor key is a config key that reaches the
constructor; the logit teacher (teachers/logits.py); the vLLM dtype default.

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/teachers/test_roles.py -q
"""

import inspect

import pytest

from reasondistill.config import ConfigError, RunConfig, TeacherConfig, load_config
from reasondistill.teachers.factory import make_teacher
from reasondistill.teachers.hf import HFTeacher
from reasondistill.teachers.openai_api import OpenAITeacher
from reasondistill.teachers.vllm_backend import VLLMTeacher, engine_dtype

NOT_CONFIG = {"self", "model_obj", "tokenizer", "llm", "sampling_params_cls", "engine_args",
              "section"}  # objects, not settings; section: the config section its errors name


@pytest.mark.parametrize("cls", [OpenAITeacher, HFTeacher, VLLMTeacher])
def test_every_constructor_parameter_is_a_config_key(cls):
    params = set(inspect.signature(cls.__init__).parameters) - NOT_CONFIG
    missing = params - set(TeacherConfig.model_fields)
    assert not missing, f"{cls.__name__} takes {sorted(missing)}, which teacher: cannot set"


def test_the_openai_keys_reach_the_client(monkeypatch):
    monkeypatch.setenv("RD_TEST_KEY", "k")
    values = {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "RD_TEST_KEY", "concurrency": 3,
              "timeout_s": 7.5, "max_retries": 2, "backoff_base_s": 0.25, "backoff_max_s": 4.0, "reasoning": "field",
              "use_n": True, "extra_body": {"chat_template_kwargs": {"enable_thinking": False}},
              "max_tokens_field": "max_completion_tokens", "max_consecutive_failures": None, "name": "my-teacher"}
    t = make_teacher(TeacherConfig(kind="openai", **values))
    params = set(inspect.signature(OpenAITeacher.__init__).parameters) - NOT_CONFIG
    assert params == set(values)  # the test sets every parameter...
    for key, value in values.items():  # ...and each arrives (base_url without its trailing slash)
        assert getattr(t, key) == value, key


def test_new_keys_leave_old_fingerprints_alone(tmp_path):
    """The generate stage's fingerprint of a teacher section leaves out keys added later while they
    sit at their defaults (existing runs do not regenerate); `config show` still shows them."""
    from reasondistill.pipeline import Pipeline

    plain = TeacherConfig(kind="openai", base_url="http://127.0.0.1:9/v1", model="m")
    assert not {"extra_body", "max_tokens_field", "backoff_base_s", "name"} & set(plain.fingerprinted())
    assert {"extra_body", "max_tokens_field", "backoff_base_s", "name"} <= set(plain.model_dump())
    new = TeacherConfig(kind="openai", base_url="http://127.0.0.1:9/v1", model="m",
                        extra_body={"reasoning_effort": "high"}).fingerprinted()
    assert new["extra_body"] == {"reasoning_effort": "high"}
    before = {"kind", "model", "dtype", "system_prompt", "base_url", "api_key_env", "concurrency", "timeout_s",
              "max_retries", "reasoning", "use_n"}  # the section's keys before issue 15
    pipe = Pipeline(RunConfig(run_dir=str(tmp_path / "run")), log=lambda _m: None, show_progress=False)
    assert set(pipe.generate_conf()[0]["teacher"]) == before


def test_vllm_dtype_defaults_to_auto():
    assert TeacherConfig(kind="vllm", model="m").dtype == "auto"
    assert TeacherConfig(kind="vllm", model="m", dtype="float32").dtype == "float32"  # asked for: kept
    assert TeacherConfig().dtype == "float32"  # hf: as before
    dumped = RunConfig.model_validate({"teacher": {"kind": "vllm", "model": "m"}}).model_dump(mode="json")
    assert RunConfig.model_validate(dumped).teacher.dtype == "auto"  # the resolved config round-trips
    import torch

    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    assert engine_dtype("auto") == ("bfloat16" if bf16 else "auto")  # else vLLM's own choice
    assert engine_dtype("float16") == "float16"


SOFT = {"name": "kd", "init": {"hidden_size": 32}, "distill": {"source": "online"}}


def test_a_soft_student_without_a_logit_teacher_is_refused_at_load(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("teacher: {kind: openai, base_url: 'http://127.0.0.1:9/v1', model: big}\n"
                 "students:\n  - {name: hard, init: {hidden_size: 32}}\n"
                 "  - {name: kd, init: {hidden_size: 32}, distill: {source: on_policy}}\n")
    with pytest.raises(ConfigError,
                       match=r"(?s)c\.yaml.*students kd \(distill\):.*teacher\.kind 'openai'.*logit_teacher"):
        load_config(f)
    cfg = load_config(f, ["logit_teacher={model: bundled:tiny-arith-teacher}"])
    assert cfg.logit_teacher.model == "bundled:tiny-arith-teacher"
    with pytest.raises(ConfigError, match=r"logit_teacher\.dtype"):
        load_config(f, ["logit_teacher={model: x, dtype: float8}"])
    ingested = RunConfig.model_validate({"teacher": {"kind": "ingested"}, "students": [{"name": "s", "init": {}}]})
    assert ingested.logit_teacher is None  # hard students need no logits


def test_policy_students_that_need_the_teachers_logits_are_refused_at_load_without_a_logit_teacher(tmp_path):
    """on_policy and kl_teacher score the student's tokens with a local model: an API teacher has no logits.
    Refused when the config loads (before an SFT student before them has trained), naming each student."""
    from reasondistill.teachers.logits import require_logit_teacher

    f = tmp_path / "c.yaml"
    f.write_text("teacher: {kind: openai, base_url: 'http://127.0.0.1:9/v1', model: big}\n"
                 "students:\n  - {name: sft, init: {hidden_size: 32}}\n"
                 "  - {name: onp, policy: {objective: on_policy, start_from: sft}}\n"
                 "  - {name: rl, policy: {objective: grpo, start_from: sft, kl_teacher: 0.1}}\n"
                 "  - {name: rl_plain, policy: {objective: grpo, start_from: sft}}\n")
    with pytest.raises(ConfigError, match=r"(?s)c\.yaml.*students onp \(policy\.objective on_policy\), "
                       r"rl \(policy\.kl_teacher\):.*teacher\.kind 'openai' gives none.*logit_teacher"):
        load_config(f)
    cfg = load_config(f, ["logit_teacher={model: bundled:tiny-arith-teacher}"])
    assert cfg.logit_students() == {"onp": "policy.objective on_policy", "rl": "policy.kl_teacher"}
    assert require_logit_teacher(cfg).model == "bundled:tiny-arith-teacher"
    built = cfg.model_copy(update={"logit_teacher": None})  # a config built in code skips the load-time check
    with pytest.raises(ValueError, match=r"students onp \(policy\.objective on_policy\), rl \(policy\.kl_teacher\)"):
        require_logit_teacher(built)


def test_logit_teacher_resolution_and_loading():
    from reasondistill.teachers.logits import load_logit_teacher, logit_teacher_config

    hf = RunConfig.model_validate({"teacher": {"model": "bundled:tiny-arith-teacher", "dtype": "bfloat16"},
                                   "students": [SOFT]})
    assert logit_teacher_config(hf).model_dump() == {"model": "bundled:tiny-arith-teacher", "dtype": "bfloat16",
                                                     "attn_implementation": None}  # the hf teacher doubles
    api = RunConfig.model_validate({"teacher": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "x"},
                                    "logit_teacher": {"model": "bundled:tiny-arith-teacher", "attn_implementation":
                                                      "eager"}, "students": [SOFT]})
    spec = logit_teacher_config(api)
    assert spec.model == "bundled:tiny-arith-teacher"
    assert logit_teacher_config(RunConfig.model_validate({"teacher": {"kind": "ingested"}})) is None
    model, tok = load_logit_teacher(spec)
    assert not model.training and model.config._attn_implementation == "eager"
    assert model.get_output_embeddings().weight.shape[0] >= len(tok)
