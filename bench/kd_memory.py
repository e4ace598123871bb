"""Peak memory and time of one training step: chunked soft distillation vs unchunked
(full-vocabulary) soft distillation vs plain SFT cross-entropy; plus top-k storage cost.

    python bench/kd_memory.py [--chunk 256] [--threads 1]      # prints one JSON object

Setup: tiny Llama models built locally from configs (no download), vocabulary 32000, one
sequence of 2048 tokens whose first 256 are prompt (label -100), fp32 weights and logits.
Student: hidden 128, 2 layers; teacher: hidden 256, 4 layers. One step = teacher forward
(no_grad, KD only) + student forward + loss + backward; no optimizer step.

Variants (each in its own fresh subprocess, so peaks cannot mix):
  sft         loss = Σ CE / n, CE as in ``reasondistill.train.sft.cross_entropy_sum``.
  kd_plain    loss = DivergencePlusCrossEntropy(ForwardKL(T=2), α=0.5) unchunked, / n.
  kd_chunked  the same objective with ``chunk_size`` (fp32 per chunk, gradient buffer).
Fairness: all three materialise the student's (1, 2048, 32000) logits from the model and
compute a CE over the full vocabulary; the KD variants also run the teacher (its weights
and logits count against KD) and additionally compute the divergence. The objective runs in a
function, as in the training loop, so logits not saved for backward are freed on return.

Memory, two measures:
  * ``peak_rss_mb``: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the child: the whole
    process high-water mark (interpreter, torch, models, the step) — what an OOM killer sees.
    glibc serves big blocks with mmap and returns them on free, but its dynamic mmap
    threshold can keep mid-size freed blocks (the per-chunk temporaries) in the heap, which
    only overstates the chunked variant. ``step_rss_mb`` = peak minus RSS before the step.
  * ``tensor_step_peak_mb``: peak bytes of live torch tensors allocated during one step above
    those live at its start (torch profiler allocation events, summed in time order). Exact
    for tensors, blind to allocator overhead and fragmentation.
``kd_peak_over_sft_peak`` is the peak-RSS ratio of kd_chunked to sft (goal <= 1.3); the
step-only ratios are reported alongside. Times: the fastest of three warm steps (after one
cold step), split into teacher forward, student forward, loss forward and backward, with
``--threads`` threads (default 1; the machine is shared, so times are noisy). The default
chunk of 16 rows is the fastest on this CPU (fp32 temporaries of 2 MB stay in cache; 256-row
chunks were about 2x slower); on a GPU, use hundreds of rows.

Top-k storage per answer token at k = 128: fp16 log-probs (128 · 2 B) + int32 ids (128 · 4 B)
+ fp16 tail log-mass (2 B) = 770 B, versus 64,000 B for dense fp16 logits over 32,000. The compact
cache (data/compact_topk.py) encodes the same top-128 rows; reported: its bytes per token (every
tensor of a real encoded shard), its kept KL share beside the fp32 and fp16 top-128 shares, the
ratio to fp32 (goal >= 0.99 at <= 150 B/token) and what zlib would save on top of it.
``--topk-only`` prints just these storage figures (no training-step subprocesses).
Kept KL share: synthetic but LM-like peaked teacher logits (Zipf-shaped: −e · log(rank) with
e ~ U(1, 3) per token, random token order, N(0, 0.5²) noise) and a student = teacher logits
+ N(0, 1) noise; reported per k with the teacher mass the top k holds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

VOCAB, SEQ, PROMPT = 32000, 2048, 256
VARIANTS = ("sft", "kd_plain", "kd_chunked")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _llama(hidden: int, layers: int, heads: int, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=3 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=SEQ, tie_word_embeddings=False, attn_implementation="sdpa")
    return LlamaForCausalLM(cfg)


def run_variant(variant: str, chunk: int, threads: int) -> dict:
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    from reasondistill.train.losses import IGNORE_INDEX, DivergencePlusCrossEntropy, ForwardKL

    torch.set_num_threads(threads)
    student = _llama(128, 2, 4, seed=0).train()
    teacher = _llama(256, 4, 8, seed=1).eval() if variant != "sft" else None
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (1, SEQ), generator=g)
    labels = ids.clone()
    labels[:, :PROMPT] = IGNORE_INDEX
    n_target = int((labels[:, 1:] != IGNORE_INDEX).sum())
    kd = DivergencePlusCrossEntropy(ForwardKL(temperature=2.0), alpha=0.5,
                                    chunk_size=chunk if variant == "kd_chunked" else None)

    phases: dict[str, float] = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        phases[name] = time.perf_counter() - t0
        return out

    def objective():
        if variant == "sft":
            logits = timed("student_fwd_s", lambda: student(input_ids=ids, use_cache=False).logits[:, :-1])
            return timed("loss_s", lambda: F.cross_entropy(
                logits.float().reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX,
                reduction="sum") / n_target)
        with torch.no_grad():
            t = timed("teacher_fwd_s", lambda: teacher(input_ids=ids, use_cache=False).logits[:, :-1])
        s = timed("student_fwd_s", lambda: student(input_ids=ids, use_cache=False).logits[:, :-1])
        return timed("loss_s", lambda: kd(s, t, labels[:, 1:]) / n_target)

    def step():
        student.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        loss = objective()
        timed("backward_s", loss.backward)
        phases["step_s"] = time.perf_counter() - t0
        return loss.item()

    base = _rss_mb()
    runs = []
    for _ in range(4):  # one cold step, then three warm ones; keep the fastest warm step
        loss = step()
        runs.append(dict(phases))
    peak = _rss_mb()
    best = min(runs[1:], key=lambda r: r["step_s"])
    student.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    mem = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = tensor_peak = 0
    for _, nbytes in mem:
        live += nbytes
        tensor_peak = max(tensor_peak, live)
    n_params = sum(p.numel() for p in student.parameters()) + (
        sum(p.numel() for p in teacher.parameters()) if teacher is not None else 0)
    return {"peak_rss_mb": round(peak, 1), "step_rss_mb": round(peak - base, 1),
            "tensor_step_peak_mb": round(tensor_peak / 2 ** 20, 1), "weights_mb": round(n_params * 4 / 2 ** 20, 1),
            **{k: round(v, 3) for k, v in best.items()}, "cold_step_s": round(runs[0]["step_s"], 3),
            "loss": round(loss, 4)}


def topk_report(ks=(8, 32, 128, 512), tokens=256) -> dict:
    import torch

    from reasondistill.train.losses import ForwardKL, TopKTeacher, kept_kl_share, topk_from_logits

    g = torch.Generator().manual_seed(0)
    rank = torch.stack([torch.randperm(VOCAB, generator=g) for _ in range(tokens)]).float() + 1
    e = 1.0 + 2.0 * torch.rand(tokens, 1, generator=g)
    teacher = (-e * rank.log() + 0.5 * torch.randn(tokens, VOCAB, generator=g)).unsqueeze(0)
    student = teacher + torch.randn(teacher.shape, generator=g)
    logp = torch.log_softmax(teacher, -1)
    labels = torch.zeros(1, tokens, dtype=torch.long)
    k = 128
    st = topk_from_logits(teacher, k).to_storage()
    per_token = sum(x[0, 0].numel() * x.element_size() for x in (st.logprobs, st.ids, st.tail_logmass))
    assert isinstance(st, TopKTeacher) and per_token == k * 2 + k * 4 + 2
    return {
        **compact_report(student, teacher, st),
        "topk_bytes_per_token_k128": per_token,
        "topk_bytes_arithmetic": "128*2 (fp16 logprobs) + 128*4 (int32 ids) + 2 (fp16 tail) = 770",
        "dense_fp16_bytes_per_token": VOCAB * 2,
        "synthetic_teacher_entropy_nats": round(float(-(logp.exp() * logp).sum(-1).mean()), 3),
        "synthetic_dense_fkl_nats": round(float(ForwardKL(chunk_size=64).mean(student, teacher, labels)), 4),
        "kept_kl_share": {str(k): round(kept_kl_share(student, teacher, k), 4) for k in ks},
        "kept_teacher_mass": {str(k): round(float(logp.topk(k, -1).values.exp().sum(-1).mean()), 4) for k in ks},
    }


def compact_report(student, teacher, st) -> dict:
    """The compact cache (data/compact_topk.py) at k = 128 on the same synthetic logits: bytes per
    token of a real encoded shard (every tensor counted), its kept KL share next to the fp32
    top-128's, and what zlib would save on top."""
    import zlib

    import torch

    from reasondistill.data.compact_topk import CompactCodec
    from reasondistill.train.losses import ForwardKL, TopKTeacher, topk_from_logits

    k, tokens = st.ids.shape[-1], st.ids.shape[1]
    codec = CompactCodec(k=k, vocab_size=VOCAB)
    packed = codec.encode(st.logprobs[0], st.ids[0], st.tail_logmass[0], torch.tensor([0, tokens]))
    lp, ids, tail = codec.decode_rows(lambda n, a, b: packed[n][a:b], 0, tokens, 0)
    labels = torch.zeros(1, tokens, dtype=torch.long)
    fkl = ForwardKL(chunk_size=64)
    dense = fkl(student, teacher, labels)
    share_fp32 = float(fkl(student, topk_from_logits(teacher, k), labels) / dense)
    share_fp16 = float(fkl(student, st, labels) / dense)
    share_compact = float(fkl(student, TopKTeacher(lp.unsqueeze(0), ids.unsqueeze(0), tail.unsqueeze(0)), labels) / dense)
    raw = b"".join(t.contiguous().view(torch.uint8).numpy().tobytes() for t in packed.values())
    return {"compact_bytes_per_token_k128": round(codec.bytes_per_token(packed), 1),
            "compact_codec": codec.to_json() | {"low_bits": codec.low_bits},
            "compact_mean_kept_entries": round(float(packed["count"].float().mean()), 1),
            "compact_max_logprob_error_nats": codec.max_logprob_error(),
            "kept_kl_share_k128": {"fp32": round(share_fp32, 4), "fp16_cache": round(share_fp16, 4),
                                   "compact_cache": round(share_compact, 4)},
            "compact_share_over_fp32_share": round(share_compact / share_fp32, 4),
            "compact_zlib_ratio": round(len(zlib.compress(raw, 9)) / len(raw), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunk", type=int, default=16, help="rows per chunk for kd_chunked")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # child mode
    ap.add_argument("--topk-only", action="store_true", help="only the top-k storage figures")
    args = ap.parse_args()
    if args.topk_only:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(topk_report(), indent=1))
        return
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.chunk, args.threads)))
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    results = {}
    for v in VARIANTS:
        out = subprocess.run([sys.executable, __file__, "--variant", v, "--chunk", str(args.chunk),
                              "--threads", str(args.threads)], env=env, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"kd_memory: variant {v} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
        results[v] = json.loads(out.stdout.strip().splitlines()[-1])
    sft, plain, chunked = results["sft"], results["kd_plain"], results["kd_chunked"]
    report = {
        "setup": {"vocab": VOCAB, "seq_len": SEQ, "batch": 1, "answer_tokens": SEQ - PROMPT,
                  "dtype": "fp32", "objective_kd": "0.5*T^2*FKL(T=2) + 0.5*CE", "chunk_size": args.chunk,
                  "threads": args.threads, "torch": __import__("torch").__version__},
        "variants": results,
        "kd_peak_over_sft_peak": round(chunked["peak_rss_mb"] / sft["peak_rss_mb"], 3),
        "kd_plain_peak_over_sft_peak": round(plain["peak_rss_mb"] / sft["peak_rss_mb"], 3),
        "kd_step_rss_over_sft_step_rss": round(chunked["step_rss_mb"] / sft["step_rss_mb"], 3),
        "kd_tensor_step_peak_over_sft": round(chunked["tensor_step_peak_mb"] / sft["tensor_step_peak_mb"], 3),
        "kd_plain_tensor_step_peak_over_sft": round(plain["tensor_step_peak_mb"] / sft["tensor_step_peak_mb"], 3),
        "kd_step_time_over_sft": round(chunked["step_s"] / sft["step_s"], 3),
        **topk_report(),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
