"""teacher.kind: vllm — config, the error without vllm, and vLLM outputs → traces.

vLLM needs a GPU and cannot be installed on the test machine, so the engine itself is not run
here. ``RequestOutput``/``CompletionOutput`` (tests/fake_vllm.py) are plain dataclasses with the fields of
vLLM's own classes (vllm/outputs.py), the only stand-ins: the conversion code is the real one.

Run: OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/teachers/test_vllm_backend.py -q
"""

import importlib.util

import pytest

from reasondistill.config import ConfigError, RunConfig, TeacherConfig, load_config
from reasondistill.teachers.factory import make_teacher
from reasondistill.teachers.sampling import SamplingParams
from reasondistill.teachers.vllm_backend import (VLLMUnavailable, request_output_to_traces, problem_seed,
                                                 sampling_kwargs)

from fake_vllm import CompletionOutput, RequestOutput

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def test_config_validates_and_fingerprints_old_configs_as_before(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("teacher:\n  kind: vllm\n  model: deepseek-ai/DeepSeek-R1-Distill-Qwen-7B\n  dtype: bfloat16\n"
                    "  vllm: {tensor_parallel_size: 2, max_model_len: 8192, extra: {swap_space: 8}}\n")
    cfg = load_config(path)
    assert cfg.teacher.kind == "vllm"
    assert cfg.teacher.vllm.engine_args() == {"tensor_parallel_size": 2, "gpu_memory_utilization": 0.9,
                                              "max_model_len": 8192, "enforce_eager": False, "swap_space": 8}
    assert load_config(path, ["teacher.vllm.tensor_parallel_size=4"]).teacher.vllm.tensor_parallel_size == 4
    with pytest.raises(ConfigError, match="teacher.vllm.tensor_parallel_size"):
        load_config(path, ["teacher.vllm.tensor_parallel_size=0"])
    with pytest.raises(ConfigError, match="base_url is for kind 'openai'"):
        load_config(path, ["teacher.base_url=http://127.0.0.1:8000/v1"])
    with pytest.raises(ConfigError, match="applies to kind 'vllm' only"):
        load_config(path, ["teacher.kind=hf"])
    # no `vllm` key in the dump of a config without the section: existing runs keep their fingerprints
    assert "vllm" not in RunConfig().model_dump(mode="json")["teacher"]
    assert "vllm" in cfg.model_dump(mode="json")["teacher"]


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here")
def test_make_without_vllm_says_how_to_get_it(tmp_path):
    with pytest.raises(VLLMUnavailable, match=r"pip install vllm; needs a GPU"):
        make_teacher(TeacherConfig(kind="vllm", model="some/model"))
    assert issubclass(VLLMUnavailable, ConfigError)  # so the CLI reports it as `error: ...`, exit status 2

    from reasondistill.pipeline import Pipeline

    cfg = RunConfig.model_validate({"run_dir": str(tmp_path / "run"), "teacher": {"kind": "vllm", "model": "m"},
                                    "task": {"n_train": 4, "n_test": 2}})
    with pytest.raises(VLLMUnavailable, match="pip install vllm"):
        Pipeline(cfg, log=lambda _m: None, show_progress=False).generate()
    assert not (tmp_path / "run/generate/traces.jsonl").exists()


def test_request_output_to_traces():
    sampling = SamplingParams(n=3, temperature=0.6).model_dump(exclude={"batch_size"})
    out = RequestOutput("7", "prompt", [1, 2, 3, 4], outputs=[
        CompletionOutput(2, "cut off while thi", [9] * 5, finish_reason="length"),
        CompletionOutput(0, "<think>3+4=7</think>\n\n7", [5, 6, 7, 2], finish_reason="stop", stop_reason=None),
        CompletionOutput(1, "", [], finish_reason="abort"),
    ])
    t0, t1, t2 = request_output_to_traces(out, "p1", "vllm:m", sampling)
    assert [t.sample for t in (t0, t1, t2)] == [0, 1, 2]
    assert (t0.thinking, t0.answer, t0.text, t0.finish_reason, t0.error) == ("3+4=7", "7", out.outputs[1].text,
                                                                            "stop", None)
    assert (t0.prompt_tokens, t0.completion_tokens, t0.teacher, t0.sampling) == (4, 4, "vllm:m", sampling)
    assert t1.finish_reason == "error" and "abort" in t1.error
    assert t2.finish_reason == "length" and t2.completion_tokens == 5 and t2.answer == "cut off while thi"

    # a template that ends the prompt in <think>: the completion starts inside the thought
    r1 = RequestOutput("8", None, [1], outputs=[CompletionOutput(0, "3+4=7\n</think>\n\n7", [1, 2], finish_reason="stop",
                                                                 stop_reason=151643)])
    (t,) = request_output_to_traces(r1, "p2", "vllm:m", sampling, opened_think=True)
    assert (t.text, t.thinking, t.answer, t.usage) == ("<think>3+4=7\n</think>\n\n7", "3+4=7", "7",
                                                       {"stop_reason": 151643})
    (cut,) = request_output_to_traces(RequestOutput("9", None, [1], outputs=[
        CompletionOutput(0, "3+4=", [1], finish_reason="length")]), "p3", "vllm:m", sampling, opened_think=True)
    assert cut.text == "<think>3+4=" and cut.answer == "" and cut.thinking == "3+4="


def test_sampling_kwargs_seed_per_problem():
    params = SamplingParams(n=4, temperature=0.8, top_p=0.95, max_new_tokens=100, seed=3)
    kw = sampling_kwargs(params, "p1")
    assert kw == {"n": 4, "temperature": 0.8, "top_p": 0.95, "max_tokens": 100, "seed": problem_seed(3, "p1")}
    assert sampling_kwargs(params, "p1") == kw and 0 <= kw["seed"] < 2**31
    assert problem_seed(3, "p2") != kw["seed"] and problem_seed(4, "p1") != kw["seed"]
