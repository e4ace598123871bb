"""Distillation losses against naive references written out plainly, in value and gradient."""

import math

import pytest
import torch

from reasondistill.train.losses import (
    IGNORE_INDEX, DivergencePlusCrossEntropy, ForwardKL, GeneralizedJSD, ReverseKL, SkewForwardKL,
    SkewReverseKL, TopKTeacher, TotalVariationDistance, align_vocab, kept_kl_share, topk_from_logits)

B, L, V = 2, 6, 13
NEG = float("-inf")


# ----------------------------------------------------------------- naive references (float64)
def kl_ref(p, q):
    keep = p > 0  # 0 · log 0 = 0
    return (p[keep] * (p[keep].log() - q[keep].log())).sum()


def div_ref(name, p, q, coef=None):
    if name == "fkl":
        return kl_ref(p, q)
    if name == "rkl":
        return kl_ref(q, p)
    if name == "jsd":  # TRL: the endpoints are defined as the KLs, not as the (zero) limits
        if coef in (0.0, 1.0):
            return kl_ref(p, q) if coef == 0.0 else kl_ref(q, p)
        m = coef * p + (1 - coef) * q
        return coef * kl_ref(p, m) + (1 - coef) * kl_ref(q, m)
    if name == "skl":
        return kl_ref(p, coef * p + (1 - coef) * q)
    if name == "srkl":
        return kl_ref(q, (1 - coef) * p + coef * q)
    if name == "tvd":
        return 0.5 * (p - q).abs().sum()
    raise KeyError(name)


def loss_ref(name, s, t, labels, T=1.0, coef=None):
    """Plain loop over positions: Σ over non-ignored tokens of D(softmax(t/T), softmax(s/T))."""
    total = torch.zeros((), dtype=torch.float64)
    for b in range(s.size(0)):
        for i in range(s.size(1)):
            if labels[b, i] == IGNORE_INDEX:
                continue
            p = torch.softmax(t[b, i] / T, -1)
            q = torch.softmax(s[b, i] / T, -1)
            total = total + div_ref(name, p, q, coef)
    return total


def make_module(name, coef=None, **kw):
    return {"fkl": lambda: ForwardKL(**kw), "rkl": lambda: ReverseKL(**kw),
            "jsd": lambda: GeneralizedJSD(beta=coef, **kw), "skl": lambda: SkewForwardKL(alpha=coef, **kw),
            "srkl": lambda: SkewReverseKL(alpha=coef, **kw), "tvd": lambda: TotalVariationDistance(**kw)}[name]()


CASES = [("fkl", None), ("rkl", None), ("jsd", 0.5), ("jsd", 0.1), ("jsd", 0.0), ("jsd", 1.0),
         ("skl", 0.1), ("srkl", 0.1), ("tvd", None)]


def finite_pattern(name, coef):
    """Which -inf patterns keep the divergence finite: teacher-only -inf breaks reverse KL,
    student-only -inf breaks forward KL; mixtures (0 < w < 1) and TV are always finite."""
    fkl_like = name == "fkl" or (name == "jsd" and coef == 0.0)
    rkl_like = name == "rkl" or (name == "jsd" and coef == 1.0)
    return (not rkl_like, not fkl_like)  # (teacher-only -inf allowed, student-only -inf allowed)


def make_inputs(seed, name="tvd", coef=None, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, L, V, generator=g, dtype=torch.float64) * scale
    t = torch.randn(B, L, V, generator=g, dtype=torch.float64) * scale
    labels = torch.randint(0, V, (B, L), generator=g)
    labels[0, 0] = labels[1, 3] = labels[1, 5] = IGNORE_INDEX
    t_only, s_only = finite_pattern(name, coef)
    s[:, :, 0] = t[:, :, 0] = NEG           # shared -inf (e.g. a masked vocab entry)
    if t_only:
        t[0, 1:, 1] = NEG
    if s_only:
        s[1, :, 2] = NEG
    s[0, 0] = NEG                          # garbage on an ignored row (all -inf) must not matter
    t[1, 3] = float("nan")
    return s, t, labels


def run(module, s, t, labels, teacher_grad=False):
    s32 = s.detach().float().clone().requires_grad_(True)
    t32 = t.detach().float().clone().requires_grad_(teacher_grad)
    out = module(s32, t32, labels)
    out.backward()
    return out, s32.grad, (t32.grad if teacher_grad else None)


def ref_grads(name, s, t, labels, T, coef):
    s64 = s.clone().requires_grad_(True)
    t64 = t.clone().requires_grad_(True)
    out = loss_ref(name, s64, t64, labels, T, coef)
    out.backward()
    return out, s64.grad, t64.grad


# ----------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name,coef", CASES)
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_matches_naive_reference_value_and_gradient(name, coef, T):
    s, t, labels = make_inputs(0, name, coef)
    ref, gs_ref, gt_ref = ref_grads(name, s, t, labels, T, coef)
    out, gs, gt = run(make_module(name, coef, temperature=T), s, t, labels, teacher_grad=True)
    assert out.dtype == torch.float32 and out.dim() == 0
    assert torch.isfinite(out) and torch.isfinite(gs).all() and torch.isfinite(gt).all()
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gs.double(), gs_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gt.double(), gt_ref, rtol=1e-4, atol=1e-5)
    assert gs[labels == IGNORE_INDEX].abs().max() == 0


@pytest.mark.parametrize("name,coef", CASES)
def test_chunked_equals_plain(name, coef):
    s, t, labels = make_inputs(1, name, coef)
    plain, g_plain, _ = run(make_module(name, coef, temperature=1.5), s, t, labels)
    for c in (1, 3, 100):
        chunked, g_chunk, _ = run(make_module(name, coef, temperature=1.5, chunk_size=c), s, t, labels)
        torch.testing.assert_close(chunked, plain, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(g_chunk, g_plain, rtol=1e-6, atol=1e-7)


def test_chunked_scales_gradient_by_upstream_and_handles_bf16_and_no_grad():
    s, t, labels = make_inputs(2, "fkl")
    loss = ForwardKL(chunk_size=4)
    sb = s.nan_to_num(neginf=-1e4).to(torch.bfloat16).requires_grad_(True)
    (loss(sb, t.float(), labels) * 0.25).backward()
    ref = s.nan_to_num(neginf=-1e4).to(torch.bfloat16).float().requires_grad_(True)
    (ForwardKL()(ref, t.float(), labels) * 0.25).backward()
    assert sb.grad.dtype == torch.bfloat16
    torch.testing.assert_close(sb.grad.float(), ref.grad, rtol=1e-2, atol=1e-4)
    with torch.no_grad():
        assert torch.isfinite(loss(s.float().requires_grad_(True), t.float(), labels))
    out = loss(s.float().requires_grad_(True), t.float(), labels)
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward"):
        out.backward()
    with pytest.raises(ValueError, match="student only"):
        loss(s.float(), t.float().requires_grad_(True), labels)


def test_sum_contract_and_mean():
    s, t, labels = make_inputs(3)
    loss = TotalVariationDistance()
    n = (labels != IGNORE_INDEX).sum()
    torch.testing.assert_close(loss.mean(s.float(), t.float(), labels), loss(s.float(), t.float(), labels) / n)
    empty = torch.full_like(labels, IGNORE_INDEX)
    for c in (None, 2):
        x = s.float().requires_grad_(True)
        out = TotalVariationDistance(chunk_size=c)(x, t.float(), empty)
        out.backward()
        assert out.item() == 0.0 and x.grad.abs().sum() == 0


@pytest.mark.parametrize("name,coef", CASES)
def test_zero_for_identical_distributions(name, coef):
    s, _, labels = make_inputs(4)
    x = s.float().requires_grad_(True)
    out = make_module(name, coef, temperature=2.0)(x, s.float(), labels)
    out.backward()
    assert abs(out.item()) < 1e-6 and x.grad.abs().max() < 1e-5


def test_forward_kl_is_inf_when_student_misses_teacher_mass():
    t = torch.zeros(1, 1, 4)
    s = torch.tensor([[[0.0, 0.0, 0.0, NEG]]])
    y = torch.zeros(1, 1, dtype=torch.long)
    assert ForwardKL()(s, t, y).item() == math.inf
    assert math.isfinite(ReverseKL()(s, t, y).item())
    assert math.isfinite(GeneralizedJSD(0.5)(s, t, y).item())


def test_jsd_symmetric_at_half():
    s, t, labels = make_inputs(5)
    jsd = GeneralizedJSD(beta=0.5, temperature=1.3)
    a, b = jsd(s.float(), t.float(), labels), jsd(t.float(), s.float(), labels)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert GeneralizedJSD(0.5)(s.float(), t.float(), labels) <= math.log(2) * (labels != IGNORE_INDEX).sum()


def test_jsd_endpoints_are_kls_but_limits_are_zero():
    s, t = peaked(6)  # finite logits: both KLs finite
    labels = torch.zeros(B, L, dtype=torch.long)
    fkl, rkl = ForwardKL()(s, t, labels), ReverseKL()(s, t, labels)
    torch.testing.assert_close(GeneralizedJSD(0.0)(s, t, labels), fkl)
    torch.testing.assert_close(GeneralizedJSD(1.0)(s, t, labels), rkl)
    torch.testing.assert_close(SkewForwardKL(alpha=0.0)(s, t, labels), fkl)
    torch.testing.assert_close(SkewReverseKL(alpha=0.0)(s, t, labels), rkl)
    assert SkewForwardKL(alpha=1.0)(s, t, labels) == 0 and SkewReverseKL(alpha=1.0)(s, t, labels) == 0
    eps = 1e-3
    near0, near1 = GeneralizedJSD(eps)(s, t, labels), GeneralizedJSD(1 - eps)(s, t, labels)
    assert near0 < 0.01 * fkl and near1 < 0.01 * rkl  # discontinuous at both endpoints
    torch.testing.assert_close(near0 / eps, fkl, rtol=0.05, atol=0)  # JSD_β / β -> forward KL
    torch.testing.assert_close(near1 / eps, rkl, rtol=0.05, atol=0)  # JSD_β / (1−β) -> reverse KL
    with pytest.raises(ValueError):
        GeneralizedJSD(1.5)


@pytest.mark.parametrize("name,coef", [("fkl", None), ("jsd", 0.5), ("tvd", None)])
def test_divergence_plus_cross_entropy(name, coef):
    s, t, labels = make_inputs(7, name, coef)
    T, alpha = 2.0, 0.3
    s64 = s.clone().requires_grad_(True)
    ce = sum(-torch.log_softmax(s64[b, i], -1)[labels[b, i]] for b in range(B) for i in range(L)
             if labels[b, i] != IGNORE_INDEX)
    ref = alpha * T ** 2 * loss_ref(name, s64, t, labels, T, coef) + (1 - alpha) * ce
    ref.backward()
    for c in (None, 3):
        out, gs, _ = run(DivergencePlusCrossEntropy(make_module(name, coef, temperature=T), alpha, chunk_size=c),
                         s, t, labels)
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gs.double(), s64.grad, rtol=1e-4, atol=1e-5)


def test_vocab_mismatch_needs_explicit_align():
    s = torch.randn(B, L, V + 3)
    t = torch.randn(B, L, V)
    labels = torch.zeros(B, L, dtype=torch.long)
    with pytest.raises(ValueError, match="align_vocab"):
        ForwardKL()(s, t, labels)
    s2, t2 = align_vocab(s, t)
    assert s2.shape == t2.shape == (B, L, V) and s2.data_ptr() == s.data_ptr()
    for c in (None, 4):
        x = s.clone().requires_grad_(True)
        ForwardKL(chunk_size=c)(*align_vocab(x, t), labels).backward()
        assert x.grad[..., V:].abs().sum() == 0 and x.grad[..., :V].abs().sum() > 0
    torch.testing.assert_close(ForwardKL(chunk_size=4)(s2, t2, labels), ForwardKL()(s[..., :V].contiguous(), t, labels))


# ------------------------------------------------------------------------- sparse (top-k)
def peaked(seed, n=(B, L), v=V):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(*n, v, generator=g) * 4.0
    s = t + torch.randn(*n, v, generator=g) * 1.5
    return s, t


def test_topk_from_logits():
    _, t = peaked(8)
    top = topk_from_logits(t, 4, temperature=2.0)
    logp = torch.log_softmax(t.double() / 2.0, -1)
    torch.testing.assert_close(top.logprobs.double(), logp.topk(4, -1).values, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(top.tail_logmass.double(), torch.log1p(-top.logprobs.double().exp().sum(-1)),
                               rtol=1e-4, atol=1e-5)
    assert isinstance(top, TopKTeacher) and top.ids.dtype == torch.int64 and top.temperature == 2.0
    assert torch.isneginf(topk_from_logits(t, V).tail_logmass).all()
    st = top.to_storage()
    assert (st.logprobs.dtype, st.ids.dtype, st.tail_logmass.dtype) == (torch.float16, torch.int32, torch.float16)


@pytest.mark.parametrize("name,coef", CASES)
def test_sparse_with_k_equal_vocab_is_dense(name, coef):
    s, t, labels = make_inputs(9, name, coef)
    s, t = s.float(), torch.where(t.isnan(), 0.0, t).float()
    dense, g_dense, _ = run(make_module(name, coef, temperature=1.5), s, t, labels)
    for c in (None, 3):
        x = s.clone().requires_grad_(True)
        sparse = make_module(name, coef, temperature=1.5, chunk_size=c)(x, topk_from_logits(t, V, 1.5), labels)
        sparse.backward()
        torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x.grad, g_dense, rtol=1e-4, atol=1e-6)


def test_sparse_forward_kl_grows_to_dense_with_k():
    s, t = peaked(10, n=(2, 8), v=64)
    labels = torch.zeros(2, 8, dtype=torch.long)
    dense = ForwardKL()(s, t, labels).item()
    values = [ForwardKL()(s, topk_from_logits(t, k), labels).item() for k in (1, 2, 4, 8, 16, 32, 63, 64)]
    assert all(a <= b + 1e-5 for a, b in zip(values, values[1:]))  # refining buckets never loses KL
    assert values[-1] == pytest.approx(dense, rel=1e-5) and values[0] < dense
    assert abs(values[-3] - dense) < abs(values[2] - dense)
    shares = [kept_kl_share(s, t, k) for k in (1, 8, 64)]
    assert 0 <= shares[0] <= shares[1] <= shares[2] == pytest.approx(1.0, rel=1e-5)


def test_sparse_storage_dtypes_chunked_and_combined():
    s, t = peaked(11)
    labels = torch.randint(0, V, (B, L))
    labels[0, :2] = IGNORE_INDEX
    top = topk_from_logits(t, 5, temperature=2.0)
    kd = DivergencePlusCrossEntropy(GeneralizedJSD(0.5, temperature=2.0), alpha=0.7)
    exact, stored = kd(s, top, labels), kd(s, top.to_storage(), labels)
    torch.testing.assert_close(stored, exact, rtol=2e-3, atol=1e-3)  # fp16 log-probs, int32 ids
    x, y = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    kd(x, top, labels).backward()
    DivergencePlusCrossEntropy(GeneralizedJSD(0.5, temperature=2.0), alpha=0.7, chunk_size=2)(y, top, labels).backward()
    torch.testing.assert_close(y.grad, x.grad, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="temperature|T="):
        ForwardKL(temperature=1.0)(s, top, labels)
