"""Causal attention on CPU: GEMMs and a softmax per block of queries (training), and per decoded
token (generation).

Why this exists: on CPU, PyTorch's ``scaled_dot_product_attention`` dispatches to a flash kernel
that is 2-3x slower in bf16 than plain GEMMs for the lengths of reasoning traces (128-1024
tokens; figures in docs/scaling.md, end-to-end in ``bench/train_throughput.py`` as
``attention_speedup``) and slow for one query against a KV cache (decoding; end-to-end in
``bench/generate_throughput.py``), and Hugging Face's ``eager`` attention materialises a float
mask of shape (batch, 1, T, T) and adds it in fp32, which costs more than the attention itself.

Training: batches are right-padded (``data.dataset.collate``), so for a causal model the padding
mask changes nothing at real positions: a real token only attends to earlier tokens, which are
real. For each block of 128 queries [a, b) this module computes, against keys [0, b) only:

    S = (q * scale) @ k^T            (batch, heads, b - a, b)   in the autocast dtype (bf16) or fp32
    P = softmax(S + causal mask)     accumulated in fp32, stored in S's dtype
    O = P @ v                        (batch, heads, b - a, head_dim)

as one ``torch.autograd.Function`` that saves P and recomputes nothing; its backward is
``dV = P^T dO``, ``dP = dO V^T``, ``dS = P * (dP - rowsum(dP * P))``, ``dQ = scale * dS K``,
``dK = dS^T (q * scale)``. A left-padded or gappy 2-D mask is applied as a key mask. Packed rows
(several sequences per row, ``position_ids`` restarting; ``train.packing``) arrive as each token's
sequence start: a block then meets keys from the start of its first query's sequence only, and a
token never sees another sequence. No dense T x T mask is built for either.

Decoding (one new token per row against the KV cache, no gradient): ``S = (q * scale) @ K^T``
with the padding mask, softmax, ``O = P @ V``; grouped-query heads share their K/V without a copy.

Anything else (dropout, sliding windows, soft-capping, attention sinks, several new tokens against
a cache, non-causal modules, custom mask functions, layers whose saved P would exceed
``MAX_SAVED_PROBS_BYTES``) goes to the model's own ``sdpa`` path, so results stay correct.
``fast_causal_attention(model)`` switches a Hugging Face model to this module for the duration of
a ``with`` block: ``train.sft.train_model`` does so on CPU when ``train.attention: auto``,
``teachers.sampling.generate_completions`` on CPU.
``tests/test_attention.py`` checks outputs and gradients against ``sdpa`` to 1e-5 in fp32 and
that generation gives the same tokens.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

import torch

logger = logging.getLogger(__name__)

NAME = "reasondistill_causal"
# The backward needs the probabilities of every block (about half of batch x heads x T x T); sdpa's
# flash kernel keeps O(T). Above this many bytes per layer the layer goes to sdpa instead, so long
# sequences on big models do not trade memory for speed (the bench model at 4 x 1024 tokens: 25 MB).
MAX_SAVED_PROBS_BYTES = 64 * 2**20
BLOCK = 128  # queries per block (64-256 measured within noise)


class CausalAttention(torch.autograd.Function):
    """Causal softmax attention, computed in blocks of ``block`` queries so that the upper triangle
    of the score matrix is (mostly) never computed: query block [a, b) only meets keys [0, b).

    q, k, v: (batch, heads, T, head_dim), one dtype; ``key_mask``: None or a bool tensor
    broadcastable to (batch, heads, T, T), True where attention is *forbidden* in addition to the
    causal mask (typically (batch, 1, 1, T): padded keys); ``dtype``: the compute dtype (default
    q's); ``starts``: None or (batch, T) longs, packed rows: query t may only attend keys from
    ``starts[t]`` on (the start of its own sequence). Returns (batch, heads, T, head_dim) in that
    dtype. Saves the probabilities of each block
    (about half of the T x T matrix) for the backward; dK and dV accumulate in fp32.
    """

    @staticmethod
    def forward(ctx, q, k, v, scale: float, key_mask, block: int = 128, dtype: torch.dtype | None = None,
                starts: torch.Tensor | None = None):
        # one contiguous copy each, in the compute dtype: Hugging Face hands over transposed views,
        # which matmul would otherwise copy again for every block; k is stored transposed (B, H, D, T)
        dtype = dtype or q.dtype
        qs = (q * scale).to(dtype=dtype, memory_format=torch.contiguous_format)
        kt = k.to(dtype).transpose(-1, -2).contiguous()
        v = v.to(dtype=dtype, memory_format=torch.contiguous_format)
        t = qs.shape[-2]
        out = torch.empty_like(v)
        probs, spans = [], []
        # a finite minimum, not -inf: a query with no allowed key (left padding) gets a finite row
        lowest = torch.finfo(dtype).min
        for start, end, lo in _blocks(t, block, starts):
            s = torch.matmul(qs[..., start:end, :], kt[..., lo:end])
            # keys before the block are all causally allowed: only the diagonal square needs the mask
            n = end - start
            s[..., start - lo:].masked_fill_(torch.ones(n, n, dtype=torch.bool, device=q.device).triu_(1), lowest)
            if key_mask is not None:
                s.masked_fill_(key_mask[..., start:end, lo:end] if key_mask.shape[-2] > 1 else key_mask[..., lo:end],
                               lowest)
            if starts is not None:  # packed rows: keys before the query's own sequence
                keys = torch.arange(lo, end, device=q.device)
                s.masked_fill_((keys < starts[:, start:end, None])[:, None], lowest)
            p = torch.softmax(s, dim=-1)  # accumulates in fp32 internally, rounds to s's dtype
            torch.matmul(p, v[..., lo:end, :], out=out[..., start:end, :])
            probs.append(p)
            spans.append((start, end, lo))
        ctx.save_for_backward(qs, kt, v, *probs)
        ctx.scale, ctx.spans = scale, spans
        ctx.dtypes = (q.dtype, k.dtype, v.dtype)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        qs, kt, v, *probs = ctx.saved_tensors
        grad_out = grad_out.to(dtype=v.dtype, memory_format=torch.contiguous_format)
        grad_q = torch.empty_like(qs)
        grad_k = torch.zeros(kt.shape[:-2] + (kt.shape[-1], kt.shape[-2]), dtype=torch.float32, device=kt.device)
        grad_v = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
        for p, (start, end, lo) in zip(probs, ctx.spans):
            go = grad_out[..., start:end, :]
            grad_v[..., lo:end, :] += torch.matmul(p.transpose(-1, -2), go)
            grad_p = torch.matmul(go, v[..., lo:end, :].transpose(-1, -2))
            grad_s = _softmax_backward(grad_p, p, -1, p.dtype)
            torch.matmul(grad_s, kt[..., lo:end].transpose(-1, -2), out=grad_q[..., start:end, :])
            grad_k[..., lo:end, :] += torch.matmul(grad_s.transpose(-1, -2), qs[..., start:end, :])
        q_dtype, k_dtype, v_dtype = ctx.dtypes
        return (grad_q.mul_(ctx.scale).to(q_dtype), grad_k.to(k_dtype), grad_v.to(v_dtype),
                None, None, None, None, None)


# The softmax backward of ATen's core operator set (a stable, documented operator; the same kernel
# autograd uses for ``torch.softmax``): dS = P * (dP - rowsum(dP * P)) without intermediate copies.
_softmax_backward = torch.ops.aten._softmax_backward_data.default


def _blocks(t: int, block: int, starts: torch.Tensor | None) -> list[tuple[int, int, int]]:
    """(start, end, lo) per block of queries [start, end): the block meets keys [lo, end). Without
    ``starts`` lo is 0; with packed rows it is the earliest sequence start of the block's first query
    (starts never decrease along a row), rounded down to a multiple of ``block`` so that the same
    GEMM shapes recur."""
    first = None if starts is None else starts[:, ::block].amin(0).tolist()
    return [(a, min(t, a + block), 0 if first is None else first[i] // block * block)
            for i, a in enumerate(range(0, t, block))]


def saved_probs_elements(t: int, block: int, starts: torch.Tensor | None) -> int:
    """Elements of P per (batch row, head) that ``CausalAttention`` keeps for the backward."""
    return sum((end - start) * (end - lo) for start, end, lo in _blocks(t, block, starts))


class PackedSequences:
    """What ``_mask`` hands the layers for packed rows (several sequences per row, ``position_ids``
    restarting at each; see ``data.packing``): ``starts`` (batch, T), the index in its row where each
    token's sequence begins. Token q may attend key k iff ``starts[q] <= k <= q``."""

    def __init__(self, starts: torch.Tensor):
        self.starts = starts

    @classmethod
    def from_sequence_ids(cls, sequence_ids: torch.Tensor) -> "PackedSequences":
        """From (batch, T) ids that are equal within a sequence and change where the next begins."""
        t = sequence_ids.shape[-1]
        index = torch.arange(t, device=sequence_ids.device).expand_as(sequence_ids)
        new = torch.ones_like(sequence_ids, dtype=torch.bool)
        new[:, 1:] = sequence_ids[:, 1:] != sequence_ids[:, :-1]
        return cls(torch.where(new, index, torch.zeros_like(index)).cummax(-1).values)

    @classmethod
    def from_allowed(cls, allowed: torch.Tensor) -> "PackedSequences | None":
        """From a dense (batch, T, T) boolean mask (True = may attend) when it is exactly causal
        within consecutive sequences, else None. The first allowed key of each query is its start;
        a start is either the previous query's start or the query itself."""
        t = allowed.shape[-1]
        starts = allowed.to(torch.uint8).argmax(-1)  # first True per query (0 for an all-False row)
        index = torch.arange(t, device=allowed.device)
        continues = torch.ones_like(starts, dtype=torch.bool)
        continues[:, 1:] = (starts[:, 1:] == starts[:, :-1]) | (starts[:, 1:] == index[1:])
        if t == 0 or not bool(continues.all()) or not bool((starts[:, :1] == 0).all()):
            return None
        packed = cls(starts)
        return packed if torch.equal(packed.allowed()[:, 0], allowed) else None

    def allowed(self) -> torch.Tensor:
        """The dense (batch, 1, T, T) boolean mask (True = may attend), for the sdpa fallback."""
        t = self.starts.shape[-1]
        keys = torch.arange(t, device=self.starts.device)
        causal = keys[None, None, :] <= keys[None, :, None]
        return (causal & (keys[None, None, :] >= self.starts[:, :, None]))[:, None]


def _packed_rows(batch_size: int, length: int, mask_function, **kwargs) -> PackedSequences | torch.Tensor:
    """The mask of a forward without a padding mask, cache or offsets whose mask function is not the
    plain causal one: transformers composes such a function for packed rows (it detects them from
    the ``position_ids`` we pass, ``data.packing``), and also for custom masks. Which one it is is
    read from what the function *computes*, never from its name or closure: the dense boolean mask
    is built once per forward with transformers' public ``sdpa_mask`` and kept only when it is
    exactly "causal within sequences" (each token sees itself and the tokens of its own sequence
    before it, and a sequence starts where the previous one ended). Then the layers get a
    ``PackedSequences`` (no dense mask in attention); otherwise the dense mask, for the sdpa
    fallback (correct for any mask function), and a log line says so once."""
    from transformers.masking_utils import sdpa_mask

    kwargs["allow_is_causal_skip"] = False
    dense = sdpa_mask(batch_size=batch_size, q_length=length, kv_length=length, q_offset=0, kv_offset=0,
                      mask_function=mask_function, attention_mask=None, **kwargs)
    if dense is not None and dense.dtype == torch.bool and dense.ndim == 4 and dense.shape[1] == 1:
        packed = PackedSequences.from_allowed(dense[:, 0])
        if packed is not None:
            return packed
    _say_once("packed-fallback", "attention: the mask is not causal within packed sequences; "
              "this forward uses sdpa with a dense mask (correct, slower)")
    return dense


_said: set[str] = set()


def _say_once(key: str, message: str) -> None:
    if key not in _said:
        _said.add(key)
        logger.warning(message)


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    if groups == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, groups, t, d).reshape(b, h * groups, t, d)


def _is_right_padded(mask: torch.Tensor) -> bool:
    """True when every row of a (batch, T) 0/1 mask is ones then zeros (or all ones)."""
    m = mask.bool()
    return bool((m[:, 1:] <= m[:, :-1]).all())


def _fallback(module, query, key, value, attention_mask, dropout, scaling, **kwargs):
    """The model's sdpa path, with a 2-D padding mask turned into the explicit 4-D boolean mask
    sdpa expects (queries are the last ``q_len`` of ``kv_len`` positions)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if isinstance(attention_mask, PackedSequences):
        attention_mask = attention_mask.allowed()
    elif attention_mask is not None and attention_mask.ndim == 2:
        q_len, kv_len = query.shape[2], key.shape[2]
        allowed = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril_(kv_len - q_len)
        window = kwargs.get("sliding_window")
        if window:
            allowed &= ~torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril_(kv_len - q_len - window)
        attention_mask = allowed[None, None] & attention_mask.bool()[:, None, None, :]
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def causal_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: float | None = None, **kwargs):
    """Hugging Face ``AttentionInterface`` signature: tensors (batch, heads, T, head_dim) in,
    (batch, T, heads, head_dim) out, plus ``None`` for the attention weights."""
    q_len, kv_len = query.shape[2], key.shape[2]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    unsupported = (
        (dropout and module.training) or kwargs.get("sliding_window") or kwargs.get("softcap") is not None
        or kwargs.get("s_aux") is not None or not getattr(module, "is_causal", True)
    )
    packed = attention_mask if isinstance(attention_mask, PackedSequences) else None
    if packed is None and not unsupported and q_len == 1 and kv_len > 1 and not torch.is_grad_enabled() and (
            attention_mask is None or (attention_mask.ndim == 4 and attention_mask.dtype == torch.bool)):
        return _decode(query, key, value, attention_mask, scale)
    if unsupported or q_len != kv_len or (attention_mask is not None and packed is None and attention_mask.ndim != 2):
        return _fallback(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    dtype = torch.get_autocast_dtype(query.device.type) if torch.is_autocast_enabled(query.device.type) else query.dtype
    b, h, t, _ = query.shape
    starts = None if packed is None else packed.starts
    if b * h * saved_probs_elements(t, BLOCK, starts) * dtype.itemsize > MAX_SAVED_PROBS_BYTES:
        return _fallback(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = _repeat_kv(key, groups), _repeat_kv(value, groups)
    # _mask passes a 2-D mask only when it is not right-padded: (batch, 1, 1, T) broadcasts over queries
    key_mask = None if attention_mask is None or packed is not None else ~attention_mask.bool()[:, None, None, :]
    with torch.autocast(query.device.type, enabled=False):
        out = CausalAttention.apply(query, key, value, scale, key_mask, BLOCK, dtype, starts)
    return out.transpose(1, 2).contiguous(), None


def _decode(query, key, value, allowed, scale: float):
    """One query per row against the whole cache: query (batch, heads, 1, D), key/value (batch,
    kv_heads, L, D), ``allowed`` None or bool broadcastable to (batch, 1, 1, L). The heads of a
    kv group become rows of one GEMM against their shared keys (no repeat of the cache)."""
    b, h, _, d = query.shape
    kv_heads = key.shape[1]
    q = (query * scale).reshape(b, kv_heads, h // kv_heads, d)
    s = torch.matmul(q, key.transpose(-1, -2))  # (batch, kv_heads, group, L)
    if allowed is not None:
        s.masked_fill_(~allowed, torch.finfo(s.dtype).min)
    out = torch.matmul(torch.softmax(s, dim=-1), value)  # (batch, kv_heads, group, D)
    return out.reshape(b, 1, h, d), None


def _mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
          mask_function=None, attention_mask: torch.Tensor | None = None, **kwargs):
    """The mask the model builds once before its layers. For a plain causal forward without a cache:
    None when the 2-D padding mask is absent or right-padded (the causal mask alone is then exact at
    real positions), else the 2-D mask itself (``causal_attention_forward`` applies it to the keys).
    Packed rows (``position_ids`` restarting, no padding mask, no cache; transformers detects them):
    a ``PackedSequences`` holding where each token's sequence starts, never a dense T x T mask.
    For anything else sdpa's explicit 4-D boolean mask (True = may attend): decoding one token
    uses it in ``_decode``; sliding windows, custom mask functions and several new tokens against
    a cache send the layers to the sdpa fallback with it."""
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    mask_function = mask_function or causal_mask_function
    if (mask_function is causal_mask_function and q_length == kv_length and not q_offset and not kv_offset
            and kwargs.get("local_size") is None):
        if attention_mask is None or _is_right_padded(attention_mask[:, :kv_length]):
            return None
        return attention_mask[:, :kv_length]
    if attention_mask is None and q_length == kv_length and not q_offset and not kv_offset:
        return _packed_rows(batch_size, q_length, mask_function, **kwargs)
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, mask_function=mask_function, attention_mask=attention_mask, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, causal_attention_forward)
    AttentionMaskInterface.register(NAME, _mask)


def supports_fast_attention(model) -> bool:
    """A Hugging Face decoder whose attention goes through ``AttentionInterface`` (sdpa or eager)."""
    config = getattr(model, "config", None)
    return (config is not None and getattr(config, "_attn_implementation", None) in ("sdpa", "eager", NAME)
            and not getattr(config, "is_encoder_decoder", False) and getattr(model, "_supports_attention_backend", False))


def pays_on_cpu(model, mixed_precision: str) -> bool:
    """Whether to switch on CPU, from measurements on this project's 2-core machine (fixed-shape
    fwd+bwd steps): with bf16 autocast it is 1.3-2.7x faster than sdpa at every size tried (sdpa's
    CPU flash kernel is slow in bf16); in fp32 it is 5-17% faster for head_dim 64 but 14% slower
    for head_dim 12, where sdpa's kernel does better with the tiny inner dimension."""
    config = getattr(model, "config", None)
    if config is None:
        return False
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return mixed_precision == "bf16" or head_dim >= 32


@contextmanager
def fast_causal_attention(model, enabled: bool = True) -> Iterator[bool]:
    """Within the block, ``model`` (unwrapped) uses ``causal_attention_forward``; restored on exit.
    Yields whether it was switched (False when disabled or the model does not support it)."""
    if not enabled or not supports_fast_attention(model):
        yield False
        return
    _register()
    configs = [m.config for m in model.modules() if hasattr(m, "config") and hasattr(m.config, "_attn_implementation")]
    saved = [(c, c._attn_implementation) for c in {id(c): c for c in configs}.values()]
    try:
        for c, _ in saved:
            c._attn_implementation = NAME
        yield True
    finally:
        for c, impl in saved:
            c._attn_implementation = impl
