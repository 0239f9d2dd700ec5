"""Pin the KD loss math: chunked == the direct full-vocab formula (values and gradients),
the T^2 factor, and normalisation under gradient accumulation."""

from __future__ import annotations

import math

import pytest
import torch

from kdist.train.losses import (
    IGNORE_INDEX,
    KDParams,
    OnlineTeacher,
    TopK,
    chunked_kd_loss,
    kd_loss,
)

N, H, HT, V = 37, 16, 12, 50


@pytest.fixture(autouse=True)
def float64_default():
    """Compare formulas, not rounding; restore the default so later tests (which build and
    save models in this process) are not silently run in float64."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def reference_loss(student_logits, labels, teacher_logits, alpha, t, kind, beta, n_tokens):
    """The textbook formula, written with probabilities (not the module's log-space code)."""
    mask = labels != IGNORE_INDEX
    s, lab = student_logits[mask], labels[mask]
    p1 = torch.softmax(s, -1)
    ce = -torch.log(p1[torch.arange(len(lab)), lab]).sum()
    p_s = torch.softmax(s / t, -1)
    p_t = torch.softmax(teacher_logits[mask] / t, -1)

    def kl(p, q):
        return (p * torch.log(p / q)).sum()

    if kind == "forward_kl":
        d = kl(p_t, p_s)
    elif kind == "reverse_kl":
        d = kl(p_s, p_t)
    else:
        m = beta * p_t + (1 - beta) * p_s
        d = beta * kl(p_t, m) + (1 - beta) * kl(p_s, m)
    return (alpha * ce + (1 - alpha) * t * t * d) / n_tokens


def make_batch(seed=0, n=N):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, H, generator=g, requires_grad=True)
    weight = (torch.randn(V, H, generator=g) * 0.5).requires_grad_()
    labels = torch.randint(0, V, (n,), generator=g)
    labels[::5] = IGNORE_INDEX  # prompt / padding tokens
    t_hidden = torch.randn(n, HT, generator=g)
    t_weight = torch.randn(V, HT, generator=g) * 0.7
    return hidden, weight, labels, t_hidden, t_weight


def grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("alpha,t", [(0.0, 1.0), (0.3, 2.0), (0.7, 0.5)])
def test_chunked_online_equals_direct_formula(kind, alpha, t):
    hidden, weight, labels, t_hidden, t_weight = make_batch()
    n_tokens = int((labels != IGNORE_INDEX).sum())
    params = KDParams(alpha=alpha, temperature=t, divergence=kind, beta=0.3)
    expected = reference_loss(
        hidden @ weight.T, labels, t_hidden @ t_weight.T, alpha, t, kind, 0.3, n_tokens
    )
    got = chunked_kd_loss(
        hidden, weight, labels, OnlineTeacher(t_hidden, t_weight), params, n_tokens, chunk_size=8
    )
    assert got.loss.item() == pytest.approx(expected.item(), abs=1e-5, rel=1e-5)
    for g_got, g_exp in zip(grads(got.loss, hidden, weight), grads(expected, hidden, weight)):
        torch.testing.assert_close(g_got, g_exp, atol=1e-5, rtol=1e-5)
    # and the module's own direct path agrees too
    direct = kd_loss(hidden @ weight.T, labels, t_hidden @ t_weight.T, params, n_tokens)
    assert direct.loss.item() == pytest.approx(expected.item(), abs=1e-5, rel=1e-5)


def test_chunked_in_float32_stays_within_1e5():
    torch.set_default_dtype(torch.float32)
    try:
        hidden, weight, labels, t_hidden, t_weight = make_batch(seed=3)
        n = int((labels != IGNORE_INDEX).sum())
        params = KDParams(alpha=0.4, temperature=2.0, divergence="jsd")
        exp = reference_loss(
            (hidden @ weight.T).double(), labels, (t_hidden @ t_weight.T).double(),
            0.4, 2.0, "jsd", 0.5, n,
        )
        got = chunked_kd_loss(hidden, weight, labels, OnlineTeacher(t_hidden, t_weight), params, n)
        assert got.loss.item() == pytest.approx(exp.item(), abs=1e-5)
    finally:
        torch.set_default_dtype(torch.float64)


def test_temperature_squared_factor():
    """With alpha = 0 the loss is exactly T^2 times the divergence at temperature T."""
    hidden, weight, labels, t_hidden, t_weight = make_batch(seed=1)
    teacher = OnlineTeacher(t_hidden, t_weight)
    for t in (1.0, 2.0, 4.0):
        parts = chunked_kd_loss(
            hidden, weight, labels, teacher, KDParams(alpha=0.0, temperature=t), 1
        )
        assert parts.loss.item() == pytest.approx(t * t * parts.kd.item(), rel=1e-12)
    # and the reference (which has the factor written out) agrees at T=4 with alpha=0.5
    n = int((labels != IGNORE_INDEX).sum())
    ref = reference_loss(hidden @ weight.T, labels, t_hidden @ t_weight.T, 0.5, 4.0,
                         "forward_kl", 0.5, n)
    got = chunked_kd_loss(hidden, weight, labels, teacher, KDParams(alpha=0.5, temperature=4.0), n)
    assert got.loss.item() == pytest.approx(ref.item(), rel=1e-9)
    assert got.loss.item() == pytest.approx(0.5 * got.ce.item() + 0.5 * 16 * got.kd.item())


def test_gradient_accumulation_normalisation():
    """Micro-batches of unequal loss-token counts, each divided by the GLOBAL count, sum to the
    loss and gradients of one big batch; dividing by the local count would not."""
    hidden, weight, labels, t_hidden, t_weight = make_batch(seed=2, n=60)
    labels[3:20] = IGNORE_INDEX  # make the micro-batches' token counts differ a lot
    params = KDParams(alpha=0.5, temperature=2.0, divergence="reverse_kl")
    total = int((labels != IGNORE_INDEX).sum())
    big = chunked_kd_loss(hidden, weight, labels, OnlineTeacher(t_hidden, t_weight), params, total)
    big_grads = grads(big.loss, hidden, weight)

    splits = [slice(0, 25), slice(25, 60)]
    micro = [
        chunked_kd_loss(hidden[s], weight, labels[s], OnlineTeacher(t_hidden[s], t_weight),
                        params, total)
        for s in splits
    ]
    summed = micro[0].loss + micro[1].loss
    assert summed.item() == pytest.approx(big.loss.item(), rel=1e-12)
    for g_micro, g_big in zip(grads(summed, hidden, weight), big_grads):
        torch.testing.assert_close(g_micro, g_big)

    local = [
        chunked_kd_loss(hidden[s], weight, labels[s], OnlineTeacher(t_hidden[s], t_weight),
                        params, int((labels[s] != IGNORE_INDEX).sum())).loss
        for s in splits
    ]
    assert sum(local).item() / 2 != pytest.approx(big.loss.item(), rel=1e-3)


def test_pure_ce_matches_torch_cross_entropy():
    hidden, weight, labels, *_ = make_batch(seed=4)
    got = chunked_kd_loss(hidden, weight, labels, None, KDParams(alpha=1.0), 1)
    expected = torch.nn.functional.cross_entropy(hidden @ weight.T, labels, reduction="sum")
    assert got.loss.item() == pytest.approx(expected.item(), rel=1e-12)
    for a, b in zip(grads(got.loss, hidden, weight), grads(expected, hidden, weight)):
        torch.testing.assert_close(a, b)


def test_bias_and_frozen_head():
    hidden, weight, labels, t_hidden, t_weight = make_batch(seed=5)
    bias = torch.randn(V, requires_grad=True)
    frozen = weight.detach()
    params = KDParams(alpha=0.2, temperature=1.5)
    got = chunked_kd_loss(hidden, frozen, labels, OnlineTeacher(t_hidden, t_weight), params, 7,
                          head_bias=bias, chunk_size=5)
    exp = kd_loss(hidden @ frozen.T + bias, labels, t_hidden @ t_weight.T, params, 7)
    assert got.loss.item() == pytest.approx(exp.loss.item(), rel=1e-10)
    for a, b in zip(grads(got.loss, hidden, bias), grads(exp.loss, hidden, bias)):
        torch.testing.assert_close(a, b)


# --- offline top-k ------------------------------------------------------------------------------


def topk_from(teacher_logits, k, pad_rows=()):
    logp = torch.log_softmax(teacher_logits, -1)
    values, ids = logp.topk(k, -1)
    for row in pad_rows:  # fewer than k stored for these tokens
        ids[row, k // 2:] = -1
        values[row, k // 2:] = 0.0
    return TopK(ids, values)


def reference_topk(student_logits, labels, topk, alpha, t, kind, beta, tail, n_tokens):
    mask = labels != IGNORE_INDEX
    total = student_logits.new_zeros(())
    p_full = torch.softmax(student_logits, -1)
    ce = -torch.log(p_full[mask, labels[mask]]).sum()
    for i in mask.nonzero().flatten().tolist():
        keep = topk.token_ids[i] >= 0
        ids, lp = topk.token_ids[i][keep], topk.logprobs[i][keep]
        p_t, p_s = lp.exp(), p_full[i, ids]
        if tail == "bucket":
            p_t = torch.cat([p_t, (1 - p_t.sum()).reshape(1)])
            p_s = torch.cat([p_s, (1 - p_s.sum()).reshape(1)])
        # temperature on the (coarse) log-probabilities, renormalised over the categories
        p_t = torch.softmax(torch.log(p_t) / t, -1)
        p_s = torch.softmax(torch.log(p_s) / t, -1)
        if kind == "forward_kl":
            d = (p_t * torch.log(p_t / p_s)).sum()
        elif kind == "reverse_kl":
            d = (p_s * torch.log(p_s / p_t)).sum()
        else:
            m = beta * p_t + (1 - beta) * p_s
            d = beta * (p_t * torch.log(p_t / m)).sum() + (1 - beta) * (p_s * torch.log(p_s / m)).sum()
        total = total + d
    return (alpha * ce + (1 - alpha) * t * t * total) / n_tokens


@pytest.mark.parametrize("tail", ["bucket", "renormalise"])
@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_chunked_topk_equals_direct_formula(tail, kind):
    hidden, weight, labels, t_hidden, t_weight = make_batch(seed=6)
    topk = topk_from(t_hidden @ t_weight.T, k=6, pad_rows=(1, 2, 8))
    n = int((labels != IGNORE_INDEX).sum())
    params = KDParams(alpha=0.25, temperature=2.0, divergence=kind, beta=0.4, tail=tail)
    exp = reference_topk(hidden @ weight.T, labels, topk, 0.25, 2.0, kind, 0.4, tail, n)
    got = chunked_kd_loss(hidden, weight, labels, topk, params, n, chunk_size=7)
    assert got.loss.item() == pytest.approx(exp.item(), abs=1e-5, rel=1e-5)
    for a, b in zip(grads(got.loss, hidden, weight), grads(exp, hidden, weight)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tail", ["bucket", "renormalise"])
def test_a_token_without_stored_topk_adds_nothing_and_token_id_0_counts(tail):
    """A loss token whose teacher stored nothing (every slot padding) carries no KD term, not
    NaN; one whose only stored id is 0 is a real teacher signal (0 is a token id, -1 padding)."""
    hidden, weight, labels, t_hidden, t_weight = make_batch(seed=11)
    topk = topk_from(t_hidden @ t_weight.T, k=4)
    loss_rows = (labels != IGNORE_INDEX).nonzero().flatten().tolist()
    empty, zero_only = loss_rows[0], loss_rows[1]
    topk.token_ids[empty] = -1
    topk.token_ids[zero_only] = torch.tensor([0, -1, -1, -1])
    topk.logprobs[zero_only] = torch.tensor([-0.3, 0.0, 0.0, 0.0])
    n = len(loss_rows)
    params = KDParams(alpha=0.0, temperature=1.0, tail=tail)
    got = chunked_kd_loss(hidden, weight, labels, topk, params, n, chunk_size=5)
    assert math.isfinite(got.loss.item())
    exp = reference_topk(hidden @ weight.T, labels, topk, 0.0, 1.0, "forward_kl", 0.5, tail, n)
    assert got.kd.item() == pytest.approx(exp.item(), rel=1e-6)
    only_empty = labels.clone()
    only_empty[[r for r in loss_rows if r != empty]] = IGNORE_INDEX
    assert chunked_kd_loss(hidden, weight, only_empty, topk, params, 1).kd.item() == 0.0
    only_zero = labels.clone()
    only_zero[[r for r in loss_rows if r != zero_only]] = IGNORE_INDEX
    zero_kd = chunked_kd_loss(hidden, weight, only_zero, topk, params, 1).kd.item()
    assert zero_kd > 0.0 or tail == "renormalise"  # one category renormalised is no divergence


def test_the_direct_loss_reports_its_ce_and_kd_parts_like_the_chunked_one():
    hidden, weight, labels, t_hidden, t_weight = make_batch(seed=12)
    n = int((labels != IGNORE_INDEX).sum())
    params = KDParams(alpha=0.3, temperature=2.0)
    direct = kd_loss(hidden @ weight.T, labels, t_hidden @ t_weight.T, params, n)
    chunked = chunked_kd_loss(hidden, weight, labels, OnlineTeacher(t_hidden, t_weight), params, n,
                              chunk_size=8)
    for part in ("loss", "ce", "kd"):
        assert getattr(direct, part).item() == pytest.approx(getattr(chunked, part).item(), rel=1e-9)
    assert direct.loss.item() == pytest.approx(0.3 * direct.ce.item() + 0.7 * 4.0 * direct.kd.item(), rel=1e-9)
    assert direct.ce.item() > 0.0 and direct.kd.item() > 0.0


def test_topk_bucket_with_full_vocab_is_exact_kl():
    """With k = V and T = 1 the bucket is empty and top-k KD equals full-vocab KD."""
    hidden, weight, labels, t_hidden, t_weight = make_batch(seed=7)
    t_logits = t_hidden @ t_weight.T
    params = KDParams(alpha=0.0, divergence="forward_kl")
    full = kd_loss(hidden @ weight.T, labels, t_logits, params, 1)
    top = chunked_kd_loss(hidden, weight, labels, topk_from(t_logits, V), params, 1)
    assert top.loss.item() == pytest.approx(full.loss.item(), rel=1e-6)


def test_no_full_vocab_logits_for_the_batch():
    """The largest tensor the chunked loss allocates is a chunk's logits, not the batch's."""
    hidden, weight, labels, t_hidden, t_weight = make_batch(seed=8, n=400)
    labels[:] = 1
    seen = []

    class Spy(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor):
                seen.append(out.numel())
            return out

    with Spy():
        loss = chunked_kd_loss(hidden, weight, labels, OnlineTeacher(t_hidden, t_weight),
                               KDParams(alpha=0.5), 400, chunk_size=64).loss
    loss.backward()
    assert 64 * V in seen  # a chunk's logits...
    assert max(seen) <= max(64 * V, 400 * H)  # ...but never 400 x V (only hidden-sized ones)
    assert not math.isnan(loss.item())


def test_bad_params_say_what_is_allowed():
    with pytest.raises(ValueError, match="alpha must be in"):
        KDParams(alpha=1.5)
    with pytest.raises(ValueError, match="beta must be in"):
        KDParams(divergence="jsd", beta=1.0)
    with pytest.raises(ValueError, match="divergence must be"):
        KDParams(divergence="kl")
    with pytest.raises(ValueError, match=r"temperature must be > 0 \(got 0.0\)"):
        KDParams(temperature=0.0)
    with pytest.raises(ValueError, match=r"jsd beta must be in \(0, 1\) \(got 0.0\)"):
        KDParams(divergence="jsd", beta=0.0)
    with pytest.raises(ValueError, match="tail must be bucket or renormalise \\(got 'drop'\\)"):
        KDParams(tail="drop")
    with pytest.raises(ValueError, match="cross must be uld or align \\(got 'ULD'\\)"):
        KDParams(cross="ULD")
    # The edges that are allowed: a beta of 0 outside JSD (unused there), and both cross modes.
    assert KDParams(beta=0.0).beta == 0.0
    assert [KDParams(cross=mode).cross for mode in ("uld", "align")] == ["uld", "align"]


def test_the_default_chunk_holds_about_2_to_the_23_logits_and_at_least_16_rows():
    """On the CPU the default chunk is sized by the vocabulary (the head's first dimension),
    never by the hidden size, and never under 16 rows; the GPU minimum applies on GPUs only."""
    from kdist.train.losses import _default_chunk_size

    assert _default_chunk_size(torch.empty(1000, 8, device="meta")) == (1 << 23) // 1000
    assert _default_chunk_size(torch.empty(1 << 20, 8, device="meta")) == 16
    assert _default_chunk_size(torch.empty((1 << 23) // 17, 8, device="meta")) == 17


def test_bf16_inputs_keep_their_dtype_and_stay_close_to_fp32():
    hidden, weight, labels, t_hidden, t_weight = make_batch(seed=9)
    params = KDParams(alpha=0.5, temperature=2.0)
    n = int((labels != IGNORE_INDEX).sum())
    h16 = hidden.detach().to(torch.bfloat16).requires_grad_()
    w16 = weight.detach().to(torch.bfloat16).requires_grad_()
    teacher16 = OnlineTeacher(t_hidden.to(torch.bfloat16), t_weight.to(torch.bfloat16))
    got = chunked_kd_loss(h16, w16, labels, teacher16, params, n, chunk_size=8)
    assert got.loss.dtype == torch.float32  # softmax and sums in fp32
    g_h, g_w = grads(got.loss, h16, w16)
    assert g_h.dtype == g_w.dtype == torch.bfloat16
    ref = chunked_kd_loss(h16.detach().double().requires_grad_(), w16.detach().double(), labels,
                          OnlineTeacher(teacher16.hidden.double(), teacher16.head_weight.double()),
                          params, n)
    assert got.loss.item() == pytest.approx(ref.loss.item(), rel=1e-2)


def test_a_scaled_backward_scales_the_head_gradient_once_and_a_second_backward_fails():
    """The head's gradient is scaled in place in backward (no second head-sized buffer): the
    scale still reaches it exactly once, and a second backward through the same graph raises
    instead of returning a gradient scaled twice."""
    hidden, weight, labels, t_hidden, t_weight = make_batch(seed=5)
    n = int((labels != IGNORE_INDEX).sum())
    params = KDParams(alpha=0.3, temperature=2.0)
    w = weight.detach().requires_grad_()
    loss = chunked_kd_loss(hidden, w, labels, OnlineTeacher(t_hidden, t_weight), params, n,
                           chunk_size=8).loss
    (3.0 * loss).backward(retain_graph=True)
    expected = reference_loss(hidden @ weight.T, labels, t_hidden @ t_weight.T, 0.3, 2.0,
                              "forward_kl", 0.5, n)
    torch.testing.assert_close(w.grad, 3.0 * grads(expected, weight)[0])
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (run on an H200 too)")
def test_on_a_gpu_bf16_head_gradient_sums_in_fp32_and_chunks_are_gpu_sized():
    from kdist.train.losses import _default_chunk_size

    hidden, weight, labels, t_hidden, t_weight = (t.cuda() for t in make_batch(seed=6, n=600))
    n = int((labels != IGNORE_INDEX).sum())
    params = KDParams(alpha=0.5, temperature=2.0)
    w16 = weight.to(torch.bfloat16).requires_grad_()
    teacher16 = OnlineTeacher(t_hidden.to(torch.bfloat16), t_weight.to(torch.bfloat16))
    loss = chunked_kd_loss(hidden.to(torch.bfloat16), w16, labels, teacher16, params, n,
                           chunk_size=64).loss
    (g_w,) = grads(loss, w16)
    ref_w = w16.detach().double().requires_grad_()
    ref = chunked_kd_loss(hidden.to(torch.bfloat16).double(), ref_w, labels,
                          OnlineTeacher(teacher16.hidden.double(), teacher16.head_weight.double()),
                          params, n).loss
    (g_ref,) = grads(ref, ref_w)
    assert float((g_w.double() - g_ref).norm() / g_ref.norm()) < 1e-2
    assert _default_chunk_size(torch.empty(128256, 8, device="cuda")) == 512
    assert _default_chunk_size(torch.empty(128256, 8)) == 65
