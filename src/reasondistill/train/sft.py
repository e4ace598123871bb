"""The training loop: hard distillation (SFT on teacher traces) on ``accelerate``.

Why this loop and not a generic trainer: the loss must be a sum over answer tokens divided by the
number of answer tokens in the whole accumulated, all-process batch, so that gradient
accumulation and multi-process training give exactly the gradient of one big batch. Batches are
grouped by length (little padding; or, with ``train.packing``, each step's examples are packed into
rows without padding, for varlen attention kernels on GPUs), logging syncs the host only every
``log_every`` steps, and checkpoints resume the same loss curve (optimizer, scheduler, data
position and RNG restored).

    python -m reasondistill.cli train runs/demo           # one process
    torchrun --nproc_per_node 2 -m reasondistill.cli train runs/demo   # DDP (CPU: gloo)

Library use:

    result = train_model(model, tokenizer, "build/traces/train.safetensors",
                         "build/traces/val.safetensors", "train/student", TrainConfig(), seed=0)
"""

from __future__ import annotations

import csv
import json
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from reasondistill.attention import fast_causal_attention, pays_on_cpu
from reasondistill.data.dataset import IGNORE_INDEX, TokenizedDataset, collate, length_grouped_batches
from reasondistill.data.packing import collate_packed, pack_indices
from reasondistill.progress import progress_bar
from reasondistill.train.checkpoint import (check_finite, checkpoints, load_checkpoint, prune, save_checkpoint,
                                            verify_checkpoint)
from reasondistill.train.config import TrainConfig, resolve_mixed_precision

METRIC_FIELDS = ["step", "epoch", "train_loss", "val_loss", "val_objective", "lr", "grad_norm", "target_tokens",
                 "tokens_per_s", "elapsed_s"]

# An objective maps (model, batch) to the *sum* of per-token losses over target tokens; the loop
# divides by the global target-token count. Soft-distillation objectives plug in here. An objective
# may also have ``prepare_batch(batch) -> batch``, run on the host (CPU) batch before it moves to the
# device: work that needs the token ids on the host (e.g. looking up a stored teacher's top-k)
# belongs there, so the loop never copies a device batch back.
Objective = Callable[[Any, dict[str, torch.Tensor]], torch.Tensor]


def to_device(batch: dict[str, torch.Tensor], objective: Objective, device) -> dict[str, torch.Tensor]:
    """The objective's host-side ``prepare_batch`` (if any), then every tensor moved to ``device``.
    To a CUDA device the copies go from pinned memory without blocking: a plain copy from pageable
    memory waits for every kernel already queued, i.e. a host sync per micro-batch."""
    prepare = getattr(objective, "prepare_batch", None)
    if prepare is not None:
        batch = prepare(batch)
    device = torch.device(device)
    if device.type == "cuda":
        return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
    return {k: v.to(device) for k, v in batch.items()}


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The forward's inputs: padded batches carry an ``attention_mask``, packed rows ``position_ids``
    instead (transformers finds the example boundaries from them; a mask would switch that off)."""
    return {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}


def cross_entropy_sum(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of next-token cross-entropy over positions whose label is not ignored (fp32)."""
    logits = model(**model_inputs(batch), use_cache=False).logits
    labels = batch["labels"][:, 1:]
    logits = logits[:, :-1]
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")


cross_entropy_sum.supports_packing = True  # objectives that read per-row teacher outputs do not


def loss_sum_dtype(device: torch.device) -> torch.dtype:
    """float64 for running loss sums, except on MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def accumulate_gradients(model, batches: list[dict[str, torch.Tensor]], objective: Objective, accelerator,
                         local_tokens: int) -> torch.Tensor:
    """Backward over micro-batches so the summed gradient is that of one big batch.

    Each micro-batch's loss *sum* is scaled by world_size / (target tokens across all micro-batches
    and processes); DDP's gradient averaging over processes then yields exactly
    d(total loss sum / total target tokens). Gradients sync only on the last micro-batch.
    Returns the local loss sum (for logging) as a tensor on the device: nothing here waits for the
    device (no ``.item()``/``.cpu()``), so a GPU runs ahead until the logging interval reads it.
    """
    world = accelerator.num_processes
    # torch.full fills on the device (torch.tensor(x, device=...) would be a blocking host-to-device copy)
    n_global = accelerator.reduce(torch.full((), float(local_tokens), device=accelerator.device), reduction="sum")
    scale = world / n_global.clamp(min=1.0)
    total = torch.zeros((), dtype=loss_sum_dtype(accelerator.device), device=accelerator.device)
    for j, batch in enumerate(batches):
        batch = to_device(batch, objective, accelerator.device)
        with nullcontext() if j == len(batches) - 1 else accelerator.no_sync(model):
            with accelerator.autocast():
                loss_sum = objective(model, batch)
            accelerator.backward(loss_sum * scale)
        total += loss_sum.detach().to(total.dtype)
    return total


def lr_lambda(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    def fn(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return fn


def _param_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class _WithObjective:
    """Saves the objective's state (``objective.safetensors``) beside the tokenizer, inside the
    checkpoint's temporary directory, so it is renamed into place atomically with the rest."""

    def __init__(self, tokenizer, objective):
        self.tokenizer, self.objective = tokenizer, objective

    def save_pretrained(self, path) -> None:
        from safetensors.torch import save_file

        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(path)
        if self.objective is not None and self.objective.state_dict():
            save_file({k: v.detach().cpu().contiguous() for k, v in self.objective.state_dict().items()},
                      str(Path(path) / "objective.safetensors"))


class _Metrics:
    """metrics.csv (and TensorBoard when available), written by the main process only."""

    def __init__(self, out_dir: Path, resume_step: int, enabled: bool):
        self.enabled = enabled
        self.path = out_dir / "metrics.csv"
        self.tb = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        if self.path.exists() and resume_step > 0:  # keep the curve up to the checkpoint
            with self.path.open() as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
        with self.path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, METRIC_FIELDS)
            w.writeheader()
            w.writerows(rows)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=resume_step + 1 if resume_step else None)
        except ImportError:  # tensorboard is optional for library users
            self.tb = None

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", newline="") as fh:
            csv.DictWriter(fh, METRIC_FIELDS).writerow({k: row.get(k, "") for k in METRIC_FIELDS})
        if self.tb is not None:
            for k in ("train_loss", "val_loss", "val_objective", "lr", "grad_norm", "tokens_per_s"):
                if row.get(k) not in (None, ""):
                    self.tb.add_scalar(k, row[k], row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


@torch.no_grad()
def evaluate_loss(model, dataset: TokenizedDataset, pad_id: int, batch_size: int, accelerator,
                  objective: Objective = cross_entropy_sum) -> float:
    """Mean per-target-token loss over the whole dataset, across all processes."""
    if len(dataset) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    order = sorted(range(len(dataset)), key=lambda i: -dataset.lengths[i])
    mine = order[accelerator.process_index::accelerator.num_processes]
    total = torch.zeros(2, dtype=loss_sum_dtype(accelerator.device), device=accelerator.device)
    for i in range(0, len(mine), batch_size):
        idx = mine[i:i + batch_size]
        batch = to_device(collate(dataset, idx, pad_id), objective, accelerator.device)
        with accelerator.autocast():
            total[0] += objective(model, batch).to(total.dtype)
        total[1] += dataset.target_tokens(idx)
    total = accelerator.reduce(total, reduction="sum")
    model.train(was_training)
    return (total[0] / total[1].clamp(min=1)).item()


def _forget_other_precision(precision: str) -> None:
    """accelerate keeps one process-wide state and refuses a second ``Accelerator`` with another
    mixed precision; in a single (non-distributed) process, a later ``train_model`` call with another
    precision (e.g. a bf16 student after an fp32 one) resets that state first."""
    from accelerate.state import AcceleratorState, DistributedType

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", precision) != precision and state.get("distributed_type") == DistributedType.NO:
        AcceleratorState._reset_state()


def train_model(model, tokenizer, train_path: str | Path, val_path: str | Path | None, out_dir: str | Path,
                cfg: TrainConfig, seed: int, objective: Objective = cross_entropy_sum,
                name: str = "student", show_progress: bool = True) -> dict[str, Any]:
    """Train ``model`` on a built dataset; write checkpoints, ``final/`` and ``metrics.csv``.

    Returns a summary: steps, final validation loss, wall time, tokens/s, parameter count.
    """
    from accelerate import Accelerator

    out_dir = Path(out_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    precision = resolve_mixed_precision(cfg.mixed_precision)
    _forget_other_precision(precision)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=precision)
    # FSDP / DeepSpeed shard the optimizer state (and weights), which save_checkpoint cannot write yet:
    # no mid-run checkpoints or resuming there; final/ is still gathered and written (docs/scaling.md)
    sharded = accelerator.distributed_type.name in ("FSDP", "DEEPSPEED")
    if sharded and accelerator.is_main_process:
        import warnings

        warnings.warn(f"{accelerator.distributed_type.name}: no resumable checkpoints (only final/ is written)")
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    train_ds = TokenizedDataset(train_path)
    val_ds = TokenizedDataset(val_path) if val_path and Path(val_path).exists() else None
    if len(train_ds) == 0:
        raise ValueError(f"{train_path}: the training set is empty (check curate/build stats)")
    pad_id = tokenizer.pad_token_id
    longest = int(train_ds.lengths.max())
    pack_tokens = (cfg.pack_tokens or cfg.batch_size * longest) if cfg.packing else None
    if cfg.packing and not getattr(objective, "supports_packing", False):
        kind = getattr(objective, "__name__", type(objective).__name__)
        raise ValueError(f"train.packing: {name}'s objective ({kind}) reads per-row inputs and cannot train on "
                         f"packed rows; set train.packing: false")
    if pack_tokens is not None and pack_tokens < longest:
        raise ValueError(f"{train_path}: train.pack_tokens={pack_tokens} is shorter than the longest example "
                         f"({longest} tokens); raise it or leave it unset")

    global_batch = cfg.batch_size * world  # examples per micro-step over all processes
    batches_per_epoch = math.ceil(len(train_ds) / global_batch)
    steps_per_epoch = max(1, batches_per_epoch // cfg.grad_accum)
    total_steps = cfg.max_steps or max(1, round(cfg.epochs * steps_per_epoch))
    warmup = round(cfg.warmup_ratio * total_steps)

    model.train()
    # an objective that is an nn.Module (e.g. feature projections) trains beside the model, is saved in
    # checkpoints as objective.safetensors and is not exported to final/
    obj_module = objective.to(accelerator.device) if isinstance(objective, torch.nn.Module) else None
    extra = [p for p in obj_module.parameters() if p.requires_grad] if obj_module is not None else []
    groups = _param_groups(model, cfg.weight_decay) + ([{"params": extra, "weight_decay": 0.0}] if extra else [])
    # fused: one pass over each tensor instead of ~10 (7 vs 36 ms per step for 11M parameters on CPU)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas,
                                  fused=accelerator.device.type in ("cpu", "cuda") or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, warmup, cfg.min_lr_ratio))

    ckpt_root = out_dir / "checkpoints"
    state = {"step": 0, "epoch": 0, "batch": 0, "elapsed_s": 0.0, "seed": seed, "total_steps": total_steps}
    micro_batches_run = 0  # forward/backward passes of this process (since the start or the resume)
    found = checkpoints(ckpt_root) if cfg.resume and not sharded else []
    if found:
        from safetensors.torch import load_file

        last = found[-1]
        verify_checkpoint(last)
        weights = load_file(str(last / "model.safetensors"))
        check_finite(weights, f"{last}/model.safetensors", "delete this checkpoint to resume from the one before")
        missing, unexpected = model.load_state_dict(weights, strict=False)
        tied = {k for k in missing if "lm_head" in k}
        if unexpected or set(missing) - tied:
            raise RuntimeError(f"{last}: checkpoint does not match the model (missing {missing}, unexpected {unexpected})")
        if tied:
            model.tie_weights()
        if obj_module is not None and obj_module.state_dict():
            obj_module.load_state_dict(load_file(str(last / "objective.safetensors")))
        state = load_checkpoint(last, optimizer, scheduler)
        if state.get("total_steps") != total_steps:
            raise ValueError(f"{last}: checkpoint was for {state.get('total_steps')} steps, config gives "
                             f"{total_steps}; use a fresh output directory or the same schedule")
    model, optimizer = accelerator.prepare(model, optimizer)
    metrics = _Metrics(out_dir, state["step"], main)

    def micro_batches():
        """Yield (epoch, batch-in-epoch, indices) for this process from the saved position on."""
        epoch, b = state["epoch"], state["batch"]
        while True:
            order = length_grouped_batches(train_ds.lengths, global_batch, seed, epoch, cfg.group_by_length)
            while b < len(order):
                mine = order[b][rank::world]
                b += 1
                yield epoch, b, mine
            epoch, b = epoch + 1, 0

    stream = micro_batches()
    diverged = (f"training diverged and nothing was saved from it (checkpoints before it are kept): lower "
                f"train.lr (now {cfg.lr:g}), set train.max_grad_norm, or check the data")
    t0 = time.perf_counter() - state["elapsed_s"]
    window_loss = torch.zeros((), dtype=loss_sum_dtype(accelerator.device), device=accelerator.device)
    window_tokens = 0
    window_all_tokens = 0
    window_t = time.perf_counter()
    last_grad_norm = float("nan")
    val_loss = float("nan")
    unwrapped = accelerator.unwrap_model(model)
    multiple = cfg.pad_to_multiple_of if cfg.pad_to_multiple_of != "auto" else (
        "geometric" if accelerator.device.type == "cpu" and precision == "bf16" else 1)
    max_width = getattr(unwrapped.config, "max_position_embeddings", None)
    fast_attention = fast_causal_attention(unwrapped, enabled=cfg.attention == "auto" and accelerator.device.type == "cpu"
                                           and pays_on_cpu(unwrapped, precision))
    with fast_attention as fast_on, progress_bar(f"train {name}", total_steps, show_progress and main, state["step"]) as advance:
        while state["step"] < total_steps:
            group = []
            for _ in range(cfg.grad_accum):
                epoch, b, idx = next(stream)
                group.append(idx)
                state["epoch"], state["batch"] = epoch, b
            if pack_tokens is None:
                batches = [collate(train_ds, idx, pad_id, multiple, max_width) for idx in group if len(idx)]
            else:  # the step's examples, packed into rows of at most pack_tokens: one row per micro-batch
                step_examples = [i for idx in group for i in idx]
                rows = pack_indices(train_ds.lengths[step_examples], pack_tokens) if step_examples else []
                batches = [collate_packed(train_ds, [[step_examples[j] for j in row]], pad_id, multiple)
                           for row in rows]
            local_tokens = sum(train_ds.target_tokens(idx) for idx in group if len(idx))
            window_all_tokens += sum(int(train_ds.lengths[idx].sum()) for idx in group if len(idx))
            if not batches and world > 1:
                # the epoch's last global batch has fewer examples than processes and none is ours: still
                # join DDP's gradient all-reduce, with a batch that has no target token (loss sum 0)
                batches = [collate(train_ds, [0], pad_id)]
                batches[0]["labels"].fill_(IGNORE_INDEX)
            window_loss += accumulate_gradients(model, batches, objective, accelerator, local_tokens)
            micro_batches_run += len(batches)
            for p in extra if world > 1 else []:  # not inside DDP: average their gradients by hand
                p.grad = accelerator.reduce(p.grad if p.grad is not None else torch.zeros_like(p), reduction="mean")
            window_tokens += local_tokens
            if cfg.max_grad_norm:
                norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                last_grad_norm = float("nan") if norm is None else norm  # DeepSpeed clips inside, returns None
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            step = state["step"]

            if step % cfg.log_every == 0 or step == total_steps:
                now = time.perf_counter()
                # the loss and token counts of all processes, not just the main one's share
                sums = torch.tensor([window_loss.item(), window_tokens, window_all_tokens], dtype=torch.float64,
                                    device=accelerator.device)
                sums = accelerator.reduce(sums, reduction="sum") if world > 1 else sums
                check_finite({"train loss": sums[0]}, f"{out_dir}: step {step}", diverged)
                row = {"step": step, "epoch": round(step / steps_per_epoch, 4),
                       "train_loss": round(sums[0].item() / max(1.0, sums[1].item()), 6),
                       "lr": scheduler.get_last_lr()[0], "grad_norm": round(float(last_grad_norm), 5),
                       "target_tokens": int(sums[1].item()),
                       "tokens_per_s": round(sums[2].item() / max(1e-9, now - window_t), 1),
                       "elapsed_s": round(now - t0, 2)}
                metrics.log(row)
                window_loss.zero_()
                window_tokens = window_all_tokens = 0
                window_t = time.perf_counter()
            if val_ds is not None and (step % cfg.eval_every == 0 or step == total_steps):
                # val_loss is always the answer-token cross-entropy, so hard and soft students compare;
                # a soft student's own objective is logged beside it as val_objective
                val_loss = evaluate_loss(model, val_ds, pad_id, cfg.batch_size, accelerator)
                row = {"step": step, "epoch": round(step / steps_per_epoch, 4), "val_loss": round(val_loss, 6),
                       "elapsed_s": round(time.perf_counter() - t0, 2)}
                if objective is not cross_entropy_sum:
                    row["val_objective"] = round(evaluate_loss(model, val_ds, pad_id, cfg.batch_size, accelerator,
                                                               objective), 6)
                metrics.log(row)
            if (step % cfg.save_every == 0 or step == total_steps) and not sharded:
                state["elapsed_s"] = time.perf_counter() - t0
                if main:
                    check_finite(unwrapped.named_parameters(), f"{out_dir}: step {step}", diverged)
                    save_checkpoint(ckpt_root / f"step-{step}", accelerator.unwrap_model(model),
                                    _WithObjective(tokenizer, obj_module), optimizer, scheduler, state)
                    prune(ckpt_root, cfg.keep_checkpoints)
                accelerator.wait_for_everyone()
            advance(1)
        if val_ds is not None and math.isnan(val_loss):  # resumed after the last step
            val_loss = evaluate_loss(model, val_ds, pad_id, cfg.batch_size, accelerator)
    metrics.close()
    wall = time.perf_counter() - t0
    summary = {"name": name, "steps": state["step"], "epochs": round(state["step"] / steps_per_epoch, 3),
               "final_val_loss": val_loss, "wall_time_s": round(wall, 2),
               "train_examples": len(train_ds), "params": sum(p.numel() for p in model.parameters()),
               "processes": world,
               "attention": "reasondistill/attention.py" if fast_on else unwrapped.config._attn_implementation,
               "pad_to_multiple_of": multiple, "pack_tokens": pack_tokens, "micro_batches": micro_batches_run,
               "mixed_precision": precision}
    weights = accelerator.get_state_dict(model)  # on every process: gathers FSDP / ZeRO-3 shards (DDP: a no-op)
    if main:
        check_finite(weights, f"{out_dir}: after step {state['step']}", diverged)
        final = out_dir / "final"
        accelerator.unwrap_model(model).save_pretrained(final, state_dict=weights, safe_serialization=True)
        tokenizer.save_pretrained(final)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()
    return summary
