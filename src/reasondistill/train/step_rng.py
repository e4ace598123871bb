"""Torch's random draws inside one training step (dropout: a LoRA adapter's ``lora.dropout``, a
model's own dropout) seeded from ``(seed, step, rank)``.

Why: dropout draws from torch's global generator, which nothing else in a run seeds, so two runs
of the same config trained differently and a resumed run could not match an uninterrupted one.
Seeding each step from its number makes the masks a pure function of the run's seed and the step:
the same on a re-run, and the same after a resume (no generator state to checkpoint). The global
generator is restored after the step (``torch.random.fork_rng``), so no other code sees a change.

    with step_rng(seed, step, rank, device):
        loss.backward()   # forward + backward of the step

Tests: tests/train/test_step_rng.py (LoRA dropout: equal runs, resume = uninterrupted).
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager

import torch


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """A 63-bit seed for ``(seed, step, rank)``; neighbouring steps get unrelated seeds."""
    digest = hashlib.blake2b(f"{seed}\x00{step}\x00{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@contextmanager
def step_rng(seed: int, step: int, rank: int = 0, device: torch.device | str | None = None):
    """Within the block torch's generators (CPU, and ``device``'s when it is CUDA) start from
    :func:`step_seed`; their previous states come back afterwards."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        s = step_seed(seed, step, rank)
        torch.manual_seed(s)  # seeds the CPU generator and every CUDA one
        yield
