"""The fused student side of the GKD term against the generic graph builders' autograd.

The fused node (:mod:`geokd.losses._gkd_fused`) must give the generic path's loss value
bit for bit and its gradient to rounding, for every graph variant it takes, and hand the
others (and out-of-range batches) back to the generic path. It is the path off the CPU and
without geokd's compiled kernels, so these tests run with the kernels disabled
(``tests/test_losses_native_terms.py`` covers the kernels).
"""

import pytest
import torch

from geokd.graphs import GraphSpec, batch_graph
from geokd.graphs.batch import graph_pair
from geokd.losses import _gkd_fused, gkd_loss
from geokd.native import native_disabled


@pytest.fixture(autouse=True)
def aten_path():
    with native_disabled():
        yield


def generic_loss(student, teacher, spec, labels):
    """GKD by the public graph builders, autograd through every op (no fused node)."""
    total = 0
    for s, t in zip(student, teacher):
        a_s, a_t = graph_pair(s, t, spec=spec, labels=labels)
        total = total + (a_t - a_s).pow(2).sum()
    return total / len(student)


def batch(seed, dtype=torch.float64, zero_row=False, negative=False):
    g = torch.Generator().manual_seed(seed)
    b = 12
    s = [torch.rand(b, 3, 4, 4, generator=g, dtype=dtype), torch.rand(b, 7, generator=g, dtype=dtype)]
    t = [torch.rand(b, 5, 2, 2, generator=g, dtype=dtype), torch.rand(b, 9, generator=g, dtype=dtype)]
    if negative:
        s = [x - 0.5 for x in s]
        t = [x - 0.5 for x in t]
    if zero_row:
        s[0][3] = 0.0
    labels = torch.randint(0, 3, (b,), generator=g)
    return [x.requires_grad_() for x in s], t, labels


SPECS = [GraphSpec(normalization=n, k=k, task=task)
         for n in ("sym", "rw", "none") for k in (None, 3) for task in ("all", "intra", "inter")]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@pytest.mark.parametrize("negative", [False, True])
def test_fused_matches_generic_value_and_gradient(spec, negative):
    s, t, labels = batch(0, negative=negative)
    assert _gkd_fused.supports(spec, torch.float64)
    fused = gkd_loss(s, t, labels, spec=spec)
    grads = torch.autograd.grad(fused, s)
    reference = generic_loss(s, t, spec, labels)
    expected = torch.autograd.grad(reference, s)
    assert fused.item() == reference.item()  # same ops in the same order
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_fused_gradient_by_finite_differences_with_masks():
    s, t, labels = batch(1)
    spec = GraphSpec(k=4, task="inter")
    assert torch.autograd.gradcheck(lambda a, b: gkd_loss([a, b], t, labels, spec=spec), tuple(s))


@pytest.mark.parametrize("normalization", ["sym", "rw", "none"])
def test_fused_node_on_a_zero_row_matches_generic(normalization):
    # gkd_loss sends a batch with a zero row to the generic path (its squared norm is out
    # of range); the node itself must still agree with the generic zero-row policy.
    s, t, labels = batch(6, zero_row=True)
    spec = GraphSpec(normalization=normalization, k=3)
    a_s, a_t = graph_pair(s[0], t[0], spec=spec)
    want = torch.autograd.grad((a_t - a_s).pow(2).sum(), s[0])[0]
    mask = batch_graph(t[0], spec=spec).knn_mask
    value, sq_norms = _gkd_fused.student_term(s[0].reshape(12, -1), a_t, mask, normalization=normalization)
    got = torch.autograd.grad(value, s[0])[0]
    assert sq_norms[3] == 0
    assert value.item() == (a_t - a_s).pow(2).sum().item()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert torch.all(got[3] == 0)


def test_float32_fused_gradient_close_to_float64_reference():
    s32, t32, labels = batch(2, dtype=torch.float32)
    s64 = [x.detach().double().requires_grad_() for x in s32]
    t64 = [x.double() for x in t32]
    spec = GraphSpec(k=5)
    got = torch.autograd.grad(gkd_loss(s32, t32, labels, spec=spec), s32)
    want = torch.autograd.grad(generic_loss(s64, t64, spec, labels), s64)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("spec, dtype", [
    (GraphSpec(power=2), torch.float64), (GraphSpec(renormalize=True, k=3), torch.float64),
    (GraphSpec(clamp_negative=True), torch.float64), (GraphSpec(kernel="gaussian"), torch.float64),
    (GraphSpec(), torch.float16), (GraphSpec(), torch.bfloat16),
])
def test_other_variants_take_the_generic_path(spec, dtype):
    assert not _gkd_fused.supports(spec, dtype)
    s, t, labels = batch(3)
    s = [x.detach().to(dtype).requires_grad_() for x in s]
    t = [x.to(dtype) for x in t]
    got = gkd_loss(s, t, labels, spec=spec)
    assert torch.isfinite(got)
    # Half precision is computed in float32: the reference is the float32 generic loss.
    work = [x.float() for x in s] if dtype in (torch.float16, torch.bfloat16) else s
    t_work = [x.float() for x in t] if dtype in (torch.float16, torch.bfloat16) else t
    torch.testing.assert_close(got, generic_loss(work, t_work, spec, labels).to(got.dtype))


def test_out_of_range_norms_fall_back_to_the_rescaling_generic_path():
    # Squares of 1e-25 underflow float32: the fused cosines would be 0 (wrong, not NaN).
    s, t, labels = batch(4, dtype=torch.float32)
    tiny = [(x.detach() * 1e-25).requires_grad_() for x in s]
    got = gkd_loss(tiny, t)
    torch.testing.assert_close(got, gkd_loss([x.detach() for x in s], t), rtol=1e-5, atol=1e-6)


def test_nan_input_still_names_the_layer():
    s, t, _ = batch(5, dtype=torch.float32)
    bad = s[1].detach().clone()
    bad[2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"layer 1 \(student\): expected finite activations"):
        gkd_loss([s[0], bad], t)
