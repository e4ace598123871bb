"""LoRA and QLoRA students through ``peft``: the ``students[].lora`` config section and its hooks.

Why: a pretrained student of a billion parameters or more is fine-tuned far more cheaply through
low-rank adapters than in full (AdamW keeps 16 bytes per *trained* parameter). The adapters plug
into the ordinary training loop (``train/sft.py``): every objective (SFT, online / offline top-k
KD, on-policy) sees a ``peft.PeftModel`` that forwards like the base model; checkpoints hold the
adapter weights only (``adapter_model.safetensors``, covered by the checkpoint's checksums) and
resume exactly; at the end the adapters are merged into the base weights, so ``final/`` is an
ordinary model directory that plain ``AutoModelForCausalLM.from_pretrained`` loads.

QLoRA (``quantize: nf4``) keeps the frozen base weights in 4-bit NF4 through ``bitsandbytes``,
which needs a CUDA GPU: on a machine without one the config still validates, and training (and
``reasondistill check``) stops with a message saying so. The 4-bit path is untested here (no GPU).

    lora = LoraConfig(r=8, alpha=16, target_modules=["q_proj", "v_proj"])
    model = apply_lora(load_model("path/to/base"), lora, seed=0)   # or load_base(...) for QLoRA
    train_model(model, tok, train, val, out, TrainConfig(), seed=0)  # final/ holds the merged model

Policy students (GRPO / on-policy / DPO, train/policy.py) use the same adapters: the trainer's
reference model is the base with the adapters switched off (:class:`AdaptersOff`), not a copy.

Tests: tests/train/test_lora.py, tests/train/test_policy_lora.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ADAPTER_FILE = "adapter_model.safetensors"  # what peft's save_pretrained writes for the adapters


class LoraConfig(BaseModel):
    """Low-rank adapters on a pretrained student (``students[].model``): only the adapters train;
    ``final/`` holds the base weights with the adapters merged in."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(8, gt=0, description="rank of each adapter (A: r x in, B: out x r)")
    alpha: float = Field(16.0, gt=0, description="scaling: the adapter's update is multiplied by alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input while training")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names (or name suffixes) that get adapters, e.g. [q_proj, v_proj]; "
                                  "each must match a layer, and not an output head tied to the input embedding; "
                                  "all-linear: every linear layer except the output head")
    quantize: Literal["none", "nf4"] = Field(
        "none", description="nf4: QLoRA, the frozen base weights in 4-bit NF4 (bitsandbytes; needs a CUDA GPU, "
                            "refused on CPU); none: base weights in full precision")

    def peft_config(self):
        import peft

        return peft.LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                               target_modules=self.target_modules, bias="none", task_type="CAUSAL_LM")


def quantize_problem(cfg: LoraConfig | None, cuda: bool | None = None) -> str | None:
    """Why ``cfg.quantize`` cannot run on this machine (one sentence), or None when it can."""
    if cfg is None or cfg.quantize == "none":
        return None
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if not cuda:
        return ("lora.quantize: nf4 (QLoRA) keeps the base weights in 4-bit through bitsandbytes, which needs a "
                "CUDA GPU and this machine has none; set lora.quantize: none (LoRA on full-precision weights)")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return "lora.quantize: nf4 (QLoRA) needs bitsandbytes: pip install bitsandbytes"
    return None


def target_problem(model_config, cfg: LoraConfig) -> str | None:
    """Why ``cfg.target_modules`` does not fit a model with ``model_config`` (a transformers config),
    or None. The model is built on the meta device: no weights, no memory."""
    if cfg.target_modules == "all-linear":
        return None
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    problem = layer_problem(model, cfg)
    if problem:
        return problem
    try:
        _get_peft_model(model, cfg)
    except ValueError as exc:  # e.g. a module type peft cannot adapt
        return f"lora.target_modules {cfg.target_modules}: {str(exc).strip().splitlines()[0]}"
    return None


def layer_problem(model, cfg: LoraConfig) -> str | None:
    """Why ``cfg.target_modules`` does not fit ``model``, or None: an entry that matches no module (peft's
    rule: the module's qualified name equals it or ends with a dot and it), or the output layer when it
    is tied to the input embedding (merging its adapter into ``final/`` would rewrite the embedding too)."""
    import difflib

    import torch

    if cfg.target_modules == "all-linear":  # peft leaves the output layer out
        return None
    names = [n for n, _ in model.named_modules() if n]
    unmatched = [t for t in cfg.target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if unmatched:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        close = [c for t in unmatched for c in difflib.get_close_matches(t.rsplit(".", 1)[-1], linear, n=1)]
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        return (f"lora.target_modules {unmatched} match no layer of the model{hint}; its linear layers are "
                f"named {', '.join(linear)} (or use all-linear)")
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and emb is not None and head.weight is emb.weight:
        head_name = next(n for n, m in model.named_modules() if m is head)
        hit = [t for t in cfg.target_modules if head_name == t or head_name.endswith("." + t)]
        if hit:
            return (f"lora.target_modules: {hit[0]} is the output layer, tied to the input embedding "
                    "(tie_word_embeddings): merging its adapter into final/ would rewrite the embedding too; drop "
                    f"{hit[0]} from target_modules, or use a model with untied embeddings")
    return None


def load_base(path: str, cfg: LoraConfig, attn_implementation: str | None = None):
    """The pretrained base model for ``cfg``: full precision, or 4-bit NF4 for QLoRA (CUDA only)."""
    from reasondistill.models import load_model, resolve

    problem = quantize_problem(cfg)
    if problem:
        raise ValueError(problem)
    if cfg.quantize == "none":
        return load_model(path, attn_implementation=attn_implementation)
    import peft
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(resolve(path), quantization_config=quant, dtype=torch.bfloat16,
                                                 use_safetensors=True, device_map={"": torch.cuda.current_device()},
                                                 **extra)
    return peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def apply_lora(model, cfg: LoraConfig, seed: int):
    """``model`` with adapters attached (a ``peft.PeftModel``; the base frozen). The adapters are
    initialised from ``seed`` without touching the caller's global RNG (B starts at zero, so the
    wrapped model computes exactly what the base did)."""
    import torch

    problem = layer_problem(model, cfg)
    if problem:
        raise ValueError(problem)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _get_peft_model(model, cfg)


def _get_peft_model(model, cfg: LoraConfig):
    import warnings

    import peft

    with warnings.catch_warnings():
        # peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` (a FutureWarning every
        # time); the attribute still works in transformers 5.x
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return peft.get_peft_model(model, cfg.peft_config())


def is_lora(model) -> bool:
    """True for a model with peft adapters (unwrapped from DDP first)."""
    try:
        import peft
    except ImportError:
        return False
    return isinstance(getattr(model, "module", model), peft.PeftModel)


def param_counts(model) -> tuple[int, int]:
    """(parameters of the model as exported, parameters that train). For a LoRA model the first
    counts the base alone (the adapters are merged into it), the second the adapters."""
    named = list(model.named_parameters())
    trainable = sum(p.numel() for _, p in named if p.requires_grad)
    if not is_lora(model):
        return sum(p.numel() for _, p in named), trainable
    return sum(p.numel() for n, p in named if ".lora_" not in n), trainable


def trainable_line(model) -> str:
    total, trainable = param_counts(model)
    return f"{trainable:,} trainable of {total:,} parameters ({trainable / max(1, total):.2%})"


def merged_for_export(model, weights: dict[str, Any] | None):
    """(model, state dict) to write as ``final/``: a LoRA model is merged in place into its base
    (``merge_and_unload``: the result is the base architecture with updated weights, nothing of
    peft left); any other model comes back unchanged with ``weights``."""
    if not is_lora(model):
        return model, weights
    merged = getattr(model, "module", model).merge_and_unload()
    if getattr(merged, "is_loaded_in_4bit", False):  # QLoRA: final/ in the compute dtype, not 4-bit (untested here)
        merged = merged.dequantize()
    return merged, merged.state_dict()


class AdaptersOff:
    """The frozen base of a LoRA model as a reference model: calling it runs ``model`` with its
    adapters disabled (``PeftModel.disable_adapter``) in eval mode, so a policy trainer's KL / DPO
    reference is the start weights without a second copy of them in memory (TRL does the same).
    Callers run it under ``torch.no_grad``; the model's train/eval mode is restored afterwards."""

    def __init__(self, model):
        if not is_lora(model):
            raise TypeError("AdaptersOff needs a peft model with adapters")
        self.model = getattr(model, "module", model)

    def __call__(self, **inputs):
        was_training = self.model.training
        self.model.eval()
        try:
            with self.model.disable_adapter():
                return self.model(**inputs)
        finally:
            self.model.train(was_training)


def load_adapter(model, path: Path) -> None:
    """Load adapter weights written by ``PeftModel.save_pretrained`` (a checkpoint) into ``model``."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from reasondistill.train.checkpoint import check_finite

    weights = load_file(str(path))
    check_finite(weights, str(path), "delete this checkpoint to resume from the one before")
    result = set_peft_model_state_dict(getattr(model, "module", model), weights)
    unexpected = getattr(result, "unexpected_keys", [])
    missing = [k for k in getattr(result, "missing_keys", []) if ".lora_" in k]
    if unexpected or missing:
        raise RuntimeError(f"{path}: adapters do not match the model (missing {missing[:3]}, unexpected "
                           f"{unexpected[:3]}); the lora section changed since this checkpoint")
