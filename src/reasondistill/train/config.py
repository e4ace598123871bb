"""The training config, validated on creation so a bad value fails before any work starts."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TrainConfig(BaseModel):
    """Hard distillation (SFT on traces). Batch sizes count examples per process."""

    model_config = ConfigDict(extra="forbid")

    epochs: float | None = Field(3.0, gt=0, description="passes over the training set (or use max_steps)")
    max_steps: int | None = Field(None, gt=0, description="optimizer steps; overrides epochs when set")
    batch_size: int = Field(64, gt=0, description="examples per micro-batch per process")
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimizer step")
    lr: float = Field(1e-3, gt=0, description="peak learning rate (AdamW, cosine schedule)")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine decays to lr * min_lr_ratio")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="share of the steps with linear warm-up")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    betas: tuple[float, float] = Field((0.9, 0.98), description="AdamW betas")
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping norm (null: no clipping)")
    group_by_length: bool = Field(True, description="batch examples of similar length (less padding)")
    mixed_precision: Literal["no", "bf16", "auto"] = Field(
        "no", description="bf16: autocast matmuls to bf16 (fp32 master weights); auto: bf16 where the hardware "
                          "runs it natively (CUDA with bf16, CPUs with AVX512-BF16 or AMX), else no")
    attention: Literal["auto", "model"] = Field(
        "auto", description="auto: on CPU, train with reasondistill/attention.py's blocked causal attention where it "
                            "pays (bf16, or head_dim >= 32); model: keep the model's own attn_implementation")
    pad_to_multiple_of: int | Literal["auto", "geometric"] = Field(
        "auto", description="round each micro-batch's length up so that a few tensor shapes recur (in bf16 on CPU "
                            "oneDNN builds a GEMM kernel for every new shape, ~2 ms each): to a multiple of this, "
                            "or geometric: from 128 tokens on, to a multiple of 1/8 of its power of two (under "
                            "12.5% padding); auto: geometric for bf16 on CPU, else 1 (in fp32 padding only costs)")
    packing: bool = Field(
        False, description="pack each optimizer step's examples into rows (position_ids restarting per example, "
                           "no padding inside a row; data/packing.py): no padding waste with a varlen attention "
                           "kernel (GPU: attn_implementation flash_attention_2/3); on CPU reasondistill/attention.py "
                           "handles packed rows without a dense mask, but length-grouped padding is faster there")
    pack_tokens: int | None = Field(
        None, gt=0, description="packing: tokens per row (one row per micro-batch); None: batch_size x the longest "
                                "example, the most a padded micro-batch could hold (so no more memory)")
    sharding: Literal["none", "fsdp"] = Field(
        "none", description="fsdp: under torchrun, shard weights, gradients and AdamW state over the processes "
                            "(FSDP2 fully_shard, one unit per decoder layer; gloo on CPU, NCCL on GPUs; train/fsdp.py); "
                            "checkpoints are gathered and resume on any process count. none: DDP (one process: ignored)")
    threads: int | None = Field(None, gt=0, description="torch CPU threads; None keeps torch's default")
    log_every: int = Field(10, gt=0, description="steps between log lines (metrics.csv)")
    eval_every: int = Field(200, gt=0, description="steps between validation losses")
    save_every: int = Field(500, gt=0, description="steps between checkpoints")
    keep_checkpoints: int = Field(2, gt=0, description="checkpoints kept (older ones are deleted)")
    resume: bool = Field(True, description="continue from the last checkpoint when there is one")

    @model_validator(mode="after")
    def _length(self) -> "TrainConfig":
        if self.epochs is None and self.max_steps is None:
            raise ValueError("set epochs or max_steps")
        if isinstance(self.pad_to_multiple_of, int) and self.pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, 'auto' or 'geometric', not {self.pad_to_multiple_of}")
        return self


def resolve_mixed_precision(value: str) -> str:
    """``auto`` -> ``bf16`` on a CUDA device with bf16 or a CPU with AVX512-BF16 / AMX, else ``no``.
    (Emulated bf16 on other CPUs is several times slower than fp32.)"""
    if value != "auto":
        return value
    from reasondistill.models import bf16_is_native

    return "bf16" if bf16_is_native() else "no"
