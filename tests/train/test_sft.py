import csv

import pytest
import torch

from reasondistill.data.build import build_dataset, make_examples
from reasondistill.data.dataset import TokenizedDataset, collate
from reasondistill.models import init_model
from reasondistill.records import Trace
from reasondistill.train.config import TrainConfig
from reasondistill.train.sft import accumulate_gradients, cross_entropy_sum, train_model

from conftest import QWEN_HEAD32, TINY


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, arith, char_tokenizer):
    d = tmp_path_factory.mktemp("data")
    problems = arith.problems("train", 80, seed=0)
    traces = [Trace(p.id, 0, p.solution, p.answer, "", 0, 0, "stop", "solver") for p in problems]
    build_dataset(make_examples({p.id: p for p in problems}, traces, "traces"), char_tokenizer, d,
                  max_length=512, val_fraction=0.1, seed=0)
    return d


def _rows(path):
    with open(path) as fh:
        return [r for r in csv.DictReader(fh)]


def _cfg(**kw):
    return TrainConfig(**({"max_steps": 8, "epochs": None, "batch_size": 8, "lr": 3e-3, "save_every": 4,
                           "keep_checkpoints": 5, "log_every": 1, "eval_every": 4} | kw))


def test_training_lowers_loss_and_writes_outputs(dataset, char_tokenizer, tmp_path):
    model = init_model(TINY, char_tokenizer, seed=0)
    summary = train_model(model, char_tokenizer, dataset / "train.safetensors", dataset / "val.safetensors",
                          tmp_path, _cfg(max_steps=30, save_every=30, log_every=5, eval_every=10), seed=0,
                          show_progress=False)
    rows = _rows(tmp_path / "metrics.csv")
    train = [float(r["train_loss"]) for r in rows if r["train_loss"]]
    assert train[-1] < train[0] * 0.8
    assert summary["steps"] == 30 and summary["final_val_loss"] == pytest.approx(float(
        [r for r in rows if r["val_loss"]][-1]["val_loss"]), rel=1e-5)
    assert (tmp_path / "final/model.safetensors").exists() and (tmp_path / "final/tokenizer.json").exists()
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))  # no pickles
    assert list((tmp_path / "tb").iterdir())


class Crash(RuntimeError):
    pass


def test_resume_after_a_crash_continues_the_same_curve(dataset, char_tokenizer, tmp_path):
    args = (char_tokenizer, dataset / "train.safetensors", dataset / "val.safetensors")
    train_model(init_model(TINY, char_tokenizer, seed=0), *args, tmp_path / "a", _cfg(), seed=0, show_progress=False)

    calls = {"n": 0}

    def crashing(model, batch):  # dies in the middle of step 6, after the step-4 checkpoint
        calls["n"] += 1
        if calls["n"] == 6:
            raise Crash("killed")
        return cross_entropy_sum(model, batch)
    with pytest.raises(Crash):
        train_model(init_model(TINY, char_tokenizer, seed=0), *args, tmp_path / "b", _cfg(), seed=0,
                    objective=crashing, show_progress=False)
    assert (tmp_path / "b/checkpoints/step-4").exists() and not (tmp_path / "b/final").exists()
    # resume into a *differently initialised* model: everything must come from the checkpoint
    train_model(init_model(TINY, char_tokenizer, seed=99), *args, tmp_path / "b", _cfg(), seed=0, show_progress=False)
    a, b = _rows(tmp_path / "a/metrics.csv"), _rows(tmp_path / "b/metrics.csv")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("train_loss", "val_loss", "lr"):
            if ra[key]:
                assert float(ra[key]) == pytest.approx(float(rb[key]), rel=1e-5, abs=1e-7), (ra["step"], key)
    from safetensors.torch import load_file
    wa, wb = load_file(tmp_path / "a/final/model.safetensors"), load_file(tmp_path / "b/final/model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_ctrl_c_ends_the_step_saves_it_and_resumes_exactly(dataset, char_tokenizer, tmp_path):
    """SIGINT during step 6 (checkpoints every 4): the step ends, step-6 is saved, then KeyboardInterrupt;
    resumed, the final weights equal a run never stopped. A second SIGINT stops at once, saving nothing."""
    import os
    import signal

    from safetensors.torch import load_file

    args = (char_tokenizer, dataset / "train.safetensors", dataset / "val.safetensors")
    train_model(init_model(TINY, char_tokenizer, seed=0), *args, tmp_path / "a", _cfg(), seed=0, show_progress=False)

    def interrupting(times):
        calls = {"n": 0}

        def objective(model, batch):
            calls["n"] += model.training  # training micro-batches only (validation calls it too)
            if calls["n"] == 6 and model.training:  # in the middle of step 6
                for _ in range(times):
                    os.kill(os.getpid(), signal.SIGINT)
            return cross_entropy_sum(model, batch)
        return objective
    with pytest.raises(KeyboardInterrupt):
        train_model(init_model(TINY, char_tokenizer, seed=0), *args, tmp_path / "b", _cfg(), seed=0,
                    objective=interrupting(1), show_progress=False)
    assert (tmp_path / "b/checkpoints/step-6").exists() and not (tmp_path / "b/final").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    train_model(init_model(TINY, char_tokenizer, seed=99), *args, tmp_path / "b", _cfg(), seed=0, show_progress=False)
    wa, wb = load_file(tmp_path / "a/final/model.safetensors"), load_file(tmp_path / "b/final/model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(KeyboardInterrupt):
        train_model(init_model(TINY, char_tokenizer, seed=0), *args, tmp_path / "c", _cfg(), seed=0,
                    objective=interrupting(2), show_progress=False)
    assert sorted(p.name for p in (tmp_path / "c/checkpoints").iterdir()) == ["step-4"]


def test_changed_schedule_refuses_to_resume(dataset, char_tokenizer, tmp_path):
    args = (char_tokenizer, dataset / "train.safetensors", dataset / "val.safetensors")
    train_model(init_model(TINY, char_tokenizer, seed=0), *args, tmp_path, _cfg(max_steps=4), seed=0, show_progress=False)
    with pytest.raises(ValueError, match="checkpoint was for 4 steps"):
        train_model(init_model(TINY, char_tokenizer, seed=0), *args, tmp_path, _cfg(max_steps=6), seed=0,
                    show_progress=False)


def test_gradient_accumulation_equals_one_big_batch(dataset, char_tokenizer):
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    ds = TokenizedDataset(dataset / "train.safetensors")
    pad = char_tokenizer.pad_token_id
    parts = [[0, 1, 2], [3, 4], [5, 6, 7, 8]]  # unequal sizes and token counts
    grads = []
    for groups in (parts, [sum(parts, [])]):
        model = init_model(TINY, char_tokenizer, seed=0)
        tokens = sum(ds.target_tokens(g) for g in groups)
        accumulate_gradients(model, [collate(ds, g, pad) for g in groups], cross_entropy_sum, acc, tokens)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-4), n
    # and it is the gradient of the mean per-token loss over the union
    model = init_model(TINY, char_tokenizer, seed=0)
    big = collate(ds, sum(parts, []), pad)
    (cross_entropy_sum(model, big) / ds.target_tokens(sum(parts, []))).backward()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[1][n], atol=1e-6, rtol=1e-4), n


def test_accumulate_gradients_never_reads_the_device(monkeypatch):
    """The issue asks for no per-step host syncs: accumulating a step's micro-batches must not copy
    a value back to the host (on a GPU, each copy waits for the queued kernels). Every Tensor method
    that reads a value into Python is made to fail while our code runs (a plain torch model and
    objective, so only ``accumulate_gradients`` itself is checked)."""
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 3)
    batches = [{"x": torch.randn(2, 4)}, {"x": torch.randn(5, 4)}]

    def read(*_a, **_k):
        raise AssertionError("a device value was read on the host")

    for name in ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, read)
    total = accumulate_gradients(model, batches, lambda m, b: m(b["x"]).pow(2).sum(), acc, local_tokens=7)
    monkeypatch.undo()
    assert total.device == acc.device and total.dtype == torch.float64
    with torch.no_grad():
        expected = sum(float(model(b["x"]).pow(2).sum()) for b in batches)
    assert abs(float(total) - expected) < 1e-4 * expected
    assert model.weight.grad is not None


def test_mixed_precision_auto_resolves_and_is_reported(dataset, char_tokenizer, tmp_path):
    import torch

    from reasondistill.train.config import resolve_mixed_precision

    assert resolve_mixed_precision("no") == "no" and resolve_mixed_precision("bf16") == "bf16"
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert not torch.cuda.is_available()  # this suite runs on CPU
    expected = "bf16" if native else "no"
    assert resolve_mixed_precision("auto") == expected
    model = init_model(TINY, char_tokenizer, seed=0)
    summary = train_model(model, char_tokenizer, dataset / "train.safetensors", None, tmp_path,
                          _cfg(max_steps=2, mixed_precision="auto"), seed=0, show_progress=False)
    assert summary["mixed_precision"] == expected
    assert summary["attention"] == ("reasondistill/attention.py" if expected == "bf16" else "sdpa")  # TINY: head_dim 16
    assert summary["pad_to_multiple_of"] == ("geometric" if expected == "bf16" else 1)


def test_students_with_different_precisions_in_one_process(dataset, char_tokenizer, tmp_path):
    """accelerate's process-wide state would refuse the second precision; train_model resets it."""
    for precision in ("no", "bf16", "no"):
        model = init_model(TINY, char_tokenizer, seed=0)
        summary = train_model(model, char_tokenizer, dataset / "train.safetensors", None, tmp_path / precision,
                              _cfg(max_steps=1, mixed_precision=precision), seed=0, show_progress=False)
        assert summary["mixed_precision"] == precision


def test_padding_to_a_multiple_changes_no_loss(dataset, char_tokenizer, tmp_path):
    """Right padding is invisible to a causal model at real positions: rounding every micro-batch up
    to 32 columns trains the same curve (fp32); auto rounds only bf16 on CPU."""
    curves = {}
    for multiple in (1, 32, "geometric"):
        model = init_model(TINY, char_tokenizer, seed=0)
        summary = train_model(model, char_tokenizer, dataset / "train.safetensors", None, tmp_path / str(multiple),
                              _cfg(max_steps=6, pad_to_multiple_of=multiple), seed=0, show_progress=False)
        assert summary["pad_to_multiple_of"] == multiple
        curves[multiple] = [float(r["train_loss"]) for r in _rows(tmp_path / str(multiple) / "metrics.csv")
                            if r["train_loss"]]
    assert curves[1] == pytest.approx(curves[32], rel=1e-5) == curves["geometric"] and len(curves[1]) == 6
    summary = train_model(init_model(TINY, char_tokenizer, seed=0), char_tokenizer, dataset / "train.safetensors",
                          None, tmp_path / "auto", _cfg(max_steps=1), seed=0, show_progress=False)
    assert summary["pad_to_multiple_of"] == 1  # fp32
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        _cfg(pad_to_multiple_of=0)


@pytest.mark.parametrize("spec,attention", [(TINY, "sdpa"), (QWEN_HEAD32, "reasondistill/attention.py")])
def test_packing_trains_the_same_curve(dataset, char_tokenizer, tmp_path, spec, attention):
    """Packed rows (several examples per row, position_ids restarting) give every example the loss
    it has alone, so the curve equals the padded one (fp32): with sdpa's dense block-diagonal mask
    and with reasondistill/attention.py's packed path (head_dim 32: used in fp32 too)."""
    ds = TokenizedDataset(dataset / "train.safetensors")
    pack = int(ds.lengths.max()) + 40  # several examples per row, several rows per step
    curves = {}
    for packing in (False, True):
        model = init_model(spec, char_tokenizer, seed=0)
        out = tmp_path / str(packing)
        summary = train_model(model, char_tokenizer, dataset / "train.safetensors", None, out,
                              _cfg(max_steps=6, batch_size=4, grad_accum=2, packing=packing, pack_tokens=pack),
                              seed=0, show_progress=False)
        assert summary["attention"] == attention
        assert summary["pack_tokens"] == (pack if packing else None)
        if packing:  # several examples per row: fewer forward passes than the 6 x 8 examples
            assert summary["micro_batches"] < 6 * 8
        else:
            assert summary["micro_batches"] == 6 * 2
        rows = [r for r in _rows(out / "metrics.csv") if r["train_loss"]]
        curves[packing] = [float(r["train_loss"]) for r in rows]
        assert sum(int(r["target_tokens"]) for r in rows) > 0
    assert curves[True] == pytest.approx(curves[False], rel=1e-5) and len(curves[True]) == 6


def test_packing_refuses_what_it_cannot_do(dataset, char_tokenizer, tmp_path):
    ds = TokenizedDataset(dataset / "train.safetensors")
    model = init_model(TINY, char_tokenizer, seed=0)
    with pytest.raises(ValueError, match=r"train\.safetensors: train\.pack_tokens=10 is shorter"):
        train_model(model, char_tokenizer, dataset / "train.safetensors", None, tmp_path / "a",
                    _cfg(packing=True, pack_tokens=10), seed=0, show_progress=False)

    def per_row_objective(model, batch):  # e.g. KD reading per-row teacher features
        return cross_entropy_sum(model, batch)

    with pytest.raises(ValueError, match="cannot train on packed rows"):
        train_model(model, char_tokenizer, dataset / "train.safetensors", None, tmp_path / "b",
                    _cfg(packing=True), seed=0, show_progress=False, objective=per_row_objective)
    assert not (tmp_path / "b").exists() and int(ds.lengths.max()) > 10


@pytest.mark.parametrize("log_every", [1, 100], ids=["caught-at-a-log-step", "caught-before-saving"])
def test_a_diverging_run_stops_and_saves_no_nan_model(dataset, char_tokenizer, tmp_path, log_every):
    from reasondistill.train.checkpoint import NonFinite

    args = (char_tokenizer, dataset / "train.safetensors", None)
    cfg = _cfg(lr=1e6, max_grad_norm=None, log_every=log_every, save_every=2, warmup_ratio=0.0)
    with pytest.raises(NonFinite, match="lower train.lr"):
        train_model(init_model(TINY, char_tokenizer, seed=0), *args, tmp_path, cfg, seed=0, show_progress=False)
    assert not (tmp_path / "final").exists()
    from safetensors.torch import load_file
    for ckpt in (tmp_path / "checkpoints").glob("step-*"):
        assert all(torch.isfinite(t).all() for t in load_file(ckpt / "model.safetensors").values())


def test_resume_refuses_a_checkpoint_with_nan_weights(dataset, char_tokenizer, tmp_path):
    from safetensors.torch import load_file, save_file

    from reasondistill.train.checkpoint import NonFinite

    args = (char_tokenizer, dataset / "train.safetensors", None)
    with pytest.raises(Crash):
        train_model(init_model(TINY, char_tokenizer, seed=0), *args, tmp_path, _cfg(), seed=0, show_progress=False,
                    objective=_crash_after(5))
    path = tmp_path / "checkpoints/step-4/model.safetensors"
    weights = load_file(path)
    weights[next(iter(weights))].fill_(float("nan"))
    save_file(weights, path)
    (path.parent / "checksums.json").unlink()  # as written before checksums existed: only the NaN check is left
    with pytest.raises(NonFinite, match="step-4/model.safetensors.*delete this checkpoint"):
        train_model(init_model(TINY, char_tokenizer, seed=0), *args, tmp_path, _cfg(), seed=0, show_progress=False)


def _crash_after(n):
    calls = {"n": 0}

    def objective(model, batch):
        calls["n"] += 1
        if calls["n"] > n:
            raise Crash("killed")
        return cross_entropy_sum(model, batch)
    return objective


@pytest.mark.parametrize("damage", ["flip-weights", "truncate-state"])
def test_resume_refuses_a_checkpoint_that_does_not_match_its_checksums(dataset, char_tokenizer, tmp_path, damage):
    from reasondistill.train.checkpoint import CHECKSUMS

    args = (char_tokenizer, dataset / "train.safetensors", None)
    with pytest.raises(Crash):
        train_model(init_model(TINY, char_tokenizer, seed=0), *args, tmp_path, _cfg(), seed=0, show_progress=False,
                    objective=_crash_after(5))
    ckpt = tmp_path / "checkpoints/step-4"
    assert (ckpt / CHECKSUMS).exists()
    if damage == "flip-weights":  # behind an intact header: loads fine, silently wrong
        data = bytearray((ckpt / "model.safetensors").read_bytes())
        data[-10] ^= 0x01
        (ckpt / "model.safetensors").write_bytes(bytes(data))
        name = "model.safetensors"
    else:
        state = (ckpt / "trainer_state.json").read_text()
        (ckpt / "trainer_state.json").write_text(state[: len(state) // 2])
        name = "trainer_state.json"
    with pytest.raises(ValueError, match=f"step-4/{name}: does not match the checksum.*delete"):
        train_model(init_model(TINY, char_tokenizer, seed=0), *args, tmp_path, _cfg(), seed=0, show_progress=False)
