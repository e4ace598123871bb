"""The rows of a policy-training step as the update reads them: each row whole (prompt + completion),
or a GRPO group's shared prompt run once, its keys/values reused by every rollout of the group.

Why: the G rollouts of a problem share its prompt, and the plain update runs that prompt G times,
forward and backward. :class:`SharedPromptRows` runs each distinct prompt once per model (with
transformers' ``DynamicCache``); a chunk of rows continues from its prompts' keys/values. The
gradient every chunk sends into those keys/values (and into the last prompt logits, which predict
the first completion token) lands on detached copies, and :meth:`SharedPromptRows.backward` takes
it through the prompt forward once, after the last chunk: the same gradient as the plain update up
to float rounding (tests/train/test_shared_prompt.py). The update then costs the completion tokens
plus one prompt per group: with 150-token prompts, 70-token completions and G = 8 the update's
forward+backward took half the time of the plain one here; with bench/rl_throughput.py's 13-token
prompts, a whole GRPO step took 18% less.

Both classes give, per chunk of row indices, ``(logits / T, targets, mask, tokens)``: logits
(R, L, V) at the positions whose next token is ``targets`` (R, L), ``mask`` (R, L) True on
completion tokens, ``tokens`` the tokens that went through the model. Shared prompts apply to the
models the lean decoder runs (decoder.py: llama, qwen2, qwen3, mistral without sliding windows),
peft-wrapped ones included, with sdpa or eager attention and without activation checkpointing;
anything else reads whole rows.

    rows = step_rows(model, prompts, completions, pad_id, temperature, share=True)
    rows.start(model)                               # the policy's prompts, with a graph
    logits, targets, mask, tokens = rows.logits(model, chunk)
    ...; loss.backward()                            # per chunk
    rows.backward()                                 # the prompts' share of the gradient
"""

from __future__ import annotations

import torch


def pad_rows(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (N, W) and their attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        attn[i, :len(r)] = 1
    return ids, attn


def sequence_batch(prompts: list[list[int]], completions: list[list[int]], pad: int) -> dict[str, torch.Tensor]:
    """Right-padded prompt+completion rows; ``mask`` (N, L-1) marks the positions whose NEXT token is a
    completion token (aligned with ``logits[:, :-1]`` and ``targets = input_ids[:, 1:]``)."""
    ids, attn = pad_rows([p + c for p, c in zip(prompts, completions)], pad)
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        mask[i, len(p):len(p) + len(c)] = True
    return {"input_ids": ids, "attention_mask": attn, "mask": mask[:, 1:]}


def forward_logits(model, batch: dict[str, torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
    """Logits (N, L-1) of a right-padded :func:`sequence_batch`, divided by ``temperature``. No
    attention mask: under causal attention a real token never sees the padding after it, so the real
    positions are exact (the padded ones are weighted out) and the forward takes the plain causal kernel."""
    logits = model(input_ids=batch["input_ids"], use_cache=False).logits[:, :-1]
    return logits if temperature == 1.0 else logits / temperature


def _slice(batch: dict[str, torch.Tensor], rows: "slice | torch.Tensor") -> dict[str, torch.Tensor]:
    out = {k: v[rows] for k, v in batch.items()}
    width = int(out["attention_mask"].sum(1).max())  # drop columns that are padding for every row
    return {k: (v[:, :width] if k != "mask" else v[:, :width - 1]) for k, v in out.items()}


class WholeRows:
    """Every row read whole, prompt and completion, right-padded (no attention mask needed)."""

    def __init__(self, prompts: list[list[int]], completions: list[list[int]], pad: int, temperature: float):
        self.batch = sequence_batch(prompts, completions, pad)
        self.lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]  # what a chunk's width follows
        self.temperature = temperature

    def start(self, model) -> None:
        """Nothing to run before the chunks."""

    def logits(self, model, rows: torch.Tensor):
        mb = _slice(self.batch, rows)
        logits = forward_logits(model, mb, self.temperature)
        return logits, mb["input_ids"][:, 1:], mb["mask"], int(mb["attention_mask"].sum())

    def backward(self) -> int:
        """Nothing left to send back; no extra tokens."""
        return 0


def _unwrap(model):
    """The causal LM under the trainer's wrappers (train/lora.py ``AdaptersOff`` holds it as ``.model``)."""
    return model if hasattr(model, "config") else getattr(model, "model", model)


def shareable(model) -> bool:
    """The models whose prompt keys/values a chunk can continue from: those the lean decoder runs, with
    sdpa or eager attention (the masks of this layout are tested there; flash-attention kernels are not
    tested here), and not under activation checkpointing (transformers then keeps no cache)."""
    from reasondistill.decoder import unsupported

    inner = _unwrap(model)
    attention = getattr(getattr(inner, "config", None), "_attn_implementation", None)
    return unsupported(inner) is None and attention in ("sdpa", "eager") and \
        not getattr(inner, "is_activation_checkpointing", False)


class _Prompts:
    """One model's pass over the distinct prompts: per layer its keys/values (U, KV, W, D), and the
    logits (U, V) at each prompt's last token (``leaves``). With ``grad``, the chunks read detached
    copies that collect their gradient, each paired with the tensor of the graph behind it (``pairs``)."""

    def __init__(self, model, ids: torch.Tensor, attn: torch.Tensor, lengths: torch.Tensor, temperature: float,
                 grad: bool):
        from transformers import DynamicCache

        cache = DynamicCache(config=_unwrap(model).config)
        pos = torch.arange(ids.shape[1]).expand_as(ids)
        with torch.set_grad_enabled(grad):
            out = model(input_ids=ids, attention_mask=attn, position_ids=pos, cache=cache, use_cache=True)
            last = out.logits[torch.arange(len(ids)), lengths - 1]
            last = last if temperature == 1.0 else last / temperature
        tensors = [t for layer in cache.layers for t in (layer.keys, layer.values)] + [last]
        # a tensor no trainable weight reaches (a LoRA model's keys where k_proj has no adapter) stays a constant
        self.leaves = [t.detach().requires_grad_() if t.requires_grad else t for t in tensors]
        self.pairs = [(t, leaf) for t, leaf in zip(tensors, self.leaves) if t.requires_grad]

    def cache(self, model, groups: torch.Tensor):
        """A cache holding each row's prompt keys/values (rows -> their group's)."""
        from transformers import DynamicCache

        cache = DynamicCache(config=_unwrap(model).config)
        kv = self.leaves[:-1]
        for layer in range(len(kv) // 2):
            cache.update(kv[2 * layer][groups], kv[2 * layer + 1][groups], layer)
        return cache

    def backward(self) -> None:
        pairs = [(root, leaf.grad) for root, leaf in self.pairs if leaf.grad is not None]
        if pairs:
            torch.autograd.backward([r for r, _ in pairs], [g for _, g in pairs])


class SharedPromptRows:
    """Rows whose prompts repeat (GRPO groups): each distinct prompt runs once per model and update."""

    def __init__(self, prompts: list[list[int]], completions: list[list[int]], pad: int, temperature: float):
        distinct: dict[tuple[int, ...], int] = {}
        self.groups = torch.tensor([distinct.setdefault(tuple(p), len(distinct)) for p in prompts])
        uniq = [list(p) for p in distinct]
        self.prompt_ids, self.prompt_mask = pad_rows(uniq, pad)
        self.prompt_lengths = torch.tensor([len(p) for p in uniq])
        self.ids, self.mask = pad_rows([c if c else [pad] for c in completions], pad)
        self.mask[[i for i, c in enumerate(completions) if not c]] = 0  # an empty completion: no tokens
        self.lengths = [len(c) for c in completions]
        self.temperature = temperature
        self._runs: dict[tuple[int, bool], _Prompts] = {}

    def _run(self, model, grad: bool) -> _Prompts:
        return _Prompts(model, self.prompt_ids, self.prompt_mask, self.prompt_lengths, self.temperature, grad)

    def start(self, model) -> None:
        """The prompts through ``model`` with a graph (the policy, at each update's weights)."""
        self._runs[(id(model), True)] = self._run(model, grad=True)

    def logits(self, model, rows: torch.Tensor):
        if not shareable(model):  # e.g. a teacher of another family: whole rows, read at the same positions
            return self._whole(model, rows)
        key, first = (id(model), True), 0
        if key not in self._runs:  # a frozen model (teacher, reference), or the policy without a graph
            key = (id(model), False)
            if key not in self._runs:
                with torch.no_grad():
                    self._runs[key] = self._run(model, grad=False)
                first = int(self.prompt_mask.sum())  # the prompt pass counts once, with its first chunk
        run = self._runs[key]
        groups, ids, mask = self._completions(rows)
        width = ids.shape[1]
        attn = torch.cat([self.prompt_mask[groups], mask], 1)
        pos = self.prompt_lengths[groups, None] + torch.arange(width)[None]
        out = model(input_ids=ids, attention_mask=attn, position_ids=pos, cache=run.cache(model, groups),
                    use_cache=False).logits[:, :-1]
        out = out if self.temperature == 1.0 else out / self.temperature
        logits = torch.cat([run.leaves[-1][groups][:, None].to(out.dtype), out], 1)
        return logits, ids, mask.bool(), int(mask.sum()) + first

    def _completions(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rows' groups, and their completion ids and mask cut to the chunk's longest completion."""
        width = max(1, max(self.lengths[i] for i in rows.tolist()))
        return self.groups[rows], self.ids[rows, :width], self.mask[rows, :width]

    def _whole(self, model, rows: torch.Tensor):
        groups, ids, mask = self._completions(rows)
        width = ids.shape[1]
        plen = self.prompt_lengths[groups]
        prompts = [self.prompt_ids[g, :n].tolist() for g, n in zip(groups.tolist(), plen.tolist())]
        batch = sequence_batch(prompts, [r[m.bool()].tolist() for r, m in zip(ids, mask)], 0)
        logits = forward_logits(model, batch, self.temperature)  # (R, L-1, V); position p-1+j predicts token j
        at = (plen[:, None] - 1 + torch.arange(width)[None]).clamp(max=logits.shape[1] - 1)
        logits = logits.gather(1, at[..., None].expand(-1, -1, logits.shape[-1]))
        return logits, ids, mask.bool(), int(batch["attention_mask"].sum())

    def backward(self) -> int:
        """The prompts' share of the gradient, through each model's prompt pass that has a graph;
        returns the prompt tokens that went through it."""
        tokens = 0
        for (_, grad), run in list(self._runs.items()):
            if grad:
                run.backward()
                tokens += int(self.prompt_mask.sum())
        self._runs = {k: v for k, v in self._runs.items() if not k[1]}
        return tokens


def step_rows(model, prompts: list[list[int]], completions: list[list[int]], pad: int, temperature: float,
              share: bool = True) -> "WholeRows | SharedPromptRows":
    """Shared prompts when ``share``, some prompt repeats and the model is one the decoder runs; else
    whole rows."""
    repeats = len({tuple(p) for p in prompts}) < len(prompts)
    if share and repeats and shareable(model):
        return SharedPromptRows(prompts, completions, pad, temperature)
    return WholeRows(prompts, completions, pad, temperature)
