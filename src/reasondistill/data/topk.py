"""Offline teacher capture: the teacher's top-k next-token log-probs for every answer token, stored
once in compact shards so soft-distillation training does not need the teacher in memory.

Why: running the teacher on every training step costs a teacher forward per step and the
teacher's memory beside the student's. Captured once, the teacher costs ``k · 6 + 2`` bytes per
answer token (fp16 log-probs, int32 ids, fp16 tail log-mass) and training reads only the rows
of the current batch (safetensors are memory-mapped; nothing is loaded in full).

Layout, per split (``train``, ``val``) of a built dataset::

    OUT/index.json                        k, temperature, vocab size, shards, one key per example
    OUT/train/shard-00000.safetensors     logprobs (T, k) f16, ids (T, k) i32, tail (T,) f16,
                                          offsets (n + 1,) i64: example i's rows in the shard

With ``cache="compact"`` the shards hold the encoding of :mod:`reasondistill.data.compact_topk`
instead (about 140 bytes per token at k = 128); the reader decodes it to the same layout.

Row ``offsets[i] + j`` is the teacher's distribution over the j-th answer token of example i
(computed from the logits one position earlier). Each shard is written to a temporary file and
renamed, and carries a fingerprint of (teacher, k, temperature, vocabulary, dataset): a killed
capture resumes by skipping the shards that are already complete and current.

    capture_topk(teacher, {"train": "build/s/train.safetensors"}, "build/s/topk/k64", k=64)
    reader = TopKReader("build/s/topk/k64")
    logprobs, ids, tail = reader.get("train", [3, 1, 4])   # (B, L, k), (B, L, k), (B, L), collate layout
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from reasondistill.data.dataset import IGNORE_INDEX, TokenizedDataset, collate
from reasondistill.records import file_sha256, tmp_path
from reasondistill.train.losses import topk_from_logits

FORMAT_VERSION = 1
INDEX = "index.json"


def bytes_per_token(k: int) -> int:
    """Payload per answer token: fp16 log-probs + int32 ids + fp16 tail."""
    return k * 6 + 2


def example_keys(ds: TokenizedDataset) -> list[str]:
    from reasondistill.train.kd import example_key

    return [example_key(ds[i][0], ds[i][1]) for i in range(len(ds))]


def model_fingerprint(model) -> str:
    """sha256 of a model's parameter names, shapes, dtypes and bytes (about 1 GB/s)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def payload_sha(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over a shard's tensors (names and bytes): recorded in its header, checked before a
    shard is reused or read, so a file corrupted behind an intact header is never trusted."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _intact(path: Path, meta: dict[str, str]) -> bool:
    from safetensors.torch import load_file

    try:
        return "payload_sha256" in meta and payload_sha(load_file(str(path))) == meta["payload_sha256"]
    except Exception:  # noqa: BLE001 - unreadable payload: not intact
        return False


def _shard_meta(path: Path) -> dict[str, str] | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return fh.metadata() or {}
    except Exception:  # torn or foreign file: recompute it
        return None


def _teacher_rows(teacher, batch: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Teacher logits (M, V) at the positions in ``mask`` (B, L), without the full (B, L, V) tensor
    when the model supports ``logits_to_keep`` with a boolean mask."""
    kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    try:
        logits = teacher(**kw, logits_to_keep=mask).logits
    except TypeError:
        logits = teacher(**kw).logits
    if logits.dim() == 3:
        logits = logits[mask] if logits.shape[:2] == mask.shape else logits.reshape(-1, logits.size(-1))
    return logits


def _token_batches(ds: TokenizedDataset, idx: list[int], max_tokens: int) -> list[list[int]]:
    """Length-sorted batches whose padded size (rows × longest) stays under ``max_tokens``."""
    order = sorted(idx, key=lambda i: -int(ds.lengths[i]))
    out, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * int(ds.lengths[cur[0]]) > max_tokens:
            out.append(cur)
            cur = []
        cur.append(i)
    return out + ([cur] if cur else [])


@torch.no_grad()
def capture_shard(teacher, ds: TokenizedDataset, start: int, end: int, k: int, temperature: float,
                  vocab_size: int | None, pad_id: int, max_tokens: int) -> dict[str, torch.Tensor]:
    """Top-k tensors of examples ``start:end`` of ``ds`` (see the module layout)."""
    n_tok = (ds.lengths[start:end] - ds.prompt_lens[start:end]).astype(np.int64)
    offsets = np.zeros(end - start + 1, dtype=np.int64)
    np.cumsum(n_tok, out=offsets[1:])
    total = int(offsets[-1])
    logprobs = torch.zeros(total, k, dtype=torch.float16)
    ids = torch.zeros(total, k, dtype=torch.int32)
    tail = torch.zeros(total, dtype=torch.float16)
    device = next(teacher.parameters()).device
    for group in _token_batches(ds, list(range(start, end)), max_tokens):
        batch = collate(ds, group, pad_id)
        targets = batch["labels"] != IGNORE_INDEX
        mask = torch.zeros_like(targets)
        mask[:, :-1] = targets[:, 1:]  # logits at t - 1 predict the answer token at t
        rows = _teacher_rows(teacher, {k_: v.to(device) for k_, v in batch.items()}, mask.to(device))
        if vocab_size is not None:
            rows = rows[:, :vocab_size]  # padding rows of the teacher's embedding matrix
        top = topk_from_logits(rows.unsqueeze(0), k, temperature).to_storage()
        pos = 0
        for i in group:  # rows of the mask come out in (example, position) order
            m = int(n_tok[i - start])
            a = int(offsets[i - start])
            logprobs[a:a + m] = top.logprobs[0, pos:pos + m].cpu()
            ids[a:a + m] = top.ids[0, pos:pos + m].cpu()
            tail[a:a + m] = top.tail_logmass[0, pos:pos + m].cpu()
            pos += m
    return {"logprobs": logprobs, "ids": ids, "tail": tail, "offsets": torch.from_numpy(offsets)}


def capture_topk(teacher, datasets: dict[str, str | Path], out_dir: str | Path, k: int, temperature: float = 1.0,
                 vocab_size: int | None = None, pad_id: int = 0, shard_size: int = 256, max_tokens: int = 4096,
                 teacher_id: str | None = None, log: Callable[[str], None] | None = None,
                 progress: Callable[[int], None] | None = None, cache: str = "fp16") -> dict:
    """Capture the teacher's top-k for every answer token of each split; resumable.

    ``vocab_size`` slices the teacher's logits (to the student's vocabulary when the teacher has
    extra padding rows). ``teacher_id`` names the teacher in the fingerprint (e.g. a hash of its
    files; default: :func:`model_fingerprint`): shards made by another teacher, k, temperature or
    dataset are recomputed.
    ``progress(n)`` is called after each shard with its number of examples. ``cache``: "fp16"
    (``k · 6 + 2`` bytes per token) or "compact" (:mod:`reasondistill.data.compact_topk`; needs
    ``vocab_size``).
    Returns stats: examples, answer tokens, bytes on disk, bytes per token, shards reused.
    """
    from safetensors.torch import save_file

    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    if cache not in ("fp16", "compact"):
        raise ValueError(f"cache must be 'fp16' or 'compact', got {cache!r}")
    codec = _codec(k, vocab_size) if cache == "compact" else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher.eval()
    teacher_id = teacher_id or model_fingerprint(teacher)
    index = {"version": FORMAT_VERSION, "k": k, "temperature": float(temperature), "vocab_size": vocab_size,
             "shard_size": shard_size, "splits": {}}
    if codec is not None:
        index["codec"] = codec.to_json()
    stats = {"examples": 0, "tokens": 0, "bytes": 0, "shards": 0, "shards_reused": 0}
    for split, path in datasets.items():
        path = Path(path)
        ds = TokenizedDataset(path)
        fp = hashlib.sha256(json.dumps([FORMAT_VERSION, teacher_id, k, float(temperature), vocab_size, shard_size,
                                        file_sha256(path)] + ([codec.to_json()] if codec else [])).encode()).hexdigest()[:24]
        (out_dir / split).mkdir(exist_ok=True)
        shards = []
        for s, start in enumerate(range(0, len(ds), shard_size)):
            end = min(len(ds), start + shard_size)
            file = out_dir / split / f"shard-{s:05d}.safetensors"
            meta = {"fingerprint": fp, "start": str(start), "end": str(end), "k": str(k)}
            found = _shard_meta(file) if file.exists() else None
            if found is not None and {k_: v for k_, v in found.items() if k_ != "payload_sha256"} == meta \
                    and _intact(file, found):
                stats["shards_reused"] += 1
            else:  # missing, made for other inputs, torn, or corrupt behind its header: captured again
                tensors = capture_shard(teacher, ds, start, end, k, temperature, vocab_size, pad_id, max_tokens)
                if codec is not None:
                    tensors = codec.encode(tensors["logprobs"], tensors["ids"], tensors["tail"], tensors["offsets"])
                tmp = tmp_path(file)
                save_file(tensors, str(tmp), metadata=meta | {"payload_sha256": payload_sha(tensors)})
                os.replace(tmp, file)
            shards.append({"file": f"{split}/{file.name}", "start": start, "end": end})
            stats["shards"] += 1
            stats["bytes"] += file.stat().st_size
            if progress is not None:
                progress(end - start)
        for stale in sorted((out_dir / split).glob("shard-*.safetensors*")):
            if stale.name not in {Path(x["file"]).name for x in shards}:
                stale.unlink()  # left over from a larger dataset or a torn write
        n_tok = int((ds.lengths - ds.prompt_lens).sum())
        index["splits"][split] = {"examples": len(ds), "tokens": n_tok, "fingerprint": fp, "dataset": str(path),
                                  "shards": shards, "keys": example_keys(ds)}
        stats["examples"] += len(ds)
        stats["tokens"] += n_tok
    tmp = tmp_path(out_dir / INDEX)
    tmp.write_text(json.dumps(index))
    os.replace(tmp, out_dir / INDEX)
    stats["bytes_per_token"] = round(stats["bytes"] / max(1, stats["tokens"]), 2)
    stats["payload_bytes_per_token"] = bytes_per_token(k) if codec is None else stats["bytes_per_token"]
    if log is not None and stats["shards_reused"]:
        log(f"       resumed: {stats['shards_reused']} of {stats['shards']} shards were already captured")
    return stats


def _codec(k: int, vocab_size: int | None, params: dict | None = None):
    from reasondistill.data.compact_topk import CompactCodec

    if params is not None:
        return CompactCodec(**params)
    if vocab_size is None:
        raise ValueError("the compact top-k cache needs the vocabulary size")
    return CompactCodec(k=k, vocab_size=int(vocab_size))


class TopKReader:
    """Streams captured top-k rows: opens shards lazily (memory-mapped) and reads only the rows of
    the requested examples. ``get`` pads to the collate() layout; ``for_batch`` finds the rows of a
    collated batch by content key (train or val)."""

    def __init__(self, topk_dir: str | Path):
        self.dir = Path(topk_dir)
        path = self.dir / INDEX
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run `reasondistill capture` first")
        self.index = json.loads(path.read_text())
        if self.index.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: format version {self.index.get('version')}, expected {FORMAT_VERSION}")
        self.k, self.temperature = int(self.index["k"]), float(self.index["temperature"])
        self.vocab_size = self.index.get("vocab_size")
        self.codec = _codec(self.k, self.vocab_size, self.index["codec"]) if "codec" in self.index else None
        self._handles: dict[str, object] = {}
        self._by_key = {key: (split, i) for split, info in self.index["splits"].items()
                        for i, key in enumerate(info["keys"])}

    def _open(self, file: str):
        from safetensors import safe_open

        if file not in self._handles:
            path = self.dir / file
            meta = _shard_meta(path)
            if meta is None or ("payload_sha256" in meta and not _intact(path, meta)):
                raise ValueError(f"{path}: corrupt (its content does not match the hash in its header); "
                                 "run `reasondistill capture RUN --force` to capture it again")
            self._handles[file] = safe_open(str(path), framework="pt")
        return self._handles[file]

    def example(self, split: str, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(n_answer, k) f16 log-probs, (n_answer, k) i32 ids, (n_answer,) f16 tail of example i."""
        info = self.index["splits"][split]
        if not 0 <= i < info["examples"]:
            raise IndexError(f"{split}: example {i} out of range (0..{info['examples'] - 1})")
        shard = info["shards"][i // self.index["shard_size"]]
        fh = self._open(shard["file"])
        j = i - shard["start"]
        off = fh.get_slice("offsets")[j:j + 2].tolist()
        a, b = int(off[0]), int(off[1])
        if self.codec is not None:
            entry_a = int(fh.get_slice("entry_offsets")[j:j + 1].tolist()[0])
            return self.codec.decode_rows(lambda name, x, y: fh.get_slice(name)[x:y], a, b, entry_a)
        return fh.get_slice("logprobs")[a:b], fh.get_slice("ids")[a:b], fh.get_slice("tail")[a:b]

    def get(self, split: str, indices: Sequence[int], dataset: TokenizedDataset | None = None,
            width: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Padded (B, L, k) log-probs, (B, L, k) ids and (B, L) tail, aligned with
        ``collate(dataset, indices)["labels"]``: entry (b, t) is the teacher's distribution for the
        label at t. Non-answer positions hold zeros (the losses never read them)."""
        ds = dataset if dataset is not None else TokenizedDataset(self.index["splits"][split]["dataset"])
        spans = [(int(ds.prompt_lens[i]), int(ds.lengths[i])) for i in indices]
        return self._pad([self.example(split, i) for i in indices], spans, width)

    def for_batch(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The captured rows of a collated batch, found by each row's content key."""
        from reasondistill.train.kd import batch_keys

        parts, spans = [], []
        empty = (torch.zeros(0, self.k, dtype=torch.float16), torch.zeros(0, self.k, dtype=torch.int32),
                 torch.zeros(0, dtype=torch.float16))
        has_target = (batch["labels"] != IGNORE_INDEX).any(1).tolist()
        for row, key in enumerate(batch_keys(batch)):
            if not has_target[row]:  # e.g. the loop's all-ignored filler batch under DDP: nothing to look up
                n = int(batch["attention_mask"][row].sum())
                parts.append(empty)
                spans.append((n, n))
                continue
            if key not in self._by_key:
                raise KeyError(f"{self.dir}: batch row {row} is not among the captured examples (dataset rebuilt "
                               "after capture? re-run `reasondistill capture`)")
            split, i = self._by_key[key]
            part = self.example(split, i)
            n = int(batch["attention_mask"][row].sum())
            parts.append(part)
            spans.append((n - part[0].shape[0], n))
        return self._pad(parts, spans, batch["input_ids"].shape[1])

    def _pad(self, parts, spans, width):
        width = width or max(end for _, end in spans)
        b = len(parts)
        lp = torch.zeros(b, width, self.k, dtype=torch.float16)
        ids = torch.zeros(b, width, self.k, dtype=torch.int32)
        tail = torch.zeros(b, width, dtype=torch.float16)
        for row, ((p_lp, p_ids, p_tail), (start, end)) in enumerate(zip(parts, spans)):
            if end - start != p_lp.shape[0]:
                raise ValueError(f"captured rows ({p_lp.shape[0]}) do not match the example's answer tokens "
                                 f"({end - start}); re-run `reasondistill capture`")
            lp[row, start:end], ids[row, start:end], tail[row, start:end] = p_lp, p_ids, p_tail
        return lp, ids, tail
