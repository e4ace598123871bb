"""One validated config per run, loaded from YAML with ``key=value`` overrides.

Why: every number that decides a result lives in one file that is copied (resolved) into the run
directory. Validation happens before any work starts, and an error names the field and what was
expected, e.g. ``train.lr: Input should be greater than 0 (got -1)``.

    cfg = load_config("configs/demo.yaml", ["train.lr=3e-4", "run_dir=runs/try"])
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer,
                      model_validator)

from reasondistill.config_fields import model_at
from reasondistill.curate.config import NearDedupConfig, PassRateBand
from reasondistill.hints import did_you_mean
from reasondistill.quantize.config import QuantizeSections
from reasondistill.redact import env_name_problem, secret_name
from reasondistill.tasks.config import TASK_NAMES, ChainedArithConfig, TaskConfig, clean_loc
from reasondistill.teachers.sampling import SamplingParams
from reasondistill.train.config import TrainConfig
from reasondistill.train.lora import LoraConfig
from reasondistill.train.policy_config import PolicyConfig


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _drop_defaults(data: Any, model: BaseModel, later: dict[str, Any]) -> Any:
    """``data`` (a model's dump) without the ``later`` fields that are at their defaults, so a config
    that does not use a field added later fingerprints (and skips its stages) exactly as before."""
    if isinstance(data, dict):
        for key, default in later.items():
            if getattr(model, key, None) == default:
                data.pop(key, None)
    return data


class VLLMOptions(_Strict):
    """``teacher.vllm``: engine options of ``kind: vllm`` (keyword arguments of ``vllm.LLM``)."""

    tensor_parallel_size: int = Field(1, gt=0, description="GPUs the teacher is split over")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="share of each GPU's memory vLLM may use")
    max_model_len: int | None = Field(None, gt=0, description="context length (default: the model's)")
    enforce_eager: bool = Field(False, description="no CUDA graphs (less memory, slower decoding)")
    extra: dict[str, Any] = Field(default_factory=dict, description="any other vllm.LLM keyword arguments")

    def engine_args(self) -> dict[str, Any]:
        args = self.model_dump(exclude={"extra"}, exclude_none=True)
        return args | self.extra


class TeacherConfig(_Strict):
    """``kind: hf`` runs a local Hugging Face model; ``kind: openai`` calls any OpenAI-compatible
    server (vLLM, SGLang, Ollama, DeepSeek, OpenRouter; see docs/teachers.md); ``kind: vllm`` runs
    the model in-process on vLLM's offline engine (GPUs; ``pip install vllm``)."""

    kind: Literal["hf", "openai", "ingested", "vllm"] = Field(
        "hf", description="hf: local Hugging Face model; openai: an OpenAI-compatible server; vllm: vLLM in this "
        "process; ingested: traces come from `reasondistill ingest`")
    model: str = Field("bundled:tiny-arith-teacher", description="local path, hub id, bundled:NAME, or API model name")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="hf and vllm: the weights' dtype; auto = bfloat16 where the GPU or CPU computes it "
        "natively (AVX512-BF16/AMX), else float32 (vllm: else vLLM's own choice, float16). Default float32 for hf; "
        "auto for vllm. On such a CPU bfloat16 generates 1.65x faster (bench/generate_throughput.py)")
    system_prompt: str | None = Field(None, description="system prompt sent to the teacher with every problem")
    base_url: str | None = Field(None, description="openai: e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field(None, description="openai: name of the environment variable holding the key")
    concurrency: int = Field(8, gt=0, description="openai: requests in flight at once")
    timeout_s: float = Field(60.0, gt=0, description="openai: seconds per request before it is retried")
    max_retries: int = Field(6, ge=0, description="openai: retries of a failed request (with backoff)")
    reasoning: Literal["auto", "field", "tags"] = Field(
        "auto", description="openai: where the thinking is: field (reasoning_content), tags (<think> in the "
        "content) or auto (the field when the server fills it, else tags)")
    use_n: bool = Field(False, description="openai: ask for n choices in one request")
    backoff_base_s: float = Field(0.5, ge=0, description="openai: retry k waits uniform(0, min(backoff_max_s, "
                                  "backoff_base_s * 2^(k-1))) seconds (or the server's Retry-After)")
    backoff_max_s: float = Field(30.0, ge=0, description="openai: the longest backoff between retries")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="openai: extra request fields, e.g. "
                                       "{reasoning_effort: high} or {chat_template_kwargs: {enable_thinking: "
                                       "false}}; a null value removes a field (e.g. {seed: null})")
    max_tokens_field: str = Field("max_tokens", min_length=1, description="openai: the name of the length limit "
                                  "field (OpenAI's newer models need max_completion_tokens)")
    max_consecutive_failures: int | None = Field(32, gt=0, description="openai: stop with an error after this "
                                                 "many problems in a row fail (null: never stop)")
    name: str | None = Field(None, description="recorded as `teacher` in every trace (default: openai:MODEL, "
                             "vllm:MODEL, or MODEL)")
    vllm: VLLMOptions | None = Field(None, description="vllm: engine options (tensor_parallel_size, ...)")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        return _check_env_name(value)

    @model_validator(mode="after")
    def _api(self) -> "TeacherConfig":
        if self.kind == "vllm" and "dtype" not in self.model_fields_set:
            self.dtype = "auto"  # vLLM: bfloat16 where the GPU has it (float32 only when asked for)
        if self.kind == "openai" and not self.base_url:
            raise ValueError("kind 'openai' needs base_url")
        if self.kind == "openai" and not re.match(r"^https?://[^/\s]+", self.base_url):
            raise ValueError(f"base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {self.base_url!r}")
        if self.kind == "vllm" and self.base_url:
            raise ValueError("kind 'vllm' runs the model in this process: base_url is for kind 'openai' "
                             "(a `vllm serve` server)")
        if self.vllm is not None and self.kind != "vllm":
            raise ValueError(f"the vllm section applies to kind 'vllm' only (kind is {self.kind!r})")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        data = handler(self)
        if self.vllm is None:  # so a config without it fingerprints (and generates) exactly as before
            data.pop("vllm", None)
        return data

    def fingerprinted(self, legacy: bool = False) -> dict[str, Any]:
        """The section as the generate stage fingerprints it. Keys that do not decide what a trace is
        (``_NOT_IN_TRACES`` of its kind: where the server is, its key, requests in flight, time-outs,
        retries) count as at their defaults, so changing them resumes the traces already written. Keys
        added later are left out while at their defaults, so that upgrading does not regenerate the
        traces of existing runs. ``legacy``: as fingerprinted before ``_NOT_IN_TRACES`` existed (a run
        started then resumes)."""
        data = self.model_dump(mode="json")
        for key in () if legacy else _NOT_IN_TRACES.get(self.kind, ()):
            data[key] = TeacherConfig.model_fields[key].get_default(call_default_factory=True)
        for key in _LATER_TEACHER_KEYS:
            if key in data and data[key] == TeacherConfig.model_fields[key].get_default(call_default_factory=True):
                data.pop(key)
        return data


_LATER_TEACHER_KEYS = ("backoff_base_s", "backoff_max_s", "extra_body", "max_tokens_field",
                       "max_consecutive_failures", "name")
# how an API teacher's traces are fetched, not what they are
_TRANSPORT_KEYS = ("base_url", "api_key_env", "concurrency", "timeout_s", "max_retries", "backoff_base_s",
                   "backoff_max_s", "max_consecutive_failures")
# per kind, the keys that do not change its traces: transport, and the keys the kind does not use
# (the model, dtype, system prompt, name, sampling and parsing settings all stay in)
_NOT_IN_TRACES = {"openai": (*_TRANSPORT_KEYS, "dtype"),
                  "hf": (*_TRANSPORT_KEYS, "reasoning", "use_n", "extra_body", "max_tokens_field"),
                  "vllm": (*_TRANSPORT_KEYS, "reasoning", "use_n", "extra_body", "max_tokens_field")}


def _check_env_name(value: str | None) -> str | None:
    """``api_key_env`` holds the name of an environment variable, never the key itself."""
    problem = env_name_problem(value) if value is not None else None
    if problem:
        raise ValueError(problem)
    return value


class LogitTeacherConfig(_Strict):
    """``logit_teacher``: a local Hugging Face model that gives the token distributions of soft
    (``online``), ``offline_topk`` and ``on_policy`` distillation, whoever writes the traces
    (``teacher``: an API, vLLM or ingested traces). Without it an ``hf`` teacher serves both roles.
    Its tokenizer must be the soft students' (docs/teachers.md#teacher-roles)."""

    model: str = Field(description="local path, hub id or bundled:NAME")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="the weights' dtype; auto = bfloat16 where the GPU or CPU computes it natively")
    attn_implementation: str | None = Field(None, description="transformers' attn_implementation (None: its "
                                            "default, sdpa)")


class GenerateConfig(SamplingParams):
    n: int = Field(2, gt=0, description="traces sampled per training problem")
    temperature: float = Field(0.7, ge=0, description="sampling temperature (0: greedy)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling: keep the smallest set of tokens "
                         "reaching this probability")
    max_new_tokens: int = Field(256, gt=0, description="most tokens per trace (thinking and answer)")
    batch_size: int = Field(256, gt=0, description="hf: sequences decoded together")
    seed: int = Field(0, description="sampling seed; each (problem, sample) draws its own stream from it")
    max_failed_share: float = Field(0.05, ge=0, le=1, description="the generate stage fails (exit 2, every trace "
                                    "kept, a re-run retries the failed ones) when more than this share of the "
                                    "run's traces failed at the teacher after their retries, e.g. a server that "
                                    "died part-way; below it, curation skips them. 1: never fail")

    def sampling(self) -> SamplingParams:
        """The sampling settings alone: what the teacher gets and the generate stage fingerprints."""
        return SamplingParams(**self.model_dump(exclude={"max_failed_share"}))


class BenchmarkFile(_Strict):
    """A benchmark file for ``curate.decontaminate.against``: its problem texts are read from ``field``
    (default: the first of question, problem, prompt, input, text that a row has)."""

    path: str = Field(description="JSONL, JSON, CSV or Parquet file, or a datasets directory")
    field: str | None = Field(None, description="the field holding the problem text (null: detected)")
    format: Literal["auto", "jsonl", "json", "csv", "parquet", "hf"] = Field("auto", description="the file's "
                                                                             "format (auto: from its name)")
    split: str = Field("test", description="split of a datasets directory")
    label: str | None = Field(None, description="name in the report (default: the file name)")


class DecontamConfig(_Strict):
    """Drop training problems sharing a word n-gram (or their whole text) with an evaluation
    problem, after lowercasing and collapsing whitespace (curate/decontam.py)."""

    ngram: int = Field(8, ge=1, description="words per n-gram (open-r1 uses 8)")
    strip_punctuation: bool = Field(False, description="also treat ASCII punctuation as whitespace")
    against: list[str | BenchmarkFile] = Field(default_factory=list, description="benchmark files to decontaminate "
                                               "against besides the run's test split (hits reported per benchmark)")

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        return _drop_defaults(handler(self), self, {"against": []})


class CurateConfig(_Strict):
    require_correct: bool = Field(True, description="keep only traces whose answer verifies as correct")
    require_think: bool = Field(True, description="drop traces with no (or a malformed) <think> block")
    max_completion_tokens: int | None = Field(None, gt=0, description="drop traces longer than this many "
                                              "tokens (null: no limit)")
    dedup: bool = Field(True, description="drop a trace whose text repeats another of the same problem")
    max_per_problem: int | None = Field(1, gt=0, description="keep at most K distinct correct traces per problem")
    decontaminate: DecontamConfig | None = Field(default_factory=DecontamConfig,
                                                 description="null: keep training problems that overlap test ones")
    pass_rate: PassRateBand | None = Field(None, description="keep problems whose teacher pass rate is in "
                                           "[min, max] (null: all)")
    select: Literal["first", "diverse", "shortest"] = Field(
        "first", description="which K (max_per_problem) traces a problem keeps: first in sample order; diverse: "
        "greedy max-min Jaccard distance of thinking shingles; shortest: fewest tokens (curate/select.py)")
    near_dedup: NearDedupConfig | None = Field(None, description="drop near-duplicate training problems "
                                               "(MinHash over their prompts; null: off)")

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        return _drop_defaults(handler(self), self, {"pass_rate": None, "select": "first", "near_dedup": None})


class VerifyConfig(_Strict):
    """``verify``: the limits every stage checks answers under (reasondistill/verify/checker.py).
    Not part of any stage's fingerprint: limits decide how long a check may take, not its verdict
    (an answer past the limit is "unparseable: timeout")."""

    timeout: float = Field(10.0, gt=0, description="seconds per answer before it is 'unparseable: timeout'")
    workers: int = Field(2, ge=1, description="verifier processes (for checks that can hang: math, choice)")
    memory_mb: int | None = Field(2048, gt=0, description="address-space cap per verifier process (null: none)")


class BuildConfig(_Strict):
    think_tags: bool = Field(True, description="the target is <think>thinking</think> then the answer (false: "
                             "thinking and answer without tags)")
    max_length: int = Field(512, gt=0, description="drop examples longer than this (tokens)")
    val_fraction: float = Field(0.05, ge=0, lt=1, description="share of training problems held out for "
                                "validation loss (split by problem)")
    order: Literal["shuffle", "curriculum"] = Field(
        "shuffle", description="shuffle: batches drawn in a seeded random order each epoch; curriculum: every "
        "epoch easy to hard (data/curriculum.py)")
    curriculum_by: Literal["pass_rate", "length"] = Field(
        "pass_rate", description="curriculum: easy = high teacher pass rate, or = few target tokens")

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        return _drop_defaults(handler(self), self, {"order": "shuffle", "curriculum_by": "pass_rate"})


class ModelInit(_Strict):
    """A fresh model from a small config; the tokenizer is taken from ``tokenizer``."""

    architecture: Literal["llama", "qwen2"] = Field("llama", description="transformers model family")
    hidden_size: int = Field(64, gt=0, description="width of the residual stream")
    num_hidden_layers: int = Field(2, gt=0, description="transformer blocks")
    num_attention_heads: int = Field(4, gt=0, description="query heads per layer")
    num_key_value_heads: int | None = Field(None, gt=0, description="key/value heads (grouped-query "
                                            "attention); null: as many as query heads")
    intermediate_size: int = Field(256, gt=0, description="width of the MLP")
    max_position_embeddings: int = Field(512, gt=0, description="longest sequence the model handles")

    def spec(self) -> dict[str, Any]:
        d = self.model_dump()
        if d["num_key_value_heads"] is None:
            d["num_key_value_heads"] = d["num_attention_heads"]
        return d


class FeatureDistillConfig(_Strict):
    """Hidden-state matching on answer tokens: ``layers`` pairs (student, teacher) indices into
    ``output_hidden_states`` (0 = embeddings, -1 = last layer), through a learned projection
    when the widths differ; ``weight`` · Σ per-token loss is added to the logit objective."""

    layers: list[tuple[int, int]] = Field(min_length=1, description="[[student_layer, teacher_layer], ...]")
    loss: Literal["mse", "cosine"] = Field("mse", description="per-token distance between hidden states")
    weight: float = Field(1.0, gt=0, description="factor of the feature loss added to the logit objective")


class DistillConfig(_Strict):
    """Soft distillation from the run's (local ``hf``) teacher; without this section a student is
    trained on the traces alone (hard distillation). Per answer token the loss is
    ``alpha · T² · divergence_T(teacher, student) + (1 − alpha) · CE`` (train/losses.py)."""

    source: Literal["online", "offline_topk", "on_policy"] = Field(
        "online", description="online: teacher runs beside the student; offline_topk: top-k captured once "
        "(`reasondistill capture`); on_policy: GKD, student samples scored by the teacher")
    divergence: Literal["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tvd"] = Field(
        "forward_kl", description="how the student's token distribution is compared with the teacher's "
        "(train/losses.py)")
    beta: float | None = Field(None, ge=0, le=1, description="jsd only: mixture weight of the teacher (default 0.5)")
    skew_alpha: float | None = Field(None, ge=0, lt=1, description="skew_*_kl only: weight of the skewed-in "
                                     "distribution (default 0.1; below 1: at 1 the divergence is 0 whatever the "
                                     "student)")
    temperature: float = Field(1.0, gt=0, description="softmax temperature T of both distributions")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the divergence; 1 − alpha weighs CE on the labels "
                         "(teacher-written traces only: on_policy's student samples get the divergence alone)")
    top_k: int | None = Field(None, gt=0, description="offline_topk: log-probs kept per answer token")
    cache: Literal["fp16", "compact"] = Field(
        "fp16", description="offline_topk: how the top-k is stored: fp16 (k·6+2 bytes/token) or compact (ids "
        "Elias-Fano coded, log-probs in 0.25-nat steps, entries > 7.5 nats below the top folded into the tail; "
        "~140 bytes/token at k=128, data/compact_topk.py)")
    chunk_size: int | None = Field(16, gt=0, description="token rows per loss chunk (bounded memory); None = all")
    lambda_on_policy: float | None = Field(None, ge=0, le=1, description="on_policy only: share of batches "
                                           "replaced by the student's own samples (GKD lambda, default 0.5)")
    features: FeatureDistillConfig | None = Field(None, description="hidden-state matching (null: none)")
    cross_tokenizer: Literal["uld", "aligned", "projection"] | None = Field(
        None, description="a student whose tokenizer differs from the teacher's: texts re-tokenised and aligned by "
        "bytes, distributions compared at each aligned span's first token. uld: sorted-probability L1 (token "
        "identity ignored); aligned: exact KL on the tokens both vocabularies share (+ L1 on the rest, GOLD-like); "
        "projection: the teacher's vocabulary mapped onto the student's by token strings, then forward KL "
        "(train/cross_tokenizer.py). With offline_topk the capture stores the teacher's tokens and strings. "
        "null: the tokenizers must match")

    @model_validator(mode="after")
    def _consistent(self) -> "DistillConfig":
        if self.source == "offline_topk" and self.top_k is None:
            raise ValueError("source 'offline_topk' needs top_k (log-probs stored per answer token)")
        if self.source != "offline_topk" and self.cache != "fp16":
            raise ValueError(f"cache applies to source 'offline_topk' only (source is {self.source!r})")
        if self.source != "offline_topk" and self.top_k is not None:
            raise ValueError(f"top_k applies to source 'offline_topk' only (source is {self.source!r})")
        if self.source == "offline_topk" and self.features is not None:
            raise ValueError("features need the teacher's hidden states: use source 'online' or 'on_policy'")
        if self.cross_tokenizer is not None and self.features is not None:
            raise ValueError("features (hidden-state matching) need the teacher's tokenizer; drop cross_tokenizer")
        if self.cross_tokenizer is not None and self.divergence != "forward_kl":
            raise ValueError(f"divergence does not apply with cross_tokenizer {self.cross_tokenizer!r} (the "
                             "method defines the comparison): remove it")
        if self.source != "on_policy" and self.lambda_on_policy is not None:
            raise ValueError("lambda_on_policy applies to source 'on_policy' only")
        if self.beta is not None and self.divergence != "jsd":
            raise ValueError(f"beta applies to divergence 'jsd' only (divergence is {self.divergence!r})")
        if self.skew_alpha is not None and not self.divergence.startswith("skew_"):
            raise ValueError(f"skew_alpha applies to skew_forward_kl / skew_reverse_kl only "
                             f"(divergence is {self.divergence!r})")
        if self.alpha == 0 and self.source != "on_policy" and self.features is None:
            raise ValueError("alpha 0 gives the divergence no weight: the loss is the traces' cross-entropy alone, "
                             "with the teacher run for nothing; remove the distill section for that")
        return self

    def defaulted(self, field: str) -> float:
        """``beta``, ``skew_alpha`` or ``lambda_on_policy`` with its default when unset."""
        value = getattr(self, field)
        return {"beta": 0.5, "skew_alpha": 0.1, "lambda_on_policy": 0.5}[field] if value is None else value


class StudentConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="the student's name: its directories and "
                      "report rows")
    target: Literal["traces", "answers_only"] = Field("traces", description="what it learns to write: the "
                                                      "teacher's traces, or the final answers alone")
    model: str | None = Field(None, description="pretrained student: local path or hub id")
    init: ModelInit | None = Field(None, description="or a freshly initialised student")
    tokenizer: str | None = Field(None, description="tokenizer for an init student (default: the logit_teacher's "
                                  "when the config has one, else the teacher's)")
    seed: int | None = Field(None, description="training seed (null: the run's seed)")
    attn_implementation: str | None = Field(
        None, description="the student's attention kernel (transformers' attn_implementation), e.g. "
                          "flash_attention_2 on GPUs, which trains train.packing's rows without padding; None: "
                          "transformers' default (sdpa; on CPU train.attention: auto replaces it while training)")
    train: TrainConfig = Field(TrainConfig(), description="optimisation: epochs, batch size, learning rate, "
                               "checkpoints")
    distill: DistillConfig | None = Field(None, description="soft distillation (None: hard, traces only)")
    lora: LoraConfig | None = Field(None, description="train low-rank adapters (peft) on the pretrained `model` "
                                    "(a policy student: or its policy.start_from) instead of every weight; final/ "
                                    "holds the merged model (null: full fine-tuning)")
    policy: PolicyConfig | None = Field(None, description="train on the student's own rollouts instead: grpo, "
                                        "on_policy (prompt-only distillation) or dpo (train/policy_config.py)")
    quantize: QuantizeSections = Field(default_factory=list, description="quantized variants made after "
                                       "training (`reasondistill quantize`; a list, or one section; docs/quantize.md)")

    @model_validator(mode="after")
    def _one_model(self) -> "StudentConfig":
        if self.policy is not None and self.policy.start_from:
            given = [k for k in ("model", "init") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"policy.start_from gives this student its weights and tokenizer; '{given[0]}' "
                                 f"would not be used: remove it")
        elif self.lora is not None and self.model is None and self.policy is not None:
            raise ValueError("lora adapts pretrained weights, and this policy student has none: set 'model' (a path "
                             "or hub id) or 'policy.start_from' (an earlier student's name or a model directory)")
        elif (self.model is None) == (self.init is None):
            raise ValueError("set exactly one of 'model' (pretrained) or 'init' (fresh config)" + (
                ", or 'policy.start_from' (an earlier student's name or a model directory)" if self.policy else ""))
        if self.lora is not None and self.model is None and self.policy is None:
            raise ValueError("lora adapts a pretrained model: set 'model' (a path or hub id), not 'init'")
        if self.policy is not None and self.distill is not None:
            raise ValueError("set at most one of 'distill' (trained on traces) and 'policy' (on its own rollouts)")
        if self.policy is not None and self.target != "traces":
            raise ValueError(f"target: {self.target} says what a student trained on traces learns to write; a policy "
                             "student learns from its own rollouts (dpo: whole verified traces as the chosen side), "
                             "so target does nothing here: remove it")
        if self.policy is not None and self.train != TrainConfig():
            raise ValueError("a policy student is optimised by its policy section (steps, lr, prompts_per_step, "
                             "threads, save_every, ...); its train section is not used: remove train")
        if self.distill is not None and self.train.packing:
            raise ValueError("train.packing works for hard distillation only: the soft-distillation (distill) "
                             "objectives read per-row teacher outputs")
        return self


class OODConfig(_Strict):
    """An out-of-distribution test split, evaluated greedily and reported as ``ood`` beside the
    in-distribution one: either ``task`` (any task section: a harder file, another benchmark, longer
    chains; its test split, checked by that task) or, for chained_arith, ``min_ops``/``max_ops``
    (harder levels of the run's own task; ``min_ops`` must exceed ``task.max_ops``)."""

    min_ops: int | None = Field(None, gt=0, description="chained_arith: fewest operations of an OOD problem "
                                "(above task.max_ops)")
    max_ops: int | None = Field(None, gt=0, description="chained_arith: most operations of an OOD problem")
    task: TaskConfig | None = Field(None, description="any task section whose test split is the OOD set")
    n: int = Field(100, gt=0, description="OOD problems evaluated")

    @model_validator(mode="after")
    def _one_source(self) -> "OODConfig":
        levels = self.min_ops is not None or self.max_ops is not None
        if levels == (self.task is not None):
            raise ValueError("set either task (any task section) or min_ops and max_ops (harder chained_arith levels)")
        if levels and (self.min_ops is None or self.max_ops is None):
            raise ValueError("set both min_ops and max_ops")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        return _drop_defaults(handler(self), self, {"task": None})


class BudgetConfig(_Strict):
    """Budget forcing (s1, evaluate/budget.py): greedy decoding with the thinking capped at each budget,
    then ``</think>`` forced and the answer decoded freely for up to ``answer_tokens`` more tokens."""

    budgets: list[Annotated[int, Field(gt=0)]] = Field(min_length=1, description="thinking budgets (tokens)")
    answer_tokens: int | None = Field(None, gt=0, description="tokens allowed after </think> (null: "
                                      "evaluate.max_new_tokens)")
    min_thinking: int = Field(0, ge=0, description="suppress </think> and EOS until this many thinking tokens "
                              "(s1's 'Wait' extension)")
    force_open: bool = Field(False, description="write <think> for a model that does not open it itself")


class RouterConfig(_Strict):
    """Student-first cascade: the student votes over ``k`` samples; below ``threshold`` agreement
    the problem goes to the teacher (evaluate/router.py)."""

    k: int = Field(4, gt=0, description="student samples per problem")
    thresholds: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: [i / 10 for i in range(11)], description="vote-agreement thresholds below "
        "which the problem goes to the teacher (one point of the curve each)")


class EvalServerConfig(_Strict):
    """``evaluate.openai``: where ``evaluate.backend: openai`` finds each student, served by
    ``reasondistill serve`` or ``vllm serve`` (``--served-model-name STUDENT``). Same prompts
    (the server applies the student's chat template), same verifier, same metrics."""

    base_url: str = Field(description="the server of every student not in urls, e.g. http://127.0.0.1:8001/v1")
    urls: dict[str, str] = Field(default_factory=dict, description="per student: its own server's base_url "
                                 "(one model per server)")
    model: str | None = Field(None, description="the model id sent (null: the student's name, as given to "
                              "--served-model-name)")
    api_key_env: str | None = Field(None, description="name of the environment variable holding the key")
    concurrency: int = Field(8, gt=0, description="requests in flight at once")
    timeout_s: float = Field(600.0, gt=0, description="seconds per request before it is retried")
    max_retries: int = Field(6, ge=0, description="retries of a failed request (with backoff)")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        return _check_env_name(value)


class EvaluateConfig(_Strict):
    backend: Literal["hf", "vllm", "openai"] = Field(
        "hf", description="how the students are decoded: hf (transformers, this process), vllm (vLLM's offline "
        "engine; GPUs) or openai (a served student: see `openai`); the teacher is always evaluated through its "
        "own kind")
    openai: EvalServerConfig | None = Field(None, description="backend openai: the students' servers")
    vllm: VLLMOptions | None = Field(None, description="backend vllm: engine options for the students "
                                     "(tensor_parallel_size, ...; dtype auto)")
    batch_size: int = Field(200, gt=0, description="sequences decoded together")
    max_new_tokens: int = Field(256, gt=0, description="most tokens per answer (thinking included)")
    teacher: bool = Field(True, description="evaluate the teacher beside the students")
    samples: int = Field(0, ge=0, description="samples per problem for pass@k/maj@k/avg@n (0: greedy only)")
    temperature: float = Field(0.7, gt=0, description="sampling temperature of the sampled evaluation")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling of the sampled evaluation")
    k: list[int] = Field(default_factory=lambda: [1], description="k of pass@k and maj@k (each <= samples)")
    seed: int = Field(0, description="seed of the sampled evaluation")
    ood: OODConfig | None = Field(None, description="an out-of-distribution test split (chained_arith only; "
                                  "null: none)")
    budgets: list[int] = Field(default_factory=list, description="deprecated, same as budget.budgets (the answer "
                               "allowance is now evaluate.max_new_tokens, no longer 32)")
    budget: BudgetConfig | None = Field(None, description="budget forcing: budgets, answer_tokens, min_thinking, "
                                        "force_open (null: none)")
    router: RouterConfig | None = Field(None, description="student-first cascade settings of "
                                        "`reasondistill route` (null: its defaults)")

    @model_validator(mode="after")
    def _consistent(self) -> "EvaluateConfig":
        if self.samples and any(not 1 <= k <= self.samples for k in self.k):
            raise ValueError(f"k: every k must be in 1..samples={self.samples}, got {self.k}")
        if not self.samples and self.k != [1]:
            raise ValueError(f"k ({self.k}) applies to sampled evaluation: set samples (samples per problem, at "
                             "least the largest k); with samples 0 only greedy decoding runs")
        if any(b <= 0 for b in self.budgets):
            raise ValueError(f"budgets: thinking budgets must be positive, got {self.budgets}")
        if self.ood is not None and self.ood.min_ops is not None and self.ood.min_ops > self.ood.max_ops:
            raise ValueError("ood: need min_ops <= max_ops")
        if self.budgets and self.budget is not None:
            raise ValueError("budgets: give the budgets once, as budget.budgets (evaluate.budgets is the old spelling)")
        if self.backend == "openai" and self.openai is None:
            raise ValueError("backend 'openai' needs an openai section: {base_url: http://HOST:PORT/v1} where the "
                             "students are served")
        if self.openai is not None and self.backend != "openai":
            raise ValueError(f"the openai section applies to backend 'openai' only (backend is {self.backend!r})")
        if self.vllm is not None and self.backend != "vllm":
            raise ValueError(f"the vllm section applies to backend 'vllm' only (backend is {self.backend!r})")
        return self

    def budget_settings(self) -> BudgetConfig | None:
        """The budget-forcing settings, from ``budget`` or the old ``budgets`` list."""
        return self.budget or (BudgetConfig(budgets=self.budgets) if self.budgets else None)

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        return _drop_defaults(handler(self), self, {"budget": None})


class RunConfig(_Strict):
    run_dir: str = Field("runs/demo", description="the run directory every stage reads and writes")
    seed: int = Field(0, description="seed of problem selection, splits and (unless a student sets its own) "
                      "training")
    task: TaskConfig = Field(ChainedArithConfig(), description="which problems, from where (docs/tasks.md)")
    teacher: TeacherConfig = Field(TeacherConfig(), description="the model whose reasoning is distilled: it "
                                   "writes the traces (docs/teachers.md)")
    logit_teacher: LogitTeacherConfig | None = Field(
        None, description="a local model that gives the token distributions of soft, offline_topk and on_policy "
        "distillation (null: the teacher, when it is kind hf)")
    generate: GenerateConfig = Field(GenerateConfig(), description="sampling of the teacher's traces")
    curate: CurateConfig = Field(CurateConfig(), description="which traces are kept for training")
    build: BuildConfig = Field(BuildConfig(), description="turning traces into tokenised training examples")
    students: list[StudentConfig] = Field(default_factory=list, description="the students to train, each "
                                          "with its own model, target and training settings")
    train_workers: int = Field(1, ge=1, description="students trained at once, each in its own process "
                               "(train/parallel.py); each uses its own train.threads")
    evaluate: EvaluateConfig = Field(EvaluateConfig(), description="held-out evaluation of the teacher "
                                     "and the students")
    verify: VerifyConfig = Field(VerifyConfig(), description="time and memory limits of answer checking")

    @model_validator(mode="after")
    def _unique(self) -> "RunConfig":
        names = [s.name for s in self.students]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"students: names must be unique, repeated: {sorted(dupes)}")
        if "teacher" in names:
            raise ValueError("students: 'teacher' is reserved for the teacher")
        for i, s in enumerate(self.students):  # a student starts from one trained before it
            start = s.policy.start_from if s.policy is not None else None
            if start in names and names.index(start) >= i:
                raise ValueError(f"students.{i} ({s.name}): policy.start_from {start!r} names "
                                 f"{'the student itself' if start == s.name else 'a later student'}; students train "
                                 "in the order listed, so start from one listed before it")
        if self.logit_students() and self.logit_teacher is None and self.teacher.kind != "hf":
            raise ValueError(self.no_logit_teacher())
        ood = self.evaluate.ood
        ood = ood if ood is not None and ood.task is None else None  # the rules below are for harder levels
        if ood is not None and self.task.name != "chained_arith":
            raise ValueError(f"evaluate.ood: harder min_ops/max_ops levels exist for task 'chained_arith' only, "
                             f"not {self.task.name!r}: give the OOD problems as evaluate.ood.task (any task section)")
        if ood is not None and ood.min_ops <= self.task.max_ops:
            raise ValueError(f"evaluate.ood.min_ops ({ood.min_ops}) must exceed task.max_ops ({self.task.max_ops}): "
                             "the OOD split holds difficulty levels training never saw")
        return self

    def logit_students(self) -> dict[str, str]:
        """The students that need a local model's token distributions, each with the section that does."""
        needs = {s.name: "distill" if s.distill is not None else s.policy.teacher_section() if s.policy else None
                 for s in self.students}
        return {name: why for name, why in needs.items() if why}

    def no_logit_teacher(self) -> str:
        """Why a run with these students and no logit teacher cannot train them, and what to add."""
        named = ", ".join(f"{name} ({why})" for name, why in self.logit_students().items())
        return (f"students {named}: a distill section, a policy.objective on_policy or a policy.kl_teacher needs the "
                f"teacher's token distributions, and teacher.kind {self.teacher.kind!r} gives none; add a local logit "
                "teacher, e.g. `logit_teacher: {model: PATH_OR_HUB_ID}` with the students' tokenizer "
                "(docs/teachers.md#teacher-roles), or use an hf teacher")

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
    if not all(parts):
        raise ConfigError(f"override {override!r}: the key has an empty part")
    try:
        value = _parse_value(raw)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"override {override!r}: the value is not valid YAML ({problem})") from None
    node: Any = data
    for i, part in enumerate(parts):
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"override {key}: {'.'.join(parts[:i])} is a value ({node!r}), not a section")
        if i == len(parts) - 1:
            break
        if isinstance(node, list):
            node = _list_item(node, part, parts[: i + 1])
        else:
            if node.get(part) is None:  # absent, or a section left empty (`openai: null` in a run's config.yaml)
                node[part] = {}
            node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, parts)] = value
    else:
        node[last] = value


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


# A config expands to a few hundred values; YAML aliases can make a few hundred bytes expand to
# billions ("billion laughs"). Past this many values after expansion the file is refused.
MAX_YAML_VALUES = 100_000


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML
    silently keeps the last one, so a config could say one thing and do another)."""

    def construct_mapping(self, node, deep=False):
        first: dict[Any, int] = {}
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in first:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (first on line {first[key]})",
                    key_node.start_mark)
            if isinstance(key, (str, int, float, bool)):
                first[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """YAML to Python values, refusing duplicate keys and alias bombs (``MAX_YAML_VALUES``)."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_expansion(root) -> None:
    """Count the values ``root`` expands to (an aliased node once per use), up to the limit."""
    stack, count = [root], 0
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_YAML_VALUES:
            raise yaml.YAMLError(f"its aliases expand to more than {MAX_YAML_VALUES:,} values; "
                                 "write the repeated parts out instead of nesting anchors")
        if isinstance(node, yaml.MappingNode):
            stack.extend(v for pair in node.value for v in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def _unalias(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _unalias(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unalias(v) for v in obj]
    return obj


def yaml_line_finder(text: str, overridden: list[str] | None = None):
    """``line(loc) -> int | None``: the line of the YAML ``text`` where the field at ``loc`` (a
    validation error's location, e.g. ``("students", 0, "lora", "alpah")``) is written, or its
    nearest written parent's; None for a field set by one of the ``overridden`` keys (``a.b.c``)
    or absent from the file."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        root = None
    prefixes = [tuple(k.split(".")) for k in overridden or []]

    def line(loc: tuple) -> int | None:
        path = tuple(str(x) for x in loc)
        if root is None or any(path[:len(p)] == p for p in prefixes):
            return None
        node, found = root, None
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                hit = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)), None)
                key = next((k for k, v in node.value if v is hit), None) if hit is not None else None
                if hit is None:
                    break
                found, node = key.start_mark.line + 1, hit
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
                node = node.value[part]
                found = node.start_mark.line + 1
            else:
                break
        return found
    return line


def format_validation_error(err: ValidationError, source: str, root: type[BaseModel] | None = None,
                            line_of=None) -> str:
    """One line per error, naming the field (and with ``line_of``, :func:`yaml_line_finder`, the
    line of the file it is written on); a misspelled key, task name or choice gets the closest valid
    name (for keys: the fields of ``root``, default ``RunConfig``, at that place). A value under a
    key named like a secret (api_key, token, password, ...) is not shown."""
    lines = [f"{source}: invalid config"]
    for e in err.errors():
        where = line_of(clean_loc(e["loc"])) if line_of is not None else None
        loc = (f"line {where}: " if where else "") + (".".join(str(x) for x in clean_loc(e["loc"])) or "(top level)")
        got = f" (got {e['input']!r:.60})" if "input" in e and not isinstance(e["input"], dict) else ""
        if got and any(secret_name(x) for x in e["loc"] if isinstance(x, str)):  # e.g. a pasted api_key
            got = " (value not shown: the key's name says it may be a secret)"
        hint = _hint(e, root or RunConfig)
        lines.append(f"  {loc}: {e['msg']}{got}" + (f"; {hint}" if hint else ""))
    return "\n".join(lines)


def _hint(e: dict[str, Any], root: type[BaseModel]) -> str:
    if e["type"] == "extra_forbidden":
        parent = model_at(root, e["loc"][:-1])
        return did_you_mean(str(e["loc"][-1]), parent.model_fields) if parent else ""
    if e["type"] == "task_name" and isinstance(e.get("input"), dict):
        return did_you_mean(str(e["input"].get("name")), TASK_NAMES)
    if e["type"] == "literal_error" and isinstance(e.get("input"), str):
        return did_you_mean(e["input"], re.findall(r"'([^']*)'", e.get("ctx", {}).get("expected", "")))
    return ""


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    data: dict[str, Any] = {}
    source = str(path) if path else "<defaults>"
    text = ""
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
            data = load_yaml(text) or {}
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
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
        keys = [ov.partition("=")[0].strip() for ov in overrides or []]
        line_of = yaml_line_finder(text, keys) if text else None
        raise ConfigError(format_validation_error(err, source, line_of=line_of)) from None


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def config_changes(old: Any, new: Any, at: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs between two dumped configs (students matched
    by name), so that a verb can say what it is about to save over a run's ``config.yaml``."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [c for k in dict.fromkeys([*old, *new])
                for c in config_changes(old.get(k), new.get(k), f"{at}.{k}" if at else str(k))]
    named = lambda xs: isinstance(xs, list) and all(isinstance(x, dict) and "name" in x for x in xs)  # noqa: E731
    if named(old) and named(new) and old != new:
        by_old, by_new = {x["name"]: x for x in old}, {x["name"]: x for x in new}
        return [c for k in dict.fromkeys([*by_old, *by_new])
                for c in config_changes(by_old.get(k), by_new.get(k), f"{at}.{k}")]
    return [] if old == new else [f"{at}: {json.dumps(old)} -> {json.dumps(new)}"]


def demo_config_path() -> Path:
    """The bundled demo config (``reasondistill demo``)."""
    return Path(__file__).parent / "configs" / "demo.yaml"


def load_run_config(target: str | Path, overrides: list[str]) -> RunConfig:
    """The config of a verb's target: a config YAML, or a run directory (its ``config.yaml``, with
    ``run_dir`` pointing at the directory wherever it was moved), then ``overrides``."""
    path = Path(target)
    if path.is_dir():
        cfg_file = path / "config.yaml"
        if not cfg_file.exists():
            raise FileNotFoundError(f"{path} is a directory without config.yaml: pass a config file or a run directory")
        return load_config(cfg_file, [f"run_dir={path}", *overrides])
    if not path.exists():
        raise FileNotFoundError(f"{target}: no such config file or run directory")
    return load_config(path, overrides)
