import torch

from reasondistill.models import load_model, load_tokenizer
from reasondistill.prompts import render_prompts
from reasondistill.teachers.sampling import SamplingParams, counter_uniform, generate_completions, row_key


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


def test_a_prompt_longer_than_the_context_is_an_error_trace_not_a_hang(tiny_model_dir, arith):
    """TINY's context is 256 tokens: a 200 KB question gets an error trace at once; the others decode."""
    import dataclasses

    from reasondistill.teachers.hf import HFTeacher

    problems = arith.problems("train", 3, seed=0)
    problems[1] = dataclasses.replace(problems[1], prompt="1+" * 100_000 + "1")
    teacher = HFTeacher(str(tiny_model_dir))
    traces = {t.problem_id: t for batch in teacher.sample(problems, SamplingParams(n=1, max_new_tokens=4))
              for t in batch}
    bad = traces[problems[1].id]
    assert bad.finish_reason == "error" and "the model's context is 256" in bad.error and bad.prompt_tokens > 200_000
    assert all(traces[p.id].error is None and traces[p.id].completion_tokens == 4 for p in (problems[0], problems[2]))
