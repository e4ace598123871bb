"""Padding-free packing: several examples per row, ``position_ids`` restarting at every example.

Why: on a GPU with a varlen attention kernel (``attn_implementation="flash_attention_2"``,
``"flash_attention_3"`` or ``"kernels-community/..."``) packed rows cost exactly the tokens they
hold, no padding. Transformers finds the example boundaries from ``position_ids`` (a position
that does not follow its neighbour by +1 starts a new sequence), so no attention mask is passed.
On CPU the same inputs give the same numbers with ``attn_implementation="sdpa"`` or ``"eager"``
(transformers then builds a dense block-diagonal causal mask over the whole row) and with
``reasondistill.attention`` (no dense mask: each block of queries meets only the keys of its own
sequences). ``train.packing: true`` makes :func:`reasondistill.train.sft.train_model` pack each
optimizer step's examples this way; on CPU it is not faster than length-grouped padding
(``packing_speedup`` in ``bench/train_throughput.py``), so it is off by default.

Two traps, both checked by ``tests/data/test_packing.py``:

* pass ``use_cache=False`` in the forward. With a KV cache (the default ``use_cache=True`` creates
  one even in train mode) transformers skips the packed-sequence detection and every example
  attends to the ones before it in the row;
* pass no ``attention_mask``: with one, the detection is skipped too.

Labels are aligned with inputs (the model shifts them, as in :func:`reasondistill.data.dataset.collate`):
-100 on prompts, on padding and on the first token of every example, so the last token of one
example is never trained to predict the first token of the next.

    rows = pack_indices(ds.lengths, max_tokens=2048)
    batch = collate_packed(ds, rows[:4], pad_id)
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from reasondistill.data.dataset import IGNORE_INDEX, TokenizedDataset, round_width


def pack_indices(lengths: Sequence[int] | np.ndarray, max_tokens: int) -> list[list[int]]:
    """Group example indices into rows of at most ``max_tokens`` tokens (first-fit decreasing).

    Deterministic; examples longer than ``max_tokens`` raise (filter them at build time).
    """
    lengths = np.asarray(lengths)
    if (lengths > max_tokens).any():
        raise ValueError(f"pack_indices: {int((lengths > max_tokens).sum())} examples are longer than "
                         f"max_tokens={max_tokens}")
    rows: list[list[int]] = []
    room: list[int] = []
    for i in np.argsort(-lengths, kind="stable").tolist():
        n = int(lengths[i])
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(max_tokens - n)
    return rows


def collate_packed(dataset: TokenizedDataset, rows: Sequence[Sequence[int]], pad_id: int,
                   multiple_of: int | str = 1) -> dict[str, torch.Tensor]:
    """``input_ids``, ``position_ids`` and ``labels`` of shape (len(rows), width); no attention mask.
    The width is the longest row rounded up by :func:`reasondistill.data.dataset.round_width`.

    A shorter row is filled with ``pad_id`` as one more "sequence" (positions restart at 0, labels
    -100), so padding neither sees nor is seen by real tokens.
    """
    width = round_width(max(sum(len(dataset[i][0]) for i in row) for row in rows), multiple_of)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            ids, plen = dataset[i]
            t = torch.from_numpy(ids.astype(np.int64))
            n = len(t)
            input_ids[r, at:at + n] = t
            position_ids[r, at:at + n] = torch.arange(n)
            labels[r, at + max(plen, 1):at + n] = t[max(plen, 1):]  # never the first token of an example
            at += n
        position_ids[r, at:] = torch.arange(width - at)
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}


def packed_spans(dataset: TokenizedDataset, rows: Sequence[Sequence[int]]) -> dict[int, tuple[int, int, int]]:
    """Where each example sits: ``{index: (row, start, end)}`` (end exclusive)."""
    spans = {}
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            n = len(dataset[i][0])
            spans[i] = (r, at, at + n)
            at += n
    return spans
