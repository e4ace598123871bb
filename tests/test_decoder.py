"""The lean KV-cache decoder (reasondistill/decoder.py) gives the tokens transformers' ``generate``
gives: greedy and counter-sampled, left-padded prompts of different lengths, rows ending at
different steps (so the batch is compacted), llama / qwen2 with grouped-query heads and biases /
qwen3 with q/k norms, on fused weights and through the layers' own modules alike; unsupported
models are named and the rollout engine falls back."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig, LogitsProcessorList

from reasondistill.decoder import COMPACT_SHARE, Decoder, fused_plan, unsupported
from reasondistill.models import init_model
from reasondistill.teachers.sampling import CounterSampler

# initializer_range 0.3: context-dependent logits, so greedy rows differ and end at different steps
SPECS = {
    "llama": {"architecture": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
              "intermediate_size": 64, "max_position_embeddings": 256, "initializer_range": 0.3},
    "qwen2_gqa": {"architecture": "qwen2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "intermediate_size": 96, "max_position_embeddings": 256,
                  "initializer_range": 0.3},
    # every projection with a bias: the fused q|k|v and gate|up biases, addmm plus the o/down biases
    "llama_bias": {"architecture": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                   "intermediate_size": 64, "max_position_embeddings": 256, "initializer_range": 0.3,
                   "attention_bias": True, "mlp_bias": True},
}


def _model(kind: str, tokenizer):
    if kind == "qwen3":
        import transformers

        cfg = transformers.Qwen3Config(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                                       intermediate_size=96, max_position_embeddings=256, initializer_range=0.3,
                                       pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
        torch.manual_seed(3)
        return transformers.AutoModelForCausalLM.from_config(cfg).eval()
    model = init_model(SPECS[kind], tokenizer, seed=1).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # biases start at zero: make them matter, so a dropped bias is caught
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def _prompts(pad: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lens = [3, 9, 6, 1, 12, 7, 4, 10, 2, 8, 5, 11]
    width = max(lens)
    ids = torch.full((len(lens), width), pad)
    mask = torch.zeros_like(ids)
    for r, n in enumerate(lens):  # left padding, as the callers pad
        ids[r, width - n:] = torch.randint(41, 60, (n,), generator=g)
        mask[r, width - n:] = 1
    return ids, mask


def _reference(model, ids, mask, max_new, sampler, pad, eos):
    cfg = GenerationConfig(max_new_tokens=max_new, do_sample=False, num_beams=1, eos_token_id=eos,
                           pad_token_id=pad, use_cache=True, temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg,
                             logits_processor=LogitsProcessorList([sampler] if sampler else []))
    return out[:, ids.shape[1]:]


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("kind", ["llama", "qwen2_gqa", "qwen3"])
@pytest.mark.parametrize("temperature", [0.0, 1.3])
def test_same_tokens_as_generate(kind, temperature, fuse, char_tokenizer):
    model = _model(kind, char_tokenizer)
    pad = char_tokenizer.pad_token_id
    ids, mask = _prompts(pad)
    keys = torch.arange(len(ids), dtype=torch.int64) * 7919 + 11
    sampler = CounterSampler(keys, ids.shape[1], temperature, 1.0) if temperature else None
    free = _reference(model, ids, mask, 40, sampler, pad, eos=[]).tolist()
    # end tokens taken from the free run at different steps, so rows end at different steps
    eos = sorted({row[4 + 3 * r] for r, row in enumerate(free)})
    want = _reference(model, ids, mask, 40, sampler, pad, eos)
    assert (fused_plan(model) is not None) and fuse == Decoder(model, fuse=fuse).fuse
    got = Decoder(model, fuse=fuse).generate(ids, mask, 40, eos, pad, sampler.at if sampler else None)
    assert torch.equal(got, want)
    ends = [next((j for j, t in enumerate(row) if t in eos), None) for row in got.tolist()]
    assert len(set(ends)) >= 2  # rows ended at different steps (or not at all): the compaction path ran


@pytest.mark.parametrize("rope", [{"rope_type": "linear", "factor": 2.0}, {"rope_type": "dynamic", "factor": 2.0}])
def test_scaled_rope_same_tokens_as_generate(rope, char_tokenizer):
    """cos/sin come from a table made once (static rope types) or from the rotary module at every step
    (dynamic: its frequencies change once the sequence outgrows the 16 trained positions)."""
    spec = {**SPECS["llama"], "max_position_embeddings": 16, "rope_parameters": {"rope_theta": 10000.0, **rope}}
    model = init_model(spec, char_tokenizer, seed=1).eval()
    assert model.model.rotary_emb.rope_type == rope["rope_type"]
    pad = char_tokenizer.pad_token_id
    ids, mask = _prompts(pad)
    sampler = CounterSampler(torch.arange(len(ids), dtype=torch.int64) * 31 + 5, ids.shape[1], 1.3, 1.0)
    want = _reference(model, ids, mask, 30, sampler, pad, eos=[])
    table = Decoder(model)._rope_table(8, model.model.embed_tokens.weight[:1])
    assert (table is None) == (rope["rope_type"] == "dynamic")
    assert torch.equal(Decoder(model).generate(ids, mask, 30, [], pad, sampler.at), want)


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("kind", ["qwen2_gqa", "qwen3", "llama_bias"])
def test_logits_match_a_full_forward(kind, fuse, char_tokenizer):
    """The cached decode's last-position logits equal the model's own forward over the whole row."""
    model = _model(kind, char_tokenizer)
    ids, mask = _prompts(char_tokenizer.pad_token_id, seed=1)
    seen = []

    def record(step, logits, rows):
        seen.append((step, logits.clone(), rows.clone()))
        return logits

    new = Decoder(model, fuse=fuse).generate(ids, mask, 6, [], char_tokenizer.pad_token_id, record)
    full = torch.cat([ids, new], 1)
    fmask = torch.cat([mask, torch.ones_like(new)], 1)
    pos = (fmask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = model(input_ids=full, attention_mask=fmask, position_ids=pos).logits
    w = ids.shape[1]
    for step, logits, rows in seen:
        torch.testing.assert_close(logits, ref[rows, w - 1 + step], rtol=1e-4, atol=1e-5)


def test_fused_weights_only_for_plain_modules(char_tokenizer, monkeypatch):
    """A LoRA layer or any other wrapped projection keeps the module path (its adapter must run),
    and so does a model whose fused copies would be too large."""
    import reasondistill.decoder as decoder
    from reasondistill.config import LoraConfig
    from reasondistill.train.lora import apply_lora

    model = _model("llama", char_tokenizer)
    assert fused_plan(model) is not None
    lora = apply_lora(_model("llama", char_tokenizer), LoraConfig(r=2, target_modules=["v_proj"]), seed=0)
    assert fused_plan(lora) is None and Decoder(lora).generate(*_prompts(0), 3, [], 0).shape == (12, 3)
    monkeypatch.setattr(decoder, "FUSE_MAX_BYTES", 1000)
    assert fused_plan(model) is None


def test_compaction_share_is_a_fraction():
    assert 0 < COMPACT_SHARE < 1


def test_unsupported_models_are_named_and_rollouts_fall_back(char_tokenizer):
    import transformers

    from reasondistill.train.rollout import HFRollout

    cfg = transformers.GPT2Config(vocab_size=len(char_tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=128,
                                  pad_token_id=char_tokenizer.pad_token_id, eos_token_id=char_tokenizer.eos_token_id)
    torch.manual_seed(0)
    gpt2 = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    assert "gpt2" in unsupported(gpt2)
    with pytest.raises(ValueError, match="gpt2"):
        Decoder(gpt2)
    prompts = [[41, 42, 43], [44, 45]]
    auto = HFRollout(gpt2, char_tokenizer).generate(prompts, [1, 2], 1.0, 8)
    forced = HFRollout(gpt2, char_tokenizer, decoder="generate").generate(prompts, [1, 2], 1.0, 8)
    assert [r.completion for r in auto] == [r.completion for r in forced]


def test_rollout_engine_gives_the_same_rollouts_through_either_decoder(char_tokenizer):
    from reasondistill.train.rollout import HFRollout

    model = _model("llama", char_tokenizer)
    prompts = [[41, 42, 43], [44, 45], [46, 47, 48, 49, 50]] * 2
    keys = list(range(100, 106))
    free = HFRollout(model, char_tokenizer, eos_ids=[0]).generate(prompts, keys, 1.0, 24)
    eos = sorted({r.completion[3 + 3 * i] for i, r in enumerate(free)})
    lean = HFRollout(model, char_tokenizer, eos_ids=eos).generate(prompts, keys, 1.0, 24)
    ref = HFRollout(model, char_tokenizer, eos_ids=eos, decoder="generate").generate(prompts, keys, 1.0, 24)
    assert [(r.completion, r.finish_reason, r.text) for r in lean] == [(r.completion, r.finish_reason, r.text)
                                                                       for r in ref]
    assert len({len(r.completion) for r in lean}) >= 2


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_teacher_sampling_gives_the_same_completions_through_either_decoder(top_p, char_tokenizer, arith):
    """generate_completions (teacher traces, evaluation): the lean decoder and transformers' generate
    give the same completions, top-p included, several samples per prompt, several batches."""
    from reasondistill.prompts import render_prompts
    from reasondistill.teachers.sampling import SamplingParams, generate_completions

    model = _model("llama", char_tokenizer)
    problems = arith.problems("test", 7, seed=2)
    prompts = render_prompts(char_tokenizer, [p.prompt for p in problems])
    params = SamplingParams(n=2, temperature=1.1, top_p=top_p, max_new_tokens=24, batch_size=6)

    def run(decoder):
        return [(c.index, c.sample, c.tokens, c.finish_reason, c.completion_tokens) for b in generate_completions(
            model, char_tokenizer, prompts, [p.id for p in problems], params, decoder=decoder) for c in b]

    lean, ref = run("auto"), run("generate")
    assert lean == ref and len(lean) == 14
    assert len({len(t) for _, _, t, _, _ in lean}) > 1  # not every row ran to the limit


def test_shared_prompts_are_prefilled_once_with_the_same_result(char_tokenizer):
    """Rows repeating a prompt (a GRPO group) share one prefill: the same tokens as decoding every
    row on its own (checked against transformers' generate), with fewer rows in the prefill."""
    model = _model("qwen2_gqa", char_tokenizer)
    pad = char_tokenizer.pad_token_id
    ids, mask = _prompts(pad, seed=3)
    ids, mask = ids[:3].repeat_interleave(4, 0), mask[:3].repeat_interleave(4, 0)  # 3 prompts x 4 samples
    keys = torch.arange(len(ids), dtype=torch.int64) * 104729 + 5
    sampler = CounterSampler(keys, ids.shape[1], 1.2, 1.0)
    dec = Decoder(model)
    prefill_rows = []
    real = dec._forward
    dec._forward = lambda i, *a: prefill_rows.append(len(i)) or real(i, *a)
    got = dec.generate(ids, mask, 20, [], pad, sampler.at)
    assert prefill_rows[0] == 3 and prefill_rows[1] == 12
    assert torch.equal(got, _reference(model, ids, mask, 20, sampler, pad, eos=[]))
    assert len({tuple(r) for r in got.tolist()}) > 3  # the samples of a prompt differ
