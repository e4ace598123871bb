import numpy as np
import torch

from reasondistill.data.build import build_dataset, make_examples, split_problems
from reasondistill.data.dataset import IGNORE_INDEX, TokenizedDataset, collate, length_grouped_batches, round_width
from reasondistill.models import init_model
from reasondistill.records import Trace
from reasondistill.train.sft import cross_entropy_sum

from conftest import TINY


def _solver_traces(problems, n=1):
    return [Trace(p.id, s, p.solution, p.answer, "", 0, 0, "stop", "solver") for p in problems for s in range(n)]


def _build(arith, tokenizer, tmp_path, target="traces", n=60, **kw):
    problems = arith.problems("train", n, seed=0)
    by_id = {p.id: p for p in problems}
    examples = make_examples(by_id, _solver_traces(problems, n=2), target)
    args = dict(max_length=512, val_fraction=0.2, seed=0) | kw
    return problems, examples, build_dataset(examples, tokenizer, tmp_path, **args)


def test_examples_dedupe_and_targets(arith, char_tokenizer, tmp_path):
    problems, examples, stats = _build(arith, char_tokenizer, tmp_path)
    assert len(examples) == len(problems)  # the two identical solver traces collapse
    assert examples[0].completion.startswith("<think>") and examples[0].completion.endswith("\n\n" + problems[0].answer)
    _, answers, _ = _build(arith, char_tokenizer, tmp_path / "a", target="answers_only")
    assert [e.completion for e in answers] == [p.answer for p in problems]


def test_split_is_by_problem_and_seeded(arith, char_tokenizer, tmp_path):
    _, _, stats = _build(arith, char_tokenizer, tmp_path)
    train, val = TokenizedDataset(tmp_path / "train.safetensors"), TokenizedDataset(tmp_path / "val.safetensors")
    assert not set(train.problem_ids) & set(val.problem_ids)
    assert len(val) == stats["val"]["examples"] == 12
    ids = [f"p{i}" for i in range(100)]
    assert split_problems(ids, 0.1, seed=0) == split_problems(list(reversed(ids)), 0.1, seed=0)
    assert split_problems(ids, 0.1, seed=0) != split_problems(ids, 0.1, seed=1)


def test_length_filter_counts(arith, char_tokenizer, tmp_path):
    _, examples, _ = _build(arith, char_tokenizer, tmp_path / "all")
    cut = 50
    _, _, stats = _build(arith, char_tokenizer, tmp_path / "cut", max_length=cut)
    full = TokenizedDataset(tmp_path / "all/train.safetensors").lengths.tolist() + \
        TokenizedDataset(tmp_path / "all/val.safetensors").lengths.tolist()
    assert stats["dropped_too_long"] == sum(l > cut for l in full) > 0
    assert max(TokenizedDataset(tmp_path / "cut/train.safetensors").lengths) <= cut


def test_answer_only_mask(arith, char_tokenizer, tmp_path):
    """Prompt tokens never contribute to the loss: labels are ignored there and the loss has no
    gradient through the logits at positions that predict prompt tokens."""
    _build(arith, char_tokenizer, tmp_path)
    ds = TokenizedDataset(tmp_path / "train.safetensors")
    batch = collate(ds, [0, 1, 2], char_tokenizer.pad_token_id)
    for row in range(3):
        ids, plen = ds[row]
        assert (batch["labels"][row, :plen] == IGNORE_INDEX).all()
        assert batch["labels"][row, plen:len(ids)].tolist() == ids[plen:].tolist()
        assert (batch["labels"][row, len(ids):] == IGNORE_INDEX).all()
        assert char_tokenizer.decode(ids[plen:]).endswith("<|end|>")
        assert char_tokenizer.decode(ids[:plen]).endswith("<|assistant|>")
    model = init_model(TINY, char_tokenizer, seed=0)
    captured = {}

    def keep(_module, _inp, out):
        out.logits.retain_grad()
        captured["logits"] = out.logits
    model.register_forward_hook(keep)
    cross_entropy_sum(model, batch).backward()
    grad = captured["logits"].grad
    for row in range(3):
        _, plen = ds[row]
        assert grad[row, : plen - 1].abs().max() == 0  # logits at t predict token t+1 (a prompt token)
        assert grad[row, plen - 1].abs().max() > 0      # the first completion token is trained


def test_length_grouped_batches_cover_each_example_once_and_pad_less():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 500, size=1000)
    batches = length_grouped_batches(lengths, 16, seed=3, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert batches == length_grouped_batches(lengths, 16, seed=3, epoch=0)
    assert batches != length_grouped_batches(lengths, 16, seed=3, epoch=1)
    random_b = length_grouped_batches(lengths, 16, seed=3, epoch=0, group_by_length=False)

    def waste(bs):
        return sum(len(b) * max(lengths[b]) - lengths[b].sum() for b in bs)
    assert waste(batches) < 0.2 * waste(random_b)


def test_collate_rounds_the_width_up_and_caps_it(arith, char_tokenizer, tmp_path):
    _build(arith, char_tokenizer, tmp_path)
    ds = TokenizedDataset(tmp_path / "train.safetensors")
    pad = char_tokenizer.pad_token_id
    plain = collate(ds, [0, 1, 2], pad)
    longest = plain["input_ids"].shape[1]
    rounded = collate(ds, [0, 1, 2], pad, multiple_of=32)
    width = rounded["input_ids"].shape[1]
    assert width % 32 == 0 and longest <= width < longest + 32
    for key in plain:  # the extra columns are padding: nothing else moves
        assert torch.equal(rounded[key][:, :longest], plain[key])
    assert (rounded["attention_mask"][:, longest:] == 0).all() and (rounded["labels"][:, longest:] == IGNORE_INDEX).all()
    assert (rounded["input_ids"][:, longest:] == pad).all()
    assert collate(ds, [0, 1, 2], pad, multiple_of=32, max_width=longest + 1)["input_ids"].shape[1] == longest + 1
    assert collate(ds, [0, 1, 2], pad, multiple_of=32, max_width=longest - 1)["input_ids"].shape[1] == longest


def test_round_width():
    assert [round_width(n) for n in (1, 63, 64)] == [1, 63, 64]
    assert [round_width(n, 32) for n in (1, 32, 33, 100)] == [32, 32, 64, 128]
    # geometric: unchanged below 128, then multiples of 16 from 128, of 32 from 256, ...
    assert [round_width(n, "geometric") for n in (1, 9, 65, 127, 128, 129, 255, 256, 257, 1000, 1025)] == \
        [1, 9, 65, 127, 128, 144, 256, 256, 288, 1024, 1152]
    for n in range(1, 3000):
        w = round_width(n, "geometric")
        assert n <= w and (w - n) / n < 0.125
    widths = {round_width(n, "geometric") for n in range(513, 1025)}
    assert len(widths) == 8
