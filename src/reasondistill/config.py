"""One validated config per run, loaded from YAML with ``key=value`` overrides.

Why: every number that decides a result lives in one file that is copied (resolved) into the run
directory. Validation happens before any work starts, and an error names the field and what was
expected, e.g. ``train.lr: Input should be greater than 0 (got -1)``.

    cfg = load_config("configs/demo.yaml", ["train.lr=3e-4", "run_dir=runs/try"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from reasondistill.teachers.sampling import SamplingParams
from reasondistill.train.config import TrainConfig


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskConfig(_Strict):
    name: Literal["chained_arith"] = "chained_arith"
    min_ops: int = Field(3, ge=1)
    max_ops: int = Field(5, ge=1)
    n_train: int = Field(5000, gt=0, description="training problems given to the teacher")
    n_test: int = Field(400, gt=0, description="held-out problems for evaluation")

    def task_spec(self) -> dict[str, Any]:
        return {"name": self.name, "min_ops": self.min_ops, "max_ops": self.max_ops}


class TeacherConfig(_Strict):
    """``kind: hf`` runs a local Hugging Face model; ``kind: openai`` calls any OpenAI-compatible
    server (vLLM, SGLang, Ollama, DeepSeek, OpenRouter; see docs/teachers.md)."""

    kind: Literal["hf", "openai"] = "hf"
    model: str = Field("bundled:tiny-arith-teacher", description="local path, hub id, bundled:NAME, or API model name")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    system_prompt: str | None = None
    base_url: str | None = Field(None, description="openai: e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field(None, description="openai: name of the environment variable holding the key")
    concurrency: int = Field(8, gt=0)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(6, ge=0)
    reasoning: Literal["auto", "field", "tags"] = "auto"
    use_n: bool = Field(False, description="openai: ask for n choices in one request")

    @model_validator(mode="after")
    def _api(self) -> "TeacherConfig":
        if self.kind == "openai" and not self.base_url:
            raise ValueError("kind 'openai' needs base_url")
        return self

    def make(self):
        """The teacher object this config describes."""
        if self.kind == "openai":
            from reasondistill.teachers.openai_api import OpenAITeacher

            return OpenAITeacher(self.base_url, self.model, api_key_env=self.api_key_env,
                                 concurrency=self.concurrency, timeout_s=self.timeout_s,
                                 max_retries=self.max_retries, reasoning=self.reasoning, use_n=self.use_n)
        from reasondistill.teachers.hf import HFTeacher

        return HFTeacher(self.model, self.dtype)


class GenerateConfig(SamplingParams):
    n: int = Field(2, gt=0)
    temperature: float = Field(0.7, ge=0)
    max_new_tokens: int = Field(256, gt=0)
    batch_size: int = Field(256, gt=0)


class CurateConfig(_Strict):
    require_correct: bool = True
    require_think: bool = Field(True, description="drop traces with no (or a malformed) <think> block")
    max_completion_tokens: int | None = Field(None, gt=0)
    dedup: bool = True
    max_per_problem: int | None = Field(1, gt=0, description="keep at most K distinct correct traces per problem")


class BuildConfig(_Strict):
    think_tags: bool = True
    max_length: int = Field(512, gt=0, description="drop examples longer than this (tokens)")
    val_fraction: float = Field(0.05, ge=0, lt=1)


class ModelInit(_Strict):
    """A fresh model from a small config; the tokenizer is taken from ``tokenizer``."""

    architecture: Literal["llama", "qwen2"] = "llama"
    hidden_size: int = Field(64, gt=0)
    num_hidden_layers: int = Field(2, gt=0)
    num_attention_heads: int = Field(4, gt=0)
    num_key_value_heads: int | None = Field(None, gt=0)
    intermediate_size: int = Field(256, gt=0)
    max_position_embeddings: int = Field(512, gt=0)

    def spec(self) -> dict[str, Any]:
        d = self.model_dump()
        if d["num_key_value_heads"] is None:
            d["num_key_value_heads"] = d["num_attention_heads"]
        return d


class StudentConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    target: Literal["traces", "answers_only"] = "traces"
    model: str | None = Field(None, description="pretrained student: local path or hub id")
    init: ModelInit | None = Field(None, description="or a freshly initialised student")
    tokenizer: str | None = Field(None, description="tokenizer for an init student (default: the teacher's)")
    seed: int | None = None
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _one_model(self) -> "StudentConfig":
        if (self.model is None) == (self.init is None):
            raise ValueError("set exactly one of 'model' (pretrained) or 'init' (fresh config)")
        return self


class EvaluateConfig(_Strict):
    batch_size: int = Field(200, gt=0)
    max_new_tokens: int = Field(256, gt=0)
    teacher: bool = Field(True, description="evaluate the teacher beside the students")


class RunConfig(_Strict):
    run_dir: str = "runs/demo"
    seed: int = 0
    task: TaskConfig = TaskConfig()
    teacher: TeacherConfig = TeacherConfig()
    generate: GenerateConfig = GenerateConfig()
    curate: CurateConfig = CurateConfig()
    build: BuildConfig = BuildConfig()
    students: list[StudentConfig] = Field(default_factory=list)
    evaluate: EvaluateConfig = EvaluateConfig()

    @model_validator(mode="after")
    def _unique(self) -> "RunConfig":
        names = [s.name for s in self.students]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"students: names must be unique, repeated: {sorted(dupes)}")
        if "teacher" in names:
            raise ValueError("students: 'teacher' is reserved for the teacher")
        return self

    def student(self, name: str) -> StudentConfig:
        for s in self.students:
            if s.name == name:
                return s
        raise KeyError(f"no student named {name!r}; configured: {[s.name for s in self.students]}")


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text) if text != "" else ""


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply ``a.b.c=value`` (YAML value) to nested dicts; ``students.0.train.lr=1e-3`` indexes lists."""
    if "=" not in override:
        raise ConfigError(f"override {override!r}: expected key=value")
    key, _, raw = override.partition("=")
    parts = key.strip().split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = _list_item(node, part, parts[: i + 1])
        else:
            node = node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, parts)] = _parse_value(raw)
    else:
        node[last] = _parse_value(raw)


def _list_index(node: list, part: str, path: list[str]) -> int:
    if part.isdigit() and int(part) < len(node):
        return int(part)
    raise ConfigError(f"override {'.'.join(path)}: {part!r} is not an index below {len(node)}")


def _list_item(node: list, part: str, path: list[str]) -> Any:
    if not part.isdigit():  # allow students.NAME.x
        for item in node:
            if isinstance(item, dict) and item.get("name") == part:
                return item
    return node[_list_index(node, part, path)]


def _unalias(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _unalias(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unalias(v) for v in obj]
    return obj


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid config"]
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        got = f" (got {e['input']!r:.60})" if "input" in e and not isinstance(e["input"], dict) else ""
        lines.append(f"  {loc}: {e['msg']}{got}")
    return "\n".join(lines)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    data: dict[str, Any] = {}
    source = str(path) if path else "<defaults>"
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections")
    data = _unalias(data)  # YAML anchors share one object: an override must change one place only
    for ov in overrides or []:
        apply_override(data, ov)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
