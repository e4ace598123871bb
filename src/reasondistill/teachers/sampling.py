"""Batched generation with a local Hugging Face model: left padding, KV cache, reproducible sampling.

Why: teacher trace generation and evaluation both decode many prompts at once. Sampling here is
*counter-based*: the random draw for row (problem, sample) at step t is a hash of
(seed, problem, sample, t), applied as Gumbel noise on top of greedy decoding. So a sample does not
depend on which batch it landed in, its order, or whether the run was resumed: an interrupted
and restarted generation writes the same traces as an uninterrupted one. Temperature 0 is greedy.

    outs = generate_completions(model, tokenizer, prompts, keys, SamplingParams(n=4, temperature=0.8))
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field

from reasondistill.attention import fast_causal_attention

_MASK64 = (1 << 64) - 1


def _signed(x: int) -> int:
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


_C0, _C1, _C2 = _signed(0x9E3779B97F4A7C15), _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = Field(1, gt=0, description="samples per problem")
    temperature: float = Field(0.0, ge=0, description="0 means greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(256, gt=0)
    batch_size: int = Field(64, gt=0, description="sequences decoded together")
    seed: int = 0


def row_key(seed: int, problem_id: str, sample: int) -> int:
    digest = hashlib.blake2b(f"{seed}\x00{problem_id}\x00{sample}".encode(), digest_size=8).digest()
    return _signed(int.from_bytes(digest, "little"))


def _shr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch shifts signed values arithmetically)."""
    out = z >> k
    return out.bitwise_and_((1 << (64 - k)) - 1)


@functools.lru_cache(maxsize=8)
def _lanes(vocab: int, device: str = "cpu") -> torch.Tensor:
    """``index * C1`` per vocabulary entry: the same every step, so made once per vocabulary size."""
    return torch.arange(vocab, dtype=torch.int64, device=device) * _C1


def _uniform(base: torch.Tensor, lanes: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser over ``base[:, None] + lanes`` (int64, overflow wraps), in place, as
    float32 in (0, 1)."""
    z = lanes + base[:, None]
    z.bitwise_xor_(_shr(z, 30)).mul_(_C1)
    z.bitwise_xor_(_shr(z, 27)).mul_(_C2)
    z.bitwise_xor_(_shr(z, 31))
    return _shr(z, 11).double().add_(0.5).div_(float(1 << 53)).float()


def _step_base(keys: torch.Tensor, step: int) -> torch.Tensor:
    return keys + _signed((step + 1) * _C0)  # int64: the sum's order does not matter (it wraps)


def counter_uniform(keys: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    """Uniform(0,1) float32 noise of shape (len(keys), vocab); a pure function of (key, step, index)."""
    return _uniform(_step_base(keys, step), _lanes(vocab, str(keys.device)))


NOISE_BLOCK = 4096  # vocabulary columns per block: a block's dozen int64 passes stay in cache


def add_gumbel(logits: torch.Tensor, keys: torch.Tensor, step: int) -> torch.Tensor:
    """``logits - log(-log(counter_uniform(keys, step, V)))`` written into ``logits`` (R, V), so its
    argmax is a sample of softmax(logits). Made where the logits are (float64 is needed: on Apple's
    mps, which has none, on the CPU) in blocks of ``NOISE_BLOCK`` columns, so each block's passes stay in
    cache: at a 152K vocabulary, 64 rows, 1 thread, 8-10x the former whole-row sampler (0.12-0.15 s a
    step instead of 1.1 s; ``bench/sampler_noise.py``), and on a GPU no host round trip. The same numbers."""
    device = logits.device if logits.device.type != "mps" else torch.device("cpu")
    base = _step_base(keys.to(device), step)
    lanes = _lanes(logits.shape[-1], str(device))
    for a in range(0, logits.shape[-1], NOISE_BLOCK):
        g = _uniform(base, lanes[a:a + NOISE_BLOCK]).log_().neg_().log_()
        logits[:, a:a + NOISE_BLOCK].sub_(g.to(logits.device))
    return logits


class CounterSampler:
    """A logits processor that turns greedy decoding into seeded sampling (temperature, top-p)."""

    def __init__(self, keys: torch.Tensor, prompt_width: int, temperature: float, top_p: float):
        self.keys, self.width, self.temperature, self.top_p = keys, prompt_width, temperature, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return self.at(input_ids.shape[1] - self.width, scores)

    def at(self, step: int, scores: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The perturbed scores of decoding step ``step`` (0 = the first new token) for the batch
        rows ``rows`` (indices into ``keys``; all rows when None): their argmax is the sample."""
        keys = self.keys if rows is None else self.keys[rows.cpu()]
        logits = scores.float() / self.temperature
        if self.top_p < 1.0:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            probs = sorted_logits.softmax(-1)
            drop_sorted = probs.cumsum(-1) - probs > self.top_p  # keep the smallest set reaching top_p
            logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
        return add_gumbel(logits, keys, step)  # ``logits`` is a fresh tensor


@dataclass
class Completion:
    index: int  # position in the caller's prompt list
    sample: int
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"
    error: str | None = None  # why nothing was decoded (a prompt longer than the model's context)
    tokens: list[int] | None = None  # the decoded token ids (without the end-of-sequence token)


class StepTap:
    """A logits processor that changes nothing: at each decoding step it hands the token each row
    generated at the previous step to ``on_step(rows, tokens)`` (``rows``: (prompt index, sample)
    per batch row). Lets a server stream tokens while a whole batch decodes; the last token of a
    row arrives with the finished Completion, not here."""

    def __init__(self, rows: list[tuple[int, int]], prompt_width: int, on_step):
        self.rows, self.width, self.on_step = rows, prompt_width, on_step

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] > self.width:
            self.on_step(self.rows, input_ids[:, -1].tolist())
        return scores


def generate_completions(model, tokenizer, prompts: Sequence[str], keys: Sequence[str],
                         params: SamplingParams, eos_ids: Sequence[int] | None = None,
                         on_step=None, decoder: str = "auto") -> Iterator[list[Completion]]:
    """Decode ``params.n`` completions for every rendered prompt, one batch at a time.

    ``prompts`` are already rendered with the chat template; ``keys`` (e.g. problem ids) seed the
    sampling. Prompts are sorted by length so each batch pads little. Yields the completions of
    one batch, all samples of a prompt together, so a caller can write and checkpoint per batch.
    ``on_step``: see :class:`StepTap` (streaming). Llama-family models decode through the lean
    decoder of reasondistill/decoder.py (the same tokens, less per-step overhead); streaming and
    other models through transformers' ``generate`` (``decoder="generate"``: always, for comparisons).
    """
    from transformers import GenerationConfig, LogitsProcessorList

    if tokenizer.padding_side != "left":
        tokenizer.padding_side = "left"
    eos = list(eos_ids) if eos_ids else [tokenizer.eos_token_id]
    device = next(model.parameters()).device
    model.eval()
    # a bf16 model on CPU decodes through reasondistill/attention.py: sdpa's CPU kernel is slow for one
    # query against the cache in bf16 (1.25-1.5x end to end at 64-256 rows, bench/generate_throughput.py); in fp32 it
    # is as fast as ours at head_dim 32 and faster at head_dim 12, so fp32 keeps sdpa
    fast = device.type == "cpu" and next(model.parameters()).dtype == torch.bfloat16
    encoded = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    too_long = [i for i in range(len(prompts)) if context and len(encoded[i]) >= context]
    if too_long:  # nothing to decode (and no hours spent attending over them): "length" at 0 tokens
        yield [Completion(index=i, sample=s, text="", prompt_tokens=len(encoded[i]), completion_tokens=0,
                          finish_reason="length", error=f"the prompt is {len(encoded[i])} tokens; the model's "
                          f"context is {context}") for i in too_long for s in range(params.n)]
    skip = set(too_long)
    order = sorted((i for i in range(len(prompts)) if i not in skip), key=lambda i: -len(encoded[i]))
    per_batch = max(1, params.batch_size // params.n)
    gen_cfg = GenerationConfig(max_new_tokens=params.max_new_tokens, do_sample=False, num_beams=1,
                               eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, use_cache=True,
                               temperature=None, top_p=None, top_k=None)
    from reasondistill.decoder import Decoder

    lean = Decoder.for_model(model) if decoder == "auto" and on_step is None else None  # None: generate
    for start in range(0, len(order), per_batch):
        chunk = order[start:start + per_batch]
        rows = [(i, s) for i in chunk for s in range(params.n)]
        batch = tokenizer.pad({"input_ids": [encoded[i] for i, _ in rows]}, return_tensors="pt")
        width = batch["input_ids"].shape[1]
        processors = LogitsProcessorList()
        sampler = None
        if params.temperature > 0:
            kt = torch.tensor([row_key(params.seed, keys[i], s) for i, s in rows], dtype=torch.int64)
            sampler = CounterSampler(kt, width, params.temperature, params.top_p)
            processors.append(sampler)
        if on_step is not None:
            processors.append(StepTap(rows, width, on_step))
        if lean is not None:  # the lean decoder (reasondistill/decoder.py): the same tokens
            with torch.inference_mode():
                new = lean.generate(batch["input_ids"], batch["attention_mask"], params.max_new_tokens, eos,
                                       tokenizer.pad_token_id, sampler.at if sampler else None).tolist()
        else:
            with torch.inference_mode(), fast_causal_attention(model, enabled=fast):
                out = model.generate(input_ids=batch["input_ids"].to(device),
                                     attention_mask=batch["attention_mask"].to(device),
                                     generation_config=gen_cfg, logits_processor=processors)
            new = out[:, width:].tolist()
        results = []
        for (i, s), toks in zip(rows, new):
            stop = next((j for j, t in enumerate(toks) if t in eos), None)
            kept = toks if stop is None else toks[:stop]
            results.append(Completion(index=i, sample=s,
                                      text=tokenizer.decode(kept, skip_special_tokens=True),
                                      prompt_tokens=len(encoded[i]),
                                      completion_tokens=len(kept) + (stop is not None),
                                      finish_reason="length" if stop is None else "stop", tokens=kept))
        yield results
