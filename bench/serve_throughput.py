"""`reasondistill serve`: concurrent requests batched together vs one request per batch.

    python bench/serve_throughput.py                 # 48 problems, 8 clients, bundled teacher; one JSON object
    python bench/serve_throughput.py --problems 16   # quicker

Two servers on 127.0.0.1 around the same loaded bundled teacher (1 torch thread): one with
``max_batch_rows=1`` (each request decoded alone, as `serve` did before batching) and one with the
default 64 rows. The same ``--problems`` chained-arithmetic prompts are sent by ``--clients``
concurrent clients (the API teacher's ``concurrency``), greedy, 96 new tokens at most, through
the project's own OpenAI client. ``speedup`` is batched over one-at-a-time wall time, measured in
the same run; ``same_texts`` checks the answers are identical either way. Each server's engine
stats (batches, largest batch) are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run(url: str, problems, clients: int) -> tuple[float, dict[str, str]]:
    from reasondistill.teachers.openai_api import OpenAITeacher
    from reasondistill.teachers.sampling import SamplingParams

    teacher = OpenAITeacher(url, "teacher", concurrency=clients, timeout_s=600)
    t0 = time.perf_counter()
    texts = {t.problem_id: t.text for batch in teacher.sample(problems, SamplingParams(n=1, temperature=0.0,
                                                                                      max_new_tokens=96))
             for t in batch}
    return time.perf_counter() - t0, texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=48, help="prompts sent (default 48)")
    ap.add_argument("--clients", type=int, default=8, help="requests in flight at once (default 8)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from reasondistill.models import load_model, load_tokenizer
    from reasondistill.serve import make_server
    from reasondistill.tasks.arith import ChainedArithmetic

    model, tok = load_model("bundled:tiny-arith-teacher"), load_tokenizer("bundled:tiny-arith-teacher")
    problems = ChainedArithmetic(min_ops=3, max_ops=5).problems("test", args.problems, seed=0)
    out = {"problems": args.problems, "clients": args.clients, "torch_threads": 1}
    texts = {}
    for label, rows in (("one_at_a_time", 1), ("batched", 64)):
        srv = make_server(model, tok, model_name="teacher", max_batch_rows=rows)
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        try:
            run(srv.url, problems[:2], 2)  # warm-up
            seconds, texts[label] = run(srv.url, problems, args.clients)
        finally:
            srv.shutdown()
            srv.server_close()
        out[label] = {"seconds": round(seconds, 2), "requests_per_s": round(args.problems / seconds, 2),
                      "engine": dict(srv.engine.stats)}
    out["speedup"] = round(out["one_at_a_time"]["seconds"] / out["batched"]["seconds"], 2)
    out["same_texts"] = texts["one_at_a_time"] == texts["batched"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
