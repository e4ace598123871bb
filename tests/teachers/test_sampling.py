import torch

from reasondistill.models import load_model, load_tokenizer
from reasondistill.prompts import render_prompts
from reasondistill.teachers.sampling import (NOISE_BLOCK, CounterSampler, SamplingParams, counter_uniform,
                                             generate_completions, row_key)


def _run(model_dir, problems, **kw):
    tok, model = load_tokenizer(str(model_dir)), load_model(str(model_dir))
    prompts = render_prompts(tok, [p.prompt for p in problems])
    out = {}
    for batch in generate_completions(model, tok, prompts, [p.id for p in problems], SamplingParams(**kw)):
        for c in batch:
            out[(problems[c.index].id, c.sample)] = (c.text, c.finish_reason, c.completion_tokens)
    return out


def test_counter_uniform_is_pure_and_uniform():
    keys = torch.tensor([row_key(0, "a", 0), row_key(0, "a", 1), row_key(1, "a", 0)])
    u = counter_uniform(keys, 3, 5000)
    assert torch.equal(u, counter_uniform(keys, 3, 5000))
    assert torch.equal(u[1:2], counter_uniform(keys[1:2], 3, 5000))
    assert not torch.equal(u, counter_uniform(keys, 4, 5000))
    assert 0 < u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.01
    assert abs(torch.corrcoef(torch.stack([u[0], u[1]]))[0, 1].item()) < 0.05


def test_counter_uniform_is_splitmix64_of_key_step_and_index():
    """The in-place version draws exactly the numbers of the splitmix64 finaliser written plainly in
    Python integers: samples (and resumed runs) do not change with how the noise is computed."""
    keys = torch.tensor([row_key(0, "a", 0), row_key(3, "b", 7), -1, 0, 2 ** 63 - 1], dtype=torch.int64)
    m = (1 << 64) - 1

    def plain(key: int, step: int, i: int) -> float:
        z = (key + (step + 1) * 0x9E3779B97F4A7C15 + i * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        z ^= z >> 31
        return float(torch.tensor(((z >> 11) + 0.5) / float(1 << 53), dtype=torch.float32))

    for step in (0, 1, 63, 10 ** 6):
        u = counter_uniform(keys, step, 50)
        assert u.dtype == torch.float32 and u.shape == (5, 50)
        for r, key in enumerate(keys.tolist()):
            assert u[r].tolist() == [plain(key, step, i) for i in range(50)], (step, r)


def test_sampler_noise_in_blocks_is_the_whole_rows_noise():
    """A vocabulary of several noise blocks and a partial last one: the perturbed scores are exactly
    scores / T - log(-log(u)) with u the whole rows' counter_uniform; ``rows`` picks the keys."""
    vocab = 2 * NOISE_BLOCK + 37
    keys = torch.tensor([row_key(0, str(i), 0) for i in range(4)])
    scores = torch.randn(3, vocab, generator=torch.Generator().manual_seed(0))
    rows = torch.tensor([3, 0, 2])
    u = counter_uniform(keys[rows], 5, vocab)
    got = CounterSampler(keys, prompt_width=7, temperature=0.7, top_p=1.0).at(5, scores, rows)
    assert torch.equal(got, scores / 0.7 - torch.log(-torch.log(u)))
    assert torch.equal(scores, torch.randn(3, vocab, generator=torch.Generator().manual_seed(0)))  # not written


def test_samples_do_not_depend_on_batching(tiny_model_dir, arith):
    problems = arith.problems("train", 12, seed=0)
    kw = dict(n=3, temperature=1.0, max_new_tokens=12, seed=5)
    a = _run(tiny_model_dir, problems, batch_size=36, **kw)
    b = _run(tiny_model_dir, list(reversed(problems[:7])), batch_size=3, **kw)
    assert len(a) == 36 and all(a[k] == v for k, v in b.items())
    assert len({v[0] for v in a.values()}) > 20  # an untrained model samples varied text
    c = _run(tiny_model_dir, problems, batch_size=36, **(kw | {"seed": 6}))
    assert c != a


def test_greedy_and_limits(tiny_model_dir, arith):
    problems = arith.problems("train", 6, seed=0)
    g1 = _run(tiny_model_dir, problems, n=1, temperature=0.0, max_new_tokens=10, batch_size=6)
    g2 = _run(tiny_model_dir, problems, n=1, temperature=0.0, max_new_tokens=10, batch_size=2)
    assert g1 == g2
    assert all(fr == "length" and n == 10 for _, fr, n in g1.values())  # an untrained model rambles
    # top_p so small that only the most likely token survives: sampling becomes greedy
    s = _run(tiny_model_dir, problems, n=1, temperature=1.0, top_p=1e-6, max_new_tokens=10, batch_size=6)
    assert s == g1


def test_a_prompt_longer_than_the_context_is_truncated_at_once_not_a_hang(tiny_model_dir, arith):
    """TINY's context is 256 tokens: a 200 KB question gets a trace truncated at 0 tokens with the reason
    at once (the same on every try, so not a failure generate retries); the others decode."""
    import dataclasses

    from reasondistill.teachers.hf import HFTeacher

    problems = arith.problems("train", 3, seed=0)
    problems[1] = dataclasses.replace(problems[1], prompt="1+" * 100_000 + "1")
    teacher = HFTeacher(str(tiny_model_dir))
    traces = {t.problem_id: t for batch in teacher.sample(problems, SamplingParams(n=1, max_new_tokens=4))
              for t in batch}
    bad = traces[problems[1].id]
    assert bad.finish_reason == "length" and bad.completion_tokens == 0 and bad.prompt_tokens > 200_000
    assert "the model's context is 256" in bad.error
    assert all(traces[p.id].error is None and traces[p.id].completion_tokens == 4 for p in (problems[0], problems[2]))
