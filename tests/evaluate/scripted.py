"""Helpers for evaluation and report tests: a tiny model that writes visible text, scripted rows.

``make_chatty_model`` is the 1-layer Llama of tests/conftest.py with sharpened embeddings and the
chat special tokens (except EOS) zeroed, so greedy decoding writes printable characters instead of
special tokens: different text per prompt, enough to tell batch effects apart.
``solved_rows`` writes greedy-style rows as a perfect solver would, with chosen problems spoiled.
"""

from __future__ import annotations

import pytest

TINY = {"architecture": "llama", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 256}


@pytest.fixture(scope="session")
def chatty_model_dir(tmp_path_factory, char_tokenizer):
    """Import into a test module to use: ``from scripted import chatty_model_dir``."""
    return make_chatty_model(tmp_path_factory.mktemp("chatty-model"), char_tokenizer)


def make_chatty_model(d, tokenizer):
    import torch

    from reasondistill.models import init_model

    model = init_model(TINY, tokenizer, seed=0)
    specials = [tokenizer.convert_tokens_to_ids(t) for t in ("<|pad|>", "<|unk|>", "<|user|>", "<|assistant|>",
                                                              "<|system|>")]
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb.mul_(8.0)
        emb[specials] = 0.0
    model.save_pretrained(d, safe_serialization=True)
    tokenizer.save_pretrained(d)
    return d


def solved_rows(problems, wrong=(), step_error=(), truncated=()):
    """Greedy-style rows as a perfect solver would write them, with chosen problems spoiled."""
    out = []
    for p in problems:
        thinking, answer, finish = p.solution, p.answer, "stop"
        verdict = "correct"
        if p.id in step_error:
            lines = thinking.splitlines()
            lines[0] = lines[0][:-1] + str((int(lines[0][-1]) + 1) % 10)
            thinking, answer, verdict = "\n".join(lines), str((int(p.answer) + 1) % 100), "wrong"
        elif p.id in wrong:
            answer, verdict = str((int(p.answer) + 1) % 100), "wrong"
        elif p.id in truncated:
            answer, finish, verdict = "", "length", "truncated"
        text = f"<think>{thinking}</think>\n\n{answer}" if finish == "stop" else f"<think>{thinking}"
        out.append({"problem_id": p.id, "difficulty": p.difficulty, "prompt": p.prompt, "reference": p.answer,
                    "text": text, "answer": answer, "thinking_chars": len(thinking), "completion_tokens": len(text) + 1,
                    "finish_reason": finish, "verdict": verdict, "reason": "",
                    "predicted": answer if verdict in ("correct", "wrong") else None})
    return out
