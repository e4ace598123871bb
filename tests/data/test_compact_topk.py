"""The compact top-k cache (data/compact_topk.py): bounded error, exact tail, the capture/reader
path, the losses' masked buckets, and a student trained from it matching one trained from fp16."""

import math

import numpy as np
import pytest
import torch

from reasondistill.data.build import build_dataset, make_examples
from reasondistill.data.compact_topk import CompactCodec, pack_bits, unpack_fields
from reasondistill.data.topk import TopKReader, capture_topk
from reasondistill.models import init_model
from reasondistill.records import Trace
from reasondistill.train.losses import ForwardKL, ReverseKL, TopKTeacher, topk_from_logits

from conftest import TINY


def _zipf_logits(rows, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    rank = torch.stack([torch.randperm(vocab, generator=g) for _ in range(rows)]).float() + 1
    e = 1.0 + 2.0 * torch.rand(rows, 1, generator=g)
    return -e * rank.log() + 0.5 * torch.randn(rows, vocab, generator=g)


def test_bit_fields_round_trip():
    rng = np.random.default_rng(0)
    for width in (1, 5, 9, 15):
        vals = rng.integers(0, 2 ** width, 101)
        packed = pack_bits(vals, width)
        assert len(packed) == math.ceil(101 * width / 8)
        assert (unpack_fields(lambda a, b: packed[a:b], 0, 101, width) == vals).all()
        assert (unpack_fields(lambda a, b: packed[a:b], 37, 20, width) == vals[37:57]).all()


def test_encode_decode_keeps_the_near_top_entries_within_the_bound_and_the_tail_exact():
    vocab, k, rows = 3000, 64, 40
    logits = _zipf_logits(rows, vocab, seed=1)
    top = topk_from_logits(logits.unsqueeze(0), k)
    lp32, ids32, tail32 = top.logprobs[0], top.ids[0], top.tail_logmass[0]
    codec = CompactCodec(k=k, vocab_size=vocab)
    offsets = torch.tensor([0, 13, 13, 40])  # an example with no answer tokens in the middle
    packed = codec.encode(lp32.half(), ids32.int(), tail32.half(), offsets)
    lp, ids, tail = codec.decode_rows(lambda n, a, b: packed[n][a:b], 0, rows, 0)
    assert lp.shape == ids.shape == (rows, k) and lp.dtype == torch.float16 and ids.dtype == torch.int32
    full = torch.log_softmax(logits, -1)
    for r in range(rows):
        kept = {int(i): float(v) for i, v in zip(ids[r], lp[r].float()) if v > -math.inf}
        h = lp32[r].half().float()  # what was encoded
        expect = {int(i) for i, v in zip(ids32[r], h) if float(h[0] - v) <= codec.max_drop}
        assert set(kept) == expect  # exactly the entries within max_drop of the top
        bound = codec.max_logprob_error() + 4e-3  # + fp16 rounding of the top and of the input
        assert max(abs(full[r, i].item() - v) for i, v in kept.items()) <= bound
        rest = torch.ones(vocab, dtype=torch.bool)
        rest[list(kept)] = False
        assert tail[r].item() == pytest.approx(torch.logsumexp(full[r][rest], 0).item(), abs=5e-3)
    # the second example's rows decode the same from its own entry offset
    e = int(packed["entry_offsets"][2])
    lp2, ids2, _ = codec.decode_rows(lambda n, a, b: packed[n][a:b], 13, 40, e)
    assert torch.equal(ids2, ids[13:]) and torch.equal(lp2, lp[13:])
    with pytest.raises(ValueError, match="does not fit"):
        CompactCodec(k=8, vocab_size=100, value_bits=3, max_drop=7.5)


def test_bytes_per_token_at_k128_on_lm_like_logits_is_under_150():
    vocab, k = 32000, 128
    top = topk_from_logits(_zipf_logits(64, vocab, seed=2).unsqueeze(0), k)
    codec = CompactCodec(k=k, vocab_size=vocab)
    packed = codec.encode(top.logprobs[0], top.ids[0], top.tail_logmass[0], torch.tensor([0, 64]))
    assert codec.bytes_per_token(packed) <= 150 < 770


@pytest.mark.parametrize("div", [ForwardKL, ReverseKL])
def test_masked_buckets_are_empty_on_both_sides(div):
    """A -inf teacher entry contributes nothing: the loss equals the one over the other buckets."""
    g = torch.Generator().manual_seed(3)
    s = torch.randn(1, 4, 20, generator=g)
    t = topk_from_logits(torch.randn(1, 4, 20, generator=g), 6)
    lp = t.logprobs.clone()
    lp[..., 4:] = -math.inf
    ids = t.ids.clone()
    ids[..., 4:] = ids[..., :1]
    tail = torch.logsumexp(torch.cat([t.logprobs[..., 4:], t.tail_logmass.unsqueeze(-1)], -1), -1)
    masked = TopKTeacher(lp, ids, tail)
    short = TopKTeacher(t.logprobs[..., :4], t.ids[..., :4], tail)
    labels = torch.zeros(1, 4, dtype=torch.long)
    a, b = div()(s, masked, labels), div()(s, short, labels)
    assert torch.isfinite(a) and a.item() == pytest.approx(b.item(), rel=1e-5)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, arith, char_tokenizer):
    d = tmp_path_factory.mktemp("compact-data")
    problems = arith.problems("train", 48, seed=4)
    traces = [Trace(p.id, 0, p.solution, p.answer, "", 0, 0, "stop", "solver") for p in problems]
    build_dataset(make_examples({p.id: p for p in problems}, traces, "traces"), char_tokenizer, d,
                  max_length=512, val_fraction=0.15, seed=0)
    return {"train": d / "train.safetensors", "val": d / "val.safetensors"}


@pytest.fixture(scope="module")
def caches(tmp_path_factory, dataset, char_tokenizer):
    """A trained-ish (peaked) teacher: sharp rows make max_drop matter. Captured both ways."""
    teacher = init_model(TINY | {"hidden_size": 48}, char_tokenizer, seed=1)
    with torch.no_grad():
        teacher.get_output_embeddings().weight.mul_(40.0)
    d = tmp_path_factory.mktemp("caches")
    v = len(char_tokenizer)
    kw = dict(k=32, temperature=1.0, vocab_size=v, pad_id=char_tokenizer.pad_token_id, shard_size=9)
    fp16 = capture_topk(teacher, dataset, d / "fp16", **kw)
    compact = capture_topk(teacher, dataset, d / "compact", cache="compact", **kw)
    return d, fp16, compact


def test_capture_and_reader_decode_to_the_fp16_layout(caches, dataset, char_tokenizer):
    from reasondistill.data.dataset import TokenizedDataset, collate

    d, fp16_stats, compact_stats = caches
    assert compact_stats["bytes_per_token"] < fp16_stats["bytes_per_token"] / 2
    ref, comp = TopKReader(d / "fp16"), TopKReader(d / "compact")
    ds = TokenizedDataset(dataset["val"])
    batch = collate(ds, list(range(len(ds))), char_tokenizer.pad_token_id)
    (lp_a, id_a, tail_a), (lp_b, id_b, tail_b) = ref.for_batch(batch), comp.for_batch(batch)
    assert lp_b.shape == lp_a.shape and id_b.shape == id_a.shape and tail_b.shape == tail_a.shape
    rows = (lp_a != 0).any(-1)
    dropped = 0
    for b_, t_ in rows.nonzero().tolist():
        want = {int(i): float(v) for i, v in zip(id_a[b_, t_], lp_a[b_, t_].float())}
        got = {int(i): float(v) for i, v in zip(id_b[b_, t_], lp_b[b_, t_].float()) if v > -math.inf}
        assert set(got) <= set(want) and max(abs(want[i] - v) for i, v in got.items()) <= 0.13
        dropped += len(want) - len(got)
    assert dropped > 0  # the peaked teacher really exercises the tail folding


def test_a_student_trained_from_the_compact_cache_matches_one_trained_from_fp16(caches, dataset, char_tokenizer,
                                                                               tmp_path):
    from reasondistill.config import DistillConfig
    from reasondistill.data.dataset import TokenizedDataset, collate
    from reasondistill.train.config import TrainConfig
    from reasondistill.train.kd import OfflineTopKKD, make_loss
    from reasondistill.train.sft import cross_entropy_sum, train_model

    d, _, _ = caches
    cfg = TrainConfig(max_steps=30, epochs=None, batch_size=8, lr=3e-3, save_every=30, log_every=10, eval_every=30)
    loss = make_loss(DistillConfig(source="offline_topk", top_k=32, alpha=0.9, chunk_size=None))
    students = {}
    for name in ("fp16", "compact"):
        students[name] = init_model(TINY, char_tokenizer, seed=0)
        train_model(students[name], char_tokenizer, dataset["train"], dataset["val"], tmp_path / name, cfg, seed=0,
                    objective=OfflineTopKKD(loss, TopKReader(d / name)), show_progress=False)
    start = init_model(TINY, char_tokenizer, seed=0)
    ds = TokenizedDataset(dataset["val"])
    batch = collate(ds, list(range(len(ds))), char_tokenizer.pad_token_id)
    with torch.no_grad():
        ce = {n: cross_entropy_sum(m, batch).item() for n, m in students.items()}
        logits = {n: torch.log_softmax(m(input_ids=batch["input_ids"], use_cache=False).logits, -1)
                  for n, m in students.items()}
    moved = sum((p - q).norm() ** 2 for p, q in zip(students["fp16"].parameters(), start.parameters())) ** 0.5
    apart = sum((p - q).norm() ** 2 for p, q in zip(students["fp16"].parameters(),
                                                      students["compact"].parameters())) ** 0.5
    assert apart < 0.05 * moved  # the two runs end where each other ends, far from where they started
    assert ce["compact"] == pytest.approx(ce["fp16"], rel=0.01)
    keep = batch["attention_mask"].bool()
    kl = (logits["fp16"].exp() * (logits["fp16"] - logits["compact"])).sum(-1)[keep].mean().item()
    assert kl < 1e-3
