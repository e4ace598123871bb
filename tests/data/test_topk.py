"""Offline top-k capture (data/topk.py): round trip, collate alignment, resume after a kill."""

import json

import pytest
import torch

from reasondistill.data import topk as topk_mod
from reasondistill.data.build import build_dataset, make_examples
from reasondistill.data.dataset import IGNORE_INDEX, TokenizedDataset, collate
from reasondistill.data.topk import TopKReader, bytes_per_token, capture_topk
from reasondistill.models import init_model
from reasondistill.records import Trace
from reasondistill.train.losses import topk_from_logits

from conftest import TINY


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, arith, char_tokenizer):
    d = tmp_path_factory.mktemp("topk-data")
    problems = arith.problems("train", 30, seed=1)
    traces = [Trace(p.id, 0, p.solution, p.answer, "", 0, 0, "stop", "solver") for p in problems]
    build_dataset(make_examples({p.id: p for p in problems}, traces, "traces"), char_tokenizer, d,
                  max_length=512, val_fraction=0.2, seed=0)
    return {"train": d / "train.safetensors", "val": d / "val.safetensors"}


@pytest.fixture(scope="module")
def teacher(char_tokenizer):
    return init_model(TINY | {"hidden_size": 48}, char_tokenizer, seed=1)


def _capture(teacher, dataset, out, tok, **kw):
    return capture_topk(teacher, dataset, out, **({"k": 8, "temperature": 2.0, "pad_id": tok.pad_token_id,
                                                   "shard_size": 5, "max_tokens": 700} | kw))


def test_round_trip_matches_the_teacher_in_collate_layout(teacher, dataset, char_tokenizer, tmp_path):
    stats = _capture(teacher, dataset, tmp_path, char_tokenizer)
    ds = TokenizedDataset(dataset["train"])
    assert stats["examples"] == len(ds) + len(TokenizedDataset(dataset["val"]))
    assert stats["payload_bytes_per_token"] == bytes_per_token(8) == 50
    assert 50 <= stats["bytes_per_token"] < 80  # payload + offsets and headers
    index = json.loads((tmp_path / "index.json").read_text())
    assert len(index["splits"]["train"]["shards"]) == -(-len(ds) // 5)
    reader = TopKReader(tmp_path)
    idx = [7, 0, 11, 3]
    batch = collate(ds, idx, char_tokenizer.pad_token_id)
    lp, ids, tail = reader.get("train", idx, ds)
    assert lp.shape == (4, batch["input_ids"].shape[1], 8) and lp.dtype == torch.float16 and ids.dtype == torch.int32
    with torch.no_grad():
        logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    ref = topk_from_logits(logits[:, :-1], 8, temperature=2.0)  # position t - 1 predicts label t
    keep = batch["labels"][:, 1:] != IGNORE_INDEX
    assert torch.equal(ids[:, 1:][keep].long(), ref.ids[keep])
    assert torch.allclose(lp[:, 1:][keep].float(), ref.logprobs[keep], atol=2e-3)
    assert torch.allclose(tail[:, 1:][keep].float(), ref.tail_logmass[keep], atol=2e-3)
    assert (lp[:, 1:][~keep] == 0).all()
    # the content-keyed path finds the same rows for a collated batch, val rows included
    assert all(torch.equal(a, b) for a, b in zip(reader.for_batch(batch), (lp, ids, tail)))
    val = collate(TokenizedDataset(dataset["val"]), [1, 0], char_tokenizer.pad_token_id)
    assert torch.equal(reader.for_batch(val)[1], reader.get("val", [1, 0])[1])
    filler = batch | {"labels": torch.full_like(batch["labels"], IGNORE_INDEX)}  # no answer tokens: zeros
    assert all((x == 0).all() for x in reader.for_batch(filler))
    stranger = batch | {"input_ids": batch["input_ids"].clone()}
    stranger["input_ids"][0, 2] += 1
    with pytest.raises(KeyError, match="not among the captured examples"):
        reader.for_batch(stranger)


def test_capture_resumes_after_a_kill_and_repairs_torn_shards(teacher, dataset, char_tokenizer, tmp_path,
                                                              monkeypatch):
    full = tmp_path / "full"
    _capture(teacher, dataset, full, char_tokenizer)
    real = topk_mod.capture_shard
    calls = {"n": 0}

    def dying(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kw)
    part = tmp_path / "part"
    monkeypatch.setattr(topk_mod, "capture_shard", dying)
    with pytest.raises(KeyboardInterrupt):
        _capture(teacher, dataset, part, char_tokenizer)
    monkeypatch.setattr(topk_mod, "capture_shard", real)
    assert not (part / "index.json").exists()
    done = sorted((part / "train").glob("shard-*.safetensors"))
    assert len(done) == 2
    done[1].write_bytes(done[1].read_bytes()[:100])  # torn, as if killed mid-write without the rename
    (part / "train/shard-00002.safetensors.tmp").write_bytes(b"junk")
    stats = _capture(teacher, dataset, part, char_tokenizer)
    assert stats["shards_reused"] == 1 and not list(part.rglob("*.tmp"))
    for split in ("train", "val"):
        a, b = TopKReader(full), TopKReader(part)
        n = a.index["splits"][split]["examples"]
        assert all(torch.equal(x, y) for x, y in zip(a.get(split, range(n)), b.get(split, range(n))))
    again = _capture(teacher, dataset, part, char_tokenizer)
    assert again["shards_reused"] == again["shards"]
    other_k = _capture(teacher, dataset, part, char_tokenizer, k=4)  # another config recomputes everything
    assert other_k["shards_reused"] == 0 and TopKReader(part).k == 4
    retrained = init_model(TINY | {"hidden_size": 48}, char_tokenizer, seed=2)  # and so does another teacher
    assert _capture(retrained, dataset, part, char_tokenizer, k=4)["shards_reused"] == 0


def _corrupt_payload(path):
    """Flip bytes near the end: the safetensors header stays intact and parseable."""
    data = bytearray(path.read_bytes())
    for i in range(len(data) - 40, len(data) - 8):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def test_a_shard_corrupted_behind_its_header_is_captured_again_and_never_read(teacher, dataset, char_tokenizer,
                                                                               tmp_path):
    from reasondistill.data.topk import _shard_meta

    _capture(teacher, dataset, tmp_path, char_tokenizer)
    shard = tmp_path / "train/shard-00001.safetensors"
    good = TopKReader(tmp_path).get("train", [5, 6])
    meta = _shard_meta(shard)
    _corrupt_payload(shard)
    assert _shard_meta(shard) == meta  # the header still reads as before
    with pytest.raises(ValueError, match="shard-00001.safetensors: corrupt"):
        TopKReader(tmp_path).get("train", [5, 6])
    stats = _capture(teacher, dataset, tmp_path, char_tokenizer)
    assert stats["shards_reused"] == stats["shards"] - 1
    assert all(torch.equal(a, b) for a, b in zip(TopKReader(tmp_path).get("train", [5, 6]), good))
