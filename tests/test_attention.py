"""reasondistill/attention.py: the blocked causal attention equals sdpa (values and gradients), on its own
and inside real tiny Hugging Face models, and its fallbacks (left padding, decoding) stay exact."""

import pytest
import torch
import torch.nn.functional as F

from reasondistill.attention import (NAME, CausalAttention, PackedSequences, fast_causal_attention,
                                     saved_probs_elements)
from reasondistill.models import init_model

from conftest import QWEN_HEAD32

QWEN_GQA = {"architecture": "qwen2", "hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "intermediate_size": 96, "max_position_embeddings": 512}
LLAMA = {"architecture": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
         "intermediate_size": 64, "max_position_embeddings": 512}


def _qkv(b=2, h=3, t=300, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, t, d, generator=g, dtype=torch.float64).float().requires_grad_() for _ in range(3)]


def _grads(out, grad, tensors):
    return torch.autograd.grad(out, tensors, grad)


@pytest.mark.parametrize("block", [128, 64, 1000])
def test_function_equals_sdpa_values_and_gradients(block):
    q, k, v = _qkv()
    grad = torch.randn_like(q)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    out = CausalAttention.apply(q, k, v, 16 ** -0.5, None, block, None)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(_grads(out, grad, (q, k, v)), _grads(ref, grad, (q, k, v))):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_function_applies_a_key_mask():
    q, k, v = _qkv(t=200)
    valid = torch.ones(2, 200, dtype=torch.bool)
    valid[1, :37] = False  # left padding
    allowed = torch.ones(200, 200, dtype=torch.bool).tril() & valid[:, None, None, :]
    grad = torch.randn_like(q)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    out = CausalAttention.apply(q, k, v, 16 ** -0.5, ~valid[:, None, None, :], 64, None)
    rows = valid[:, None, :, None].expand_as(out)  # queries with at least one allowed key
    torch.testing.assert_close(out[rows], ref[rows], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out).all()  # fully masked query rows stay finite
    masked_grad = grad * rows
    for a, b in zip(_grads(out, masked_grad, (q, k, v)), _grads(ref, masked_grad, (q, k, v))):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _sequence_ids(t, rows):
    """(len(rows), t) ids of packed rows given each row's sequence lengths."""
    ids = torch.zeros(len(rows), t, dtype=torch.long)
    for r, lengths in enumerate(rows):
        at = 0
        for i, n in enumerate(lengths):
            ids[r, at:at + n] = i
            at += n
    return ids


def test_function_packed_rows_equal_sdpa_with_the_block_diagonal_mask():
    """Packed rows: a token attends only to its own sequence; blocks skip the keys of sequences
    that ended before the block's first query (rows with different boundaries in one batch)."""
    q, k, v = _qkv(t=700)
    packed = PackedSequences.from_sequence_ids(_sequence_ids(700, [[300, 250, 150], [100, 500, 100]]))
    assert packed.starts[0, [0, 299, 300, 549, 550, 699]].tolist() == [0, 0, 300, 300, 550, 550]
    grad = torch.randn_like(q)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=packed.allowed())
    out = CausalAttention.apply(q, k, v, 16 ** -0.5, None, 128, None, packed.starts)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(_grads(out, grad, (q, k, v)), _grads(ref, grad, (q, k, v))):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert saved_probs_elements(700, 128, packed.starts) < saved_probs_elements(700, 128, None)


def test_model_packed_rows_equal_each_sequence_alone(char_tokenizer):
    """Inside a model: transformers detects the packed rows from position_ids, our mask hook hands
    the layers a PackedSequences (no dense T x T mask), and logits and gradients equal those of
    each sequence run alone."""
    from transformers.masking_utils import create_causal_mask

    model = init_model(QWEN_GQA, char_tokenizer, seed=0)
    g = torch.Generator().manual_seed(2)
    seqs = [torch.randint(5, 60, (n,), generator=g) for n in (150, 90, 200)]
    ids = torch.cat(seqs)[None]
    positions = torch.cat([torch.arange(len(s)) for s in seqs])[None]
    model.zero_grad()
    alone = [model(input_ids=s[None], use_cache=False).logits[0] for s in seqs]
    sum(a.pow(2).sum() for a in alone).backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    with fast_causal_attention(model):
        embeds = torch.zeros(1, ids.shape[1], QWEN_GQA["hidden_size"])
        mask = create_causal_mask(config=model.config, inputs_embeds=embeds, attention_mask=None,
                                  cache=None, position_ids=positions)
        assert isinstance(mask, PackedSequences)
        logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0]
        assert "CausalAttentionBackward" in _graph_names(logits)
        logits.pow(2).sum().backward()
    torch.testing.assert_close(logits.detach(), torch.cat(alone).detach(), atol=1e-5, rtol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name], atol=1e-4, rtol=1e-4, msg=name)


def test_packed_structure_is_read_from_the_mask_not_from_names():
    """``from_allowed`` accepts exactly "causal within consecutive sequences" and nothing else."""
    packed = PackedSequences.from_sequence_ids(_sequence_ids(9, [[4, 3, 2], [9]]))
    again = PackedSequences.from_allowed(packed.allowed()[:, 0])
    assert again is not None and torch.equal(again.starts, packed.starts)
    causal = torch.ones(9, 9, dtype=torch.bool).tril()[None]
    assert torch.equal(PackedSequences.from_allowed(causal).starts, torch.zeros(1, 9, dtype=torch.long))
    window = causal & ~torch.ones(9, 9, dtype=torch.bool).tril(-3)[None]  # sliding window of 3
    assert PackedSequences.from_allowed(window) is None
    holes = packed.allowed()[:, 0].clone()
    holes[0, 3, 1] = False  # a gap inside a sequence
    assert PackedSequences.from_allowed(holes) is None
    bidirectional = packed.allowed()[:, 0].clone()
    bidirectional[0, 0, 1] = True  # a key after its query
    assert PackedSequences.from_allowed(bidirectional) is None


def test_custom_mask_functions_fall_back_to_the_dense_mask(char_tokenizer, caplog):
    """A mask function that is not packed-causal (here: packed rows and a sliding window of 5)
    reaches the layers as transformers' own dense mask, so results stay correct."""
    from transformers.masking_utils import create_causal_mask

    model = init_model(QWEN_GQA, char_tokenizer, seed=0)
    positions = torch.cat([torch.arange(n) for n in (30, 20)])[None]
    embeds = torch.zeros(1, 50, QWEN_GQA["hidden_size"])

    def window(batch_idx, head_idx, q_idx, kv_idx):
        return kv_idx > q_idx - 5

    with fast_causal_attention(model), caplog.at_level("WARNING", logger="reasondistill.attention"):
        mask = create_causal_mask(config=model.config, inputs_embeds=embeds, attention_mask=None,
                                  cache=None, position_ids=positions, and_mask_function=window)
    assert isinstance(mask, torch.Tensor) and mask.dtype == torch.bool
    allowed = PackedSequences.from_sequence_ids(_sequence_ids(50, [[30, 20]])).allowed()
    keys = torch.arange(50)
    assert torch.equal(mask, allowed & (keys[None, :] > keys[:, None] - 5)[None, None])
    assert "not causal within packed sequences" in caplog.text


def test_bf16_close_to_fp32():
    q, k, v = _qkv(t=260)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    out = CausalAttention.apply(q, k, v, 16 ** -0.5, None, 128, torch.bfloat16)
    assert out.dtype == torch.bfloat16
    assert ((out.float() - ref).abs().max() / ref.abs().max()) < 2e-2


def _batch(t=260, pad_rows=((1, 190), (2, 140))):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 60, (3, t), generator=g)
    mask = torch.ones(3, t, dtype=torch.long)
    for row, length in pad_rows:
        mask[row, length:] = 0
    return ids, mask


def _forward_backward(model, ids, mask, **kw):
    model.zero_grad()
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False, **kw).logits
    (logits * mask[..., None]).pow(2).mean().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("spec", [QWEN_GQA, LLAMA], ids=["qwen2-gqa", "llama"])
def test_model_right_padded_equals_sdpa(spec, char_tokenizer):
    model = init_model(spec, char_tokenizer, seed=0)
    ids, mask = _batch()
    ref_logits, ref_grads = _forward_backward(model, ids, mask)
    with fast_causal_attention(model) as on:
        assert on and model.config._attn_implementation == NAME
        logits, grads = _forward_backward(model, ids, mask)
    assert model.config._attn_implementation == "sdpa"  # restored
    real = mask.bool()
    torch.testing.assert_close(logits[real], ref_logits[real], atol=1e-5, rtol=1e-5)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, atol=1e-5, rtol=1e-4, msg=name)


def _graph_names(tensor) -> set[str]:
    seen, todo, names = set(), [tensor.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo.extend(n for n, _ in node.next_functions)
    return names


def test_large_layers_fall_back_to_sdpa(char_tokenizer, monkeypatch):
    """Above MAX_SAVED_PROBS_BYTES a layer uses sdpa (O(T) memory), with the same results."""
    import reasondistill.attention as attention

    model = init_model(QWEN_HEAD32, char_tokenizer, seed=0)
    ids, mask = _batch()
    ref = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    with fast_causal_attention(model):
        fast = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        monkeypatch.setattr(attention, "MAX_SAVED_PROBS_BYTES", 1000)
        big = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    assert "CausalAttentionBackward" in _graph_names(fast)
    assert "CausalAttentionBackward" not in _graph_names(big)
    real = mask.bool()
    torch.testing.assert_close(big[real], ref[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast[real], ref[real], atol=1e-5, rtol=1e-5)


def test_model_left_padded_equals_sdpa(char_tokenizer):
    model = init_model(QWEN_GQA, char_tokenizer, seed=0)
    ids, _ = _batch()
    mask = torch.ones_like(ids)
    mask[0, :70] = 0
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    ref, _ = _forward_backward(model, ids, mask, position_ids=position_ids)
    with fast_causal_attention(model):
        out, _ = _forward_backward(model, ids, mask, position_ids=position_ids)
    torch.testing.assert_close(out[mask.bool()], ref[mask.bool()], atol=1e-5, rtol=1e-5)


def test_generation_with_cache_unchanged(char_tokenizer):
    model = init_model(QWEN_GQA, char_tokenizer, seed=0).eval()
    ids, _ = _batch(t=12)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left-padded prompt
    kw = dict(max_new_tokens=20, do_sample=False, pad_token_id=char_tokenizer.pad_token_id)
    ref = model.generate(input_ids=ids, attention_mask=mask, **kw)
    with fast_causal_attention(model):
        out = model.generate(input_ids=ids, attention_mask=mask, **kw)
    assert torch.equal(out, ref)


def test_pays_on_cpu_rule(char_tokenizer):
    from reasondistill.attention import pays_on_cpu

    assert pays_on_cpu(init_model(QWEN_GQA, char_tokenizer, seed=0), "bf16")  # head_dim 12
    assert not pays_on_cpu(init_model(QWEN_GQA, char_tokenizer, seed=0), "no")
    assert pays_on_cpu(init_model(QWEN_HEAD32, char_tokenizer, seed=0), "no")


def test_disabled_or_unsupported_keeps_the_model(char_tokenizer):
    model = init_model(LLAMA, char_tokenizer, seed=0)
    with fast_causal_attention(model, enabled=False) as on:
        assert not on and model.config._attn_implementation == "sdpa"
    with fast_causal_attention(torch.nn.Linear(2, 2)) as on:
        assert not on


def test_train_model_uses_it_and_matches_the_model_attention(char_tokenizer, tmp_path, arith):
    """Same seed, same data: the loss curve with attention=auto equals attention=model (fp32), and
    the saved model keeps its own attention implementation."""
    import csv
    import json

    from reasondistill.data.build import build_dataset, make_examples
    from reasondistill.records import Trace
    from reasondistill.train.config import TrainConfig
    from reasondistill.train.sft import train_model

    problems = arith.problems("train", 24, seed=0)
    traces = [Trace(p.id, 0, p.solution * 3, p.answer, "", 0, 0, "stop", "solver") for p in problems]
    build_dataset(make_examples({p.id: p for p in problems}, traces, "traces"), char_tokenizer, tmp_path / "d",
                  max_length=512, val_fraction=0.0, seed=0)
    curves = {}
    for attention in ("auto", "model"):
        model = init_model(QWEN_HEAD32, char_tokenizer, seed=0)
        cfg = TrainConfig(epochs=None, max_steps=4, batch_size=4, lr=3e-3, log_every=1, attention=attention)
        out = tmp_path / attention
        summary = train_model(model, char_tokenizer, tmp_path / "d" / "train.safetensors", None, out, cfg, seed=0,
                              show_progress=False)
        assert summary["attention"] == ("reasondistill/attention.py" if attention == "auto" else "sdpa")
        with open(out / "metrics.csv") as fh:
            curves[attention] = [float(r["train_loss"]) for r in csv.DictReader(fh)]
        assert model.config._attn_implementation == "sdpa"
        assert NAME not in (out / "final" / "config.json").read_text()
        json.loads((out / "final" / "config.json").read_text())
    assert len(curves["auto"]) == 4
    assert curves["auto"] == pytest.approx(curves["model"], rel=1e-4)


@pytest.mark.parametrize("groups", [1, 2])
def test_decode_equals_sdpa_with_padding_and_gqa(groups):
    from reasondistill.attention import _decode

    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 4, 1, 16, generator=g)
    k, v = (torch.randn(3, 4 // groups, 40, 16, generator=g) for _ in range(2))
    allowed = torch.ones(3, 1, 1, 40, dtype=torch.bool)
    allowed[1, ..., :11] = False  # a left-padded row
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1),
                                         attn_mask=allowed)
    out, _ = _decode(q, k, v, allowed, 16 ** -0.5)
    torch.testing.assert_close(out, ref.transpose(1, 2), atol=1e-6, rtol=1e-5)
    unmasked, _ = _decode(q, k, v, None, 0.3)
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1), scale=0.3)
    torch.testing.assert_close(unmasked, ref.transpose(1, 2), atol=1e-6, rtol=1e-5)


def test_decode_steps_match_sdpa_logits(char_tokenizer):
    """Prefill a left-padded batch, then decode token by token with a KV cache: every step's logits
    through reasondistill/attention.py equal the model's sdpa."""
    from transformers import DynamicCache

    model = init_model(QWEN_GQA, char_tokenizer, seed=0).eval()
    ids, _ = _batch(t=12)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0

    def steps():
        cache, m, x, out = DynamicCache(config=model.config), mask, ids, []
        with torch.inference_mode():
            for _ in range(6):
                logits = model(input_ids=x, attention_mask=m, cache=cache, use_cache=True).logits[:, -1]
                out.append(logits)
                x = logits.argmax(-1, keepdim=True)
                m = torch.cat([m, torch.ones_like(x)], dim=1)
        return torch.stack(out)

    ref = steps()
    with fast_causal_attention(model):
        fast = steps()
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def test_generate_completions_decodes_bf16_through_it(char_tokenizer, monkeypatch, arith):
    """On transformers' generate path (here: streaming, which the lean decoder of decoder.py does not
    serve), a bf16 model on CPU decodes with _decode (fp32 keeps sdpa) and gets its attention back."""
    import reasondistill.attention as attention
    from reasondistill.prompts import render_prompts
    from reasondistill.teachers.sampling import SamplingParams, generate_completions

    calls = []
    real = attention._decode
    monkeypatch.setattr(attention, "_decode", lambda *a: calls.append(1) or real(*a))
    problems = arith.problems("test", 6, seed=0)
    prompts = render_prompts(char_tokenizer, [p.prompt for p in problems])
    params = SamplingParams(n=2, temperature=0.8, max_new_tokens=8, batch_size=4)
    for dtype, used in ((torch.float32, False), (torch.bfloat16, True)):
        model = init_model(LLAMA, char_tokenizer, seed=0).to(dtype)
        calls.clear()
        outs = [c for b in generate_completions(model, char_tokenizer, prompts, [p.id for p in problems], params,
                                                on_step=lambda rows, tokens: None) for c in b]
        assert len(outs) == 12 and bool(calls) == used
        assert model.config._attn_implementation == "sdpa"
