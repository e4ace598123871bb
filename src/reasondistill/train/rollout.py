"""Rollout backends: the student's own completions for policy training (train/policy.py).

Why: GRPO, on-policy distillation and DPO pair-building all sample the *current* student. Three
backends share one interface, ``generate(prompts, keys, temperature, max_new_tokens) -> [Rollout]``
and ``sync(model)`` (push the trained weights before the next rollouts):

* :class:`HFRollout`, the default and the one that runs here: the policy itself decodes through
  the lean KV-cache decoder of reasondistill/decoder.py (Llama-family models; others through
  transformers' ``generate``) with the counter-based sampler of teachers/sampling.py, so a row's
  sample is a pure function of its key and a resumed run draws the same rollouts. ``sync`` is a
  no-op: it is the trained model.
* :class:`VLLMRollout`: a vLLM ``LLM`` in the training process (colocated); ``sync`` loads the
  trained weights into its model (``load_weights``), as TRL's colocate mode does.
* :class:`VLLMServerRollout`: a ``trl vllm-serve`` server through TRL's ``VLLMClient``; ``sync`` streams
  the weights with ``update_named_param`` and resets the prefix cache.

vLLM needs a GPU; the two vLLM classes are tested here against fake engines with vLLM's interface.

    engine = HFRollout(model, tokenizer)
    rollouts = engine.generate([[5, 6, 7]], keys=[row_key(0, "p1", 0)], temperature=1.0, max_new_tokens=64)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch


@dataclass
class Rollout:
    prompt: list[int]
    completion: list[int]  # sampled tokens, EOS included when the model stopped
    finish_reason: str  # "stop" | "length"
    text: str  # the completion decoded without special tokens (what the verifier reads)


def _finish(tokenizer, prompt: list[int], new: list[int], eos: set[int]) -> Rollout:
    stop = next((j for j, t in enumerate(new) if t in eos), None)
    kept = new if stop is None else new[:stop + 1]
    text = tokenizer.decode(kept if stop is None else kept[:-1], skip_special_tokens=True)
    return Rollout(prompt, kept, "length" if stop is None else "stop", text)


class HFRollout:
    """Sampling from the policy with counter-based noise per row key: through the lean KV-cache
    decoder of reasondistill/decoder.py for Llama-family models (peft adapters included), else
    transformers' ``generate`` with the same sampler (the tokens are the same either way)."""

    def __init__(self, model, tokenizer, eos_ids: Sequence[int] | None = None, decoder: str = "auto"):
        self.model, self.tokenizer = model, tokenizer
        self.eos = set(eos_ids or [tokenizer.eos_token_id])
        self.decoder = decoder  # auto: the lean decoder when it supports the model; generate: always transformers'

    def sync(self, model) -> None:
        self.model = model

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], keys: Sequence[int], temperature: float,
                 max_new_tokens: int) -> list[Rollout]:
        from reasondistill.decoder import Decoder
        from reasondistill.teachers.sampling import CounterSampler

        pad = self.tokenizer.pad_token_id
        width = max(len(p) for p in prompts)
        context = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        if isinstance(context, int) and width + max_new_tokens > context:  # positions past it: silent garbage
            raise ValueError(f"a rollout prompt of {width} tokens + max_new_tokens={max_new_tokens} exceeds the "
                             f"policy's context ({context} tokens, max_position_embeddings); lower "
                             f"policy.max_new_tokens to at most {max(context - width, 0)}")
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for r, p in enumerate(prompts):  # left padding
            ids[r, width - len(p):] = torch.tensor(p)
            attn[r, width - len(p):] = 1
        sampler = CounterSampler(torch.tensor(list(keys), dtype=torch.int64), width, temperature, 1.0) \
            if temperature > 0 else None
        lean = Decoder.for_model(self.model) if self.decoder == "auto" else None
        if lean is not None:
            new = lean.generate(ids, attn, max_new_tokens, sorted(self.eos), pad,
                                sampler.at if sampler else None).tolist()
        else:
            new = self._transformers(ids, attn, sampler, max_new_tokens)
        return [_finish(self.tokenizer, p, row, self.eos) for p, row in zip(prompts, new)]

    def _transformers(self, ids, attn, sampler, max_new_tokens: int) -> list[list[int]]:
        from transformers import GenerationConfig, LogitsProcessorList

        from reasondistill.attention import fast_causal_attention

        model = self.model
        device = next(model.parameters()).device
        width = ids.shape[1]
        processors = LogitsProcessorList([sampler] if sampler else [])
        cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                               eos_token_id=sorted(self.eos), pad_token_id=self.tokenizer.pad_token_id, use_cache=True,
                               temperature=None, top_p=None, top_k=None)
        was_training = model.training
        model.eval()
        fast = device.type == "cpu" and next(model.parameters()).dtype == torch.bfloat16
        try:
            with fast_causal_attention(model, enabled=fast):
                out = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), generation_config=cfg,
                                     logits_processor=processors)
        finally:
            model.train(was_training)
        return out[:, width:].tolist()


def _named_weights(model) -> list[tuple[str, torch.Tensor]]:
    return [(n, p.detach()) for n, p in model.state_dict().items()]


class VLLMRollout:
    """A colocated ``vllm.LLM``. ``sampling_params`` builds vLLM's ``SamplingParams`` (default: imported
    from vllm); ``load_weights`` receives ``[(name, tensor)]`` (default: the engine's model runner's
    ``load_weights``, TRL's colocate path)."""

    def __init__(self, llm, tokenizer, sampling_params: Callable[..., Any] | None = None,
                 load_weights: Callable[[list[tuple[str, torch.Tensor]]], None] | None = None):
        if sampling_params is None:
            from vllm import SamplingParams as sampling_params  # noqa: N813 (GPU machines only)
        if load_weights is None:
            load_weights = llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights
        self.llm, self.tokenizer, self.params, self.load = llm, tokenizer, sampling_params, load_weights
        self.eos = {tokenizer.eos_token_id}

    def sync(self, model) -> None:
        self.load(_named_weights(model))

    def generate(self, prompts: list[list[int]], keys: Sequence[int], temperature: float,
                 max_new_tokens: int) -> list[Rollout]:
        params = [self.params(n=1, temperature=temperature, max_tokens=max_new_tokens, seed=int(k) & 0x7FFFFFFF)
                  for k in keys]
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return [_finish(self.tokenizer, p, list(o.outputs[0].token_ids), self.eos) for p, o in zip(prompts, outs)]


class VLLMServerRollout:
    """A ``trl vllm-serve`` server through TRL's ``VLLMClient`` (``generate`` on token ids,
    ``update_named_param`` and ``reset_prefix_cache`` for weight sync)."""

    def __init__(self, client, tokenizer):
        self.client, self.tokenizer = client, tokenizer
        self.eos = {tokenizer.eos_token_id}

    def sync(self, model) -> None:
        for name, tensor in _named_weights(model):
            self.client.update_named_param(name, tensor)
        self.client.reset_prefix_cache()

    def generate(self, prompts: list[list[int]], keys: Sequence[int], temperature: float,
                 max_new_tokens: int) -> list[Rollout]:
        out = self.client.generate(prompts=prompts, n=1, temperature=temperature, max_tokens=max_new_tokens)
        return [_finish(self.tokenizer, p, list(c), self.eos) for p, c in zip(prompts, out["completion_ids"])]
