"""Regressions of the numeric reliability bugs B1-B7 (RELIABILITY.md), one test each or more.

Contract (issue 9): finite values or ``ValueError``; never NaN/Inf from finite input.
Where a fix computes in float32 for half precision, the half-precision result is
compared with a float64 reference computed on the *same* (rounded) inputs, with a loose
tolerance; where a fix rescales by a power of two, the result is compared with the one of
an in-range input that differs only by that power of two (exact in floating point).
Every test here failed on the code before the fixes (commit 2d3f0a6), except four
parametrizations of the half-vs-float64 similarity comparison (bfloat16, whose range is
float32's, and small float16 dot products), kept as guards of the cases that worked.
"""

from __future__ import annotations

import pytest
import torch

from geokd.graphs import GraphSpec, batch_graph, graph_pair, knn_mask, normalize, similarity
from geokd.losses import build_loss, gkd_loss, rkd_angle_loss, rkd_distance_loss
from geokd.losses.attention import attention_transfer_loss
from geokd.losses.fsp import fsp_loss
from geokd.losses.kdsvd import kdsvd_loss
from geokd.models.outputs import ModelOutputs
from tests._fault_helpers import count_case, flush_counts

HALF = [pytest.param(torch.float16, id="float16"), pytest.param(torch.bfloat16, id="bfloat16")]


@pytest.fixture(scope="module", autouse=True)
def _record_counts(request):
    yield
    flush_counts(request.config)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _finite(x) -> bool:
    return bool(torch.isfinite(torch.as_tensor(x)).all())


def _close(got: torch.Tensor, want: torch.Tensor, *, rtol: float, atol: float) -> None:
    got64 = got.detach().to(torch.float64)
    assert _finite(got64), got
    torch.testing.assert_close(got64, want.detach(), rtol=rtol, atol=atol)


# ------------------------------------------------------------------- B1: float16 similarity

def test_b1_similarity_float16_activations_of_a_few_hundred():
    # The pending reproduction: |x| = 100 in 8 features; squared norms 8e4 > 65504.
    count_case("numerics.B1")
    x = torch.full((4, 8), 100.0, dtype=torch.float16)
    x[1] *= -1
    got = similarity(x)
    assert got.dtype == torch.float16
    _close(got, similarity(x.double()), rtol=0, atol=1e-3)
    y = torch.tensor([[300.0], [-200.0], [1.0], [2.0]]).half()
    _close(similarity(y), similarity(y.double()), rtol=0, atol=1e-3)


@pytest.mark.parametrize("kernel", ["cosine", "gaussian", "dot"])
@pytest.mark.parametrize("dtype", HALF)
def test_b1_similarity_half_matches_float64_reference(kernel, dtype):
    count_case("numerics.B1")
    x = (150 * torch.randn(10, 3, 4, 4, generator=_gen(1))).to(dtype)
    if kernel == "dot":
        x = x / 64  # dot products up to ~2e4: within float16
    want = similarity(x.double(), kernel=kernel)
    got = similarity(x, kernel=kernel)
    assert got.dtype == dtype
    # Cast back to half: one rounding of each value (float16: 2^-11, bfloat16: 2^-8 relative).
    tol = 2e-3 if dtype == torch.float16 else 8e-3
    scale = 1.0 if kernel != "dot" else float(want.abs().max())
    _close(got, want, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("dtype", HALF)
def test_b1_gkd_loss_and_graphs_half_match_float64_reference(dtype):
    count_case("numerics.B1")
    g = _gen(2)
    t = (200 * torch.relu(torch.randn(16, 8, 4, 4, generator=g))).to(dtype)
    s = (120 * torch.randn(16, 4, 4, 4, generator=g)).to(dtype).requires_grad_()
    s64 = s.detach().double().requires_grad_()
    spec = GraphSpec(k=4)
    want_s, want_t = graph_pair(s64, t.double(), spec=spec)
    got_s, got_t = graph_pair(s, t, spec=spec)
    assert got_s.dtype == dtype
    tol = 5e-3 if dtype == torch.float16 else 2e-2
    _close(got_s, want_s, rtol=tol, atol=tol)
    _close(got_t, want_t, rtol=tol, atol=tol)
    _close(batch_graph(t, spec=spec).adjacency, want_t, rtol=tol, atol=tol)
    # The loss itself is float32 for half inputs (a float16 sum of B^2 squares overflows).
    loss = gkd_loss([s], [t], k=4)
    assert loss.dtype == torch.float32
    want = gkd_loss([s64], [t.double()], k=4)
    _close(loss, want, rtol=2e-2 if dtype == torch.float16 else 1e-1, atol=1e-4)
    loss.backward()
    want.backward()
    assert _finite(s.grad)
    cos = torch.nn.functional.cosine_similarity(s.grad.double().flatten(), s64.grad.flatten(), dim=0)
    assert float(cos) > 0.99


def test_b1_autocast_does_not_push_the_gram_matrix_back_to_half():
    # Under autocast the matmuls inside the loss would run in bfloat16 again; the graph
    # code switches autocast off, so the loss equals the float32 loss bit for bit.
    count_case("numerics.B1")
    g = _gen(3)
    t = [torch.rand(12, 4, 4, 4, generator=g), torch.rand(12, 16, generator=g)]
    s = [torch.rand(12, 2, 4, 4, generator=g), torch.rand(12, 8, generator=g)]
    plain = gkd_loss(s, t, k=3)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        under = gkd_loss(s, t, k=3)
    assert torch.equal(under, plain)


# ------------------------------------------------------------------- B2: RKD angle in float16

@pytest.mark.parametrize("dtype", HALF)
def test_b2_rkd_angle_half_matches_float64_reference(dtype):
    count_case("numerics.B2")
    s = torch.randn(6, 5, generator=_gen(0)).to(dtype)
    t = torch.randn(6, 5, generator=_gen(1)).to(dtype)
    got = rkd_angle_loss([s], [t])
    _close(got, rkd_angle_loss([s.double()], [t.double()]), rtol=1e-3, atol=1e-5)
    got_d = rkd_distance_loss([100 * s], [t])
    _close(got_d, rkd_distance_loss([100 * s.double()], [t.double()]), rtol=1e-3, atol=1e-5)


# ------------------------------------------------------------------- B3: attention, zero map

def test_b3_attention_float16_all_zero_map_is_finite_and_matches_reference():
    count_case("numerics.B3")
    z = torch.zeros(6, 3, 2, 2).half()
    o = torch.randn(6, 3, 2, 2, generator=_gen(0)).half()
    loss = build_loss("attention").half()
    got = loss(ModelOutputs(torch.zeros(6, 3).half(), [z]), ModelOutputs(torch.zeros(6, 3).half(), [o]), None)
    # Reference: a zero map has a zero attention vector, so the term is beta * mean(q_T^2).
    _close(got, attention_transfer_loss([z.double()], [o.double()]), rtol=1e-3, atol=1e-5)


# ------------------------------------------------------------------- B4: KD-SVD in half precision

@pytest.mark.parametrize("dtype", HALF)
def test_b4_kdsvd_half_precision_matches_float64_reference(dtype):
    count_case("numerics.B4")
    g = _gen(4)
    s = [torch.randn(6, 3, 4, 4, generator=g).to(dtype), torch.randn(6, 3, 2, 2, generator=g).to(dtype)]
    t = [torch.randn(6, 3, 4, 4, generator=g).to(dtype), torch.randn(6, 3, 2, 2, generator=g).to(dtype)]
    got = build_loss("kdsvd")(ModelOutputs(torch.zeros(6, 3), s), ModelOutputs(torch.zeros(6, 3), t), None)
    want = kdsvd_loss([x.double() for x in s], [x.double() for x in t])
    _close(got, want, rtol=1e-3, atol=1e-5)


# ------------------------------------------------------------------- B5: finite values near the limits

HUGE = torch.tensor([[3e38, 1.0], [1.0, 3e38], [2e38, 2e38]])


def test_b5_cosine_and_gaussian_of_huge_float32_rows_are_the_float64_values():
    count_case("numerics.B5")
    for kernel in ("cosine", "gaussian"):
        _close(similarity(HUGE, kernel=kernel), similarity(HUGE.double(), kernel=kernel), rtol=1e-6, atol=1e-6)


def test_b5_rescaled_cosine_and_its_gradient_are_exact():
    # Rows 2^100 times larger take the rescaled path: dividing by powers of two is exact,
    # so graph and gradient equal those of the in-range rows (gradient times 2^-100).
    count_case("numerics.B5")
    x = torch.randn(8, 6, generator=_gen(5))
    big = (x * 2.0**100).requires_grad_()
    small = x.clone().requires_grad_()
    weights = torch.rand(8, 8, generator=_gen(6))
    a_big, a_small = similarity(big), similarity(small)
    torch.testing.assert_close(a_big, a_small, rtol=2e-7, atol=2e-7)
    (weights * a_big).sum().backward()
    (weights * a_small).sum().backward()
    torch.testing.assert_close(big.grad * 2.0**100, small.grad, rtol=1e-5, atol=1e-6)


def test_b5_subnormal_float16_rows_keep_their_cosines():
    count_case("numerics.B5")
    x = torch.tensor([[6e-8, 0.0], [0.0, 1.2e-7], [6e-8, 6e-8]]).half()
    _close(similarity(x), similarity(x.double()), rtol=0, atol=1e-3)
    assert float(similarity(x)[0, 2]) > 0.7  # cos 45°, not the 0 of an underflowed norm


def test_b5_dot_kernel_refuses_products_beyond_the_dtype():
    count_case("numerics.B5")
    with pytest.raises(ValueError, match="layer 3.*dot similarities overflow torch.float32.*too large"):
        similarity(HUGE, kernel="dot", where="layer 3")
    with pytest.raises(ValueError, match="overflow torch.float16"):
        similarity(torch.full((3, 4), 200.0).half(), kernel="dot")


def test_b5_gkd_loss_of_huge_float32_activations_is_scale_free():
    count_case("numerics.B5")
    t = torch.randn(3, 2, generator=_gen(7))
    got = gkd_loss([HUGE], [t])
    _close(got, gkd_loss([HUGE.double()], [t.double()]), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="layer 0"):
        gkd_loss([HUGE], [t], spec=GraphSpec(kernel="dot", normalization="none"))


def test_b5_rkd_and_attention_of_huge_float32_activations_match_float64():
    count_case("numerics.B5")
    big = torch.randn(5, 3, 2, 2, generator=_gen(8)) * 1e38
    ref = torch.randn(5, 3, 2, 2, generator=_gen(9))
    for fn in (rkd_distance_loss, rkd_angle_loss):
        _close(fn([big], [ref]), fn([big.double()], [ref.double()]), rtol=1e-4, atol=1e-6)
    _close(attention_transfer_loss([big], [ref]), attention_transfer_loss([big.double()], [ref.double()]),
           rtol=1e-4, atol=1e-6)


def test_b5_fsp_refuses_huge_activations_naming_the_layers():
    count_case("numerics.B5")
    big = [torch.full((2, 3, 2, 2), 3e38), torch.ones(2, 3, 2, 2)]
    with pytest.raises(ValueError, match=r"fsp: layer 0 -> layer 1: .*overflows.*too large"):
        fsp_loss(big, [torch.ones(2, 3, 2, 2)] * 2)


def test_b5_fitnet_refuses_huge_activations_naming_the_layer():
    count_case("numerics.B5")
    loss = build_loss("fitnet", student_channels=3, teacher_channels=3)
    s = ModelOutputs(torch.zeros(2, 3), [torch.full((2, 3, 2, 2), 3e38)])
    t = ModelOutputs(torch.zeros(2, 3), [torch.ones(2, 3, 2, 2)])
    with pytest.raises(ValueError, match="fitnet: layer 0: the hint loss overflows.*too large"):
        loss(s, t, None)


def test_b5_activation_boundary_refuses_and_keeps_its_statistics():
    count_case("numerics.B5")
    loss = build_loss("activation_boundary", student_channels=[3], teacher_channels=[3])
    bn = loss.connectors[0][1]
    before = [b.clone() for b in (bn.running_mean, bn.running_var, bn.num_batches_tracked)]
    s = ModelOutputs(torch.zeros(2, 3), [torch.full((2, 3, 2, 2), 3e38) * torch.tensor([1.0, -1.0]).view(2, 1, 1, 1)])
    t = ModelOutputs(torch.zeros(2, 3), [torch.randn(2, 3, 2, 2, generator=_gen(10))])
    with pytest.raises(ValueError, match="activation_boundary: layer 0: .*not finite.*too large"):
        loss(s, t, None)
    after = (bn.running_mean, bn.running_var, bn.num_batches_tracked)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    # ... and ordinary float16 responses give a float32 loss close to the float64 one.
    s16 = ModelOutputs(None, [torch.randn(4, 3, 2, 2, generator=_gen(11)).half()])
    t16 = ModelOutputs(None, [torch.randn(4, 3, 2, 2, generator=_gen(12)).half()])
    half_loss = build_loss("activation_boundary", student_channels=[3], teacher_channels=[3])
    ref = build_loss("activation_boundary", student_channels=[3], teacher_channels=[3])
    ref.load_state_dict(half_loss.state_dict())
    half_loss.half()
    ref.double()
    got = half_loss(s16, t16, None)
    want = ref(ModelOutputs(None, [s16.features[0].double()]), ModelOutputs(None, [t16.features[0].double()]), None)
    _close(got, want, rtol=2e-2, atol=1e-3)


# ------------------------------------------------------------------- B6/B7: non-finite graphs

@pytest.mark.parametrize("mode", ["sym", "rw", "none"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_b6_normalize_refuses_nonfinite_adjacency(mode, bad):
    count_case("numerics.B6")
    a = torch.rand(4, 4, generator=_gen(13))
    a[0, 1] = bad
    with pytest.raises(ValueError, match="layer 1: expected a finite adjacency, got NaN/Inf in 1 of 16"):
        normalize(a, mode=mode, where="layer 1")


@pytest.mark.parametrize("mode", ["sym", "rw"])
def test_b6_normalize_of_huge_or_tiny_weights_is_the_in_range_result(mode):
    # Degrees of 1e38 weights overflow (their rows used to become 0); D^-1 of subnormal
    # degrees overflows. Normalization is scale-free: the result is that of A * 2^-k.
    count_case("numerics.B6")
    a = torch.rand(5, 5, generator=_gen(14))
    a = (a + a.T).fill_diagonal_(0)
    ref = normalize(a, mode=mode)
    _close(normalize(a * 2.0**126, mode=mode), ref.double(), rtol=1e-6, atol=1e-7)
    _close(normalize(a * 2.0**-140, mode=mode), ref.double(), rtol=1e-2, atol=1e-3)  # subnormal: few bits


def test_b7_knn_mask_refuses_nonfinite_graphs():
    count_case("numerics.B7")
    a = torch.full((6, 6), float("-inf"))
    a[0, 1] = float("nan")
    with pytest.raises(ValueError, match="expected a finite adjacency"):
        knn_mask(a, k=5)
    b = torch.rand(6, 6, generator=_gen(15))
    b[2, 3] = float("inf")
    with pytest.raises(ValueError, match="expected a finite adjacency"):
        knn_mask(b, k=2)
