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
    refused = cli("train", write_config(tmp_path / "d.yaml", tiny_model_dir, students=plain), check=False)
    assert refused.returncode != 0 and "tokenizer" in refused.stderr
