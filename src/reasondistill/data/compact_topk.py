"""A compact encoding of captured top-k teacher rows: about 140 bytes per answer token at k = 128
(V = 32000) instead of 770, keeping >= 99% of the KL share the fp32 top-k keeps.

Why: the fp16 cache (data/topk.py) stores ``k · 6 + 2`` bytes per answer token, which makes a
cache of a large trace set as big as the model. Three lossy-but-bounded steps shrink it:

1. **Drop what the tail can hold.** Entries whose log-prob is more than ``max_drop`` nats
   (default 7.5) below the row's top entry are folded into the tail bucket; the tail stays the
   EXACT log-sum-exp of everything not kept (computed in fp32 before rounding), so no mass is
   lost, only the resolution of very unlikely tokens.
2. **Quantise log-probs relative to the top one.** ``code = round((top − logp) / step)`` with
   ``step`` = 0.25 nats in ``value_bits`` = 5 bits: every kept log-prob is off by at most
   ``step / 2`` = 0.125 nats (plus fp16 rounding of the top value), checked by
   :func:`max_logprob_error` in the tests.
3. **Elias–Fano the ids.** A row's kept ids are sorted; each id's low ``low_bits`` bits go into a
   fixed-width stream and its high part is written in unary into a bit vector of ``m + H`` bits
   (``H = ((V − 1) >> low_bits) + 1``): about ``2 + log2(V / m)`` bits per id instead of 32.
   Values are stored in the same (id) order; the top entry is the one with code 0.

Per shard tensors (all bit streams are packed big-endian with numpy ``packbits``)::

    count   (T,) u8/i32  kept entries per row          top  (T,) f16  the row's top log-prob
    tail    (T,) f16     log of the mass not kept       low  u8 bits  low_bits per entry
    high    u8 bits      Σ_rows (m_r + H) unary bits    code u8 bits  value_bits per entry
    offsets (n + 1,) i64 rows of example i              entry_offsets (n + 1,) i64 its entries

Decoding gives the fp16 cache's (rows, k) layout; entries beyond a row's count hold log-prob
``-inf`` and the row's top id (a masked bucket: the losses give it zero weight on both sides).
Zipping the shards does not pay (the id streams are near their entropy): measured in
bench/kd_memory.py.

    codec = CompactCodec(k=128, vocab_size=32000)
    packed = codec.encode(logprobs, ids, tail, offsets)      # tensors for one shard
    lp, ids, tail = codec.decode_rows(packed, 10, 42)         # rows 10..41, (32, 128) each
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch


def pack_bits(values: np.ndarray, width: int) -> np.ndarray:
    """(n,) non-negative ints < 2**width -> uint8 bytes of the n fixed-width big-endian fields."""
    if width == 0 or values.size == 0:
        return np.zeros(0, dtype=np.uint8)
    shifts = np.arange(width - 1, -1, -1, dtype=np.int64)
    bits = ((values.astype(np.int64)[:, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(bits.reshape(-1))


def read_bits(take, start: int, n: int) -> np.ndarray:
    """Bits ``start .. start + n`` of a packed stream as a uint8 0/1 array; ``take(a, b)`` returns
    bytes ``a .. b`` of the stream (a tensor slice)."""
    if n == 0:
        return np.zeros(0, dtype=np.uint8)
    a, b = start // 8, (start + n + 7) // 8
    return np.unpackbits(np.asarray(take(a, b), dtype=np.uint8))[start - 8 * a:start - 8 * a + n]


def unpack_fields(take, start_field: int, n: int, width: int) -> np.ndarray:
    """Fields ``start_field .. start_field + n`` of width ``width`` -> (n,) int64."""
    if width == 0 or n == 0:
        return np.zeros(n, dtype=np.int64)
    bits = read_bits(take, start_field * width, n * width).reshape(n, width).astype(np.int64)
    return bits @ (1 << np.arange(width - 1, -1, -1, dtype=np.int64))


@dataclass(frozen=True)
class CompactCodec:
    """Encoder/decoder of top-k rows for one vocabulary (see the module docstring).

    ``k``: entries per row before dropping; ``vocab_size``: V (ids < V); ``step``: quantisation
    step of log-probs in nats; ``value_bits``: bits per code (codes 0 .. 2**bits − 1);
    ``max_drop``: entries more than this many nats below the top go to the tail (must fit the
    codes: ``max_drop <= step · (2**value_bits − 1)``)."""

    k: int
    vocab_size: int
    step: float = 0.25
    value_bits: int = 5
    max_drop: float = 7.5

    def __post_init__(self):
        if self.k < 1 or self.vocab_size < self.k:
            raise ValueError(f"need 1 <= k <= vocab_size, got k={self.k}, vocab_size={self.vocab_size}")
        if self.step <= 0 or self.max_drop < 0:
            raise ValueError("step must be > 0 and max_drop >= 0")
        if self.max_drop > self.step * (2 ** self.value_bits - 1) + 1e-9:
            raise ValueError(f"max_drop {self.max_drop} does not fit {self.value_bits}-bit codes of step {self.step}")

    @property
    def low_bits(self) -> int:
        """Elias–Fano split: about log2(V / m) for the typical kept count m ≈ k / 2."""
        return max(0, round(math.log2(self.vocab_size / max(1, self.k / 2))))

    @property
    def high_span(self) -> int:
        """H: the number of distinct high parts an id < V can have."""
        return ((self.vocab_size - 1) >> self.low_bits) + 1

    def to_json(self) -> dict:
        return asdict(self)

    def max_logprob_error(self) -> float:
        """Bound on |decoded − original| log-prob of a kept entry, before fp16 rounding of the top."""
        return self.step / 2

    def encode(self, logprobs: torch.Tensor, ids: torch.Tensor, tail: torch.Tensor,
               offsets: torch.Tensor) -> dict[str, torch.Tensor]:
        """(T, k) log-probs sorted descending, (T, k) ids, (T,) tail log-mass, (n + 1,) example row
        offsets -> the shard's tensors."""
        lp = logprobs.float()
        top = lp[:, :1]
        drop = top - lp
        keep = drop <= self.max_drop + 1e-6
        keep[:, 0] = True
        dropped = torch.where(keep, torch.tensor(float("-inf")), lp)
        new_tail = torch.logaddexp(tail.float(), torch.logsumexp(dropped, -1))
        codes = torch.round(drop / self.step).clamp(max=2 ** self.value_bits - 1).long()
        count = keep.sum(-1)
        # sort each row's kept entries by id (dropped ones sort last with id V)
        big = torch.where(keep, ids.long(), torch.full_like(ids.long(), self.vocab_size))
        order = big.argsort(-1)
        sid, scode = big.gather(-1, order), codes.gather(-1, order)
        sel = torch.arange(self.k)[None, :] < count[:, None]
        flat_ids, flat_codes = sid[sel].numpy(), scode[sel].numpy()
        rank = (torch.arange(self.k)[None, :].expand_as(sid))[sel].numpy()
        row = torch.arange(lp.shape[0])[:, None].expand_as(sid)[sel].numpy()
        counts = count.numpy().astype(np.int64)
        row_start_bits = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts + self.high_span, out=row_start_bits[1:])
        high = np.zeros(int(row_start_bits[-1]), dtype=np.uint8)
        high[row_start_bits[row] + (flat_ids >> self.low_bits) + rank] = 1
        entry_offsets = np.zeros_like(offsets.numpy())
        cum = np.concatenate([[0], np.cumsum(counts)])
        entry_offsets[:] = cum[offsets.numpy()]
        cdtype = torch.uint8 if self.k <= 255 else torch.int32
        return {"count": count.to(cdtype), "top": top[:, 0].half(), "tail": new_tail.half(),
                "low": torch.from_numpy(pack_bits(flat_ids & ((1 << self.low_bits) - 1), self.low_bits)),
                "high": torch.from_numpy(np.packbits(high)),
                "code": torch.from_numpy(pack_bits(flat_codes, self.value_bits)),
                "offsets": offsets.clone(), "entry_offsets": torch.from_numpy(entry_offsets)}

    def decode_rows(self, take, a: int, b: int, entry_a: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows ``a .. b`` (their first entry is ``entry_a``) -> (b − a, k) f16 log-probs, (b − a, k)
        i32 ids, (b − a,) f16 tail. ``take(name, i, j)`` returns elements i .. j of a shard tensor
        (a dict slice, or a memory-mapped safetensors slice)."""
        count = take("count", a, b).numpy().astype(np.int64)
        top, tail = take("top", a, b).float(), take("tail", a, b).half()
        n_rows, n_ent = b - a, int(count.sum())
        high_bits = read_bits(lambda i, j: take("high", i, j), entry_a + a * self.high_span,
                              n_ent + n_rows * self.high_span)
        pos = np.flatnonzero(high_bits)
        if len(pos) != n_ent:
            raise ValueError(f"corrupt compact top-k rows {a}..{b}: {len(pos)} ids for {n_ent} entries")
        row = np.repeat(np.arange(n_rows), count)
        ent_start = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
        row_start = ent_start + np.arange(n_rows) * self.high_span  # bit where row r's unary part starts
        rank = np.arange(n_ent) - ent_start[row]
        hi = pos - row_start[row] - rank
        low = unpack_fields(lambda i, j: take("low", i, j), entry_a, n_ent, self.low_bits)
        codes = unpack_fields(lambda i, j: take("code", i, j), entry_a, n_ent, self.value_bits)
        lp = torch.full((n_rows, self.k), float("-inf"), dtype=torch.float32)
        ids = torch.zeros(n_rows, self.k, dtype=torch.int32)
        r, c = torch.from_numpy(row), torch.from_numpy(rank)
        lp[r, c] = top[r] - torch.from_numpy(codes).float() * self.step
        ids[r, c] = torch.from_numpy((hi << self.low_bits) | low).int()
        filled = torch.arange(self.k)[None, :] < torch.from_numpy(count)[:, None]
        ids = torch.where(filled, ids, ids[:, :1].expand(-1, self.k))  # masked buckets: a kept id, log-prob -inf
        return lp.half(), ids, tail

    def bytes_per_token(self, tensors: dict[str, torch.Tensor]) -> float:
        """Payload bytes per row of one shard's tensors (per-example offsets included)."""
        rows = tensors["count"].numel()
        return sum(t.numel() * t.element_size() for t in tensors.values()) / max(1, rows)
