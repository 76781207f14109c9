"""geokd's compiled graph kernels (geokd/native/graphs.c) against independent references.

The Gram product is checked against a float64 matmul; the GKD and RKD-D layer terms (value
and gradient) against autograd through the public graph builders in float64, for every
graph variant the kernels take, on the real WRN sensing-point shapes in float32, under
batch permutation, by finite differences, and on ties, out-of-range norms and NaNs.
"""

from __future__ import annotations

import pytest
import torch

from geokd.graphs import GraphSpec, knn_mask
from geokd.graphs.kernels import normalized_distances
from geokd.losses import _native_terms, gkd_loss, rkd_distance_loss
from geokd.native import graph_kernels, native_disabled
from tests.test_losses_gkd_fused import generic_loss  # GKD by the public builders, autograd throughout


@pytest.fixture(scope="module")
def kernels():
    found = graph_kernels()
    # The CI machine has a C compiler and torch on GNU OpenMP: the kernels must run there.
    assert found is not None
    return found


def rows(seed, b, f, *, dtype=torch.float64, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, f, generator=g, dtype=dtype) - shift


def generic_rkd(student, teacher, *, include_diagonal=False):
    """RKD-D from the public normalized distances and torch's Huber loss."""
    terms = []
    for s, t in zip(student, teacher):
        b = s.shape[0]
        s, t = s.reshape(b, -1), t.reshape(b, -1)
        huber = torch.nn.functional.smooth_l1_loss(normalized_distances(s), normalized_distances(t), beta=1.0,
                                                   reduction="sum")
        terms.append(huber / (b * b if include_diagonal else b * (b - 1)))
    return torch.stack(terms).mean()


# ------------------------------------------------------------------ Gram product

# (131, 2600): two threads (>= 2 x 1,024 features) and a partial last panel of rows.
@pytest.mark.parametrize("b, f", [(128, 16384), (128, 4096), (7, 1030), (2, 5), (131, 700), (131, 2600), (64, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gram_matches_float64_matmul_and_is_exactly_symmetric(kernels, b, f, dtype):
    x = rows(b * 31 + f, b, f + 3, dtype=dtype, shift=0.3)[:, :f]  # a row stride longer than the row
    got = kernels.gram(x)
    want = x.double() @ x.double().T
    scale = float(want.diagonal().max())
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    assert torch.equal(got, got.T)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=tol * scale)


@pytest.mark.parametrize("threads", [1, 2])
def test_gram_is_the_same_product_with_one_or_two_threads(kernels, threads):
    x = rows(3, 128, 8192, dtype=torch.float32)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = kernels.gram(x)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(got.double(), x.double() @ x.double().T, rtol=1e-6, atol=0)


# ------------------------------------------------------------------ the student's gradient, alpha S X

# Rows: whole and partial 12-row blocks; columns: whole 256-column panels, a partial panel,
# a partial 32-column slab, fewer columns than one slab.
@pytest.mark.parametrize("b, f", [(128, 8192), (128, 4096 + 40), (13, 700), (2, 5), (131, 513), (1, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scaled_product_matches_float64_matmul(kernels, b, f, dtype):
    x = rows(b + f, b, f + 3, dtype=dtype, shift=0.5)[:, :f]  # a row stride longer than the row
    s = rows(b, b, b, dtype=dtype, shift=0.5)
    got = kernels.scaled_product(s, x, alpha=-2.5)
    want = -2.5 * (s.double() @ x.double())
    # A sum of b products in the rows' dtype: within b ulps of the sum of magnitudes.
    bound = 2.5 * (s.double().abs() @ x.double().abs()) * b * torch.finfo(dtype).eps
    assert got.dtype == dtype and bool(((got.double() - want).abs() <= bound).all())


def test_scaled_product_is_the_same_with_one_or_two_threads(kernels):
    x, s = rows(5, 128, 8192 + 96, dtype=torch.float32), rows(6, 128, 128, dtype=torch.float32)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(kernels.scaled_product(s, x, alpha=0.3))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(results[0], results[1])


def test_scaled_product_refuses_a_mismatched_matrix(kernels):
    x = rows(0, 6, 600)
    for s in (rows(1, 5, 5), rows(1, 6, 6).float(), rows(1, 6, 12)[:, ::2]):
        with pytest.raises(ValueError, match="graph kernel: expected s as a contiguous"):
            kernels.scaled_product(s, x)


def test_layer_term_backward_through_the_kernel_equals_the_differentiable_one(kernels):
    # The kernel's backward runs unless a graph of the backward is asked for (create_graph),
    # which needs ATen's differentiable product: both give the same gradient, and only the
    # second can be differentiated again.
    s, t, _ = gkd_batch(4, negative=True)
    term = _native_terms.gkd_term(s[1], t[1], spec=GraphSpec(), labels=None)
    (fast,) = torch.autograd.grad(3.0 * term, s[1], retain_graph=True)
    (slow,) = torch.autograd.grad(3.0 * term, s[1], create_graph=True)
    assert not fast.requires_grad and slow.requires_grad
    torch.testing.assert_close(fast, slow, rtol=1e-13, atol=0)
    (second,) = torch.autograd.grad(slow.sum(), s[1])
    assert torch.isfinite(second).all()


# ------------------------------------------------------------------ GKD

SPECS = [GraphSpec(normalization=n, k=k, task=task)
         for n in ("sym", "rw", "none") for k in (None, 3, 11) for task in ("all", "intra", "inter")]


def gkd_batch(seed, *, negative=False, dtype=torch.float64, b=12):
    g = torch.Generator().manual_seed(seed)
    shift = 0.5 if negative else 0.0
    s = [torch.rand(b, 3, 4, 4, generator=g, dtype=dtype) - shift, torch.rand(b, 600, generator=g, dtype=dtype) - shift]
    t = [torch.rand(b, 5, 2, 2, generator=g, dtype=dtype) - shift, torch.rand(b, 900, generator=g, dtype=dtype) - shift]
    labels = torch.randint(0, 3, (b,), generator=g)
    return [x.requires_grad_() for x in s], t, labels


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@pytest.mark.parametrize("negative", [False, True], ids=["nonnegative", "signed"])
def test_gkd_kernel_matches_the_generic_builders_in_float64(kernels, spec, negative):
    # 37 rows: the kernels' (B, B) loops go in 16 x 16 blocks, two whole and a partial one.
    s, t, labels = gkd_batch(0, negative=negative, b=37)
    term = _native_terms.gkd_term(s[1], t[1], spec=spec, labels=labels)
    assert term is not None and type(term.grad_fn).__name__ == "_LayerTermBackward"
    got = gkd_loss(s, t, labels, spec=spec)
    want = generic_loss(s, t, spec, labels)
    torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-13)
    for g_got, g_want in zip(torch.autograd.grad(got, s), torch.autograd.grad(want, s)):
        torch.testing.assert_close(g_got, g_want, rtol=1e-9, atol=1e-12)


def test_gkd_kernel_gradient_by_finite_differences(kernels):
    s, t, labels = gkd_batch(1, negative=True)
    for spec in (GraphSpec(k=4, task="inter"), GraphSpec(normalization="rw", task="intra")):
        assert torch.autograd.gradcheck(lambda x: _native_terms.gkd_term(x, t[1], spec=spec, labels=labels),
                                        (s[1],))


def test_gkd_kernel_on_the_wrn_sensing_points_in_float32(kernels):
    # The paper's shapes (WRN-28-0.5 student, WRN-28-1 teacher, batch 128, channels-last
    # maps): several feature blocks, both threads, the panel edge at row 125.
    g = torch.Generator().manual_seed(2)
    cl = torch.channels_last
    s = [torch.rand(128, 8, 32, 32, generator=g).contiguous(memory_format=cl), torch.rand(128, 32, generator=g)]
    t = [torch.rand(128, 16, 32, 32, generator=g).contiguous(memory_format=cl), torch.rand(128, 64, generator=g)]
    s = [x.requires_grad_() for x in s]
    s64 = [x.detach().double().requires_grad_() for x in s]
    t64 = [x.double() for x in t]
    for spec in (GraphSpec(), GraphSpec(k=10)):
        got = gkd_loss(s, t, spec=spec)
        want = generic_loss(s64, t64, spec, None)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0)
        for g_got, g_want in zip(torch.autograd.grad(got, s), torch.autograd.grad(want, s64)):
            torch.testing.assert_close(g_got.double(), g_want, rtol=1e-4, atol=1e-5 * float(g_want.abs().max()))


def test_gkd_kernel_is_invariant_to_a_permutation_of_the_batch(kernels):
    s, t, labels = gkd_batch(3)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    spec = GraphSpec(k=4, task="inter")
    loss = gkd_loss(s, t, labels, spec=spec)
    grads = torch.autograd.grad(loss, s)
    s_perm = [x.detach()[perm].requires_grad_() for x in s]
    loss_perm = gkd_loss(s_perm, [x[perm] for x in t], labels[perm], spec=spec)
    grads_perm = torch.autograd.grad(loss_perm, s_perm)
    torch.testing.assert_close(loss_perm, loss, rtol=1e-13, atol=0)
    for g, g_perm in zip(grads, grads_perm):
        torch.testing.assert_close(g_perm, g[perm], rtol=1e-11, atol=1e-14)


def test_ties_go_to_the_lower_index_in_the_kernel_and_the_builders(kernels):
    # Equal scores: row i keeps the lowest other columns.
    assert knn_mask(torch.ones(5, 5), k=2).tolist() == [
        [0, 1, 1, 1, 1], [1, 0, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 0, 0, 0]]
    # A teacher whose rows are all equal: every cosine is 1, so each row's k-NN is decided
    # by the tie rule alone, and the student (random rows) sees which edges were kept.
    s, t, labels = gkd_batch(4)
    same = [x[:1].expand_as(x).contiguous() for x in t]
    for spec in (GraphSpec(k=3), GraphSpec(k=6, task="inter", normalization="rw")):
        got = gkd_loss(s, same, labels, spec=spec)
        torch.testing.assert_close(got, generic_loss(s, same, spec, labels), rtol=1e-12, atol=0)


def test_out_of_range_norms_go_to_the_rescaling_generic_path(kernels):
    # Squares of 1e-25 underflow float32: the kernel declines, the generic path rescales.
    s, t, labels = gkd_batch(5, dtype=torch.float32)
    tiny = [(x.detach() * 1e-25).requires_grad_() for x in s]
    assert _native_terms.gkd_term(tiny[1], t[1], spec=GraphSpec(), labels=None) is None
    torch.testing.assert_close(gkd_loss(tiny, t), gkd_loss([x.detach() for x in s], t), rtol=1e-5, atol=1e-6)
    huge = [x.detach() * 1e20 for x in s]
    assert _native_terms.rkd_term(huge[1], t[1], include_diagonal=False) is None
    torch.testing.assert_close(rkd_distance_loss(huge, t), rkd_distance_loss([x.detach() for x in s], t),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("loss", [gkd_loss, rkd_distance_loss])
def test_a_nan_still_names_the_layer(kernels, loss):
    s, t, _ = gkd_batch(6, dtype=torch.float32)
    bad = s[1].detach().clone()
    bad[2, 7] = float("nan")
    with pytest.raises(ValueError, match=r"layer 1 \(student\): expected finite activations"):
        loss([s[0], bad], t)


# ------------------------------------------------------------------ RKD-D

@pytest.mark.parametrize("include_diagonal", [False, True])
@pytest.mark.parametrize("negative", [False, True], ids=["nonnegative", "signed"])
def test_rkd_kernel_matches_torch_in_float64(kernels, include_diagonal, negative):
    s, t, _ = gkd_batch(7, negative=negative, b=37)
    term = _native_terms.rkd_term(s[1], t[1], include_diagonal=include_diagonal)
    assert term is not None
    got = rkd_distance_loss(s, t, include_diagonal=include_diagonal)
    want = generic_rkd(s, t, include_diagonal=include_diagonal)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    for g_got, g_want in zip(torch.autograd.grad(got, s), torch.autograd.grad(want, s)):
        torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-14)


def test_rkd_kernel_gradient_by_finite_differences_and_at_duplicates(kernels):
    s, t, _ = gkd_batch(8)
    x = s[1].detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda v: _native_terms.rkd_term(v, t[1], include_diagonal=False), (x,))
    # A zero distance (duplicate rows) is a kink of the square root: its gradient is taken
    # as 0 there, not NaN, as by the generic path.
    dup = x.detach().clone()
    dup[4] = dup[1]
    dup.requires_grad_()
    got = torch.autograd.grad(_native_terms.rkd_term(dup, t[1], include_diagonal=False), dup)[0]
    want = torch.autograd.grad(generic_rkd([dup], [t[1]]), dup)[0]
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)


def test_rkd_kernel_ignores_a_rotation_scale_and_shift_of_the_student(kernels):
    s, t, _ = gkd_batch(9)
    x = s[1].detach()[:, :40]
    rot, _ = torch.linalg.qr(torch.randn(40, 40, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    moved = 3.0 * x @ rot + 1.5
    torch.testing.assert_close(_native_terms.rkd_term(moved, t[1], include_diagonal=False),
                               _native_terms.rkd_term(x, t[1], include_diagonal=False), rtol=1e-12, atol=0)


# ------------------------------------------------------------------ dispatch and bounds

def test_other_devices_dtypes_and_variants_are_declined():
    s, t = rows(0, 6, 10), rows(1, 6, 12)
    assert _native_terms.gkd_term(s.to("meta"), t.to("meta"), spec=GraphSpec(), labels=None) is None
    assert _native_terms.rkd_term(s.half(), t.half(), include_diagonal=False) is None
    assert _native_terms.gkd_term(s, t.float(), spec=GraphSpec(), labels=None) is None
    for spec in (GraphSpec(power=2), GraphSpec(renormalize=True, k=2), GraphSpec(clamp_negative=True),
                 GraphSpec(kernel="gaussian")):
        assert _native_terms.gkd_term(s, t, spec=spec, labels=None) is None
    with native_disabled():
        assert _native_terms.gkd_term(s, t, spec=GraphSpec(), labels=None) is None


@pytest.mark.parametrize("case", ["float16_rows", "column_stride", "gram_shape", "gram_dtypes", "k", "labels",
                                  "normalization"])
def test_the_kernels_refuse_what_would_take_them_out_of_bounds(kernels, case):
    x, g = rows(0, 6, 10), rows(1, 6, 6)
    with pytest.raises(ValueError, match="graph kernel: expected"):
        if case == "float16_rows":
            kernels.gram(x.half())
        elif case == "column_stride":
            kernels.gram(x.T)
        elif case == "gram_shape":
            kernels.rkd_layer(g, g[:, :5].contiguous(), include_diagonal=False)
        elif case == "gram_dtypes":
            kernels.rkd_layer(g.float(), g, include_diagonal=False)
        elif case == "k":
            kernels.gkd_layer(g, g, normalization="sym", labels=None, task="all", k=6)
        elif case == "labels":
            kernels.gkd_layer(g, g, normalization="sym", labels=torch.zeros(5, dtype=torch.int64), task="intra",
                              k=None)
        else:
            kernels.gkd_layer(g, g, normalization="l2", labels=None, task="all", k=None)
