"""The quantize stage: one student variant from trained weights to an evaluated quantized model.

Why: ``reasondistill quantize RUN`` (and ``run``, after evaluate) turns each trained student with a
``quantize`` section into deployable quantized weights and measures what was lost, on the same
held-out problems, decoding and verifier as the full-precision student. Per variant, in
``quantize/<student>/<variant>/``:

1. qat / qad: fine-tune a copy of ``train/<student>/final`` whose Linear layers are fake-quantized
   (torchao QAT, straight-through estimator) on the student's training traces
   (``build/<student>/``), with the project's training loop (checkpoints, resuming): cross-entropy
   for qat; for qad forward KL to a frozen full-precision teacher (the student's own ``final``
   weights, or the run's logit teacher), ``α · T² · KL + (1 − α) · CE`` from train/losses.py.
   Written to ``train/`` (``train/final`` holds the full-precision weights that trained).
2. convert: the library's conversion to real integer weights, saved as a transformers checkpoint
   in ``model/`` (safetensors; quantize/scheme.py); ptq converts ``final`` directly.
3. evaluate the converted model as plain transformers loads it: ``eval/metrics.json`` and
   ``eval/completions.jsonl`` (evaluate/accuracy.py, the evaluate stage's function).
4. ``summary.json``: accuracy, weight bytes and decode tokens/s of the full-precision and the
   quantized model (quantize/speed.py).

The stage is fingerprinted like the others (its section, the greedy decoding settings, the
trained weights, the test problems and, for qat/qad, the training data); an interrupted fine-tune
resumes from its last checkpoint; a changed section moves the old variant aside.

    Pipeline(cfg).quantize()          # every student's variants; or quantize("s") for one student
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reasondistill.layout import QuantizeFiles
from reasondistill.quantize.config import QuantizeConfig
from reasondistill.records import Problem, read_records, write_json


def kd_chunk_rows(vocab_size: int) -> int:
    """Rows per chunk of the KL: about 4 MB of fp32 logits per chunk (working memory ~10x that)."""
    return max(16, (1 << 20) // max(1, vocab_size))


def teacher_name(pipe, q: QuantizeConfig) -> str | None:
    """The model a qad variant distils from when it is not the student itself (``teacher: logit``):
    the run's logit teacher (teachers/logits.py: ``logit_teacher``, else an hf teacher)."""
    if q.method != "qad" or q.defaulted("teacher") == "self":
        return None
    return _logit_spec(pipe).model


def _logit_spec(pipe):
    from reasondistill.teachers.logits import logit_teacher_config

    spec = logit_teacher_config(pipe.cfg)
    if spec is None:
        raise ValueError("quantize.teacher 'logit' needs the teacher's logits: set logit_teacher or use a local "
                         "teacher (teacher.kind: hf); or use teacher 'self' (the student's own full-precision weights)")
    return spec


def quantize_variant(pipe, s, q: QuantizeConfig, seed: int, force: bool = False) -> dict[str, Any]:
    """Run (or skip, when current) the stage ``quantize:<student>:<variant>``."""
    from reasondistill.models import local_files

    rd = pipe.rd
    final = rd.train(s.name).final
    rd.need(final, stage="train")
    f, b = rd.quantize(s.name, q.label), rd.build(s.name)
    teacher = teacher_name(pipe, q)
    decoding = pipe.cfg.evaluate.model_dump(include={"batch_size", "max_new_tokens"})
    conf = {"quantize": q, "decoding": decoding, "seed": seed} | ({"teacher": teacher} if teacher else {})
    inputs = [final, rd.test_problems, *([b.train, b.val] if q.method != "ptq" else []),
              *(local_files(teacher) if teacher else [])]

    def fn(fp):
        rd.restart_if_stale(f.dir, f.progress, fp, pipe.log)
        return _run(pipe, s, q, seed, f, final, teacher)
    return pipe.run_stage(f"quantize:{s.name}:{q.label}", conf, inputs, f.outputs, fn, force)


def _run(pipe, s, q: QuantizeConfig, seed: int, f: QuantizeFiles, final: Path, teacher: str | None) -> dict[str, Any]:
    from importlib.metadata import version

    from reasondistill.evaluate.accuracy import evaluate_model
    from reasondistill.models import load_model, load_tokenizer
    from reasondistill.prompts import render_prompts
    from reasondistill.quantize.scheme import convert, load_quantized
    from reasondistill.quantize.speed import decode_speed, weight_bytes

    where = f"students.{s.name}.quantize.{q.label}"
    tokenizer = load_tokenizer(str(final))
    finetune = None
    trained = final
    if q.method != "ptq":
        trained, finetune = _finetune(pipe, s, q, seed, f, final, tokenizer, teacher, where)
    layers = convert(trained, f.model, q, tokenizer, where)
    model = load_quantized(f.model)
    problems = read_records(pipe.rd.test_problems, Problem)
    ev = pipe.cfg.evaluate
    metrics = evaluate_model(model, problems, pipe.task, batch_size=ev.batch_size, max_new_tokens=ev.max_new_tokens,
                             out_dir=f.eval.dir, tokenizer=tokenizer, name=f"{s.name}/{q.label}")
    speed: dict[str, Any] = {}
    if q.speed_prompts and problems:
        prompts = render_prompts(tokenizer, [p.prompt for p in problems[:q.speed_prompts]])
        speed = decode_speed({"reference": load_model(str(final)), "quantized": model}, tokenizer, prompts,
                             ev.max_new_tokens)
    weight = dict(model.named_parameters())[f"{layers[0]}.weight"]
    ref_bytes, q_bytes = weight_bytes(final), weight_bytes(f.model)
    summary = {
        "student": s.name, "variant": q.label, "method": q.method, "bits": q.bits, "group_size": q.group_size,
        "teacher": (teacher or "self") if q.method == "qad" else None,
        "quantized_layers": len(layers), "format": f"torchao {version('torchao')} {type(weight).__name__}",
        "accuracy": metrics["accuracy"], "n": metrics["n"], "correct": metrics["correct"],
        "reference": {"dtype": "float32", "weight_bytes": ref_bytes, **speed.get("reference", {})},
        "quantized": {"weight_bytes": q_bytes, **speed.get("quantized", {})},
        "size_ratio": round(q_bytes / ref_bytes, 4) if ref_bytes else None,
        "speed_ratio": (round(speed["quantized"]["tokens_per_s"] / speed["reference"]["tokens_per_s"], 3)
                        if speed else None),
        "finetune": finetune and {k: finetune.get(k) for k in ("steps", "final_val_loss", "wall_time_s")},
    }
    write_json(f.summary, summary)
    pipe.log(f"       {s.name}/{q.label}: accuracy {metrics['accuracy']:.3f} on {metrics['n']} problems, "
             f"weights {q_bytes / 1e3:.0f} kB vs {ref_bytes / 1e3:.0f} kB"
             + (f", decode {summary['speed_ratio']:.2f}x full precision" if speed else ""))
    return summary


def _finetune(pipe, s, q: QuantizeConfig, seed: int, f: QuantizeFiles, final: Path, tokenizer, teacher: str | None,
              where: str) -> tuple[Path, dict[str, Any]]:
    """QAT or QAD on the student's training traces through fake-quantized weights; returns the
    directory of the trained full-precision weights and the training summary."""
    from reasondistill.models import load_model, load_tokenizer
    from reasondistill.quantize.scheme import prepare_fake_quant
    from reasondistill.train.sft import cross_entropy_sum, train_model

    b = pipe.rd.build(s.name)
    pipe.rd.need(b.train, stage="build")
    model = load_model(str(final), attn_implementation=s.attn_implementation)
    prepare_fake_quant(model, q, where)
    objective = cross_entropy_sum
    if q.method == "qad":
        from reasondistill.train.kd import OnlineKD, shared_vocab_size
        from reasondistill.train.losses import DivergencePlusCrossEntropy, ForwardKL

        if teacher is None:
            ref, ref_tokenizer = load_model(str(final)), None  # the student's own full-precision weights
        else:
            ref, ref_tokenizer = load_model(teacher, _logit_spec(pipe).dtype), load_tokenizer(teacher)
        vocab = shared_vocab_size(model, ref, tokenizer)
        kl = ForwardKL(temperature=q.defaulted("temperature"), chunk_size=kd_chunk_rows(vocab))
        objective = OnlineKD(ref, DivergencePlusCrossEntropy(kl, alpha=q.defaulted("alpha")),
                             student_tokenizer=tokenizer, teacher_tokenizer=ref_tokenizer)
    summary = train_model(model, tokenizer, b.train, b.val, f.train.dir, q.train, seed=seed, objective=objective,
                          name=f"{s.name}/{q.label}", show_progress=pipe.show_progress)
    return f.train.final, summary
