"""A teacher on vLLM's offline engine (``teacher.kind: vllm``): fast batched sampling on GPUs.

Why: for a large teacher, vLLM's paged attention and continuous batching generate traces many
times faster than ``transformers.generate``, without running a server (``kind: openai`` against
``vllm serve`` is the other way). The interface is the HF teacher's: ``sample(problems, params,
system_prompt)`` yields lists of :class:`~reasondistill.records.Trace`, so the generate stage
writes, resumes and shards them the same way. Prompts are rendered with the teacher's chat
template and sent as token ids; each problem is one request with ``n`` samples and a seed derived
from (sampling seed, problem id), so a resumed or sharded run sends the same seeds.

vllm is imported only when a teacher is made (never at module import), and needs a GPU: ``pip
install vllm``. Without it, :class:`VLLMTeacher` raises :class:`VLLMUnavailable`. The conversion
from vLLM's ``RequestOutput`` to traces (:func:`request_output_to_traces`) is plain Python.

    teacher:
      kind: vllm
      model: deepseek-ai/DeepSeek-R1-Distill-Qwen-7B
      dtype: auto                # bfloat16 where the GPU has it (the default)
      vllm: {tensor_parallel_size: 2, max_model_len: 8192}
"""

from __future__ import annotations

from typing import Any, Iterator

from reasondistill.config import ConfigError
from reasondistill.records import Problem, Trace
from reasondistill.teachers.sampling import SamplingParams, row_key
from reasondistill.thinking import OPEN, split_thinking

INSTALL_HINT = ("teacher.kind 'vllm' needs the vllm package: pip install vllm; needs a GPU (CUDA). Without one, "
                "use kind 'hf', or kind 'openai' against a `vllm serve` server on another machine (docs/teachers.md)")


class VLLMUnavailable(ConfigError):
    """``kind: vllm`` was asked for but vllm cannot be imported here."""


def import_vllm():
    try:
        import vllm
    except ImportError as exc:
        raise VLLMUnavailable(f"{INSTALL_HINT} ({type(exc).__name__}: {exc})") from None
    return vllm


def engine_dtype(dtype: str) -> str:
    """The ``dtype`` given to ``vllm.LLM``: ``auto`` is bfloat16 where the GPU computes it, else vLLM's
    own ``auto`` (the checkpoint's dtype, float16 for float32 checkpoints); other names unchanged."""
    if dtype != "auto":
        return dtype
    import torch

    return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "auto"


def problem_seed(seed: int, problem_id: str) -> int:
    """The vLLM request seed of a problem's ``n`` samples: stable across runs, machines and shards."""
    return row_key(seed, problem_id, 0) & 0x7FFFFFFF


def sampling_kwargs(params: SamplingParams, problem_id: str) -> dict[str, Any]:
    """``vllm.SamplingParams`` keyword arguments for one problem."""
    return {"n": params.n, "temperature": params.temperature, "top_p": params.top_p,
            "max_tokens": params.max_new_tokens, "seed": problem_seed(params.seed, problem_id)}


def request_output_to_traces(output: Any, problem_id: str, teacher: str, sampling: dict[str, Any],
                             opened_think: bool = False) -> list[Trace]:
    """The traces of one vLLM ``RequestOutput`` (its ``outputs`` are the ``n`` samples).

    ``opened_think``: the rendered prompt already ended in ``<think>`` (as DeepSeek-R1's template
    does), so the completion starts inside the thought; the tag is put back in ``text`` so the
    trace reads like one from a model that opens it itself. A sample vLLM finished for a reason
    other than ``stop`` or ``length`` (e.g. ``abort``) becomes a failed trace (``finish_reason
    error``), which the next ``generate`` retries.
    """
    prompt_tokens = len(getattr(output, "prompt_token_ids", None) or [])
    traces = []
    for c in sorted(output.outputs, key=lambda c: c.index):
        text = (OPEN + c.text) if opened_think and not c.text.lstrip().startswith(OPEN) else c.text
        thinking, answer, _ = split_thinking(text)
        finish, error = c.finish_reason, None
        if finish not in ("stop", "length"):
            finish, error = "error", f"vLLM finished the sample with finish_reason {c.finish_reason!r}"
        usage = {"stop_reason": c.stop_reason} if getattr(c, "stop_reason", None) is not None else {}
        traces.append(Trace(problem_id=problem_id, sample=int(c.index), thinking=thinking, answer=answer, text=text,
                            prompt_tokens=prompt_tokens, completion_tokens=len(c.token_ids), finish_reason=finish,
                            teacher=teacher, sampling=sampling, error=error, usage=usage))
    return traces


class VLLMTeacher:
    def __init__(self, model: str, dtype: str = "auto", llm=None, name: str | None = None,
                 sampling_params_cls=None, **engine_args: Any):
        """``engine_args`` go to ``vllm.LLM`` (tensor_parallel_size, gpu_memory_utilization, ...);
        ``llm`` is an already built engine, ``sampling_params_cls`` its ``SamplingParams`` class
        (with both given vllm is not imported: how the tests drive this code with a stand-in engine)."""
        from reasondistill.models import resolve

        if llm is None or sampling_params_cls is None:
            self._sampling_params = import_vllm().SamplingParams
        else:
            self._sampling_params = sampling_params_cls
        self.name = name or f"vllm:{model}"
        self.llm = llm if llm is not None else import_vllm().LLM(model=resolve(model), dtype=engine_dtype(dtype),
                                                                 **engine_args)
        self.tokenizer = self.llm.get_tokenizer()

    def sample(self, problems: list[Problem], params: SamplingParams,
               system_prompt: str | None = None) -> Iterator[list[Trace]]:
        """One batch of ``batch_size // n`` problems per call to vLLM (vLLM schedules inside it;
        the batch is how often traces are written and the run can resume)."""
        from reasondistill.prompts import render_prompts

        prompts = render_prompts(self.tokenizer, [p.prompt for p in problems], system=system_prompt)
        sampling = params.model_dump(exclude={"batch_size"})
        per_batch = max(1, params.batch_size // params.n)
        for start in range(0, len(problems), per_batch):
            chunk, texts = problems[start:start + per_batch], prompts[start:start + per_batch]
            ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]  # the template has its own BOS
            outputs = self.llm.generate([{"prompt_token_ids": x} for x in ids],
                                        [self._sampling_params(**sampling_kwargs(params, p.id)) for p in chunk],
                                        use_tqdm=False)
            batch = []
            for p, text, out in zip(chunk, texts, outputs):
                batch += request_output_to_traces(out, p.id, self.name, sampling,
                                                  opened_think=text.rstrip().endswith(OPEN))
            yield batch
