"""The train stage of a student with a ``policy:`` section (train/policy.py), wired from the run directory.

Why a module apart from pipeline.py: the pipeline only dispatches here (one hook), so the shared file
stays small. Inputs: ``problems/train.jsonl`` (prompts only for grpo / on_policy), the curated traces
(dpo's chosen side), the start weights (``start_from``: another student's ``final/`` or a model
directory), the run's local teacher (on_policy, kl_teacher). Outputs: as SFT, ``train/<student>/``.
A student with ``lora:`` gets adapters on the start weights (train/lora.py, as SFT LoRA students do;
dpo's pairs are sampled from the start weights before the adapters are attached).

    reasondistill train runs/x --student student_grpo
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reasondistill.models import local_files
from reasondistill.records import Problem, Trace, read_records


def start_weights(pipeline, s) -> str | None:
    """The directory the policy starts from: another student's final/ (by name) or a model path."""
    start = s.policy.start_from
    if start is None:
        return s.model
    names = [x.name for x in pipeline.cfg.students]
    if start in names:
        if start == s.name:
            raise ValueError(f"students.{s.name}.policy.start_from names the student itself")
        return str(pipeline.rd.train(start).final)
    return start


def logit_teacher(pipeline):
    """The frozen teacher that scores the student's tokens: ``logit_teacher`` when the config has one,
    else the run's local hf teacher (teachers/logits.py)."""
    from reasondistill.teachers.logits import load_logit_teacher

    spec = pipeline._logit_teacher()
    model, tokenizer = load_logit_teacher(spec)
    return model, tokenizer, spec.model


def train_policy_student(pipeline, s, force: bool) -> dict[str, Any]:
    from reasondistill.models import init_model, load_model, load_tokenizer

    pc = s.policy
    rd = pipeline.rd
    t = rd.train(s.name)
    rd.need(rd.train_problems, stage="generate")
    start = start_weights(pipeline, s)
    needs_teacher = pc.teacher_section() is not None
    inputs = [rd.train_problems, *([rd.curated] if pc.objective == "dpo" else [])]
    if start is not None:
        inputs += [Path(start) / "model.safetensors"] if Path(start).is_dir() else local_files(start)
    if needs_teacher:
        inputs += local_files(pipeline._local_teacher())
    conf = {"student": s.model_dump(mode="json"), "seed": pipeline._seed(s), "start": start}

    def fn(fp):
        from reasondistill.train.kd import check_same_tokenizer
        from reasondistill.train.pairs import build_pairs, read_pairs, write_pairs
        from reasondistill.train.policy import train_policy

        rd.restart_if_stale(t.dir, t.progress, fp, pipeline.log)
        pipeline.say_resume(s.name, t.checkpoints, pc.resume)
        seed = pipeline._seed(s)
        tokenizer = load_tokenizer(start or pipeline._student_tokenizer_name(s))
        if s.lora:  # the config guarantees a pretrained start; QLoRA loads it in 4-bit (CUDA only)
            from reasondistill.train.lora import load_base

            model = load_base(start, s.lora, s.attn_implementation)
        else:
            model = load_model(start) if start else init_model(s.init.spec(), tokenizer, seed)
        if pc.threads:
            import torch

            torch.set_num_threads(pc.threads)
        problems = read_records(rd.train_problems, Problem)
        teacher = None
        if needs_teacher:
            teacher, ttok, _ = logit_teacher(pipeline)
            check_same_tokenizer(tokenizer, ttok, f"students.{s.name}: {pc.teacher_section()} (the teacher scores "
                                 "the student's own tokens)", "Give the student the teacher's tokenizer (start from "
                                 f"a model trained with it), or drop {pc.teacher_section()}.")
        pairs = None
        if pc.objective == "dpo":
            path = t.dir / "pairs.jsonl"
            if path.exists():
                pairs = read_pairs(path)
            else:
                rd.need(rd.curated, stage="curate")
                pairs = build_pairs(model, tokenizer, pipeline.task, {p.id: p for p in problems},
                                    read_records(rd.curated, Trace), n_problems=pc.dpo_problems, samples=pc.dpo_samples,
                                    temperature=pc.temperature, max_new_tokens=pc.max_new_tokens, seed=seed,
                                    think_tags=pipeline.cfg.build.think_tags)
                if pairs:  # none: nothing to keep, the next attempt samples again
                    write_pairs(path, pairs)
                pipeline.log(f"       {s.name}: {len(pairs)} preference pairs (teacher trace vs own wrong answer)")
        if s.lora:  # adapters on the start weights, seeded like an SFT LoRA student's
            from reasondistill.train.lora import apply_lora, trainable_line

            model = apply_lora(model, s.lora, seed)
            pipeline.log(f"       {s.name}: LoRA r={s.lora.r}: {trainable_line(model)}")
        return train_policy(model, tokenizer, problems, pipeline.task, pc, t.dir, seed, teacher=teacher, pairs=pairs,
                            name=s.name, show_progress=pipeline.show_progress)
    return pipeline.run_stage(f"train:{s.name}", conf, inputs, t.outputs, fn, force)
