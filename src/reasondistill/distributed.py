"""Which process keeps the run directory's books when the CLI runs on several processes at once.

Why: ``torchrun --nproc_per_node N -m reasondistill train RUN`` starts N copies of the whole CLI.
Only training needs all of them; the run directory's bookkeeping (``config.yaml``, the manifest,
``.stages/``, progress files, moving stale outputs aside) must be written once, by the main
process, while the others wait at a barrier and then train. The rank comes from the launcher's
environment (``RANK``, else ``LOCAL_RANK``; ``WORLD_SIZE``), which torchrun and ``accelerate
launch`` both set, read when asked (never at import). With one process every function here is a
no-op, and accelerate (which sets up the process group) is only imported when there are several.

    from reasondistill.distributed import barrier, broadcast, is_main_process
    if is_main_process():
        write_json(path, state)
    barrier()
    decision = broadcast(value_on_main)     # the main process's value, on every process
"""

from __future__ import annotations

import os
from typing import Any


def _env_int(*names: str, default: int) -> int:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"environment variable {name}={value!r} is not an integer") from None
    return default


def world_size() -> int:
    """Processes in the job (1 unless launched by torchrun / accelerate launch)."""
    return max(1, _env_int("WORLD_SIZE", default=1))


def rank() -> int:
    """This process's global rank (0 for a single process)."""
    return _env_int("RANK", "LOCAL_RANK", default=0) if world_size() > 1 else 0


def is_main_process() -> bool:
    return rank() == 0


def _state():
    """accelerate's process state: initialises the process group (gloo on CPU) the first time, and
    is the same state ``Accelerator`` reuses in ``train_model``."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def barrier() -> None:
    """Wait until every process gets here (no-op for one process)."""
    if world_size() > 1:
        _state().wait_for_everyone()


def broadcast(value: Any) -> Any:
    """The main process's ``value`` (any picklable object) on every process; the others' are ignored."""
    if world_size() == 1:
        return value
    import torch.distributed as dist

    _state()
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown() -> None:
    """Leave the process group, if one was set up, once every process is done: a process that exits
    with the group still open can die in gloo's teardown ("terminate called without an active
    exception") and take the job down with it."""
    if world_size() == 1:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
