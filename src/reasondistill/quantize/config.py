"""``students[].quantize``: the quantized variants of a student, one section each.

Why here and not in config.py: the section belongs to the quantize stage; config.py refers to it
with one field (``StudentConfig.quantize``). A student may list several variants (a mapping alone
is one variant), e.g. the four-way comparison of bench/qad.py:

    quantize:
      - {method: ptq, bits: 4, group_size: 16}
      - {method: qad, bits: 4, group_size: 16, train: {max_steps: 200, lr: 1.0e-4}}
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_serializer,
                      model_validator)

from reasondistill.train.config import TrainConfig


# a short, low-learning-rate fine-tune (QAT/QAD start from a trained student); keys a section's
# ``train`` leaves out come from here, not from TrainConfig's defaults for training from scratch
FINETUNE_DEFAULTS = {"epochs": 1.0, "lr": 1e-4, "warmup_ratio": 0.0, "min_lr_ratio": 0.1, "eval_every": 100,
                     "save_every": 100, "log_every": 10}


def _finetune_defaults() -> TrainConfig:
    return TrainConfig(**FINETUNE_DEFAULTS)


def _over_finetune_defaults(value: Any) -> Any:
    return {**FINETUNE_DEFAULTS, **value} if isinstance(value, dict) else value


class QuantizeConfig(BaseModel):
    """One quantized variant of a student: weight-only, symmetric integer weights of every Linear
    layer except those in ``keep`` (torchao ``IntxWeightOnlyConfig``), made by ``method``:
    ptq (round the trained weights), qat (fine-tune with fake-quantized weights on the student's
    training traces, cross-entropy) or qad (the same, but forward KL to a full-precision teacher:
    the student's own trained weights by default). Writes ``quantize/<student>/<name>/``."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$",
                             description="the variant's directory and report row (null: <method>-int<bits>)")
    method: Literal["ptq", "qat", "qad"] = Field(
        "ptq", description="ptq: round the trained weights; qat: fine-tune through fake quantization on the "
        "traces (cross-entropy); qad: the same with forward KL to the full-precision teacher")
    bits: int = Field(4, ge=2, le=8, description="bits per weight (signed integers, symmetric)")
    group_size: int | None = Field(32, gt=0, description="weights sharing one scale along each row (each "
                                   "quantized layer's input width must be a multiple); null: one scale per "
                                   "output channel")
    keep: list[str] = Field(default_factory=lambda: ["lm_head"], description="modules left in full precision: "
                            "a name matches a module whose qualified name equals it, starts with it and a dot, "
                            "or ends with a dot and it (lm_head, model.layers.0, down_proj); a name that matches "
                            "no module is an error; an output layer tied to the input embedding is always kept")
    teacher: Literal["self", "logit"] | None = Field(
        None, description="qad only: self (default) = the student's own full-precision weights; logit = the "
        "run's logit teacher (logit_teacher, else the run's local teacher)")
    temperature: float | None = Field(None, gt=0, description="qad only: softmax temperature of both "
                                      "distributions (default 1)")
    alpha: float | None = Field(None, ge=0, le=1, description="qad only: weight of the KL; 1 − alpha weighs "
                                "cross-entropy on the traces (default 1: KL alone)")
    train: Annotated[TrainConfig, BeforeValidator(_over_finetune_defaults)] = Field(
        default_factory=_finetune_defaults, description="qat/qad: the fine-tune; keys left out default to 1 epoch "
        "at lr 1e-4, no warm-up (not to a student's train defaults); ptq: unused")
    speed_prompts: int = Field(16, ge=0, description="test problems decoded one at a time to measure decode "
                               "tokens/s of the full-precision and the quantized model (0: not measured)")

    @model_validator(mode="after")
    def _consistent(self) -> "QuantizeConfig":
        if self.method != "qad":
            for key in ("teacher", "temperature", "alpha"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} applies to method 'qad' only (method is {self.method!r})")
        if self.method == "ptq" and "train" in self.model_fields_set:
            raise ValueError("train applies to methods 'qat' and 'qad' (ptq does not train)")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        """Without the keys the method does not use, so a dumped config (config.yaml) loads back and a
        ptq variant's fingerprint does not depend on training settings it never reads."""
        data = handler(self)
        if self.method == "ptq":
            data.pop("train", None)
        if self.method != "qad":
            for key in ("teacher", "temperature", "alpha"):
                data.pop(key, None)
        return data

    @property
    def label(self) -> str:
        """The variant's name: ``name``, or ``<method>-int<bits>``."""
        return self.name or f"{self.method}-int{self.bits}"

    def defaulted(self, key: str) -> Any:
        """``teacher``, ``temperature`` or ``alpha`` with its qad default when unset."""
        value = getattr(self, key)
        return {"teacher": "self", "temperature": 1.0, "alpha": 1.0}[key] if value is None else value


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, dict) else ([] if value is None else value)


def _unique(variants: list[QuantizeConfig]) -> list[QuantizeConfig]:
    labels = [q.label for q in variants]
    repeated = sorted({x for x in labels if labels.count(x) > 1})
    if repeated:
        raise ValueError(f"variant names must be unique, repeated: {repeated} (give each a name)")
    return variants


# the field type of ``StudentConfig.quantize``: a list of variants, or one mapping, or null
QuantizeSections = Annotated[list[QuantizeConfig], BeforeValidator(_one_or_many), AfterValidator(_unique)]
