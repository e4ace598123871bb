"""What a variant quantizes and how, with torchao: the weight config, the layers kept in full
precision, fake quantization for training (QAT/QAD) and the conversion to real quantized weights.

Why one module: the fake-quantized model that trains and the converted model that is deployed must
round the same way. Both come from the one torchao ``IntxWeightOnlyConfig`` built here (torchao's
``QATConfig`` derives its fake quantizer, a straight-through estimator, from it), and the
conversion goes through transformers' ``TorchAoConfig``, so the saved directory is a plain
transformers checkpoint (safetensors, ``quantization_config`` in config.json) that
``AutoModelForCausalLM.from_pretrained`` loads back with torchao installed. tests/quantize checks
that fake-quantized and converted logits agree exactly.

    model = prepare_fake_quant(load_model(final), q)     # train it (STE), save_pretrained(trained)
    convert(trained, "quantize/s/qad-int4/model", q)      # real int weights + config, safetensors
    deployed = load_quantized("quantize/s/qad-int4/model")

On an x86 CPU with torchao 0.18 the only format that runs is ``IntxUnpackedToInt8Tensor``: every
weight takes one int8 byte on disk and in memory whatever ``bits`` is (packed int4 layouts need
CUDA, mslk or ARM kernels), plus one scale per group.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from reasondistill.errors import UserError
from reasondistill.quantize.config import QuantizeConfig

# torchao warns on import about kernel libraries for GPUs/ARM it cannot load on a CPU (and torch about
# an enum it registers); transformers imports torchao whenever it is installed, for any model
IMPORT_NOISE = ("torchao", "torch.utils._pytree")


def silence_torchao_import() -> None:
    """For a process this package owns (the CLI): no torchao import warnings, whoever imports it."""
    for name in IMPORT_NOISE:
        logging.getLogger(name).setLevel(logging.ERROR)


@contextmanager
def quiet_torchao() -> Iterator[None]:
    """Import torchao without its import-time warnings (a UserError naming the extra when it is missing)."""
    loggers = [logging.getLogger(n) for n in IMPORT_NOISE]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        try:
            import torchao  # noqa: F401  (imported here, once, quietly)
        except ImportError:
            raise UserError("quantize: needs torchao (pip install 'reasondistill[quantize]')") from None
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def weight_config(q: QuantizeConfig):
    """torchao's weight-only config for ``q``: signed ``bits``-bit integers, symmetric, one scale per
    ``group_size`` weights of a row (or per output channel)."""
    import torch

    with quiet_torchao():
        from torchao.quantization import IntxWeightOnlyConfig
        from torchao.quantization.granularity import PerAxis, PerGroup
        from torchao.quantization.quant_primitives import MappingType

    granularity = PerGroup(q.group_size) if q.group_size else PerAxis(0)
    return IntxWeightOnlyConfig(weight_dtype=getattr(torch, f"int{q.bits}"), granularity=granularity,
                                mapping_type=MappingType.SYMMETRIC)


def matches(name: str, pattern: str) -> bool:
    """A ``keep`` entry names module ``name`` when equal to it, a prefix up to a dot, or a suffix after a dot."""
    return name == pattern or name.startswith(pattern + ".") or name.endswith("." + pattern)


def linear_layers(model) -> dict[str, object]:
    import torch

    return {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def kept_layers(model, q: QuantizeConfig, where: str = "quantize") -> list[str]:
    """Linear layers left in full precision: those ``keep`` names, and any whose weight is the input
    embedding's (a tied output layer: quantizing it would quantize the embedding too). A ValueError
    naming ``where`` if a ``keep`` entry matches no module (a typo; the default lm_head excepted: some
    architectures name their output layer otherwise)."""
    modules = [n for n, _ in model.named_modules() if n]
    unmatched = [k for k in q.keep if k != "lm_head" and not any(matches(n, k) for n in modules)]
    if unmatched:
        import difflib

        linear = sorted({n.rsplit(".", 1)[-1] for n in linear_layers(model)})
        close = [c for k in unmatched for c in difflib.get_close_matches(k.rsplit(".", 1)[-1], linear, n=1)]
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise ValueError(f"{where}.keep: {unmatched} match no module of the model{hint}; its linear layers are "
                         f"named {', '.join(linear)} (or give a qualified name such as model.layers.0)")
    emb = model.get_input_embeddings()
    tied = emb.weight if emb is not None else None
    return sorted(name for name, m in linear_layers(model).items()
                  if any(matches(name, k) for k in q.keep) or m.weight is tied)


def quantized_layers(model, q: QuantizeConfig, where: str = "quantize") -> list[str]:
    """The Linear layers ``q`` quantizes; a ValueError naming ``where`` if a group does not fit a layer."""
    kept = set(kept_layers(model, q, where))
    names = sorted(n for n in linear_layers(model) if n not in kept)
    layers = linear_layers(model)
    if q.group_size:
        bad = [n for n in names if layers[n].in_features % q.group_size]
        if bad:
            widths = sorted({layers[n].in_features for n in bad})
            raise ValueError(f"{where}.group_size: {q.group_size} does not divide the input width of {len(bad)} "
                             f"layers (widths {widths}, e.g. {bad[0]}); choose a divisor, null (per channel) or "
                             f"keep those layers")
    if not names:
        raise ValueError(f"{where}.keep: every Linear layer is kept in full precision: nothing to quantize")
    return names


def prepare_fake_quant(model, q: QuantizeConfig, where: str = "quantize") -> list[str]:
    """Swap the layers ``q`` quantizes for torchao fake-quantized ones (in place); returns their names.
    Forward rounds the weights as the converted model will; backward passes gradients straight through."""
    with quiet_torchao():
        from torchao.quantization import quantize_
        from torchao.quantization.qat import QATConfig

    names = set(quantized_layers(model, q, where))
    quantize_(model, QATConfig(weight_config(q), step="prepare"), filter_fn=lambda _m, fqn: fqn in names)
    return sorted(names)


def is_quantized(weight) -> bool:
    with quiet_torchao():
        from torchao.utils import TorchAOBaseTensor

    return isinstance(weight, TorchAOBaseTensor)


def convert(trained_dir: str | Path, out_dir: str | Path, q: QuantizeConfig, tokenizer=None,
            where: str = "quantize") -> list[str]:
    """Load the full-precision weights in ``trained_dir`` through transformers' torchao integration
    (which quantizes them with :func:`weight_config`) and save real quantized weights, safetensors, to
    ``out_dir``; returns the quantized layer names (checked to be exactly those ``q`` selects)."""
    import torch
    from transformers import AutoModelForCausalLM, TorchAoConfig

    from reasondistill.models import load_model

    reference = load_model(str(trained_dir))
    expected = quantized_layers(reference, q, where)
    kept = [n for n in linear_layers(reference) if n not in set(expected)]
    del reference
    with quiet_torchao():
        model = AutoModelForCausalLM.from_pretrained(str(trained_dir), dtype=torch.float32, use_safetensors=True,
                                                     quantization_config=TorchAoConfig(weight_config(q),
                                                                                       modules_to_not_convert=kept))
    check_layers(model, expected, str(trained_dir))
    model.save_pretrained(out_dir, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return expected


def check_layers(model, expected: list[str], source: str) -> None:
    """Raise unless exactly the ``expected`` Linear layers hold quantized weights."""
    got = sorted(n for n, m in linear_layers(model).items() if is_quantized(m.weight))
    if got != sorted(expected):
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        raise RuntimeError(f"{source}: torchao quantized other layers than the fake-quantized ones "
                           f"(not quantized: {missing[:3]}, unexpectedly quantized: {extra[:3]})")


def load_quantized(model_dir: str | Path):
    """A converted directory as plain transformers loads it (torchao rebuilds the quantized tensors)."""
    from transformers import AutoModelForCausalLM

    with quiet_torchao():
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), use_safetensors=True)
    model.eval()
    return model
