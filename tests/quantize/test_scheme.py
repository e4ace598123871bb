"""The torchao scheme: fake-quantized training numerics equal the converted (deployed) model's, the
right layers are quantized, gradients pass straight through, and the export is a safetensors
checkpoint that plain transformers loads."""

from __future__ import annotations

import pytest
import torch

from reasondistill.quantize.config import QuantizeConfig
from reasondistill.quantize.scheme import (convert, is_quantized, kept_layers, linear_layers, load_quantized,
                                           prepare_fake_quant, quantized_layers)
from reasondistill.quantize.speed import weight_bytes

SPEC = {"architecture": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 128}


@pytest.fixture
def trained(tmp_path, char_tokenizer):
    """A saved student whose weights are not at their (small, uniform) initial values."""
    from reasondistill.models import init_model

    model = init_model(SPEC, char_tokenizer, seed=1)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    d = tmp_path / "final"
    model.save_pretrained(d, safe_serialization=True)
    char_tokenizer.save_pretrained(d)
    return d


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@pytest.mark.parametrize("bits, group", [(4, 16), (3, 32), (8, None)])
def test_fake_quantized_logits_equal_the_converted_models(trained, tmp_path, bits, group):
    from reasondistill.models import load_model

    q = QuantizeConfig(bits=bits, group_size=group)
    ids = torch.randint(10, 100, (2, 24), generator=torch.Generator().manual_seed(1))
    full = logits(load_model(str(trained)), ids)
    fake = load_model(str(trained))
    names = prepare_fake_quant(fake, q)
    fake.eval()
    convert(trained, tmp_path / "q", q)
    deployed = load_quantized(tmp_path / "q")
    assert torch.equal(logits(fake, ids), logits(deployed, ids))  # training sees what deployment computes
    assert not torch.allclose(full, logits(deployed, ids), atol=1e-4)  # and it is not the full-precision model
    assert sorted(n for n, m in linear_layers(deployed).items() if is_quantized(m.weight)) == names
    assert len(names) == 2 * 7  # q, k, v, o, gate, up, down per layer; lm_head (tied) kept


def test_export_is_safetensors_only_smaller_and_loads_with_plain_transformers(trained, tmp_path, char_tokenizer):
    from transformers import AutoModelForCausalLM

    q = QuantizeConfig(bits=4, group_size=16)
    convert(trained, tmp_path / "q", q, char_tokenizer)
    files = {p.name for p in (tmp_path / "q").iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    assert weight_bytes(tmp_path / "q") < 0.6 * weight_bytes(trained)  # int8-held codes + fp32 scales vs fp32
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    w = model.model.layers[0].mlp.up_proj.weight
    assert is_quantized(w) and w.qdata.dtype == torch.int8 and int(w.qdata.abs().max()) <= 8  # 4-bit codes


def test_keep_and_tied_output_layers_stay_full_precision(trained):
    from reasondistill.models import load_model

    model = load_model(str(trained))
    assert kept_layers(model, QuantizeConfig(keep=[])) == ["lm_head"]  # tied to the embedding: always kept
    kept = kept_layers(model, QuantizeConfig(keep=["lm_head", "down_proj", "model.layers.1"]))
    assert "model.layers.0.mlp.down_proj" in kept and "model.layers.1.self_attn.q_proj" in kept
    assert "model.layers.0.mlp.up_proj" not in kept
    assert len(quantized_layers(model, QuantizeConfig(keep=["model.layers.1", "down_proj"]))) == 6


def test_a_group_that_does_not_divide_a_layer_is_a_clear_error(trained):
    from reasondistill.models import load_model

    with pytest.raises(ValueError, match=r"students.s.quantize.x.group_size: 24 does not divide .* \[32, 64\]"):
        quantized_layers(load_model(str(trained)), QuantizeConfig(group_size=24), "students.s.quantize.x")


def test_a_keep_entry_that_names_no_module_is_a_clear_error(trained):
    from reasondistill.models import load_model

    model = load_model(str(trained))
    with pytest.raises(ValueError, match=r"students.s.quantize.x.keep: \['nonexistent_proj'\] match no module"):
        quantized_layers(model, QuantizeConfig(keep=["lm_head", "nonexistent_proj"]), "students.s.quantize.x")
    with pytest.raises(ValueError, match="did you mean 'down_proj'"):
        kept_layers(model, QuantizeConfig(keep=["dwn_proj"]))


def test_gradients_pass_straight_through_the_rounding(trained):
    from reasondistill.models import load_model

    model = load_model(str(trained))
    prepare_fake_quant(model, QuantizeConfig(bits=2, group_size=16))
    ids = torch.randint(10, 100, (2, 16), generator=torch.Generator().manual_seed(2))
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    grad = model.model.layers[0].mlp.up_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0  # round() alone would give zero gradient
