"""A stand-in for vLLM's offline engine (``vllm.LLM``), which needs a GPU and cannot be installed here.

Only the engine is faked: ``generate`` decodes with a real Hugging Face model (greedy or the
repo's counter-based sampling) and answers with objects that have the fields of vLLM's
``RequestOutput`` / ``CompletionOutput`` (vllm/outputs.py), so everything of ours around the
engine (prompt rendering to token ids, ``sampling_kwargs``, ``request_output_to_traces``, the
evaluation backend) runs for real. Used by tests/evaluate/test_backends.py; its output dataclasses
also by tests/teachers/test_vllm_backend.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CompletionOutput:  # vllm.outputs.CompletionOutput
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: list | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:  # vllm.outputs.RequestOutput
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: list | None = None
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = True


@dataclass
class SamplingParams:  # the vllm.SamplingParams arguments our code passes
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    seed: int | None = None


class FakeLLM:
    """``vllm.LLM``'s ``generate`` and ``get_tokenizer`` over a Hugging Face model."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer, self.calls = model, tokenizer, 0

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, prompts, sampling_params, use_tqdm=True):
        from reasondistill.teachers.sampling import SamplingParams as Ours, generate_completions

        self.calls += 1
        outs = []
        for i, (p, sp) in enumerate(zip(prompts, sampling_params)):
            ids = p["prompt_token_ids"]
            text = self.tokenizer.decode(ids, skip_special_tokens=False)
            params = Ours(n=sp.n, temperature=sp.temperature, top_p=sp.top_p, max_new_tokens=sp.max_tokens,
                          batch_size=sp.n, seed=sp.seed or 0)
            comps = [c for b in generate_completions(self.model, self.tokenizer, [text], [str(i)], params) for c in b]
            eos = [self.tokenizer.eos_token_id]
            outs.append(RequestOutput(str(i), text, list(ids), outputs=[
                CompletionOutput(c.sample, c.text, (c.tokens or []) + (eos if c.finish_reason == "stop" else []),
                                 finish_reason=c.finish_reason) for c in comps]))
        return outs
