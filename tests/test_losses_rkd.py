"""RKD distance / angle: loop-based float64 references, hand values, invariances, errors."""

import itertools
import math

import numpy as np
import pytest
import torch

from geokd.losses import (RKDAngleLoss, RKDDistanceLoss, RKDLoss, build_loss, rkd_angle_loss,
                          rkd_distance_loss)
from geokd.models.outputs import ModelOutputs


def huber(a, b):
    d = abs(a - b)
    return 0.5 * d * d if d < 1 else d - 0.5


def ref_distance(s, t, include_diagonal=False):
    s, t = s.reshape(len(s), -1), t.reshape(len(t), -1)
    n = len(s)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]

    def psi(x):
        d = {(i, j): math.dist(x[i], x[j]) for i, j in pairs}
        mu = sum(d.values()) / len(d)
        return {p: v / mu for p, v in d.items()}

    ps, pt = psi(s), psi(t)
    total = sum(huber(ps[p], pt[p]) for p in pairs)
    return total / (n * n if include_diagonal else len(pairs))


def ref_angle(s, t):
    s, t = s.reshape(len(s), -1), t.reshape(len(t), -1)
    n = len(s)

    def psi(x, i, j, k):
        u, v = x[i] - x[j], x[k] - x[j]
        nu, nv = np.linalg.norm(u), np.linalg.norm(v)
        return 0.0 if nu == 0 or nv == 0 else float(u @ v / (nu * nv))

    total = sum(huber(psi(s, i, j, k), psi(t, i, j, k)) for i, j, k in itertools.product(range(n), repeat=3))
    return total / n ** 3


def batch(gen, b, *shape):
    return torch.randn(b, *shape, generator=gen, dtype=torch.float64)


def test_hand_value_distance():
    # teacher distances 5, 10, 5 (mean 20/3) -> 0.75, 1.5, 0.75; student 1, 5, 4 (mean 10/3)
    # -> 0.3, 1.5, 1.2; Huber of 0.45, 0, 0.45 = 0.10125, 0, 0.10125 -> mean 0.0675
    t = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]], dtype=torch.float64)
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]], dtype=torch.float64)
    assert float(rkd_distance_loss([s], [t])) == pytest.approx(0.0675)
    assert float(rkd_distance_loss([s], [t], include_diagonal=True)) == pytest.approx(0.0675 * 6 / 9)


def test_hand_value_angle():
    # Teacher: right angle at node 0: psi(1,0,2) = 0; student collinear 1 - 0 - 2 on a line
    # with node 0 in the middle: psi(1,0,2) = -1. Every other triplet: compute by hand
    # the student's angles at 1 and 2 are 1 (both others on the same side), teacher's
    # angles at 1 and 2 are cos 45° = r.
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    r = 1 / math.sqrt(2)
    # non-degenerate triplets (i != j, k != j): 3 vertices x 4 ordered (i, k) pairs, of which
    # i = k gives 1 on both sides; i != k: at vertex 0: -1 vs 0 (x2), at vertices 1, 2: 1 vs r (x4)
    expected = (2 * huber(-1, 0) + 4 * huber(1, r)) / 27
    assert float(rkd_angle_loss([s], [t])) == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(3))
def test_match_loop_references(seed):
    gen = torch.Generator().manual_seed(seed)
    teacher = [batch(gen, 7, 3, 2, 2), batch(gen, 7, 10)]
    student = [batch(gen, 7, 2, 2, 2), batch(gen, 7, 4)]
    expected = np.mean([ref_distance(s.numpy(), t.numpy()) for s, t in zip(student, teacher)])
    assert float(rkd_distance_loss(student, teacher)) == pytest.approx(expected, rel=1e-10)
    expected_diag = np.mean([ref_distance(s.numpy(), t.numpy(), True) for s, t in zip(student, teacher)])
    assert float(rkd_distance_loss(student, teacher, include_diagonal=True)) == pytest.approx(expected_diag, rel=1e-10)
    expected_angle = np.mean([ref_angle(s.numpy(), t.numpy()) for s, t in zip(student, teacher)])
    assert float(rkd_angle_loss(student, teacher)) == pytest.approx(expected_angle, rel=1e-10)


def test_invariant_to_rotation_scale_translation_of_the_student():
    gen = torch.Generator().manual_seed(10)
    t, s = batch(gen, 9, 6), batch(gen, 9, 6)
    q, _ = torch.linalg.qr(batch(gen, 6, 6))
    moved = 3.7 * s @ q + batch(gen, 1, 6)
    for fn in (rkd_distance_loss, rkd_angle_loss):
        assert float(fn([moved], [t])) == pytest.approx(float(fn([s], [t])), rel=1e-9)
        assert float(fn([2.0 * t @ q], [t])) < 1e-20


def test_gradients_reach_the_student_only_and_are_correct():
    gen = torch.Generator().manual_seed(11)
    t = batch(gen, 6, 5).requires_grad_()
    s = batch(gen, 6, 3).requires_grad_()
    (rkd_distance_loss([s], [t]) + rkd_angle_loss([s], [t])).backward()
    assert t.grad is None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    s2 = batch(gen, 5, 3).requires_grad_()
    t2 = batch(gen, 5, 4)
    assert torch.autograd.gradcheck(lambda x: rkd_distance_loss([x], [t2]), (s2,))
    assert torch.autograd.gradcheck(lambda x: rkd_angle_loss([x], [t2]), (s2,))


def test_duplicate_and_identical_inputs_stay_finite():
    s = torch.ones(4, 3, requires_grad=True)  # all identical: mean distance 0 -> psi = 0
    t = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    for fn in (rkd_distance_loss, rkd_angle_loss):
        loss = fn([s], [t])
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
        s.grad = None


def test_modules_and_registry():
    gen = torch.Generator().manual_seed(12)
    tf = [batch(gen, 8, 4, 2, 2), batch(gen, 8, 16)]
    sf = [batch(gen, 8, 2, 2, 2), batch(gen, 8, 8)]
    t, s = ModelOutputs(torch.zeros(8, 10), tf), ModelOutputs(torch.zeros(8, 10), sf)
    assert isinstance(build_loss("rkd_distance"), RKDDistanceLoss)
    assert torch.equal(build_loss("rkd_distance")(s, t, None), rkd_distance_loss(sf, tf))
    assert torch.equal(RKDDistanceLoss(layers=[0])(s, t, None), rkd_distance_loss(sf[:1], tf[:1]))
    assert torch.equal(build_loss("rkd_angle")(s, t, None), rkd_angle_loss(sf[-1], tf[-1]))
    rkd = build_loss("rkd")
    assert isinstance(rkd, RKDLoss) and (rkd.distance_weight, rkd.angle_weight) == (25.0, 50.0)
    expected = 25 * rkd_distance_loss(sf[-1], tf[-1], include_diagonal=True) + 50 * rkd_angle_loss(sf[-1], tf[-1])
    assert torch.equal(rkd(s, t, None), expected)
    metric = RKDLoss(distance_weight=1, angle_weight=2, layer=0)
    expected = rkd_distance_loss(sf[0], tf[0], include_diagonal=True) + 2 * rkd_angle_loss(sf[0], tf[0])
    assert torch.equal(metric(s, t, None), expected)


def test_bad_input():
    gen = torch.Generator().manual_seed(13)
    t, s = [batch(gen, 5, 3), batch(gen, 5, 4)], [batch(gen, 5, 2), batch(gen, 5, 2)]
    with pytest.raises(ValueError, match="got 1 student and 2 teacher"):
        rkd_distance_loss(s[:1], t)
    with pytest.raises(ValueError, match=r"layer 1: expected student and teacher batches of the same size, got 4 \(student\) and 5"):
        rkd_angle_loss([s[0], s[1][:4]], t)
    bad = t[1].clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"layer 1 \(teacher\): expected finite"):
        rkd_distance_loss(s, [t[0], bad])
    # The fast pass skips the finiteness check: a NaN must still be caught and placed.
    nan_student = s[0].clone()
    nan_student[2, 1] = float("nan")
    for include_diagonal in (False, True):
        with pytest.raises(ValueError, match=r"layer 0 \(student\): expected finite"):
            rkd_distance_loss([nan_student, s[1]], t, include_diagonal=include_diagonal)
    with pytest.raises(ValueError, match="at least 2 inputs, got 1"):
        rkd_angle_loss([s[0][:1]], [t[0][:1]])
    with pytest.raises(ValueError, match="distance_weight"):
        RKDLoss(distance_weight=-1)
    with pytest.raises(ValueError, match="include_diagonal"):
        rkd_distance_loss(s, t, include_diagonal=1)
    with pytest.raises(ValueError, match="out of range for 2 student"):
        RKDAngleLoss(layer=2)(ModelOutputs(None, s), ModelOutputs(None, t), None)
