"""Cross-tokenizer soft-distillation objectives: the teacher reads the same text in its own
tokens, the two tokenizations are aligned by bytes, and a loss of train/cross_tokenizer.py
compares the distributions at each aligned group's first token.

Why: the student's batch holds student ids only. :class:`CrossTokenizerKD` (``online``, and
``on_policy`` through train/onpolicy.py) re-tokenises every row for the teacher (the prompt
through the teacher's own chat template via :class:`PromptMap`, the answer from the student's
token bytes) and runs it. :class:`CachedCrossTokenizerKD` reads the same rows from a capture
made once (:func:`capture_cross_tokenizer`): the teacher's answer token ids and top-k per
answer token, with the teacher's token strings stored ONCE per vocabulary (``vocab.json``), so
training needs neither the teacher model nor its tokenizer.

    maps = VocabMaps.build(student_tok, teacher_tok, token_bytes(student_tok), token_bytes(teacher_tok))
    loss = make_cross_loss("projection", maps, len(student_tok), len(teacher_tok), distill_cfg)
    objective = CrossTokenizerKD(teacher, loss, student_tok, teacher_tok, PromptMap.build(prompts, student_tok, teacher_tok))
    train_model(student, student_tok, train, val, out, train_cfg, seed=0, objective=objective)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from reasondistill.data.dataset import IGNORE_INDEX, TokenizedDataset
from reasondistill.data.token_alignment import Group, VocabMaps, align_answer, token_bytes
from reasondistill.train.cross_tokenizer import (ProjectedKL, SharedVocabKL, SortedL1,
                                                 dense_teacher_logprobs)
from reasondistill.train.kd import batch_keys, example_key, freeze, model_forward
from reasondistill.train.losses import TopKTeacher

METHODS = ("uld", "aligned", "projection")
VOCAB_FILE = "vocab.json"
VIEW_DIR = "teacher_view"


def make_cross_loss(method: str, maps: VocabMaps, student_vocab: int, teacher_vocab: int, cfg):
    """The loss module of ``distill.cross_tokenizer`` (``cfg``: a DistillConfig)."""
    kw = dict(teacher_vocab=teacher_vocab, temperature=cfg.temperature, alpha=cfg.alpha, chunk_size=cfg.chunk_size)
    if method == "uld":
        return SortedL1(**kw)
    if method == "aligned":
        return SharedVocabKL(maps.shared_teacher, maps.shared_student, student_vocab, **kw)
    if method == "projection":
        return ProjectedKL(maps.head, student_vocab, **kw)
    raise ValueError(f"cross_tokenizer must be one of {METHODS}, got {method!r}")


def teacher_vocab_size(teacher, teacher_tok) -> int:
    """The teacher ids the losses compare: its tokenizer's (extra output rows are padding)."""
    rows = teacher.get_output_embeddings().weight.shape[0]
    if rows < len(teacher_tok):
        raise ValueError(f"the teacher has {rows} output rows for a tokenizer of {len(teacher_tok)} tokens")
    return len(teacher_tok)


def _prompt_key(ids) -> str:
    arr = np.ascontiguousarray(np.asarray(ids, dtype=np.int32))
    return hashlib.blake2b(arr.tobytes(), digest_size=16).hexdigest()


class PromptMap:
    """Student prompt ids -> the same prompt in the teacher's tokens and chat template."""

    def __init__(self, mapping: dict[str, list[int]]):
        self.mapping = mapping

    @classmethod
    def build(cls, prompts: list[str], student_tok, teacher_tok) -> "PromptMap":
        from reasondistill.prompts import render_prompts

        prompts = sorted(set(prompts))
        s = student_tok(render_prompts(student_tok, prompts), add_special_tokens=False)["input_ids"]
        t = teacher_tok(render_prompts(teacher_tok, prompts), add_special_tokens=False)["input_ids"]
        return cls({_prompt_key(a): list(b) for a, b in zip(s, t)})

    def teacher_prompt(self, student_prompt_ids) -> list[int]:
        key = _prompt_key(student_prompt_ids)
        if key not in self.mapping:
            raise KeyError("a batch row's prompt is not among the run's problems (cross-tokenizer distillation "
                           "maps each prompt to the teacher's chat template by the problems file)")
        return self.mapping[key]


def answer_text(ids, s_bytes: list[bytes], eos: int | None) -> tuple[str, bool]:
    """The text of student answer tokens (without a final EOS) and whether the EOS was there."""
    ids = [int(x) for x in ids]
    ended = bool(ids) and eos is not None and ids[-1] == eos
    return b"".join(s_bytes[i] for i in ids[:len(ids) - ended]).decode("utf-8", errors="replace"), ended


def teacher_answer_ids(text: str, ended: bool, teacher_tok) -> list[int]:
    ids = teacher_tok(text, add_special_tokens=False)["input_ids"] if text else []
    return list(ids) + ([teacher_tok.eos_token_id] if ended else [])


def _rows(batch: dict[str, Tensor]) -> list[tuple[int, int]]:
    """(prompt length, length) of every row of a right-padded batch."""
    lengths = batch["attention_mask"].sum(1).tolist()
    targets = batch["labels"] != IGNORE_INDEX
    out = []
    for r, n in enumerate(lengths):
        nz = targets[r].nonzero()
        out.append((int(nz[0]) if len(nz) else int(n), int(n)))
    return out


class _Alignment:
    """Where each student (shifted) position reads its teacher row. Built from per-row groups;
    ``row_of(r, j)`` maps (batch row, teacher answer index) to a flat teacher row index."""

    def __init__(self, batch, spans, t_answers, groups: list[list[Group]], row_of, t_logp_obs=None):
        b, length = batch["input_ids"].shape
        self.index = torch.zeros(b, length - 1, dtype=torch.long)
        self.aligned = torch.zeros(b, length - 1, dtype=torch.bool)
        self.head = torch.zeros(b, length - 1, dtype=torch.long)
        self.chain_pos: list[int] = []  # flat student position of each chain term
        self.chain_row: list[int] = []  # flat teacher row of each chain term
        self.chain_tok: list[int] = []  # the observed teacher token there
        self.no_chain: list[int] = []  # flat student positions without a transfer
        for r, ((plen, _), t_ids, gs) in enumerate(zip(spans, t_answers, groups)):
            for g in gs:
                pos = plen + g.i0 - 1
                if pos < 0:
                    continue
                self.index[r, pos] = row_of(r, g.j0)
                self.aligned[r, pos] = True
                self.head[r, pos] = t_ids[g.j0]
                flat = r * (length - 1) + pos
                if g.chain < 0:
                    self.no_chain.append(flat)
                for j in range(g.j0 + 1, max(g.chain, g.j0 + 1)):
                    self.chain_pos.append(flat)
                    self.chain_row.append(row_of(r, j))
                    self.chain_tok.append(t_ids[j])

    def chain(self, t_rows: tuple[Tensor, ...], vocab: int, temperature: float, shape) -> Tensor:
        """(B, L − 1) log-probability under the teacher of the rest of each aligned student token."""
        out = torch.zeros(shape[0] * shape[1], device=t_rows[0].device)
        if self.chain_row:
            idx = torch.tensor(self.chain_row, device=out.device)
            logp = dense_teacher_logprobs(tuple(x[idx] for x in t_rows), vocab, temperature)
            obs = logp.gather(-1, torch.tensor(self.chain_tok, device=out.device).unsqueeze(-1)).squeeze(-1)
            out.index_add_(0, torch.tensor(self.chain_pos, device=out.device), obs)
        if self.no_chain:
            out[torch.tensor(self.no_chain, device=out.device)] = float("-inf")
        return out.view(shape)

    def gather(self, t_rows: tuple[Tensor, ...], device) -> tuple[Tensor, ...]:
        idx = self.index.to(device)
        return tuple(x[idx] for x in t_rows)


class CrossTokenizerKD:
    """Online cross-tokenizer KD: the frozen teacher runs on each batch re-tokenised in its own
    vocabulary. ``loss``: a module of train/cross_tokenizer.py. Returns the summed per-token loss
    (the loop divides by the global answer-token count)."""

    def __init__(self, teacher_model, loss, student_tok, teacher_tok, prompts: PromptMap):
        self.teacher, self.loss = freeze(teacher_model), loss
        self.tokenizer, self.teacher_tok, self.prompts = student_tok, teacher_tok, prompts
        self.s_bytes, self.t_bytes = token_bytes(student_tok), token_bytes(teacher_tok)
        self.vocab = loss.teacher_vocab

    def teacher_batch(self, batch: dict[str, Tensor]):
        spans = _rows(batch)
        s_eos, t_eos = self.tokenizer.eos_token_id, self.teacher_tok.eos_token_id
        rows, t_answers, groups = [], [], []
        for r, (plen, n) in enumerate(spans):
            ids = batch["input_ids"][r, :n].tolist()
            text, ended = answer_text(ids[plen:], self.s_bytes, s_eos)
            t_ans = teacher_answer_ids(text, ended, self.teacher_tok) if plen < n else []
            prompt = self.prompts.teacher_prompt(ids[:plen]) if plen < n else [self.teacher_tok.pad_token_id]
            rows.append((prompt, t_ans))
            t_answers.append(t_ans)
            groups.append(align_answer(ids[plen:], t_ans, self.s_bytes, self.t_bytes, s_eos, t_eos) if plen < n else [])
        width = max(len(p) + len(a) for p, a in rows)
        pad = self.teacher_tok.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for r, (p, a) in enumerate(rows):
            ids[r, :len(p) + len(a)] = torch.tensor(p + a, dtype=torch.long)
            attn[r, :len(p) + len(a)] = 1

        def row_of(r, j):  # shifted teacher logits: row (r, t) predicts token t + 1
            return r * (width - 1) + len(rows[r][0]) + j - 1

        return {"input_ids": ids, "attention_mask": attn}, _Alignment(batch, spans, t_answers, groups, row_of)

    def __call__(self, model, batch: dict[str, Tensor]) -> Tensor:
        device = batch["input_ids"].device
        t_batch, al = self.teacher_batch(batch)
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        self.loss.to(device)
        with torch.no_grad():
            t_logits = model_forward(self.teacher, {k: v.to(device) for k, v in t_batch.items()}).logits[:, :-1]
            t_logits = t_logits[..., :self.vocab]
            flat = (t_logits.reshape(-1, t_logits.size(-1)),)
            gathered = al.gather(flat, device)
            chain = al.chain(flat, self.vocab, self.loss.temperature, al.index.shape)
        s = model_forward(model, batch).logits[:, :-1]
        return self.loss(s, gathered[0], batch["labels"][:, 1:], al.aligned.to(device), al.head.to(device), chain)


# -- the cross-tokenizer cache ------------------------------------------------------------------

def build_teacher_view(student_path: str | Path, out_path: str | Path, student_tok, teacher_tok,
                       problems: dict[str, str]) -> dict[str, int]:
    """The student's built split re-tokenised for the teacher, example by example (same order,
    same problem ids): teacher prompt (its chat template) + the answer's text in teacher tokens."""
    from reasondistill.data.build import save_split
    from reasondistill.prompts import render_prompts

    ds = TokenizedDataset(student_path)
    s_bytes = token_bytes(student_tok)
    ids, plens = [], []
    prompts = [problems[pid] for pid in ds.problem_ids]
    t_prompts = teacher_tok(render_prompts(teacher_tok, prompts), add_special_tokens=False)["input_ids"] if prompts else []
    for i in range(len(ds)):
        x, plen = ds[i]
        text, ended = answer_text(x[plen:], s_bytes, student_tok.eos_token_id)
        p = list(t_prompts[i])
        ids.append(p + teacher_answer_ids(text, ended, teacher_tok))
        plens.append(len(p))
    save_split(Path(out_path), ids, plens, ds.problem_ids)
    return {"examples": len(ds), "teacher_tokens": sum(len(x) - p for x, p in zip(ids, plens))}


def save_vocab(out_dir: Path, teacher_tok, size: int) -> None:
    """The teacher's token strings, once per vocabulary (hex of their bytes), and its EOS."""
    strings = token_bytes(teacher_tok)[:size]
    strings += [b""] * (size - len(strings))
    tmp = out_dir / (VOCAB_FILE + ".tmp")
    tmp.write_text(json.dumps({"eos": teacher_tok.eos_token_id, "size": size, "strings": [b.hex() for b in strings]}))
    os.replace(tmp, out_dir / VOCAB_FILE)


def load_vocab(cache_dir: str | Path) -> tuple[list[bytes], int, int]:
    data = json.loads((Path(cache_dir) / VOCAB_FILE).read_text())
    return [bytes.fromhex(h) for h in data["strings"]], int(data["eos"]), int(data["size"])


def capture_cross_tokenizer(teacher, teacher_tok, student_tok, splits: dict[str, Path], problems: dict[str, str],
                            out_dir: str | Path, k: int, temperature: float, cache: str = "fp16", **kw) -> dict:
    """Re-tokenise each student split for the teacher, capture the teacher's top-k on it
    (data/topk.py, resumable), and store the teacher's strings once. ``kw`` goes to capture_topk."""
    from reasondistill.data.topk import capture_topk

    out_dir = Path(out_dir)
    (out_dir / VIEW_DIR).mkdir(parents=True, exist_ok=True)
    views, keys = {}, {}
    for split, path in splits.items():
        views[split] = out_dir / VIEW_DIR / f"{split}.safetensors"
        build_teacher_view(path, views[split], student_tok, teacher_tok, problems)
        ds = TokenizedDataset(path)
        keys[split] = [example_key(*ds[i]) for i in range(len(ds))]
    size = teacher_vocab_size(teacher, teacher_tok)
    save_vocab(out_dir, teacher_tok, size)
    (out_dir / "student_keys.json").write_text(json.dumps(keys))
    return capture_topk(teacher, views, out_dir, k=k, temperature=temperature, vocab_size=size,
                        pad_id=teacher_tok.pad_token_id, cache=cache, **kw)


class CachedCrossTokenizerKD:
    """Cross-tokenizer KD from a capture (:func:`capture_cross_tokenizer`): no teacher model or
    tokenizer while training. Each batch row finds its teacher answer tokens and top-k rows by the
    row's content key."""

    def __init__(self, loss, cache_dir: str | Path, student_tok):
        from reasondistill.data.topk import TopKReader

        self.loss, self.dir, self.tokenizer = loss, Path(cache_dir), student_tok
        self.reader = TopKReader(self.dir)
        self.t_bytes, self.t_eos, self.vocab = load_vocab(self.dir)
        self.s_bytes = token_bytes(student_tok)
        keys = json.loads((self.dir / "student_keys.json").read_text())
        self.by_key = {key: (split, i) for split, ks in keys.items() for i, key in enumerate(ks)}
        self.views = {split: TokenizedDataset(self.dir / VIEW_DIR / f"{split}.safetensors") for split in keys}

    def __call__(self, model, batch: dict[str, Tensor]) -> Tensor:
        device = batch["input_ids"].device
        spans = _rows(batch)
        parts, t_answers, groups, offs = [], [], [], [0]
        s_eos = self.tokenizer.eos_token_id
        for r, (key, (plen, n)) in enumerate(zip(batch_keys(batch), spans)):
            if plen >= n:
                t_answers.append([])
                groups.append([])
                offs.append(offs[-1])
                continue
            if key not in self.by_key:
                raise KeyError(f"{self.dir}: batch row {r} is not among the captured examples (dataset rebuilt after "
                               "capture? re-run `reasondistill capture`)")
            split, i = self.by_key[key]
            x, tplen = self.views[split][i]
            t_ans = [int(t) for t in x[tplen:]]
            part = self.reader.example(split, i)
            parts.append(part)
            t_answers.append(t_ans)
            ids = batch["input_ids"][r, plen:n].tolist()
            groups.append(align_answer(ids, t_ans, self.s_bytes, self.t_bytes, s_eos, self.t_eos))
            offs.append(offs[-1] + part[0].shape[0])
        k = self.reader.k
        rows = tuple(torch.cat([p[c] for p in parts]) if parts else torch.zeros((0, k) if c < 2 else (0,))
                     for c in range(3))
        al = _Alignment(batch, spans, t_answers, groups, lambda r, j: offs[r] + j)
        self.loss.to(device)
        flat = tuple(x.to(device) for x in rows)
        if flat[0].shape[0] == 0:  # no captured rows (e.g. the loop's DDP filler batch): CE only
            flat = (torch.zeros(1, k, device=device), torch.zeros(1, k, dtype=torch.long, device=device),
                    torch.zeros(1, device=device))
        lp, ids, tail = al.gather(flat, device)
        chain = al.chain(flat, self.vocab, self.loss.temperature, al.index.shape)
        teacher = TopKTeacher(lp, ids, tail, self.reader.temperature)
        s = model_forward(model, batch).logits[:, :-1]
        return self.loss(s, teacher, batch["labels"][:, 1:], al.aligned.to(device), al.head.to(device), chain)


def vocab_maps_for_cache(cache_dir: str | Path, student_tok) -> tuple[VocabMaps, int]:
    strings, eos, size = load_vocab(cache_dir)
    return VocabMaps.from_strings(student_tok, strings, eos, size), size


