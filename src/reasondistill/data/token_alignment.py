"""Token strings and span alignment between two tokenizers: what cross-tokenizer distillation
(train/cross_tokenizer.py) compares with what.

Why: a student and a teacher of different families cut the same text into different tokens
("123" is one BPE token but three characters for a character-level teacher), so their
next-token distributions cannot be compared id by id. This module works on BYTES:

* :func:`token_bytes` — the UTF-8 bytes each id of a tokenizer stands for (byte-level BPE,
  SentencePiece-style metaspace, WordPiece, character and word-level vocabularies; special
  tokens are their literal text).
* :func:`align_answer` — walk both tokenizations of the same text and cut it wherever BOTH have
  a token boundary. Each cut-to-cut piece is a group: student tokens ``i0..i1`` and teacher
  tokens ``j0..j1`` covering the same bytes. At a group's first token both models predict the
  next text from the same prefix, so their distributions there are comparable. EOS is its own
  final group on both sides. Text after the first byte where the two sides disagree (e.g. an
  ``<unk>``) is left unaligned (cross-entropy only).
* :class:`VocabMaps` — the pairs of ids whose strings both vocabularies share (for the exact
  KL of the ``aligned`` method) and, for every teacher id, the student id of the first token of
  its text (the ``projection`` method's sparse map).

    sb, tb = token_bytes(student_tok), token_bytes(teacher_tok)
    groups = align_answer(s_ids, t_ids, sb, tb, s_eos=student_tok.eos_token_id, t_eos=teacher_tok.eos_token_id)
    maps = VocabMaps.build(student_tok, teacher_tok, sb, tb)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2 byte-level BPE: the printable character standing for each byte, inverted."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _decoder_kinds(tokenizer) -> set[str]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return set()
    dec = json.loads(backend.to_str()).get("decoder") or {}
    kinds, stack = set(), [dec]
    while stack:
        d = stack.pop()
        if not isinstance(d, dict):
            continue
        kinds.add(d.get("type", ""))
        if d.get("type") == "Replace" and d.get("content") == " ":
            kinds.add("Metaspace")
        stack.extend(d.get("decoders") or [])
    return kinds


def token_bytes(tokenizer) -> list[bytes]:
    """The bytes each id ``0 .. len(tokenizer) − 1`` stands for in text. Special and added tokens
    are their literal content; ids with no string (holes) are ``b""``."""
    kinds = _decoder_kinds(tokenizer)
    n = len(tokenizer)
    raw = tokenizer.convert_ids_to_tokens(list(range(n)))
    added = {t.content if hasattr(t, "content") else str(t) for t in tokenizer.get_added_vocab()}
    byte_dec = _byte_decoder()
    out = []
    for tok in raw:
        if tok is None:
            out.append(b"")
        elif tok in added:
            out.append(tok.encode())
        elif "ByteLevel" in kinds:
            out.append(bytes(byte_dec[c] for c in tok) if all(c in byte_dec for c in tok) else tok.encode())
        elif "ByteFallback" in kinds and len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
            out.append(bytes([int(tok[3:5], 16)]))
        elif "Metaspace" in kinds:
            out.append(tok.replace("▁", " ").encode())
        elif "WordPiece" in kinds:
            out.append(tok[2:].encode() if tok.startswith("##") else tok.encode())
        else:  # character / word level (Fuse decoders), or unknown: the raw string
            out.append(tok.encode())
    return out


@dataclass(frozen=True)
class Group:
    """Student answer tokens ``i0 .. i1 − 1`` and teacher answer tokens ``j0 .. j1 − 1`` spelling
    the same bytes. ``chain``: the teacher tokens ``j0 + 1 .. chain − 1`` that, after ``j0``, end
    exactly where the student's first token ``i0`` ends (``chain = j0 + 1`` when ``j0`` alone
    does; ``-1`` when the student token ends inside a teacher token)."""

    i0: int
    i1: int
    j0: int
    j1: int
    chain: int


def align_answer(s_ids, t_ids, s_bytes: list[bytes], t_bytes: list[bytes], s_eos: int | None = None,
                 t_eos: int | None = None) -> list[Group]:
    """The groups of two tokenizations of one answer (see the module docstring). A trailing EOS on
    both sides forms its own group; the text must agree byte for byte up to where groups stop."""
    s_ids, t_ids = [int(x) for x in s_ids], [int(x) for x in t_ids]
    s_end = s_ids[-1] == s_eos if s_ids and s_eos is not None else False
    t_end = t_ids[-1] == t_eos if t_ids and t_eos is not None else False
    s_text, t_text = s_ids[:len(s_ids) - s_end], t_ids[:len(t_ids) - t_end]
    s_cut = np.cumsum([len(s_bytes[i]) for i in s_text]).tolist()
    t_cut = np.cumsum([len(t_bytes[j]) for j in t_text]).tolist()
    sa, ta = b"".join(s_bytes[i] for i in s_text), b"".join(t_bytes[j] for j in t_text)
    agree = next((n for n, (x, y) in enumerate(zip(sa, ta)) if x != y), min(len(sa), len(ta)))
    groups: list[Group] = []
    i = j = i0 = j0 = 0
    while i < len(s_cut) and j < len(t_cut):
        if s_cut[i] > agree or t_cut[j] > agree:
            break
        if s_cut[i] < t_cut[j]:
            i += 1
        elif s_cut[i] > t_cut[j]:
            j += 1
        else:
            i += 1
            j += 1
            groups.append(Group(i0, i, j0, j, _chain(s_cut[i0], t_cut, j0, j)))
            i0, j0 = i, j
    complete = i0 == len(s_cut) and j0 == len(t_cut)
    if s_end and t_end and complete:
        n_s, n_t = len(s_text), len(t_text)
        groups.append(Group(n_s, n_s + 1, n_t, n_t + 1, n_t + 1))
    return groups


def _chain(first_end: int, t_cut: list[int], j0: int, j1: int) -> int:
    for j in range(j0, j1):
        if t_cut[j] == first_end:
            return j + 1
        if t_cut[j] > first_end:
            return -1
    return -1


@dataclass
class VocabMaps:
    """``shared_teacher`` / ``shared_student`` (M,) long: the id pairs whose strings both
    vocabularies share (EOS paired with EOS); ``head`` (V_t,) long: for each teacher id, the
    student id of the first token of its text (EOS -> EOS; an id with no text -> the student's
    EOS)."""

    shared_teacher: torch.Tensor
    shared_student: torch.Tensor
    head: torch.Tensor

    @classmethod
    def build(cls, student_tok, teacher_tok, s_bytes: list[bytes], t_bytes: list[bytes],
              teacher_size: int | None = None) -> "VocabMaps":
        s_eos, t_eos = student_tok.eos_token_id, teacher_tok.eos_token_id
        by_bytes: dict[bytes, int] = {}
        for sid, b in enumerate(s_bytes):
            if b and sid != s_eos:
                by_bytes.setdefault(b, sid)
        pairs = [(t_eos, s_eos)] if t_eos is not None and s_eos is not None else []
        head = []
        for tid, b in enumerate(t_bytes):
            if tid == t_eos:
                head.append(s_eos)
                continue
            if b in by_bytes:
                pairs.append((tid, by_bytes[b]))
                head.append(by_bytes[b])
                continue
            text = b.decode("utf-8", errors="replace")
            first = student_tok(text, add_special_tokens=False)["input_ids"][:1] if text else []
            head.append(first[0] if first else s_eos)
        size = teacher_size or len(t_bytes)
        head = head[:size] + [s_eos] * (size - len(head))
        used: set[int] = set()  # one teacher id per student id, or the shared buckets would count a student twice
        pairs = [(t, s) for t, s in pairs if t < size and not (s in used or used.add(s))]
        t_ids = torch.tensor([t for t, _ in pairs], dtype=torch.long)
        s_ids = torch.tensor([s for _, s in pairs], dtype=torch.long)
        return cls(t_ids, s_ids, torch.tensor(head, dtype=torch.long))

    @classmethod
    def from_strings(cls, student_tok, teacher_strings: list[bytes], teacher_eos: int,
                     teacher_size: int | None = None) -> "VocabMaps":
        """The same maps when the teacher is known only by its stored token strings (a cache)."""

        class _Teacher:
            eos_token_id = teacher_eos

        return cls.build(student_tok, _Teacher(), token_bytes(student_tok), teacher_strings, teacher_size)
