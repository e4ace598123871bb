"""Checkpoints that resume exactly, stored without pickle.

A checkpoint is a Hugging Face model directory (safetensors) plus the trainer's state: optimizer
tensors in ``optimizer.safetensors`` with their hyper-parameters in JSON, the scheduler's state,
the position in the data (epoch, batch) and the torch RNG state. Written to a temporary
directory and renamed, so a crash never leaves a half checkpoint that looks whole.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from reasondistill.records import file_sha256

STATE_FILE = "trainer_state.json"
CHECKSUMS = "checksums.json"  # sha256 of every other file, written last
OBJECTIVE_FILE = "objective.safetensors"  # an objective's own parameters (not exported to final/)


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, slots in state["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for pid, slots in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(slots)
    return {"state": state, "param_groups": meta["param_groups"]}


class NonFinite(ValueError):
    """Training produced (or a checkpoint holds) NaN or infinite values: nothing is saved from it."""


def non_finite(named: Any) -> list[str]:
    """Names of the floating-point tensors in ``named`` ((name, tensor) pairs or a dict) that hold a
    NaN or an infinity."""
    items = named.items() if isinstance(named, dict) else named
    return [n for n, t in items if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def check_finite(named: Any, where: str, hint: str) -> None:
    """Raise :class:`NonFinite` naming the first bad tensors, ``where`` it happened and what to do."""
    bad = non_finite(named)
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise NonFinite(f"{where}: non-finite values (NaN or inf) in {bad[0]}{more}; {hint}")


def save_checkpoint(path: Path, model, tokenizer, optimizer, scheduler, trainer_state: dict[str, Any],
                    objective: torch.nn.Module | None = None, weights: dict[str, torch.Tensor] | None = None,
                    optimizer_state: dict[str, Any] | None = None) -> None:
    """Write everything :func:`restore_checkpoint` reads back: the model (HF format), the tokenizer,
    the optimizer, the scheduler, the RNG, the trainer's state and, when the objective has
    parameters of its own (feature projections), ``objective.safetensors``; then ``checksums.json``
    over all of it. Built in ``path.tmp`` and renamed: a crash never leaves half a checkpoint.
    ``weights`` / ``optimizer_state``: full states gathered from shards (train/fsdp.py) instead of
    the model's and optimizer's own."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": weights} if weights is not None else {}))
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if objective is not None and objective.state_dict():
        save_file({k: v.detach().cpu().contiguous() for k, v in objective.state_dict().items()},
                  str(tmp / OBJECTIVE_FILE))
    tensors, meta = _flatten_optimizer(optimizer.state_dict() if optimizer_state is None else optimizer_state)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    save_file({"torch_rng": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
    (tmp / "optimizer.json").write_text(json.dumps(meta))
    (tmp / "scheduler.json").write_text(json.dumps(scheduler.state_dict()))
    (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=2))
    sums = {f.name: file_sha256(f) for f in sorted(tmp.iterdir()) if f.is_file()}
    (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=1))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def verify_checkpoint(path: Path) -> None:
    """Refuse a checkpoint whose files do not match the checksums written with it (a disk error, a
    copy cut short, an edit): resuming from it would continue from weights that were never trained."""
    try:
        sums = json.loads((path / CHECKSUMS).read_text())
    except FileNotFoundError:
        return  # written before checksums existed
    except ValueError as exc:
        raise ValueError(f"{path / CHECKSUMS}: not valid JSON ({exc}); delete {path} to resume from the "
                         "checkpoint before it") from None
    for name, digest in sums.items():
        if not (path / name).is_file() or file_sha256(path / name) != digest:
            raise ValueError(f"{path / name}: does not match the checksum written with it (corrupt or "
                             f"missing); delete {path} to resume from the checkpoint before it")


def restore_checkpoint(path: Path, model, optimizer, scheduler, objective: torch.nn.Module | None = None,
                       load: Callable[[dict, dict], None] | None = None) -> dict[str, Any]:
    """Load what :func:`save_checkpoint` wrote into ``model`` (weights; tied heads re-tied), the
    objective, the optimizer, the scheduler and the RNG; return the trainer's state. A checkpoint
    that does not match its checksums, or holds NaN weights, is refused with what to do.
    ``load(weights, optimizer_state)``: loads both into a sharded model instead (train/fsdp.py)."""
    from safetensors.torch import load_file

    from reasondistill.train.lora import ADAPTER_FILE, load_adapter

    verify_checkpoint(path)
    meta = json.loads((path / "optimizer.json").read_text())
    optimizer_state = _unflatten_optimizer(load_file(str(path / "optimizer.safetensors")), meta)
    if load is not None:
        weights = load_file(str(path / "model.safetensors"))
        check_finite(weights, f"{path}/model.safetensors", "delete this checkpoint to resume from the one before")
        load(weights, optimizer_state)
    elif (path / ADAPTER_FILE).exists():  # a LoRA student: the checkpoint holds its adapters only
        load_adapter(model, path / ADAPTER_FILE)
    else:
        load_weights(model, load_file(str(path / "model.safetensors")), f"{path}/model.safetensors")
    if objective is not None and objective.state_dict():
        objective.load_state_dict(load_file(str(path / OBJECTIVE_FILE)))
    if load is None:
        optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(json.loads((path / "scheduler.json").read_text()))
    torch.set_rng_state(load_file(str(path / "rng.safetensors"))["torch_rng"])
    return json.loads((path / STATE_FILE).read_text())


def load_weights(model, weights: dict[str, torch.Tensor], where: str) -> None:
    """Load a full state dict into ``model`` (tied heads re-tied); NaN weights or a mismatch refused."""
    check_finite(weights, where, "delete this checkpoint to resume from the one before")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {k for k in missing if "lm_head" in k}
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"{where}: checkpoint does not match the model (missing {missing}, unexpected {unexpected})")
    if tied:
        model.tie_weights()


def checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.exists():
        return []
    found = [p for p in root.glob("step-*") if (p / STATE_FILE).exists() and not p.name.endswith(".tmp")]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def prune(root: Path, keep: int) -> None:
    for old in checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
