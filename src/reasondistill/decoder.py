"""A lean KV-cache decoder for Llama-family causal LMs (llama, qwen2, qwen3, mistral): the fast
path for rollouts (train/rollout.py) where transformers' ``generate`` spends most of its time in
Python bookkeeping rather than arithmetic.

Why: a policy-training step on a small student samples 64 rows of ~50 tokens. transformers'
``generate`` costs ~9 ms per decoding step on this machine for a 0.9M-parameter model whose
arithmetic takes ~1.5 ms (cache objects, mask builders, logits processors, stopping criteria, and
a dozen wrappers around every layer). This module runs the *model's own modules* (embedding,
norms, projections, MLP, rotary embedding, head) in a plain loop, with:

* a preallocated key/value cache per layer, written in place, read as a view of the filled part;
* left-padded prompts, positions from the attention mask (``cumsum - 1``, as ``generate`` does),
  a key-padding mask instead of a (T x T) mask when decoding one token;
* identical prompts (a GRPO group, several samples of one problem) prefilled once, their cache
  copied to every row that shares them;
* finished rows dropped from the batch as they end (the cache is compacted once a quarter of the
  rows are done), so a batch whose lengths vary costs what its tokens cost;
* a ``scores(step, logits, rows) -> scores`` hook (``rows``: the original row indices still
  decoding) and greedy choice over its output: with counter-based Gumbel noise
  (teachers/sampling.py) that is seeded sampling, a pure function of (row key, step), so the
  tokens match transformers' ``generate`` with the same logits processor.

Because it calls the modules rather than copying their weights, LoRA adapters (peft) and
quantized linears decode through it unchanged. Anything it does not know (sliding windows,
other architectures, soft-capping, rope variants applied outside the rotary module) is refused by
``unsupported(model)``, and the callers fall back to ``generate``.

    dec = Decoder(model)                       # raises ValueError naming what is unsupported
    dec = Decoder.for_model(model)             # or None, for callers that fall back to generate
    new = dec.generate(ids, attention_mask, max_new_tokens=64, eos_ids={2}, pad_id=0)  # (B, <=64)

Tests: tests/test_decoder.py (same tokens as ``generate``, greedy and sampled, llama / qwen2 /
qwen3 / GQA; LoRA in tests/train/test_policy_lora.py). Speed: ``bench/generate_throughput.py``
(``decoder_speedup_vs_generate``) and ``bench/rl_throughput.py``.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

FAMILY = ("llama", "qwen2", "qwen3", "mistral")
COMPACT_SHARE = 0.25  # drop finished rows once this share of the live batch has ended


def _base(model):
    """The ``*ForCausalLM`` under a peft wrapper (adapters stay in its modules)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def unsupported(model) -> str | None:
    """Why :class:`Decoder` cannot run ``model`` (one phrase), or None when it can."""
    m = _base(model)
    if not isinstance(m, torch.nn.Module):  # e.g. a wrapper that adds logits processors to generate
        return f"{type(m).__name__} is not a torch module"
    cfg = getattr(m, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind not in FAMILY:
        return f"model_type {kind!r} is not one of {', '.join(FAMILY)}"
    inner = getattr(m, "model", None)
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if inner is None or not all(hasattr(inner, a) for a in needed) or not hasattr(m, "lm_head"):
        return "the model does not have the llama layout (model.embed_tokens/layers/norm/rotary_emb, lm_head)"
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
        return "sliding-window layers"
    if kind == "mistral" and getattr(cfg, "sliding_window", None):
        return "a sliding window"
    if getattr(cfg, "pretraining_tp", 1) not in (None, 1):
        return "pretraining_tp > 1"
    for layer in inner.layers:
        attn = layer.self_attn
        if not all(hasattr(attn, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling")):
            return "an attention module without q/k/v/o projections"
        if not hasattr(layer, "mlp") or not hasattr(layer, "input_layernorm"):
            return "a decoder layer without mlp / input_layernorm"
    return None


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Decoder:
    """Batched greedy-over-scores decoding with a static KV cache; see the module docstring."""

    def __init__(self, model):
        why = unsupported(model)
        if why:
            raise ValueError(f"the fast decoder cannot run this model: {why}")
        self.model = _base(model)
        self.inner = self.model.model
        cfg = self.model.config
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = self.inner.layers[0].self_attn.head_dim

    @classmethod
    def for_model(cls, model) -> "Decoder | None":
        """A decoder for ``model``, or None when :func:`unsupported` names a reason (the caller then
        decodes with transformers' ``generate``)."""
        return None if unsupported(model) else cls(model)

    # -- one forward over new tokens, appending to the cache -------------------------------------
    def _forward(self, ids: torch.Tensor, pos: torch.Tensor, keymask: torch.Tensor, t0: int,
                 cache: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """``ids`` (B, T) at cache slots [t0, t0 + T); ``pos`` (B, T) positions; ``keymask`` (B, t0 + T)
        True where a slot holds a real token. Returns the last position's logits (B, V)."""
        b, t = ids.shape
        h = self.inner.embed_tokens(ids)
        cos, sin = self.inner.rotary_emb(h, pos)
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, D)
        end = t0 + t
        masked = ~keymask[:, None, None, :]  # (B, 1, 1, t0 + T)
        if t > 1:  # causal within the new tokens; a padding query sees itself only (no all -inf row)
            causal = torch.ones(t, end, dtype=torch.bool, device=ids.device).triu_(t0 + 1)
            own = torch.zeros(t, end, dtype=torch.bool, device=ids.device)
            own[torch.arange(t), t0 + torch.arange(t)] = True
            masked = (masked | causal[None, None]) & ~own[None, None]
        bias = torch.zeros(masked.shape, dtype=h.dtype, device=ids.device).masked_fill_(masked, float("-inf"))
        rep = self.n_heads // self.n_kv
        for layer, (kc, vc) in zip(self.inner.layers, cache):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            q = attn.q_proj(x).view(b, t, -1, self.head_dim)
            k = attn.k_proj(x).view(b, t, -1, self.head_dim)
            v = attn.v_proj(x).view(b, t, -1, self.head_dim)
            if hasattr(attn, "q_norm"):  # qwen3
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            kc[:, :, t0:end] = k
            vc[:, :, t0:end] = v
            keys, vals = kc[:, :, :end], vc[:, :, :end]
            if rep > 1:  # grouped-query heads: (B, KV, rep * T, D) against the shared K/V
                qg = q.reshape(b, self.n_kv, rep * t, self.head_dim)
                s = (qg @ keys.transpose(-1, -2)) * attn.scaling
                s = s.view(b, self.n_kv, rep, t, end) + bias[:, :, None]
                p = torch.softmax(s.float(), dim=-1).to(q.dtype).view(b, self.n_kv, rep * t, end)
                o = (p @ vals).view(b, self.n_heads, t, self.head_dim)
            else:
                s = (q @ keys.transpose(-1, -2)) * attn.scaling + bias
                o = torch.softmax(s.float(), dim=-1).to(q.dtype) @ vals
            o = attn.o_proj(o.transpose(1, 2).reshape(b, t, -1))
            h = h + o
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        last = self.inner.norm(h[:, -1:])
        return self.model.lm_head(last)[:, 0]

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, eos_ids: Iterable[int],
                 pad_id: int, scores: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                 ) -> torch.Tensor:
        """New tokens (B, N <= max_new_tokens) for left-padded ``ids`` (B, W); a row that ended is
        padded with ``pad_id`` after its end-of-sequence token, as ``generate`` pads."""
        model = self.model
        was_training = model.training
        model.eval()
        try:
            return self._generate(ids, attention_mask.bool(), max_new_tokens, list(eos_ids), pad_id, scores)
        finally:
            model.train(was_training)

    def _generate(self, ids, keymask, max_new, eos, pad_id, scores) -> torch.Tensor:
        device = next(self.model.parameters()).device
        dtype = self.inner.embed_tokens.weight.dtype
        ids, keymask = ids.to(device), keymask.to(device)
        b, w = ids.shape
        total = w + max_new
        cache = [(torch.empty(b, self.n_kv, total, self.head_dim, dtype=dtype, device=device),
                  torch.empty(b, self.n_kv, total, self.head_dim, dtype=dtype, device=device))
                 for _ in self.inner.layers]
        slots = torch.zeros(b, total, dtype=torch.bool, device=device)
        slots[:, :w] = keymask
        pos = (keymask.long().cumsum(-1) - 1).masked_fill_(~keymask, 0)
        out = torch.full((b, max_new), pad_id, dtype=torch.long, device=device)
        rows = torch.arange(b, device=device)  # original index of each live row
        eos_t = torch.tensor(eos, dtype=torch.long, device=device)
        # identical prompts (a GRPO group, n samples of one problem) are read once, then their cache copied
        uniq, inverse = torch.unique(torch.cat([ids, keymask.long()], 1), dim=0, return_inverse=True)
        if len(uniq) < b:
            first = torch.full((len(uniq),), b, dtype=torch.long, device=device).scatter_reduce_(
                0, inverse, torch.arange(b, device=device), "amin")  # a row holding each distinct prompt
            part = [(kc[:len(uniq)], vc[:len(uniq)]) for kc, vc in cache]
            logits = self._forward(ids[first], pos[first], slots[first, :w], 0, part)[inverse]
            for (kc, vc), (pk, pv) in zip(cache, part):
                kc[:, :, :w] = pk[inverse, :, :w]
                vc[:, :, :w] = pv[inverse, :, :w]
        else:
            logits = self._forward(ids, pos, slots[:, :w], 0, cache)
        nxt_pos = pos[:, -1] + 1
        alive = torch.ones(b, dtype=torch.bool, device=device)  # per live-batch row: not ended yet
        n = 0
        for step in range(max_new):
            sc = scores(step, logits, rows) if scores is not None else logits
            tok = sc.argmax(-1)
            out[rows[alive], step] = tok[alive]
            n = step + 1
            alive &= ~torch.isin(tok, eos_t)
            n_alive = int(alive.sum())
            if n_alive == 0 or n == max_new:
                break
            if n_alive <= (1 - COMPACT_SHARE) * len(rows):  # drop the ended rows from the batch
                keep = alive.nonzero().squeeze(1)
                cache = [(kc.index_select(0, keep), vc.index_select(0, keep)) for kc, vc in cache]
                slots, rows, tok, nxt_pos, alive = slots[keep], rows[keep], tok[keep], nxt_pos[keep], alive[keep]
            slot = w + step
            slots[:, slot] = True
            logits = self._forward(tok[:, None], nxt_pos[:, None], slots[:, :slot + 1], slot, cache)
            nxt_pos = nxt_pos + 1
        return out[:, :n]
