"""Cross-tokenizer distillation: byte alignment (data/token_alignment.py), the three losses against
naive references (train/cross_tokenizer.py), and the online and cached objectives (train/cross_kd.py)
with a character-level teacher and a locally trained BPE student."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from reasondistill.config import DistillConfig
from reasondistill.data.bpe import train_bpe_tokenizer
from reasondistill.data.build import build_dataset, make_examples
from reasondistill.data.dataset import TokenizedDataset, collate
from reasondistill.data.token_alignment import Group, VocabMaps, align_answer, token_bytes
from reasondistill.models import init_model
from reasondistill.records import Trace
from reasondistill.train.cross_kd import (CachedCrossTokenizerKD, CrossTokenizerKD, PromptMap,
                                          capture_cross_tokenizer, make_cross_loss, vocab_maps_for_cache)
from reasondistill.train.cross_tokenizer import ProjectedKL, SharedVocabKL, SortedL1
from reasondistill.train.kd import OnlineKD, make_loss
from reasondistill.train.losses import DivergencePlusCrossEntropy, ForwardKL

from conftest import TINY


@pytest.fixture(scope="module")
def problems(arith):
    return arith.problems("train", 40, seed=3)


@pytest.fixture(scope="module")
def bpe(problems):
    texts = [p.prompt for p in problems] + [f"<think>{p.solution}</think>\n\n{p.answer}" for p in problems]
    return train_bpe_tokenizer(texts, vocab_size=400)


def _build(tok, problems, d):
    traces = [Trace(p.id, 0, p.solution, p.answer, "", 0, 0, "stop", "solver") for p in problems]
    build_dataset(make_examples({p.id: p for p in problems}, traces, "traces"), tok, d, max_length=512,
                  val_fraction=0.2, seed=0)
    return {"train": d / "train.safetensors", "val": d / "val.safetensors"}


@pytest.fixture(scope="module")
def bpe_data(tmp_path_factory, bpe, problems):
    return _build(bpe, problems, tmp_path_factory.mktemp("bpe-data"))


@pytest.fixture(scope="module")
def char_data(tmp_path_factory, char_tokenizer, problems):
    return _build(char_tokenizer, problems, tmp_path_factory.mktemp("char-data"))


@pytest.fixture(scope="module")
def teacher(char_tokenizer):
    return init_model(TINY | {"hidden_size": 48}, char_tokenizer, seed=1)


# -- alignment -----------------------------------------------------------------------------------

def test_token_bytes_spell_the_text_for_byte_level_bpe_and_characters(bpe, char_tokenizer):
    text = "<think>17*8=36\n36+3=39</think>\n\n39 é"
    for tok in (bpe, char_tokenizer):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        b = token_bytes(tok)
        if tok is char_tokenizer:
            text = text[:-2]  # no é in the character vocabulary
            ids = tok(text, add_special_tokens=False)["input_ids"]
        assert b"".join(b[i] for i in ids) == text.encode()
    assert any(len(token_bytes(bpe)[i]) == 2 and token_bytes(bpe)[i].isdigit() for i in range(len(bpe)))


def test_alignment_groups_cut_where_both_tokenizations_have_a_boundary():
    s_bytes = [b"", b"12", b"3", b"+", b"1", b"23", b"E"]
    t_bytes = [b"", b"1", b"2", b"3", b"+", b"12", b"E"]
    s = [1, 2, 3, 4, 5, 6]  # "12" "3" "+" "1" "23" EOS
    t = [1, 2, 3, 4, 5, 3, 6]  # "1" "2" "3" "+" "12" "3" EOS
    groups = align_answer(s, t, s_bytes, t_bytes, s_eos=6, t_eos=6)
    assert groups == [Group(0, 1, 0, 2, 2),     # "12" = "1"+"2": chain over teacher token 1
                      Group(1, 2, 2, 3, 3),     # "3"
                      Group(2, 3, 3, 4, 4),     # "+"
                      Group(3, 5, 4, 6, -1),    # "1""23" vs "12""3": "1" ends inside "12"
                      Group(5, 6, 6, 7, 7)]     # EOS
    # identical tokenizations: one group per token; a byte disagreement stops the alignment there
    assert len(align_answer(t, t, t_bytes, t_bytes, 6, 6)) == len(t)
    assert align_answer([1, 2, 3], [1, 2, 5], t_bytes, t_bytes) == [Group(0, 1, 0, 1, 1), Group(1, 2, 1, 2, 2)]


# -- losses against naive references -------------------------------------------------------------

def _rand(b, l, v, seed, scale=2.0):
    return torch.randn(b, l, v, generator=torch.Generator().manual_seed(seed)) * scale


def _naive(method, s, t, labels, aligned, head, chain, s_bytes, t_bytes, s_eos, t_eos, student_tok, T, alpha):
    """Row by row, with Python dicts over token strings."""
    total = 0.0
    s_by = {}
    for i, b in enumerate(s_bytes):
        if b and i != s_eos:
            s_by.setdefault(b, i)
    for bi in range(s.shape[0]):
        for li in range(s.shape[1]):
            y = int(labels[bi, li])
            if y == -100:
                continue
            logq = F.log_softmax(s[bi, li] / T, -1)
            ce = float(torch.logsumexp(s[bi, li], -1) - s[bi, li, y])
            d = 0.0
            if aligned[bi, li]:
                p = F.softmax(t[bi, li] / T, -1).tolist()
                q = logq.exp().tolist()
                if method == "uld":
                    ps, qs = sorted(p, reverse=True), sorted(q, reverse=True)
                    n = max(len(ps), len(qs))
                    ps, qs = ps + [0.0] * (n - len(ps)), qs + [0.0] * (n - len(qs))
                    d = sum(abs(a - c) for a, c in zip(ps, qs))
                elif method == "aligned":
                    pairs = {t_eos: s_eos} | {ti: s_by[b] for ti, b in enumerate(t_bytes) if b in s_by and ti != t_eos}
                    d = sum(p[ti] * math.log(p[ti] / q[si]) for ti, si in pairs.items() if p[ti] > 0)
                    rp = 1 - sum(p[ti] for ti in pairs)
                    rq = 1 - sum(q[si] for si in pairs.values())
                    if rp > 1e-9:
                        d += rp * math.log(rp / rq)
                    up = sorted((p[ti] for ti in range(len(p)) if ti not in pairs), reverse=True)
                    uq = sorted((q[si] for si in range(len(q)) if si not in set(pairs.values())), reverse=True)
                    n = max(len(up), len(uq))
                    if up and uq:  # as GOLD: only when both sides have unshared ids
                        d += sum(abs(a - c) for a, c in zip(up + [0.0] * (n - len(up)), uq + [0.0] * (n - len(uq))))
                else:
                    r = [0.0] * len(q)
                    heads = []
                    for ti, b in enumerate(t_bytes):
                        if ti == t_eos:
                            h = s_eos
                        elif b in s_by:
                            h = s_by[b]
                        else:
                            first = student_tok(b.decode(), add_special_tokens=False)["input_ids"][:1] if b else []
                            h = first[0] if first else s_eos
                        heads.append(h)
                        r[h] += p[ti]
                    hd = int(head[bi, li])
                    moved = min(p[hd] * math.exp(float(chain[bi, li])), r[heads[hd]])
                    r[heads[hd]] -= moved
                    r[y] += moved
                    d = sum(ri * math.log(ri / q[j]) for j, ri in enumerate(r) if ri > 0)
            total += alpha * T * T * d + (1 - alpha) * ce
    return total


@pytest.mark.parametrize("method", ["uld", "aligned", "projection"])
@pytest.mark.parametrize("chunk", [None, 3])
def test_each_loss_matches_its_naive_reference(method, chunk, bpe, char_tokenizer):
    s_bytes, t_bytes = token_bytes(bpe), token_bytes(char_tokenizer)
    maps = VocabMaps.build(bpe, char_tokenizer, s_bytes, t_bytes)
    vs, vt = len(bpe), len(char_tokenizer)
    cfg = DistillConfig(temperature=1.5, alpha=0.6, chunk_size=chunk)
    loss = make_cross_loss(method, maps, vs, vt, cfg)
    s, t = _rand(2, 5, vs, 0).requires_grad_(True), _rand(2, 5, vt, 1)
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(0, vs, (2, 5), generator=g)
    labels[0, 0] = -100
    aligned = torch.rand(2, 5, generator=g) < 0.7
    head = torch.randint(8, vt, (2, 5), generator=g)
    chain = torch.where(torch.rand(2, 5, generator=g) < 0.5, -torch.rand(2, 5, generator=g), torch.tensor(-math.inf))
    got = loss(s, t, labels, aligned, head, chain)
    want = _naive(method, s.detach(), t, labels, aligned, head, chain, s_bytes, t_bytes, bpe.eos_token_id,
                  char_tokenizer.eos_token_id, bpe, 1.5, 0.6)
    assert got.item() == pytest.approx(want, rel=1e-4)
    got.backward()
    ref = s.detach().clone().requires_grad_(True)
    make_cross_loss(method, maps, vs, vt, DistillConfig(temperature=1.5, alpha=0.6, chunk_size=None))(
        ref, t, labels, aligned, head, chain).backward()
    assert torch.allclose(s.grad, ref.grad, atol=1e-6)


@pytest.mark.parametrize("method", ["aligned", "projection"])
def test_with_identical_tokenizers_the_loss_is_plain_forward_kl(method, char_tokenizer):
    b = token_bytes(char_tokenizer)
    maps = VocabMaps.build(char_tokenizer, char_tokenizer, b, b)
    v = len(char_tokenizer)
    assert len(maps.shared_teacher) == v - sum(1 for x in b if not x) and torch.equal(maps.head, torch.arange(v))
    s, t = _rand(3, 6, v, 4).requires_grad_(True), _rand(3, 6, v, 5)
    labels = torch.randint(0, v, (3, 6), generator=torch.Generator().manual_seed(6))
    labels[1, :2] = -100
    aligned = torch.ones(3, 6, dtype=torch.bool)
    head = labels.clamp(min=0)
    chain = torch.zeros(3, 6)  # the teacher's first token IS the student's: the transfer is a no-op
    cfg = DistillConfig(temperature=2.0, alpha=0.7, chunk_size=4)
    got = make_cross_loss(method, maps, v, v, cfg)(s, t, labels, aligned, head, chain)
    ref_s = s.detach().clone().requires_grad_(True)
    want = DivergencePlusCrossEntropy(ForwardKL(temperature=2.0), alpha=0.7, chunk_size=4)(ref_s, t, labels)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    got.backward()
    want.backward()
    assert torch.allclose(s.grad, ref_s.grad, atol=1e-6)


def test_losses_are_zero_for_a_student_equal_to_the_teacher(char_tokenizer):
    b = token_bytes(char_tokenizer)
    maps = VocabMaps.build(char_tokenizer, char_tokenizer, b, b)
    v = len(char_tokenizer)
    t = _rand(2, 4, v, 7)
    labels = torch.randint(0, v, (2, 4), generator=torch.Generator().manual_seed(8))
    for method in ("uld", "aligned", "projection"):
        loss = make_cross_loss(method, maps, v, v, DistillConfig(alpha=1.0))
        assert loss(t.clone(), t, labels, torch.ones(2, 4, dtype=torch.bool), labels, torch.zeros(2, 4)).item() \
            == pytest.approx(0.0, abs=1e-5)


# -- objectives ----------------------------------------------------------------------------------

def _prompts(problems, student_tok, teacher_tok):
    return PromptMap.build([p.prompt for p in problems], student_tok, teacher_tok)


@pytest.mark.parametrize("method", ["aligned", "projection"])
def test_online_objective_with_the_teachers_own_tokenizer_equals_online_kd(method, char_data, char_tokenizer,
                                                                          teacher, problems):
    """Re-tokenising, prompt mapping and alignment are the identity when both tokenizers are one."""
    b = token_bytes(char_tokenizer)
    maps = VocabMaps.build(char_tokenizer, char_tokenizer, b, b)
    v = len(char_tokenizer)
    cfg = DistillConfig(temperature=1.3, alpha=0.5, chunk_size=16)
    cross = CrossTokenizerKD(teacher, make_cross_loss(method, maps, v, v, cfg), char_tokenizer, char_tokenizer,
                             _prompts(problems, char_tokenizer, char_tokenizer))
    plain = OnlineKD(teacher, make_loss(cfg))
    student = init_model(TINY, char_tokenizer, seed=0)
    batch = collate(TokenizedDataset(char_data["train"]), [0, 3, 7], char_tokenizer.pad_token_id)
    assert cross(copy.deepcopy(student), batch).item() == pytest.approx(plain(student, batch).item(), rel=1e-5)


@pytest.mark.parametrize("method", ["uld", "aligned", "projection"])
def test_cached_equals_online_with_a_full_capture_and_needs_no_teacher(method, bpe, bpe_data, char_tokenizer,
                                                                       teacher, problems, tmp_path):
    v_t, v_s = len(char_tokenizer), len(bpe)
    cfg = DistillConfig(temperature=1.0, alpha=0.5, chunk_size=8)
    stats = capture_cross_tokenizer(teacher, char_tokenizer, bpe, bpe_data, {p.id: p.prompt for p in problems},
                                    tmp_path, k=v_t, temperature=1.0, shard_size=7)
    assert stats["examples"] == sum(len(TokenizedDataset(p)) for p in bpe_data.values())
    maps = VocabMaps.build(bpe, char_tokenizer, token_bytes(bpe), token_bytes(char_tokenizer))
    stored, size = vocab_maps_for_cache(tmp_path, bpe)  # the same maps from the strings stored once
    assert size == v_t and torch.equal(stored.head, maps.head) and torch.equal(stored.shared_student,
                                                                                 maps.shared_student)
    online = CrossTokenizerKD(teacher, make_cross_loss(method, maps, v_s, v_t, cfg), bpe, char_tokenizer,
                              _prompts(problems, bpe, char_tokenizer))
    cached = CachedCrossTokenizerKD(make_cross_loss(method, stored, v_s, v_t, cfg), tmp_path, bpe)
    student = init_model(TINY, bpe, seed=0)
    for split, idx in (("train", [0, 4, 9]), ("val", [1, 0])):
        batch = collate(TokenizedDataset(bpe_data[split]), idx, bpe.pad_token_id)
        s1, s2 = copy.deepcopy(student), copy.deepcopy(student)
        a, c = online(s1, batch), cached(s2, batch)
        assert a.item() == pytest.approx(c.item(), rel=2e-3)
        a.backward()
        c.backward()
        for p1, p2 in zip(s1.parameters(), s2.parameters()):
            assert torch.allclose(p1.grad, p2.grad, rtol=2e-2, atol=2e-4)
    # groups really span several teacher tokens (two-digit numbers are one BPE token)
    t_batch, al = online.teacher_batch(batch)
    assert t_batch["input_ids"].shape[1] > batch["input_ids"].shape[1]
    assert al.chain_row


def test_a_bpe_student_trains_from_a_compact_cross_tokenizer_cache(bpe, bpe_data, char_tokenizer, teacher, problems,
                                                                   tmp_path):
    from reasondistill.train.config import TrainConfig
    from reasondistill.train.sft import train_model

    capture_cross_tokenizer(teacher, char_tokenizer, bpe, bpe_data, {p.id: p.prompt for p in problems},
                            tmp_path / "cache", k=16, temperature=1.0, cache="compact")
    maps, size = vocab_maps_for_cache(tmp_path / "cache", bpe)
    loss = make_cross_loss("projection", maps, len(bpe), size, DistillConfig(chunk_size=16))
    cfg = TrainConfig(max_steps=4, epochs=None, batch_size=8, save_every=4, log_every=1, eval_every=4)
    summary = train_model(init_model(TINY, bpe, seed=0), bpe, bpe_data["train"], bpe_data["val"], tmp_path / "out",
                          cfg, seed=0, objective=CachedCrossTokenizerKD(loss, tmp_path / "cache", bpe),
                          show_progress=False)
    assert summary["steps"] == 4 and math.isfinite(summary["final_val_loss"])


def test_sorted_l1_ignores_token_identity():
    p = torch.tensor([[0.7, 0.2, 0.1]])
    q = torch.tensor([[0.1, 0.7, 0.2, 0.0]])
    loss = SortedL1(teacher_vocab=3, alpha=1.0)
    s = q.clamp(min=1e-12).log().unsqueeze(0)
    t = p.log().unsqueeze(0)
    one = torch.ones(1, 1, dtype=torch.bool)
    assert loss(s, t, torch.zeros(1, 1, dtype=torch.long), one).item() == pytest.approx(0.0, abs=1e-6)
    assert isinstance(make_cross_loss("aligned", VocabMaps(torch.tensor([0]), torch.tensor([0]), torch.zeros(3).long()),
                                      4, 3, DistillConfig()), SharedVocabKL)
    assert isinstance(make_cross_loss("projection", VocabMaps(torch.tensor([0]), torch.tensor([0]),
                                                               torch.zeros(3).long()), 4, 3, DistillConfig()),
                      ProjectedKL)


def test_dense_teacher_from_top_k_spreads_the_tail_and_ignores_padding():
    from reasondistill.train.cross_tokenizer import dense_teacher_logprobs

    inf = float("-inf")
    lp = torch.tensor([[math.log(0.5), math.log(0.2), inf, inf]])  # two listed, then padding (repeats of id 3)
    ids = torch.tensor([[3, 1, 3, 3]])
    tail = torch.tensor([math.log(0.3)])
    got = dense_teacher_logprobs((lp, ids, tail), 5, 1.0).exp()[0]
    assert torch.allclose(got, torch.tensor([0.1, 0.2, 0.1, 0.5, 0.1]), atol=1e-6)
    # a real zero-probability entry (a distinct id) stays zero and is not given tail mass
    lp2 = torch.tensor([[math.log(0.7), inf]])
    got2 = dense_teacher_logprobs((lp2, torch.tensor([[0, 2]]), torch.tensor([math.log(0.3)])), 4, 1.0).exp()[0]
    assert torch.allclose(got2, torch.tensor([0.7, 0.15, 0.0, 0.15]), atol=1e-6)
