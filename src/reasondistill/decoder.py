"""A lean KV-cache decoder for Llama-family causal LMs (llama, qwen2, qwen3, mistral): the fast
path for rollouts (train/rollout.py) where transformers' ``generate`` spends most of its time in
Python bookkeeping rather than arithmetic.

Why: a policy-training step on a small student samples 64 rows of ~50 tokens. transformers'
``generate`` costs ~9 ms per decoding step on this machine for a 0.9M-parameter model whose
arithmetic takes ~1.5 ms (cache objects, mask builders, logits processors, stopping criteria, and
a dozen wrappers around every layer). This module runs the *model's own modules* (embedding,
norms, projections, MLP, rotary embedding, head) in a plain loop, with:

* a preallocated key/value cache per layer, written in place, read as a view of the filled part,
  keys stored transposed (B, KV, D, S) so the scores are a plain batched matmul (a transposed view
  of the filled part cost ~2x in that matmul);
* rotary cos/sin looked up by position in a table made once per ``generate`` by the model's own
  rotary module (not for length-dependent rope types), the padding bias kept between steps, and
  ``inference_mode`` throughout (with the cache layout: the small students' rollouts of
  bench/rl_throughput.py 20-29% faster, the bundled teacher's generation unchanged);
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

For a model of plain ``nn.Linear`` projections and Llama RMSNorms it runs each layer on fused
copies of its weights (q|k|v in one matrix, gate|up in another, residual adds folded into
``addmm``; :func:`fused_plan`): about half the small ops per decoding step, 10% off a rollout of
the bundled teacher. Anything else (a LoRA adapter, a quantized linear) runs through the layer's
own modules, so peft adapters and torchao linears decode through it unchanged. Anything it does
not know (sliding windows, other architectures, soft-capping, rope variants applied outside the
rotary module) is refused by ``unsupported(model)``, and the callers fall back to ``generate``.

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


_NORMS = {"LlamaRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "MistralRMSNorm"}
_MLPS = {"LlamaMLP", "Qwen2MLP", "Qwen3MLP", "MistralMLP"}
FUSE_MAX_BYTES = 256 * 2 ** 20  # fused copies of q|k|v and gate|up above this: call the modules instead


def _plain_linear(m) -> bool:
    """An ``nn.Linear`` with an ordinary weight: not a peft layer, not a torchao-quantized tensor."""
    return type(m) is torch.nn.Linear and type(m.weight) is torch.nn.Parameter


def _plain_norm(m) -> bool:
    return type(m).__name__ in _NORMS and type(m.weight) is torch.nn.Parameter and hasattr(m, "variance_epsilon")


def _norm(m) -> tuple[torch.Tensor, float]:
    return m.weight, m.variance_epsilon


def _same_bias(*linears) -> bool:
    """All with a bias or all without (their fused matrix then has one bias or none)."""
    return len({x.bias is None for x in linears}) == 1


def _rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """Rotary embedding with ``rotate_half(x) * sin`` written as ``roll(x, D/2) * sin_signed`` (sin
    with its first half negated): one op fewer."""
    return x * cos + x.roll(x.shape[-1] // 2, -1) * sin_signed


def _rms(x: torch.Tensor, norm: tuple[torch.Tensor, float]) -> torch.Tensor:
    """transformers' Llama RMSNorm (fp32 statistics, weight applied in the input dtype)."""
    w, eps = norm
    if x.dtype == torch.float32:
        return torch.nn.functional.rms_norm(x, (x.shape[-1],), w, eps)
    y = x.float()
    return w * (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _softmax(s: torch.Tensor) -> torch.Tensor:
    return torch.softmax(s, -1) if s.dtype == torch.float32 else torch.softmax(s.float(), -1).to(s.dtype)


def _residual(h: torch.Tensor, x: torch.Tensor, w_t: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``h + x @ w_t (+ b)``: a projection and its residual add in one call."""
    out = torch.addmm(h, x, w_t)
    return out if b is None else out + b


class _Fused:
    """One decoder layer's weights for decoding: q|k|v in one matrix, gate|up in another, the
    output projections as transposed views (a few hundred fewer small ops per decoding step)."""

    def __init__(self, layer):
        a, m = layer.self_attn, layer.mlp
        cat = lambda *ps: None if ps[0] is None else torch.cat(ps)  # noqa: E731
        self.norm1, self.norm2 = _norm(layer.input_layernorm), _norm(layer.post_attention_layernorm)
        self.q_norm = _norm(a.q_norm) if hasattr(a, "q_norm") else None
        self.k_norm = _norm(a.k_norm) if hasattr(a, "k_norm") else None
        self.w_qkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
        self.b_qkv = cat(a.q_proj.bias, a.k_proj.bias, a.v_proj.bias)
        self.w_o_t, self.b_o = a.o_proj.weight.t(), a.o_proj.bias
        self.w_gu, self.b_gu = torch.cat([m.gate_proj.weight, m.up_proj.weight]), cat(m.gate_proj.bias, m.up_proj.bias)
        self.w_d_t, self.b_d = m.down_proj.weight.t(), m.down_proj.bias
        self.act_fn = m.act_fn
        self.silu = type(m.act_fn).__name__ in ("SiLU", "SiLUActivation")
        self.scaling = a.scaling

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.w_qkv, self.b_qkv)

    def o(self, x: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
        return _residual(resid, x, self.w_o_t, self.b_o)

    def act(self, x: torch.Tensor) -> torch.Tensor:
        g, u = torch.nn.functional.linear(x, self.w_gu, self.b_gu).chunk(2, -1)
        return (torch.nn.functional.silu(g) if self.silu else self.act_fn(g)) * u

    def down(self, x: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
        return _residual(resid, x, self.w_d_t, self.b_d)


def fused_plan(model) -> "list[_Fused] | None":
    """Fused per-layer weights for :meth:`Decoder._forward`, or None (then the layers' own modules
    run): for plain ``nn.Linear`` projections, Llama RMSNorms and gated MLPs only, so a LoRA
    adapter or a quantized linear is never bypassed, and only while the copies stay small."""
    m = _base(model)
    layers = m.model.layers
    for layer in layers:
        a, mlp = layer.self_attn, layer.mlp
        if type(mlp).__name__ not in _MLPS:
            return None
        linears = [a.q_proj, a.k_proj, a.v_proj, a.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
        norms = [layer.input_layernorm, layer.post_attention_layernorm] + \
            ([a.q_norm, a.k_norm] if hasattr(a, "q_norm") else [])
        if not all(map(_plain_linear, linears)) or not all(map(_plain_norm, norms)) or \
                not _same_bias(a.q_proj, a.k_proj, a.v_proj) or not _same_bias(mlp.gate_proj, mlp.up_proj):
            return None
    fused_bytes = sum((x.self_attn.q_proj.weight.numel() + x.self_attn.k_proj.weight.numel()
                       + x.self_attn.v_proj.weight.numel() + 2 * x.mlp.gate_proj.weight.numel())
                      * x.mlp.gate_proj.weight.element_size() for x in layers)
    if fused_bytes > FUSE_MAX_BYTES:
        return None
    return [_Fused(layer) for layer in layers]


def _prompt_bias(keymask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The attention bias (B, 1, W, W), 0 or -inf, of left-padded prompts ``keymask`` (B, W): causal
    over the real tokens; a padding query sees itself only (no all -inf row)."""
    w = keymask.shape[1]
    masked = ~keymask[:, None, None, :] | torch.ones(w, w, dtype=torch.bool, device=keymask.device).triu_(1)
    masked &= ~torch.eye(w, dtype=torch.bool, device=keymask.device)
    return torch.zeros(masked.shape, dtype=dtype, device=keymask.device).masked_fill_(masked, float("-inf"))


class Decoder:
    """Batched greedy-over-scores decoding with a static KV cache; see the module docstring."""

    def __init__(self, model, fuse: bool = True):
        why = unsupported(model)
        if why:
            raise ValueError(f"the fast decoder cannot run this model: {why}")
        self.model = _base(model)
        self.inner = self.model.model
        cfg = self.model.config
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = self.inner.layers[0].self_attn.head_dim
        self.fuse = fuse  # False: always through the layers' own modules (tests compare the two paths)

    @classmethod
    def for_model(cls, model) -> "Decoder | None":
        """A decoder for ``model``, or None when :func:`unsupported` names a reason (the caller then
        decodes with transformers' ``generate``)."""
        return None if unsupported(model) else cls(model)

    # -- one forward over new tokens, appending to the cache -------------------------------------
    def _forward(self, ids: torch.Tensor, pos: torch.Tensor, bias: torch.Tensor, t0: int,
                 cache: list[tuple[torch.Tensor, torch.Tensor]], plan: "list[_Fused] | None" = None,
                 rope: "tuple[torch.Tensor, torch.Tensor] | None" = None) -> torch.Tensor:
        """``ids`` (B, T) at cache slots [t0, t0 + T); ``pos`` (B, T) positions; ``bias`` (B, 1, T, t0 + T)
        the attention bias, 0 or -inf (:func:`_prompt_bias` for the prompt; one row per new token after
        it). Returns the last position's logits (B, V). With ``plan`` (:func:`fused_plan`) the layers
        run on fused weights, else through their own modules; with ``rope`` (:meth:`_rope_table`)
        cos/sin are looked up by position instead of computed."""
        b, t = ids.shape
        h = self.inner.embed_tokens(ids)
        cos, sin = (rope[0][pos], rope[1][pos]) if rope is not None else self.inner.rotary_emb(h, pos)
        if plan is None:
            cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, D)
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
                o = self._attend(q, k, v, kc, vc, t0, bias, attn.scaling)
                h = h + attn.o_proj(o.transpose(1, 2).reshape(b, t, -1))
                h = h + layer.mlp(layer.post_attention_layernorm(h))
        else:
            half = self.head_dim // 2
            cos, sin = cos[:, :, None], torch.cat((-sin[..., :half], sin[..., half:]), -1)[:, :, None]  # (B, T, 1, D)
            nq, nkv = self.n_heads, self.n_kv
            h = h.view(b * t, -1)
            for f, (kc, vc) in zip(plan, cache):
                qkv = f.qkv(_rms(h, f.norm1)).view(b, t, nq + 2 * nkv, self.head_dim)
                v = qkv[:, :, nq + nkv:]
                if f.q_norm is None:  # one rotation for the query and key heads together
                    qk = _rope(qkv[:, :, :nq + nkv], cos, sin)
                    q, k = qk[:, :, :nq], qk[:, :, nq:]
                else:  # qwen3: per-head norms on queries and keys first
                    q = _rope(_rms(qkv[:, :, :nq], f.q_norm), cos, sin)
                    k = _rope(_rms(qkv[:, :, nq:nq + nkv], f.k_norm), cos, sin)
                o = self._attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), kc, vc, t0, bias, f.scaling)
                h = f.o(o.transpose(1, 2).reshape(b * t, -1), h)
                h = f.down(f.act(_rms(h, f.norm2)), h)
            h = h.view(b, t, -1)
        if plan is not None and _plain_norm(self.inner.norm):
            return self.model.lm_head(_rms(h[:, -1], _norm(self.inner.norm)))
        return self.model.lm_head(self.inner.norm(h[:, -1:]))[:, 0]

    def _rope_table(self, n: int, like: torch.Tensor) -> "tuple[torch.Tensor, torch.Tensor] | None":
        """cos/sin (n, D) for positions 0..n-1 from the model's own rotary module, computed once per
        ``generate`` (elementwise in the position, so the same values as per step), or None for rope
        types whose frequencies depend on the sequence length (dynamic, longrope)."""
        rot = self.inner.rotary_emb
        kind = getattr(rot, "rope_type", "default")
        if not isinstance(kind, str) or "dynamic" in kind or kind == "longrope":  # transformers' dynamic_rope_update
            return None
        cos, sin = rot(like, torch.arange(n, device=like.device)[None])
        return cos[0], sin[0]

    def _attend(self, q, k, v, kc, vc, t0: int, bias, scaling: float) -> torch.Tensor:
        """Write the new keys (B, KV, T, D) transposed at slots [t0, t0 + T) of ``kc`` (B, KV, D, S),
        the values at those of ``vc`` (B, KV, S, D), and attend the queries (B, H, T, D) to every
        filled slot; ``bias`` (B, 1, T | 1, t0 + T) is 0 or -inf. Keys are cached transposed so the
        scores are a plain batched matmul (a transposed view of the filled part costs ~2x)."""
        b, _, t, _ = q.shape
        end = t0 + t
        kc[:, :, :, t0:end] = k.transpose(-1, -2)
        vc[:, :, t0:end] = v
        keys_t, vals = kc[:, :, :, :end], vc[:, :, :end]
        rep = self.n_heads // self.n_kv
        if rep > 1:  # grouped-query heads: (B, KV, rep * T, D) against the shared K/V
            qg = q.reshape(b, self.n_kv, rep * t, self.head_dim)
            s = (qg @ keys_t) * scaling
            s = s.view(b, self.n_kv, rep, t, end) + bias[:, :, None]
            p = _softmax(s).view(b, self.n_kv, rep * t, end)
            return (p @ vals).view(b, self.n_heads, t, self.head_dim)
        return _softmax((q @ keys_t) * scaling + bias) @ vals

    @torch.inference_mode()

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
        plan = fused_plan(self.model) if self.fuse else None
        cache = [(torch.empty(b, self.n_kv, self.head_dim, total, dtype=dtype, device=device),  # keys transposed
                  torch.empty(b, self.n_kv, total, self.head_dim, dtype=dtype, device=device))
                 for _ in self.inner.layers]
        pos = (keymask.long().cumsum(-1) - 1).masked_fill_(~keymask, 0)
        rope = self._rope_table(total, self.inner.embed_tokens.weight[:1])
        out = torch.full((b, max_new), pad_id, dtype=torch.long, device=device)
        rows = torch.arange(b, device=device)  # original index of each live row
        eos_t = torch.tensor(eos, dtype=torch.long, device=device)
        # identical prompts (a GRPO group, n samples of one problem) are read once, then their cache copied
        uniq, inverse = torch.unique(torch.cat([ids, keymask.long()], 1), dim=0, return_inverse=True)
        if len(uniq) < b:
            first = torch.full((len(uniq),), b, dtype=torch.long, device=device).scatter_reduce_(
                0, inverse, torch.arange(b, device=device), "amin")  # a row holding each distinct prompt
            part = [(kc[:len(uniq)], vc[:len(uniq)]) for kc, vc in cache]
            logits = self._forward(ids[first], pos[first], _prompt_bias(keymask[first], dtype), 0, part, plan,
                                   rope)[inverse]
            for (kc, vc), (pk, pv) in zip(cache, part):
                kc[:, :, :, :w] = pk[inverse, :, :, :w]
                vc[:, :, :w] = pv[inverse, :, :w]
        else:
            logits = self._forward(ids, pos, _prompt_bias(keymask, dtype), 0, cache, plan, rope)
        # from here on one token per row: its attention bias over the slots (0 / -inf) is kept, not rebuilt
        bias = torch.full((b, total), float("-inf"), dtype=dtype, device=device)
        bias[:, :w].masked_fill_(keymask, 0.0)
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
                bias, rows, tok, nxt_pos, alive = bias[keep], rows[keep], tok[keep], nxt_pos[keep], alive[keep]
            slot = w + step
            bias[:, slot] = 0.0
            logits = self._forward(tok[:, None], nxt_pos[:, None], bias[:, None, None, :slot + 1], slot, cache, plan,
                                   rope)
            nxt_pos = nxt_pos + 1
        return out[:, :n]
