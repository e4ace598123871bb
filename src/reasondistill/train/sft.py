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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from reasondistill.attention import fast_causal_attention, pays_on_cpu
from reasondistill.data.curriculum import epoch_batches
from reasondistill.data.dataset import IGNORE_INDEX, TokenizedDataset, collate
from reasondistill.data.packing import collate_packed, pack_indices
from reasondistill.layout import TrainFiles
from reasondistill.progress import progress_bar
from reasondistill.distributed import world_size
from reasondistill.train.checkpoint import check_finite, checkpoints, prune, restore_checkpoint, save_checkpoint
from reasondistill.train.interrupt import DeferredInterrupt
from reasondistill.train.config import TrainConfig, resolve_mixed_precision
from reasondistill.train.plan import StepPlan
from reasondistill.train.step_rng import step_rng

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


def autocast(device: torch.device, precision: str):
    """bf16 autocast when ``precision`` is "bf16" (fp32 master weights), else a no-op context."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


def accumulate_gradients(model, batches: list[dict[str, torch.Tensor]], objective: Objective, accelerator,
                         local_tokens: int, precision: str = "no") -> torch.Tensor:
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
            with autocast(accelerator.device, precision):
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


class _Metrics:
    """metrics.csv (and TensorBoard when available), written by the main process only."""

    def __init__(self, out_dir: Path, resume_step: int, enabled: bool):
        self.enabled = enabled
        self.path = TrainFiles(out_dir).metrics_csv
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
                  objective: Objective = cross_entropy_sum, precision: str = "no", lockstep: bool = False) -> float:
    """Mean per-target-token loss over the whole dataset, across all processes."""
    if len(dataset) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    order = sorted(range(len(dataset)), key=lambda i: -dataset.lengths[i])
    mine = order[accelerator.process_index::accelerator.num_processes]
    total = torch.zeros(2, dtype=loss_sum_dtype(accelerator.device), device=accelerator.device)
    n_batches = math.ceil(len(mine) / batch_size)
    if lockstep:  # sharded (FSDP) forwards are collectives: every process runs as many
        from reasondistill.train.fsdp import common_count

        n_batches = common_count(n_batches, accelerator.device)
    for i in range(0, n_batches * batch_size, batch_size):
        idx = mine[i:i + batch_size]
        batch = collate(dataset, idx or [0], pad_id)
        if not idx:  # this process's share ran out: a batch without target tokens
            batch["labels"].fill_(IGNORE_INDEX)
        batch = to_device(batch, objective, accelerator.device)
        with autocast(accelerator.device, precision):
            total[0] += objective(model, batch).to(total.dtype)
        total[1] += dataset.target_tokens(idx) if idx else 0
    total = accelerator.reduce(total, reduction="sum")
    model.train(was_training)
    return (total[0] / total[1].clamp(min=1)).item()


def train_model(model, tokenizer, train_path: str | Path, val_path: str | Path | None, out_dir: str | Path,
                cfg: TrainConfig, seed: int, objective: Objective = cross_entropy_sum,
                name: str = "student", show_progress: bool = True) -> dict[str, Any]:
    """Train ``model`` on a built dataset; write checkpoints, ``final/`` and ``metrics.csv``.

    Returns a summary: steps, final validation loss, wall time, tokens/s, parameter count.

    Under ``torchrun`` every process calls it; a script that does so should end with
    ``reasondistill.distributed.shutdown()`` (the CLI does), so the processes leave the process
    group together: a rank that exits with the group open can abort in gloo's teardown.
    """
    return Trainer(model, tokenizer, train_path, val_path, out_dir, cfg, seed, objective, name, show_progress).run()


@dataclass
class _Window:
    """What happened since the last log line. The loss sum stays on the device (no per-step sync)."""
    loss: torch.Tensor
    tokens: int = 0  # target (answer) tokens
    all_tokens: int = 0  # every token the forward saw
    started: float = field(default_factory=time.perf_counter)


class Trainer:
    """One training run in named phases: set-up (accelerator, data, step plan), optimizer, resume,
    then per step: step, log, evaluate, save; at the end, finish (``final/`` and the summary)."""

    def __init__(self, model, tokenizer, train_path, val_path, out_dir, cfg: TrainConfig, seed: int,
                 objective: Objective = cross_entropy_sum, name: str = "student", show_progress: bool = True):
        self.model, self.tokenizer, self.cfg, self.seed, self.objective = model, tokenizer, cfg, seed, objective
        self.name, self.show_progress, self.out_dir = name, show_progress, Path(out_dir)
        self.files = TrainFiles(self.out_dir)
        self.train_path = Path(train_path)
        self._setup(val_path)
        # train.sharding fsdp under torchrun: FSDP2 shards the model before the optimizer sees it (train/fsdp.py)
        self.fsdp = cfg.sharding == "fsdp" and self.world > 1 and not self.sharded
        if self.fsdp:
            from reasondistill.train import fsdp

            fsdp.refuse(model, objective)
            fsdp.shard(self.model, self.device)
        self._make_optimizer()
        self.state = self._resume()
        if not self.fsdp:
            self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.unwrapped = self.accelerator.unwrap_model(self.model)
        self.metrics = _Metrics(self.out_dir, self.state["step"], self.main)
        self.window = _Window(torch.zeros((), dtype=loss_sum_dtype(self.device), device=self.device))
        self.last_grad_norm, self.val_loss, self.micro_batches_run = float("nan"), float("nan"), 0
        self.diverged = (f"training diverged and nothing was saved from it (checkpoints before it are kept): lower "
                         f"train.lr (now {cfg.lr:g}), set train.max_grad_norm, or check the data")

    # -- set-up --------------------------------------------------------------------------------
    def _setup(self, val_path) -> None:
        from accelerate import Accelerator

        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.precision = resolve_mixed_precision(cfg.mixed_precision)
        # one process: bf16 through torch.autocast (``autocast`` below), so that students with different
        # precisions can train one after another in a process; under a launcher accelerate gets the
        # precision too (FSDP's mixed-precision policy), one student per launch
        distributed = world_size() > 1
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                                       mixed_precision=self.precision if distributed else "no")
        self.device = self.accelerator.device
        # FSDP / DeepSpeed shard the optimizer state (and weights), which save_checkpoint cannot write yet:
        # no mid-run checkpoints or resuming there; final/ is still gathered and written (docs/scaling.md)
        self.sharded = self.accelerator.distributed_type.name in ("FSDP", "DEEPSPEED")
        if self.sharded and self.accelerator.is_main_process:
            import warnings

            warnings.warn(f"{self.accelerator.distributed_type.name}: no resumable checkpoints (only final/ is written)")
        self.rank, self.world, self.main = self.accelerator.process_index, self.accelerator.num_processes, \
            self.accelerator.is_main_process
        self.train_ds = TokenizedDataset(self.train_path)
        self.val_ds = TokenizedDataset(val_path) if val_path and Path(val_path).exists() else None
        if len(self.train_ds) == 0:
            raise ValueError(f"{self.train_path}: the training set is empty (check curate/build stats)")
        self.pad_id = self.tokenizer.pad_token_id
        self.pack_tokens = self._pack_tokens()
        self.plan = StepPlan.for_dataset(len(self.train_ds), cfg, self.world)

    def _pack_tokens(self) -> int | None:
        cfg, longest = self.cfg, int(self.train_ds.lengths.max())
        if not cfg.packing:
            return None
        if not getattr(self.objective, "supports_packing", False):
            kind = getattr(self.objective, "__name__", type(self.objective).__name__)
            raise ValueError(f"train.packing: {self.name}'s objective ({kind}) reads per-row inputs and cannot train "
                             f"on packed rows; set train.packing: false")
        pack_tokens = cfg.pack_tokens or cfg.batch_size * longest
        if pack_tokens < longest:
            raise ValueError(f"{self.train_path}: train.pack_tokens={pack_tokens} is shorter than the longest "
                             f"example ({longest} tokens); raise it or leave it unset")
        return pack_tokens

    def _make_optimizer(self) -> None:
        cfg = self.cfg
        self.model.train()
        # an objective that is an nn.Module (e.g. feature projections) trains beside the model, is saved in
        # checkpoints as objective.safetensors and is not exported to final/
        self.obj_module = self.objective.to(self.device) if isinstance(self.objective, torch.nn.Module) else None
        self.extra = [p for p in self.obj_module.parameters() if p.requires_grad] if self.obj_module else []
        groups = _param_groups(self.model, cfg.weight_decay) + (
            [{"params": self.extra, "weight_decay": 0.0}] if self.extra else [])
        # fused: one pass over each tensor instead of ~10 (7 vs 36 ms per step for 11M parameters on CPU)
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas,
                                           fused=self.device.type in ("cpu", "cuda") or None)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(self.plan.total_steps, self.plan.warmup_steps, cfg.min_lr_ratio))

    def _resume(self) -> dict[str, Any]:
        total = self.plan.total_steps
        self.ckpt_root = self.files.checkpoints
        fresh = {"step": 0, "epoch": 0, "batch": 0, "elapsed_s": 0.0, "seed": self.seed, "total_steps": total}
        found = checkpoints(self.ckpt_root) if self.cfg.resume and not self.sharded else []
        if not found:
            return fresh
        last = found[-1]
        load = None
        if self.fsdp:
            from functools import partial

            from reasondistill.train.fsdp import load_state

            load = partial(load_state, self.model, self.optimizer)
        state = restore_checkpoint(last, self.model, self.optimizer, self.scheduler, self.obj_module, load)
        if state.get("total_steps") != total:
            raise ValueError(f"{last}: checkpoint was for {state.get('total_steps')} steps, config gives "
                             f"{total}; use a fresh output directory or the same schedule")
        return state

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg, total = self.cfg, self.plan.total_steps
        self.t0 = time.perf_counter() - self.state["elapsed_s"]
        self.multiple = cfg.pad_to_multiple_of if cfg.pad_to_multiple_of != "auto" else (
            "geometric" if self.device.type == "cpu" and self.precision == "bf16" else 1)
        self.max_width = getattr(self.unwrapped.config, "max_position_embeddings", None)
        fast = fast_causal_attention(self.unwrapped, enabled=cfg.attention == "auto" and self.device.type == "cpu"
                                     and pays_on_cpu(self.unwrapped, self.precision))
        stream = self._micro_batches()
        bar = progress_bar(f"train {self.name}", total, self.show_progress and self.main, self.state["step"])
        stop = DeferredInterrupt(enabled=self.world == 1)  # Ctrl-C: end the step, save it, then stop
        with fast as fast_on, bar as advance, stop:
            while self.state["step"] < total:
                self._step(stream)
                step = self.state["step"]
                if step % cfg.log_every == 0 or step == total:
                    self._log()
                if self.val_ds is not None and (step % cfg.eval_every == 0 or step == total):
                    self._evaluate()
                saved = (step % cfg.save_every == 0 or step == total) and not self.sharded
                if saved or (stop.requested and not self.sharded):
                    self._save()
                advance(1)
                if stop.requested:
                    self.metrics.close()
                    raise KeyboardInterrupt(f"{self.name}: stopped after step {step}, saved as a checkpoint")
            if self.val_ds is not None and math.isnan(self.val_loss):  # resumed after the last step
                self.val_loss = evaluate_loss(self.model, self.val_ds, self.pad_id, cfg.batch_size, self.accelerator,
                                              precision=self.precision, lockstep=self.fsdp)
        self.metrics.close()
        return self._finish(fast_on)

    def _micro_batches(self) -> Iterator[tuple[int, int, Any]]:
        """(epoch, batch-in-epoch, indices) for this process from the saved position on."""
        epoch, b = self.state["epoch"], self.state["batch"]
        while True:
            order = epoch_batches(self.train_ds, self.plan.global_batch, self.seed, epoch, self.cfg.group_by_length)
            while b < len(order):
                mine = order[b][self.rank::self.world]
                b += 1
                yield epoch, b, mine
            epoch, b = epoch + 1, 0

    def _collate(self, group: list) -> list[dict[str, torch.Tensor]]:
        """The step's micro-batches: length-grouped padded batches, or the step's examples packed into
        rows of at most ``pack_tokens`` (one row per micro-batch)."""
        ds = self.train_ds
        if self.pack_tokens is None:
            batches = [collate(ds, idx, self.pad_id, self.multiple, self.max_width) for idx in group if len(idx)]
        else:
            examples = [i for idx in group for i in idx]
            rows = pack_indices(ds.lengths[examples], self.pack_tokens) if examples else []
            batches = [collate_packed(ds, [[examples[j] for j in row]], self.pad_id, self.multiple) for row in rows]
        if not batches and self.world > 1:
            # the epoch's last global batch has fewer examples than processes and none is ours: still
            # join DDP's gradient all-reduce, with a batch that has no target token (loss sum 0)
            batches = [collate(ds, [0], self.pad_id)]
            batches[0]["labels"].fill_(IGNORE_INDEX)
        if self.fsdp:  # sharded forwards are collectives: as many micro-batches on every process
            from reasondistill.train.fsdp import common_count

            for _ in range(common_count(len(batches), self.device) - len(batches)):
                batches.append(collate(ds, [0], self.pad_id))
                batches[-1]["labels"].fill_(IGNORE_INDEX)
        return batches

    def _step(self, stream) -> None:
        """One optimizer step over ``grad_accum`` micro-batches."""
        group = []
        for _ in range(self.cfg.grad_accum):
            epoch, b, idx = next(stream)
            group.append(idx)
            self.state["epoch"], self.state["batch"] = epoch, b
        batches = self._collate(group)
        local_tokens = sum(self.train_ds.target_tokens(idx) for idx in group if len(idx))
        self.window.all_tokens += sum(int(self.train_ds.lengths[idx].sum()) for idx in group if len(idx))
        with step_rng(self.seed, self.state["step"], self.rank, self.device):  # dropout: a function of the step
            self.window.loss += accumulate_gradients(self.model, batches, self.objective, self.accelerator,
                                                     local_tokens, self.precision)
        self.micro_batches_run += len(batches)
        for p in self.extra if self.world > 1 else []:  # not inside DDP: average their gradients by hand
            p.grad = self.accelerator.reduce(p.grad if p.grad is not None else torch.zeros_like(p), reduction="mean")
        self.window.tokens += local_tokens
        if self.cfg.max_grad_norm:
            norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
            self.last_grad_norm = float("nan") if norm is None else norm  # DeepSpeed clips inside, returns None
            if self.fsdp:
                from reasondistill.train.fsdp import grad_norm

                self.last_grad_norm = grad_norm(norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state["step"] += 1

    def _log(self) -> None:
        step, w, now = self.state["step"], self.window, time.perf_counter()
        # the loss and token counts of all processes, not just the main one's share
        sums = torch.tensor([w.loss.item(), w.tokens, w.all_tokens], dtype=torch.float64, device=self.device)
        sums = self.accelerator.reduce(sums, reduction="sum") if self.world > 1 else sums
        check_finite({"train loss": sums[0]}, f"{self.out_dir}: step {step}", self.diverged)
        self.metrics.log({"step": step, "epoch": round(step / self.plan.steps_per_epoch, 4),
                          "train_loss": round(sums[0].item() / max(1.0, sums[1].item()), 6),
                          "lr": self.scheduler.get_last_lr()[0], "grad_norm": round(float(self.last_grad_norm), 5),
                          "target_tokens": int(sums[1].item()),
                          "tokens_per_s": round(sums[2].item() / max(1e-9, now - w.started), 1),
                          "elapsed_s": round(now - self.t0, 2)})
        self.window = _Window(w.loss.zero_())

    def _evaluate(self) -> None:
        """val_loss is always the answer-token cross-entropy, so hard and soft students compare; a soft
        student's own objective is logged beside it as val_objective."""
        step, cfg = self.state["step"], self.cfg
        self.val_loss = evaluate_loss(self.model, self.val_ds, self.pad_id, cfg.batch_size, self.accelerator,
                                      precision=self.precision, lockstep=self.fsdp)
        row = {"step": step, "epoch": round(step / self.plan.steps_per_epoch, 4), "val_loss": round(self.val_loss, 6),
               "elapsed_s": round(time.perf_counter() - self.t0, 2)}
        if self.objective is not cross_entropy_sum:
            row["val_objective"] = round(evaluate_loss(self.model, self.val_ds, self.pad_id, cfg.batch_size,
                                                       self.accelerator, self.objective, self.precision,
                                                       lockstep=self.fsdp), 6)
        self.metrics.log(row)

    def _save(self) -> None:
        step = self.state["step"]
        self.state["elapsed_s"] = time.perf_counter() - self.t0
        weights, optimizer_state = None, None
        if self.fsdp:  # every process: the shards are gathered to full tensors on the main one
            from reasondistill.train.fsdp import gather_state

            weights, optimizer_state = gather_state(self.model, self.optimizer)
        if self.main:
            check_finite(weights if self.fsdp else self.unwrapped.named_parameters(), f"{self.out_dir}: step {step}",
                         self.diverged)
            from reasondistill.train.fsdp import plain_class

            with plain_class(self.unwrapped) as plain:
                save_checkpoint(self.ckpt_root / f"step-{step}", plain, self.tokenizer, self.optimizer,
                                self.scheduler, self.state, self.obj_module, weights, optimizer_state)
            prune(self.ckpt_root, self.cfg.keep_checkpoints)
        self.accelerator.wait_for_everyone()

    def _finish(self, fast_on: bool) -> dict[str, Any]:
        from reasondistill.train.lora import merged_for_export, param_counts

        state = self.state
        params, trainable = param_counts(self.unwrapped)
        summary = {"name": self.name, "steps": state["step"],
                   "epochs": round(state["step"] / self.plan.steps_per_epoch, 3),
                   "final_val_loss": self.val_loss, "wall_time_s": round(time.perf_counter() - self.t0, 2),
                   "train_examples": len(self.train_ds), "params": params, "trainable_params": trainable,
                   "processes": self.world,
                   "attention": "reasondistill/attention.py" if fast_on else self.unwrapped.config._attn_implementation,
                   "pad_to_multiple_of": self.multiple, "pack_tokens": self.pack_tokens,
                   "micro_batches": self.micro_batches_run, "mixed_precision": self.precision}
        if self.fsdp:
            from reasondistill.train.fsdp import gather_state

            weights = gather_state(self.model)[0]
        else:
            weights = self.accelerator.get_state_dict(self.model)  # every process: gathers FSDP / ZeRO-3 shards
        if self.main:
            check_finite(weights, f"{self.out_dir}: after step {state['step']}", self.diverged)
            final = self.files.final
            from reasondistill.train.fsdp import plain_class

            exported, weights = merged_for_export(self.unwrapped, weights)  # LoRA: adapters merged into the base
            with plain_class(exported) as plain:
                plain.save_pretrained(final, state_dict=weights, safe_serialization=True)
            self.tokenizer.save_pretrained(final)
            self.files.summary.write_text(json.dumps(summary, indent=2))
        self.accelerator.wait_for_everyone()
        return summary
