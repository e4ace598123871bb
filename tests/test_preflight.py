"""`reasondistill check` (preflight.py): every problem one line naming its key, exit 2, and `run`
refuses before its first stage. Models are the tests' tiny Llama saved locally, with variations."""

import json
from pathlib import Path

import pytest
import yaml

from reasondistill.config import RunConfig
from reasondistill.preflight import preflight

from conftest import TINY
from tests.test_pipeline import cli, write_config


def _save(d, tokenizer, spec=TINY, **config):
    from reasondistill.models import init_model

    model = init_model(spec, tokenizer, seed=0)
    for k, v in config.items():
        setattr(model.config, k, v)
    model.save_pretrained(d, safe_serialization=True)
    tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def other_tokenizer_dir(tmp_path_factory):
    from reasondistill.models import build_char_tokenizer

    tok = build_char_tokenizer()
    tok.add_tokens(["<extra>"])  # one real token more: not padding
    return _save(tmp_path_factory.mktemp("other-tok"), tok)


def _cfg(tmp_path, teacher, students=None, replace=None, **sections):
    path = write_config(tmp_path / "c.yaml", teacher, **({"students": students} if students else {}), **sections)
    raw = yaml.safe_load(path.read_text()) | (replace or {})  # whole sections, not merged
    path.write_text(yaml.safe_dump(raw))
    return RunConfig.model_validate(raw), path


def _soft(name="kd", **kw):
    return {"name": name, "init": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                   "intermediate_size": 32},
            "distill": {"source": "online"}, "train": {"max_steps": 2, "epochs": None, "batch_size": 8}} | kw


def test_the_demo_and_a_plain_config_pass(tmp_path, tiny_model_dir):
    from reasondistill.config import demo_config_path, load_config

    assert preflight(load_config(demo_config_path())) == []
    cfg, _ = _cfg(tmp_path, tiny_model_dir, students=[_soft()])
    assert preflight(cfg) == []


def test_a_soft_student_with_another_tokenizer_is_refused_before_the_first_stage(tmp_path, tiny_model_dir,
                                                                                  other_tokenizer_dir):
    cfg, path = _cfg(tmp_path, tiny_model_dir, students=[_soft("hard", distill=None),
                                                         _soft("kd", tokenizer=str(other_tokenizer_dir))])
    problems = preflight(cfg)
    assert len(problems) == 1, problems
    assert problems[0].startswith("students.1 (kd): its tokenizer (106 tokens) differs from the tokenizer of teacher ")
    assert "1 tokens only in the student" in problems[0] and "distill.cross_tokenizer" in problems[0]
    out = cli("check", path, check=False)
    assert out.returncode == 2 and out.stdout.strip() == problems[0]
    out = cli("run", path, check=False)
    assert out.returncode == 2 and "students.1 (kd): its tokenizer" in out.stderr
    assert not (tmp_path / "run/generate").exists() and not (tmp_path / "run/problems").exists()
    # cross-tokenizer distillation (distill.cross_tokenizer, another module) may use another tokenizer
    object.__setattr__(cfg.students[1].distill, "cross_tokenizer", {"method": "uld"})
    assert preflight(cfg) == []


def test_vocabularies_that_differ_only_by_padding_rows_pass(tmp_path, tiny_model_dir, char_tokenizer):
    from reasondistill.models import build_char_tokenizer

    padded = _save(tmp_path / "padded", build_char_tokenizer(), TINY | {"tie_word_embeddings": True})
    conf = json.loads((padded / "config.json").read_text())
    from reasondistill.models import init_model

    model = init_model(TINY, char_tokenizer, seed=0)
    model.resize_token_embeddings(len(char_tokenizer) + 17)  # like Qwen's 152,064 rows for 151,665 tokens
    model.save_pretrained(padded, safe_serialization=True)
    assert json.loads((padded / "config.json").read_text())["vocab_size"] == conf["vocab_size"] + 17
    cfg, _ = _cfg(tmp_path, tiny_model_dir, students=[_soft(init=None, model=str(padded))])
    assert preflight(cfg) == []


def test_a_top_k_past_the_vocabulary_and_feature_layers_past_the_models_are_problems(tmp_path, tiny_model_dir,
                                                                                      char_tokenizer):
    """Found by `check`, naming the student and the key, not by capture or training after other stages ran."""
    n_teacher = TINY["num_hidden_layers"]
    topk = _soft("topk", distill={"source": "offline_topk", "top_k": len(char_tokenizer) + 1})
    feats = _soft("feat", distill={"source": "online", "features": {"layers": [[1, n_teacher], [2, n_teacher + 1],
                                                                               [-3, -1]]}})
    cfg, _ = _cfg(tmp_path, tiny_model_dir, students=[topk, feats])
    problems = preflight(cfg)
    assert problems == [
        f"students.0 (topk): distill.top_k={len(char_tokenizer) + 1} exceeds the vocabulary ({len(char_tokenizer)} "
        f"tokens); lower it to at most {len(char_tokenizer)}",
        "students.1 (feat): distill.features.layers: student layer(s) [2, -3] out of range; the student has 2 hidden "
        "states (0 = embeddings, 1 or -1 = the last layer)",
        f"students.1 (feat): distill.features.layers: teacher layer(s) [{n_teacher + 1}] out of range; the teacher "
        f"has {n_teacher + 1} hidden states (0 = embeddings, {n_teacher} or -1 = the last layer)"], problems


def test_a_logit_teacher_is_needed_for_soft_students_of_an_api_teacher(tmp_path, tiny_model_dir):
    """Refused when the config loads (config.py), before any check or stage runs."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"students kd \(distill\): a distill section, .* needs .*logit_teacher"):
        _cfg(tmp_path, tiny_model_dir, students=[_soft(tokenizer=str(tiny_model_dir))],
             replace={"teacher": {"kind": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1"}})


def test_an_eos_the_model_does_not_stop_on_is_a_problem(tmp_path, tiny_model_dir, char_tokenizer):
    from transformers import GenerationConfig

    d = _save(tmp_path / "student", char_tokenizer)
    other = char_tokenizer.convert_tokens_to_ids("<|user|>")
    GenerationConfig(eos_token_id=[other]).save_pretrained(d)
    cfg, _ = _cfg(tmp_path, tiny_model_dir, students=[{"name": "s", "model": str(d)}])
    problems = preflight(cfg)
    assert len(problems) == 1 and problems[0].startswith("students.0 (s): training ends every answer with")
    assert "'<|end|>' (2)" in problems[0] and f"'<|user|>' ({other})" in problems[0]
    GenerationConfig(eos_token_id=[other, char_tokenizer.eos_token_id]).save_pretrained(d)
    assert preflight(cfg) == []


def test_a_tokenizer_without_chat_template_is_a_problem(tmp_path, tiny_model_dir):
    from reasondistill.models import build_char_tokenizer

    tok = build_char_tokenizer()
    tok.chat_template = None
    d = _save(tmp_path / "plain", tok)
    cfg, _ = _cfg(tmp_path, tiny_model_dir, students=[{"name": "s", "model": str(d)}])
    problems = preflight(cfg)
    assert len(problems) == 1 and "cannot render a prompt with its chat template" in problems[0]


def test_lengths_against_the_context(tmp_path, tiny_model_dir):
    ctx = TINY["max_position_embeddings"]
    cfg, _ = _cfg(tmp_path, tiny_model_dir, students=[{"name": "s", "model": str(tiny_model_dir)}],
                  build={"max_length": ctx + 1}, generate={"max_new_tokens": ctx},
                  evaluate={"max_new_tokens": ctx - 5})
    problems = preflight(cfg)
    assert problems[0] == (f"students.0 (s): build.max_length={ctx + 1} exceeds the student's context ({ctx} "
                           "tokens, max_position_embeddings); lower build.max_length")
    assert problems[1].startswith("students.0 (s): the longest test prompt (")
    assert problems[2].startswith("teacher.model: the longest training prompt that fits (")
    fits = int(problems[2].split("(")[1].split()[0])
    assert problems[2].endswith(f"lower generate.max_new_tokens to at most {ctx - fits}, or use a teacher with a "
                                "longer context")
    n = cfg.task.n_train  # every prompt + max_new_tokens=ctx is past the context
    assert f"and so do {n} of {n} training prompts" in problems[2]
    assert problems[3].startswith("teacher.model: the longest test prompt that fits (") and len(problems) == 4
    cfg, _ = _cfg(tmp_path, tiny_model_dir, build={"max_length": 5})
    assert preflight(cfg)[0].startswith("students.0 (s1): every training prompt is at least ")


def test_prompts_longer_than_the_teachers_context_alone_are_named_as_such(tmp_path, tiny_model_dir):
    """No max_new_tokens helps a prompt that alone fills the context: the advice must not be to lower it."""
    ctx = TINY["max_position_embeddings"]
    cfg, _ = _cfg(tmp_path, tiny_model_dir, generate={"max_new_tokens": 8}, evaluate={"teacher": False},
                  task={"name": "chained_arith", "min_ops": 150, "max_ops": 200, "n_train": 20, "n_test": 5})
    problems = [p for p in preflight(cfg) if p.startswith("teacher.model")]
    assert problems and "training prompts are longer than the teacher's context" in problems[0]
    assert f"({ctx} tokens) on their own" in problems[0] and "max_new_tokens" not in problems[0]


def test_missing_files_and_models_are_one_line_each(tmp_path, tiny_model_dir):
    cfg, path = _cfg(tmp_path, tmp_path / "no-teacher", students=[{"name": "s", "model": str(tmp_path / "nope")},
                                                                  _soft("kd")],
                     replace={"task": {"name": "file", "path": str(tmp_path / "nothing.jsonl")}})
    problems = preflight(cfg)
    assert problems[0] == f"task.path: {tmp_path / 'nothing.jsonl'}: no such file or directory"
    assert problems[1].startswith(f"teacher.model: cannot load the model config of '{tmp_path / 'no-teacher'}'")
    assert problems[2].startswith(f"students.0 (s).model: cannot load the model config of '{tmp_path / 'nope'}'")
    assert len(problems) == 3  # the soft student's (the teacher's) tokenizer is the same missing model
    out = cli("check", path, check=False)
    assert out.returncode == 2 and len(out.stdout.strip().splitlines()) == 3


def test_qlora_on_a_machine_without_gpu_is_a_problem(tmp_path, tiny_model_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cfg, _ = _cfg(tmp_path, tiny_model_dir, students=[{"name": "q", "model": str(tiny_model_dir),
                                                       "lora": {"quantize": "nf4"}}])
    problems = preflight(cfg)
    assert len(problems) == 1 and problems[0].startswith("students.0 (q): lora.quantize: nf4 (QLoRA)")


def test_lora_target_modules_that_match_nothing_are_a_problem(tmp_path, tiny_model_dir):
    pytest.importorskip("peft")
    cfg, _ = _cfg(tmp_path, tiny_model_dir, students=[
        {"name": "ok", "model": str(tiny_model_dir), "lora": {"target_modules": ["q_proj", "v_proj"]}},
        {"name": "typo", "model": str(tiny_model_dir), "lora": {"target_modules": ["qproj"]}}])
    problems = preflight(cfg)
    assert len(problems) == 1 and problems[0].startswith("students.1 (typo): lora.target_modules ['qproj'] match no")
    assert "q_proj" in problems[0] and "down_proj" in problems[0]


def test_each_lora_target_module_must_match_and_a_tied_output_layer_is_refused(tmp_path, tiny_model_dir):
    pytest.importorskip("peft")
    cfg, _ = _cfg(tmp_path, tiny_model_dir, students=[
        {"name": "part", "model": str(tiny_model_dir), "lora": {"r": 4, "target_modules": ["q_proj", "vv_proj"]}},
        {"name": "head", "model": str(tiny_model_dir), "lora": {"target_modules": ["lm_head"]}}])
    problems = preflight(cfg)
    assert len(problems) == 2, problems
    assert problems[0].startswith("students.0 (part): lora.target_modules ['vv_proj'] match no layer")
    assert "did you mean 'v_proj'" in problems[0]
    assert problems[1].startswith("students.1 (head): lora.target_modules: lm_head is the output layer, tied")


def test_quantize_variants_that_do_not_fit_the_student_are_problems(tmp_path, tiny_model_dir):
    """A group size that does not divide a layer's width and a keep entry naming no module are found
    before training (on a meta-device model), not after training and evaluation."""
    wide = {"hidden_size": 48, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 144}
    cfg, _ = _cfg(tmp_path, tiny_model_dir, students=[
        {"name": "small", "init": wide, "quantize": {"method": "ptq"}},
        {"name": "typo", "model": str(tiny_model_dir), "quantize": {"method": "ptq", "keep": ["nonexistent_proj"]}},
        {"name": "ok", "model": str(tiny_model_dir), "quantize": [{"method": "ptq", "keep": ["down_proj"]},
                                                                  {"method": "ptq", "group_size": 16, "bits": 8}]}])
    problems = preflight(cfg)
    assert len(problems) == 2, problems
    assert problems[0].startswith("students.0 (small): quantize.ptq-int4.group_size: 32 does not divide the input "
                                  "width of"), problems
    assert "[48, 144]" in problems[0]
    assert problems[1].startswith("students.1 (typo): quantize.ptq-int4.keep: ['nonexistent_proj'] match no module")


@pytest.mark.parametrize("name", ["demo.yaml", "rl.yaml", "quantize.yaml"])
def test_the_offline_example_configs_load_and_pass_every_check(name):
    """configs/ holds one YAML per example run; the offline ones must load and pass `check` as shipped."""
    from reasondistill.config import load_config

    path = Path(__file__).resolve().parents[1] / "configs" / name
    assert preflight(load_config(path)) == []


def test_an_api_teacher_is_asked_for_its_models(tmp_path, tiny_model_dir):
    """check probes GET {base_url}/models: a closed port, a base_url without /v1 and a model the
    server does not list are one line each, before any run spends minutes retrying."""
    import socket

    from tests.test_pipeline import _served

    student = [{"name": "s", "tokenizer": str(tiny_model_dir), "init": {"hidden_size": 16, "num_hidden_layers": 1,
                                                                      "num_attention_heads": 2}}]
    srv = _served(tiny_model_dir)
    with socket.socket() as s:  # a port on 127.0.0.1 that nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    try:
        def problems(**teacher):
            api = {"kind": "openai", "model": "tiny", "base_url": srv.url} | teacher
            return preflight(_cfg(tmp_path, tiny_model_dir, students=student, replace={"teacher": api})[0])

        assert problems() == []
        assert srv.stats.get("chat_requests", 0) == 0  # a probe, not a completion
        dead = problems(base_url=closed)
        assert len(dead) == 1 and dead[0].startswith("teacher.base_url: cannot reach") and closed in dead[0]
        short = problems(base_url=srv.url.removesuffix("/v1"))
        assert len(short) == 1 and "HTTP 404" in short[0] and "does base_url end in /v1?" in short[0]
        wrong = problems(model="tiny-typo")
        assert len(wrong) == 1 and wrong[0].startswith("teacher.model: 'tiny-typo' is not among the models")
        assert "'tiny'" in wrong[0]
    finally:
        srv.shutdown()
        srv.server_close()


def test_policy_students_are_checked_for_their_rollouts_and_the_teachers_vocabulary(tmp_path, tiny_model_dir,
                                                                                   other_tokenizer_dir):
    """A policy student reads no built data (build.max_length is not its limit) but samples
    policy.max_new_tokens after every prompt; a teacher that scores its tokens needs its vocabulary."""
    ctx = TINY["max_position_embeddings"]
    init = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
            "max_position_embeddings": ctx}
    students = [{"name": "g", "init": init, "policy": {"objective": "grpo", "max_new_tokens": ctx}},
                {"name": "o", "init": init, "tokenizer": str(other_tokenizer_dir),
                 "policy": {"objective": "on_policy", "max_new_tokens": 8}}]
    cfg, _ = _cfg(tmp_path, tiny_model_dir, students=students, build={"max_length": ctx + 1})
    problems = [p for p in preflight(cfg) if p.startswith("students.")]
    assert problems[0].startswith("students.0 (g): the longest training prompt (")
    assert f"+ policy.max_new_tokens={ctx} exceeds the student's context ({ctx} tokens)" in problems[0]
    assert "policy.objective on_policy (the teacher scores the student's own tokens, id by id)" in problems[1]
    assert len(problems) == 2 and not any("build.max_length" in p for p in problems)


def test_a_rollout_past_the_policys_context_is_refused(tiny_model_dir, char_tokenizer):
    from reasondistill.models import load_model
    from reasondistill.train.rollout import HFRollout

    engine = HFRollout(load_model(str(tiny_model_dir)), char_tokenizer)
    ctx = TINY["max_position_embeddings"]
    assert len(engine.generate([[5, 6, 7]], [1], 1.0, 4)[0].completion) <= 4
    with pytest.raises(ValueError, match=f"lower policy.max_new_tokens to at most {ctx - 3}"):
        engine.generate([[5, 6, 7]], [1], 1.0, ctx)
