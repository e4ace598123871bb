"""FSDP2 (torch ``fully_shard``) for ``train.sharding: fsdp``: weights, gradients and AdamW state
sharded over the processes of a ``torchrun`` job; gloo on CPU, NCCL on GPUs.

Why our own and not accelerate's: accelerate turns FSDP on only for GPU (and other accelerator)
process groups, so on CPU its FSDP config starts plain DDP or nothing; ``fully_shard`` itself runs
on gloo. Checkpoints are gathered to full tensors and written in the one-process format
(``model.safetensors`` + ``optimizer.safetensors`` keyed by parameter index, train/checkpoint.py),
so a sharded run resumes on any number of processes, sharded or not, with the same loss curve.

Under FSDP every forward and backward is a collective (all-gather, reduce-scatter), so every
process must run the same number of them: :func:`common_count` pads a step's micro-batches with
batches that have no target token, and validation runs in lockstep (``train/sft.py``).

    torchrun --nproc_per_node 2 -m reasondistill train RUN students.0.train.sharding=fsdp

Tests: tests/train/test_fsdp.py (2 CPU processes on gloo against one process, and resuming).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch


def shard(model, device) -> None:
    """``fully_shard`` every decoder layer (the model's ``_no_split_modules``), then the whole model."""
    from torch.distributed.fsdp import fully_shard

    model.to(device)
    layer_types = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in layer_types]
    if not layers:
        raise ValueError(f"train.sharding fsdp: {type(model).__name__} names no decoder-layer class "
                         "(_no_split_modules) to shard by")
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)


def refuse(model, objective) -> None:
    """What FSDP cannot train here, refused before the first step with what to do instead."""
    from reasondistill.train.lora import is_lora
    from reasondistill.train.onpolicy import OnPolicyKD

    if is_lora(model):
        raise ValueError("train.sharding fsdp with lora: not supported; LoRA trains few parameters, so DDP "
                         "(train.sharding: none) keeps little per process")
    if isinstance(objective, OnPolicyKD):
        raise ValueError("train.sharding fsdp with distill.source on_policy: sampling runs a different number of "
                         "sharded forwards on each process; use train.sharding: none (DDP)")


def _names(model, optimizer) -> list[str]:
    """Parameter names in the optimizer's order (the index a one-process state dict uses)."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for group in optimizer.param_groups for p in group["params"]]


def gather_state(model, optimizer=None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Full weights and optimizer state (the one-process layout; no optimizer: weights only), on the
    main process only (empty dicts on the others). Every process must call it: it all-gathers."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    full = get_optimizer_state_dict(model, optimizer, options=options) if optimizer is not None else {}
    if not full:
        return weights, {}
    index = {name: i for i, name in enumerate(_names(model, optimizer))}
    state = {index[name]: slots for name, slots in full["state"].items()}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in full["param_groups"]]
    return weights, {"state": state, "param_groups": groups}


def load_state(model, optimizer, weights: dict[str, torch.Tensor], optimizer_state: dict[str, Any]) -> None:
    """Load full (one-process layout) weights and optimizer state into the sharded model; every
    process calls it with the same dicts and keeps its own shard."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, strict=False)
    result = set_model_state_dict(model, weights, options=options)
    tied = {k for k in result.missing_keys if "lm_head" in k} if getattr(model.config, "tie_word_embeddings",
                                                                         False) else set()
    if result.unexpected_keys or set(result.missing_keys) - tied:
        raise RuntimeError(f"checkpoint does not match the model (missing {result.missing_keys}, unexpected "
                           f"{result.unexpected_keys})")
    names = _names(model, optimizer)
    state = {names[int(i)]: slots for i, slots in optimizer_state["state"].items()}
    groups = [{**g, "params": [names[int(i)] for i in g["params"]]} for g in optimizer_state["param_groups"]]
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": groups},
                             options=StateDictOptions(full_state_dict=True))


def common_count(n: int, device) -> int:
    """The largest ``n`` over all processes (micro-batches this step, validation batches)."""
    import torch.distributed as dist

    t = torch.tensor([n], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def grad_norm(norm) -> float | torch.Tensor:
    """``clip_grad_norm_``'s result as a plain tensor (over sharded gradients it is a DTensor)."""
    full = getattr(norm, "full_tensor", None)
    return full() if full is not None else norm


@contextmanager
def plain_class(model):
    """Within the block ``model`` has its own class again, not ``fully_shard``'s ``FSDP<Class>``
    subclass: ``save_pretrained`` writes the class name into config.json's ``architectures``,
    which vLLM and other loaders read."""
    from torch.distributed.fsdp import FSDPModule

    cls = type(model)
    if not isinstance(model, FSDPModule):
        yield model
        return
    model.__class__ = next(b for b in cls.__bases__ if b is not FSDPModule)
    try:
        yield model
    finally:
        model.__class__ = cls
