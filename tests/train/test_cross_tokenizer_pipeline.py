"""Students with a BPE tokenizer distilled from a character-level teacher through the CLI, with
each cross-tokenizer method, online, on-policy and from a (compact) cache."""

import json

from tests.test_pipeline import cli, write_config


def test_bpe_students_train_with_each_method_from_a_config(tmp_path, tiny_model_dir, arith):
    from reasondistill.data.bpe import train_bpe_tokenizer

    problems = arith.problems("train", 60, seed=0)
    tok_dir = tmp_path / "bpe"
    train_bpe_tokenizer([p.prompt for p in problems] + [p.solution for p in problems], 300).save_pretrained(tok_dir)
    init = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    train = {"max_steps": 2, "epochs": None, "batch_size": 8, "save_every": 2, "log_every": 1}
    students = [{"name": name, "init": init, "tokenizer": str(tok_dir), "train": train, "distill": distill}
                for name, distill in [("uld", {"cross_tokenizer": "uld"}),
                                      ("aligned_gkd", {"cross_tokenizer": "aligned", "source": "on_policy",
                                                       "lambda_on_policy": 1.0}),
                                      ("projection", {"cross_tokenizer": "projection"}),
                                      ("cached", {"cross_tokenizer": "projection", "source": "offline_topk",
                                                  "top_k": 16, "cache": "compact"})]]
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, students=students, evaluate={"teacher": False})
    out = cli("run", cfg)
    for s in students:
        assert f"[run ] train:{s['name']}" in out.stdout
        summary = json.loads((tmp_path / f"run/train/{s['name']}/summary.json").read_text())
        assert summary["steps"] == 2
    cache = tmp_path / "run/build/cached/topk/k16"
    vocab = json.loads((cache / "vocab.json").read_text())
    assert vocab["size"] == len(vocab["strings"]) and "codec" in json.loads((cache / "index.json").read_text())
    # without cross_tokenizer the different tokenizer is refused
    plain = [students[2] | {"distill": {}}]
    (tmp_path / "other").mkdir()
    refused = cli("run", write_config(tmp_path / "other/c.yaml", tiny_model_dir, students=plain), check=False)
    assert refused.returncode != 0 and "cross_tokenizer" in refused.stderr
    est = cli("capture", tmp_path / "run", "--student", "cached", "--estimate")
    assert "cached:" in est.stdout and "teacher tokens each" in est.stdout and "upper bound" in est.stdout
    estimated = float(est.stdout.split("= ")[-1].split(" MB")[0])
    on_disk = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 2 ** 20
    assert on_disk <= estimated * 1.05 + 0.05


def test_capture_estimate_before_the_build_matches_the_capture(tmp_path, tiny_model_dir):
    students = [{"name": "s1", "init": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                        "intermediate_size": 32},
                 "train": {"max_steps": 1, "epochs": None, "batch_size": 8}, "distill": {"source": "offline_topk",
                                                                                         "top_k": 8}}]
    cfg = write_config(tmp_path / "c.yaml", tiny_model_dir, students=students)
    missing = cli("capture", cfg, "--estimate", check=False)
    assert missing.returncode == 2 and "curate" in missing.stderr
    cli("generate", cfg)
    cli("curate", cfg)
    est = cli("capture", cfg, "--estimate")
    assert "s1:" in est.stdout and "50.0 bytes/token (fp16, k=8, exact)" in est.stdout
    assert not (tmp_path / "run/build/s1/topk").exists()  # nothing captured
    cli("build", cfg)
    cli("capture", cfg)
    state = json.loads((tmp_path / "run/.stages/capture--s1.json").read_text())["result"]
    payload_mb = state["tokens"] * 50 / 2 ** 20
    estimated = float(est.stdout.split("= ")[-1].split(" MB")[0])
    assert abs(estimated - payload_mb) <= 0.15 * payload_mb + 0.05  # sampled mean answer length
