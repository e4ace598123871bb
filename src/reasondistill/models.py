"""Loading and creating models and tokenizers: real ``transformers`` classes, local or hub.

Why: a teacher, a student and the bundled demo models all go through the same two calls, so
the code that loads a 1M-parameter toy is the code that loads Qwen. Weights are read from
safetensors only. Fresh students are built from a small config (``init``) and share the
tokenizer of the model named in ``tokenizer``.

    tok = load_tokenizer("bundled:tiny-arith-teacher")
    model = load_model("bundled:tiny-arith-teacher")
    student = init_model({"architecture": "llama", "hidden_size": 64, ...}, tok, seed=0)
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

ASSETS = Path(__file__).parent / "assets"
BUNDLED_PREFIX = "bundled:"

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|unk|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
THINK_TOKENS = ["<think>", "</think>"]


def resolve(name_or_path: str) -> str:
    """``bundled:NAME`` names a model shipped in the package; anything else goes to transformers."""
    if name_or_path.startswith(BUNDLED_PREFIX):
        path = ASSETS / name_or_path[len(BUNDLED_PREFIX):]
        if not (path / "config.json").exists():
            shipped = sorted(p.name for p in ASSETS.iterdir() if (p / "config.json").exists())
            raise FileNotFoundError(f"no bundled model {name_or_path!r}; shipped: {shipped}")
        return str(path)
    local = Path(name_or_path).expanduser()
    looks_local = bool(name_or_path) and (name_or_path.startswith(("/", "./", "../", "~")) or local.exists())
    if looks_local and not local.is_dir():
        raise FileNotFoundError(f"{name_or_path}: no such model directory")
    if looks_local and not any((local / f).exists() for f in ("config.json", "tokenizer_config.json")):
        raise FileNotFoundError(f"{name_or_path}: not a model or tokenizer directory (no config.json in it)")
    return str(local) if looks_local else name_or_path


def local_files(name: str) -> list[Path]:
    """Files that identify a model or tokenizer when it is local (a stage's inputs; hub ids hash by name only)."""
    path = Path(resolve(name))
    return [f for f in (path / "config.json", path / "model.safetensors", path / "tokenizer.json")
            if f.exists()] if path.is_dir() else []


def build_char_tokenizer():
    """A character-level tokenizer over printable ASCII, with chat and think tokens.

    Built locally with ``tokenizers`` (no download); saved and reloaded through AutoTokenizer
    it encodes identically (tests check the round trip).
    """
    import tokenizers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    chars = [c for c in string.printable if c not in "\x0b\x0c\r"]
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + THINK_TOKENS + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(tokenizers.Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return with_chat_tokens(tok)


def with_chat_tokens(tok):
    """A ``tokenizers.Tokenizer`` as a PreTrainedTokenizerFast with this project's special and
    think tokens, pad ``<|pad|>``, EOS ``<|end|>`` and chat template (the character tokenizer's and
    the locally trained BPE's, data/bpe.py)."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in THINK_TOKENS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|end|>",
                                   unk_token="<|unk|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve(name_or_path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def bf16_is_native() -> bool:
    """A CUDA device with bf16, or a CPU with AVX512-BF16 / AMX (elsewhere bf16 is emulated on CPU
    and several times slower than fp32)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    return any(getattr(cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def resolve_dtype(dtype: str) -> str:
    """``auto`` -> ``bfloat16`` where :func:`bf16_is_native`, else ``float32``; other names unchanged."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if bf16_is_native() else "float32"


def load_model(name_or_path: str, dtype: str = "float32", attn_implementation: str | None = None):
    """A causal LM from a local path, ``bundled:NAME`` or hub id, in ``dtype`` (a torch dtype name or
    ``auto``), loaded from safetensors only; ``attn_implementation`` None keeps transformers' default."""
    import torch
    from transformers import AutoModelForCausalLM

    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(resolve(name_or_path), dtype=getattr(torch, resolve_dtype(dtype)),
                                                 use_safetensors=True, **extra)
    return model


ARCHITECTURES = {"llama": "LlamaConfig", "qwen2": "Qwen2Config"}


def init_model(spec: dict[str, Any], tokenizer, seed: int):
    """A freshly initialised causal LM from a small config, sized to ``tokenizer``."""
    import torch
    import transformers

    spec = dict(spec)
    arch = spec.pop("architecture", "llama")
    if arch not in ARCHITECTURES:
        raise ValueError(f"model.init.architecture: {arch!r} is not one of {sorted(ARCHITECTURES)}")
    config_cls = getattr(transformers, ARCHITECTURES[arch])
    config = config_cls(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                        eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
                        tie_word_embeddings=spec.pop("tie_word_embeddings", True), **spec)
    gen = torch.random.fork_rng(devices=[])
    with gen:  # initialise from ``seed`` without touching the caller's global RNG
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config)
    return model


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())
