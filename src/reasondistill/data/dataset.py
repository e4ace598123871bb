"""The tokenised dataset as training reads it, and batches grouped by length.

Why: batching similar lengths together keeps padding (wasted compute) small on CPU, where
padding-free packing does not pay. The order is drawn from a seeded generator per epoch, never
the global RNG, so a resumed run replays exactly the batches it would have seen.

    ds = TokenizedDataset("runs/demo/build/traces/train.safetensors")
    for batch_idx in length_grouped_batches(ds.lengths, batch_size=64, seed=0, epoch=0): ...
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

IGNORE_INDEX = -100


class TokenizedDataset:
    def __init__(self, path: str | Path):
        from safetensors import safe_open
        from safetensors.numpy import load_file

        self.path = Path(path)
        try:
            arrays = load_file(str(self.path))
            self.input_ids = arrays["input_ids"]
            self.offsets = arrays["offsets"]
            self.prompt_lens = arrays["prompt_lens"]
            with safe_open(str(self.path), framework="np") as fh:
                meta = fh.metadata()
                self.problem_ids: list[str] = json.loads(meta["problem_ids"])
                self.order: str = meta.get("order", "shuffle")  # "curriculum": train in file order (data/curriculum.py)
        except FileNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001 - truncated, corrupt or foreign: name the file
            raise ValueError(f"{self.path}: not a readable built dataset ({type(exc).__name__}: {exc}); "
                             "run `reasondistill build RUN --force` to rebuild it") from None
        self.lengths = np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.prompt_lens)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.input_ids[self.offsets[i]:self.offsets[i + 1]], int(self.prompt_lens[i])

    def target_tokens(self, indices) -> int:
        idx = np.asarray(indices)
        return int((self.lengths[idx] - self.prompt_lens[idx]).sum())


def round_width(length: int, multiple_of: int | str = 1) -> int:
    """``length`` rounded up to a multiple of ``multiple_of``; ``"geometric"``: from 128 tokens on,
    to a multiple of 1/8 of the largest power of two <= length (16 for 128-255, 32 for 256-511,
    ...): at most 8 widths per doubling and under 12.5% padding; shorter lengths stay as they are
    (there the padding costs more than new shapes do)."""
    if multiple_of == "geometric":
        power = 1 << (max(1, length).bit_length() - 1)
        multiple_of = power // 8 if power >= 128 else 1
    return -(-length // multiple_of) * multiple_of


def collate(dataset: TokenizedDataset, indices, pad_id: int, multiple_of: int | str = 1,
            max_width: int | None = None) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask and labels (-100 on prompt and padding).

    Labels are aligned with inputs (the model shifts them); the first target label is the first
    completion token, so the prompt never contributes to the loss. The width is the longest
    example rounded up by :func:`round_width` (but not past ``max_width`` unless the example is
    longer).
    """
    items = [dataset[i] for i in indices]
    longest = max(len(ids) for ids, _ in items)
    width = round_width(longest, multiple_of)
    if max_width is not None:
        width = max(longest, min(width, max_width))
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(items), width), dtype=torch.long)
    for row, (ids, plen) in enumerate(items):
        t = torch.from_numpy(ids.astype(np.int64))
        input_ids[row, : len(t)] = t
        labels[row, plen: len(t)] = t[plen:]
        attention[row, : len(t)] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def length_grouped_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int,
                           group_by_length: bool = True, mega_batches: int = 64) -> list[list[int]]:
    """One epoch of batches: shuffled, then sorted by length within windows of ``mega_batches``
    batches, then the batch order shuffled again. Deterministic given (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if group_by_length:
        window = batch_size * mega_batches
        chunks = [order[i:i + window] for i in range(0, len(order), window)]
        order = np.concatenate([c[np.argsort(-lengths[c], kind="stable")] for c in chunks]) if chunks else order
    batches = [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    if group_by_length:
        perm = rng.permutation(len(batches))
        batches = [batches[i] for i in perm]
    return batches
