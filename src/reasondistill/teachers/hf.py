"""A local Hugging Face teacher: batched sampling of several traces per problem.

Why: the teacher's traces are the training data. Prompts are rendered with the teacher's chat
template (optionally with a system prompt), decoded in length-sorted batches with the KV cache,
and split into thinking and answer. Sampling is seeded per (problem, sample), so a resumed run
writes the same traces as an uninterrupted one.

    teacher = HFTeacher("bundled:tiny-arith-teacher")
    for traces in teacher.sample(problems, SamplingParams(n=2, temperature=0.7)): ...
"""

from __future__ import annotations

from typing import Iterator

from reasondistill.prompts import render_prompts
from reasondistill.records import Problem, Trace
from reasondistill.teachers.sampling import SamplingParams, generate_completions
from reasondistill.thinking import split_thinking


class HFTeacher:
    def __init__(self, model: str, dtype: str = "float32", model_obj=None, tokenizer=None, name: str | None = None):
        from reasondistill.models import load_model, load_tokenizer

        self.name = name or model
        self.tokenizer = tokenizer or load_tokenizer(model)
        self.model = model_obj if model_obj is not None else load_model(model, dtype)

    def sample(self, problems: list[Problem], params: SamplingParams,
               system_prompt: str | None = None) -> Iterator[list[Trace]]:
        prompts = render_prompts(self.tokenizer, [p.prompt for p in problems], system=system_prompt)
        sampling = params.model_dump(exclude={"batch_size"})
        for batch in generate_completions(self.model, self.tokenizer, prompts, [p.id for p in problems], params):
            traces = []
            for c in batch:
                thinking, answer, _ = split_thinking(c.text)
                traces.append(Trace(problem_id=problems[c.index].id, sample=c.sample, thinking=thinking,
                                    answer=answer, text=c.text, prompt_tokens=c.prompt_tokens,
                                    completion_tokens=c.completion_tokens,
                                    finish_reason=c.finish_reason,  # a prompt past the context: "length"
                                    # at 0 tokens, with the error: an outcome, not a failure to retry
                                    teacher=self.name, sampling=sampling, error=c.error))
            yield traces
