"""Shared fixtures: tiny real Hugging Face models and tokenizers built locally (no downloads)."""

from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

TINY = {"architecture": "llama", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 256}
# head_dim 32: reasondistill/attention.py trains it in fp32 too (train.attention: auto)
QWEN_HEAD32 = {"architecture": "qwen2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
               "num_key_value_heads": 1, "intermediate_size": 96, "max_position_embeddings": 512}


@contextmanager
def hang_guard(seconds: float, what: str):
    """Fail (TimeoutError) if the block runs longer than ``seconds``: a guard against a hang (a
    regex that backtracks for hours), set a hundredfold above the block's usual time so a busy
    machine never trips it. Not a speed test: those are in bench/. Main thread only (SIGALRM)."""
    def expire(*_):
        raise TimeoutError(f"{what}: still running after {seconds:g} s (a hang, or super-linear time)")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    import torch

    torch.set_num_threads(1)  # tests run beside other processes on 2 cores


@pytest.fixture(scope="session")
def char_tokenizer():
    from reasondistill.models import build_char_tokenizer

    return build_char_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, char_tokenizer):
    """A saved 1-layer Llama with the character tokenizer: a real model directory."""
    from reasondistill.models import init_model

    d = tmp_path_factory.mktemp("tiny-model")
    model = init_model(TINY, char_tokenizer, seed=0)
    model.save_pretrained(d, safe_serialization=True)
    char_tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def arith():
    from reasondistill.tasks.arith import ChainedArithmetic

    return ChainedArithmetic(min_ops=3, max_ops=5)


@pytest.fixture
def sandbox_marker(monkeypatch) -> bytes:
    """A comment unique to this test appended to the code sandbox's child source: its processes
    (whose command line holds that source) can then be told from other sandboxes on the machine."""
    from reasondistill.verify import sandbox

    mark = f"# rd-test-{os.getpid()}-{time.monotonic_ns()}"
    if not hasattr(sandbox, "_child_source"):  # the module before its hardening (tests/faults)
        return b"job = json.loads(sys.stdin.readline())"
    source = sandbox._child_source()
    monkeypatch.setattr(sandbox, "_child_source", lambda: f"{source}\n{mark}\n")
    return mark.encode()


def live_sandbox_processes(marker: bytes) -> int:
    """Processes whose command line holds ``marker`` still alive anywhere on this machine."""
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            count += marker in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
    return count
