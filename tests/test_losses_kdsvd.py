"""KD-SVD: NumPy float64 oracle, alignment, invariances, gradients, clipping, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geokd.losses import build_loss
from geokd.losses.kdsvd import (
    KDSVD,
    align_to_teacher,
    clip_to_task_gradient,
    kdsvd_loss,
    top_singular_vectors,
)
from geokd.models.outputs import ModelOutputs


def numpy_signed_svd(x: np.ndarray, k: int):
    """Per input, NumPy's SVD of the (HW × C) matrix; vectors signed so the largest |entry| is positive."""
    sig, vecs = [], []
    for sample in x:
        m = sample.reshape(sample.shape[0], -1).T
        _, s, vh = np.linalg.svd(m, full_matrices=False)
        v = vh[:k].copy()
        for row in v:
            if row[np.argmax(np.abs(row))] < 0:
                row *= -1
        sig.append(s[:k])
        vecs.append(v)
    return np.array(sig), np.array(vecs)


def numpy_kdsvd(students, teachers, *, teacher_k=1, student_k=4) -> float:
    total, prev = 0.0, None
    for s, t in zip(students, teachers):
        sig_t, v_t = numpy_signed_svd(t, teacher_k)
        _, v_s = numpy_signed_svd(s, student_k)
        aligned = np.zeros_like(v_t)
        for b in range(len(s)):
            for k in range(v_t.shape[1]):
                cos = [v_t[b, k] @ v for v in v_s[b]]
                j = int(np.argmax(np.abs(cos)))
                aligned[b, k] = v_s[b, j] * (1.0 if cos[j] >= 0 else -1.0)
        w = sig_t / np.linalg.norm(sig_t, axis=1, keepdims=True)
        cur = (aligned * w[:, :, None], v_t * w[:, :, None])
        if prev is not None:
            for b in range(len(s)):
                for k in range(v_t.shape[1]):
                    rs = np.exp(-np.subtract.outer(cur[0][b, k], prev[0][b, k]) ** 2 / 8)
                    rt = np.exp(-np.subtract.outer(cur[1][b, k], prev[1][b, k]) ** 2 / 8)
                    total += np.sum((rs - rt) ** 2) / len(s)
        prev = cur
    return total


def _features(seed, b=3, channels=(4, 6, 5)):
    rng = np.random.default_rng(seed)
    sizes = [6, 3, 2]
    return [rng.normal(size=(b, c, h, h)) for c, h in zip(channels, sizes)]


def test_top_singular_vectors_match_numpy():
    x = _features(0)[0]
    sigma, v = top_singular_vectors(torch.tensor(x), 4)
    ref_s, ref_v = numpy_signed_svd(x, 4)
    np.testing.assert_allclose(sigma.numpy(), ref_s, rtol=1e-10)
    np.testing.assert_allclose(v.numpy(), ref_v, atol=1e-10)
    # k is capped at min(HW, C)
    assert top_singular_vectors(torch.randn(2, 3, 1, 2), 4)[1].shape == (2, 2, 3)


def test_alignment_picks_largest_abs_cosine_with_sign():
    s = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.6, 0.8], [0.0, 0.8, -0.6]]])
    t = torch.tensor([[[0.0, -1.0, 0.0]]])
    # |cos| = 0, 0.6, 0.8 → third vector, cos = −0.8 → flipped
    torch.testing.assert_close(align_to_teacher(s, t), torch.tensor([[[0.0, -0.8, 0.6]]]))


@pytest.mark.parametrize("teacher_k, student_k", [(1, 4), (2, 4)])
def test_loss_matches_numpy_reference(teacher_k, student_k):
    s, t = _features(1), _features(2)
    got = kdsvd_loss([torch.tensor(x) for x in s], [torch.tensor(x) for x in t], teacher_k=teacher_k, student_k=student_k)
    assert float(got) == pytest.approx(numpy_kdsvd(s, t, teacher_k=teacher_k, student_k=student_k), rel=1e-9)
    assert float(got) > 0


def test_zero_for_equal_features_and_scale_invariance():
    s, t = [torch.tensor(x) for x in _features(3)], [torch.tensor(x) for x in _features(4)]
    assert float(kdsvd_loss(t, t)) == 0.0
    base = float(kdsvd_loss(s, t))
    # singular vectors ignore positive scaling; the teacher's singular values are normalized
    assert float(kdsvd_loss([2.5 * x for x in s], [0.1 * x for x in t])) == pytest.approx(base, rel=1e-9)
    perm = torch.randperm(3)
    assert float(kdsvd_loss([x[perm] for x in s], [x[perm] for x in t])) == pytest.approx(base, rel=1e-9)


def test_pooled_vectors_take_part():
    torch.manual_seed(0)
    s = [torch.randn(3, 4, 4, 4, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)]
    t = [torch.randn(3, 4, 4, 4, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)]
    got = kdsvd_loss(s, t)
    ref = numpy_kdsvd([x.numpy() for x in s[:1]] + [s[1].numpy()[:, :, None, None]],
                      [x.numpy() for x in t[:1]] + [t[1].numpy()[:, :, None, None]])
    assert float(got) == pytest.approx(ref, rel=1e-9)


def test_gradcheck_and_finite_gradients():
    torch.manual_seed(1)
    a = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    t = [torch.randn(2, 3, 3, 3, dtype=torch.float64), torch.randn(2, 4, 2, 2, dtype=torch.float64)]
    assert torch.autograd.gradcheck(lambda x, y: kdsvd_loss([x, y], t, student_k=2), (a, b))
    # a map whose singular values are all equal (orthonormal columns: the vectors are not
    # unique, SVD's backward divides by zero) must not produce NaN gradients
    eye = torch.eye(4).reshape(1, 2, 2, 4).permute(0, 3, 1, 2).repeat(2, 1, 1, 1).requires_grad_()
    teacher = [torch.randn(2, 4, 2, 2), torch.randn(2, 4, 2, 2)]
    kdsvd_loss([eye, torch.randn(2, 4, 2, 2)], teacher).backward()
    assert torch.isfinite(eye.grad).all()


def test_clip_to_task_gradient_per_parameter():
    task = [torch.tensor([3.0, 4.0]), torch.tensor([1.0]), None, torch.tensor([0.0, 0.0])]
    dist = [torch.tensor([6.0, 8.0]), torch.tensor([0.5]), torch.tensor([2.0]), torch.tensor([1.0, 1.0])]
    out = clip_to_task_gradient(task, dist)
    torch.testing.assert_close(out[0], torch.tensor([6.0, 8.0]))  # norm 10 clipped to 5: (3,4) + (3,4)
    torch.testing.assert_close(out[1], torch.tensor([1.5]))  # shorter: kept as is
    assert out[2] is None  # no task gradient: the parameter is left alone
    torch.testing.assert_close(out[3], torch.tensor([0.0, 0.0]))  # zero task gradient allows nothing
    half = clip_to_task_gradient(task[:1], dist[:1], scale=0.5)
    torch.testing.assert_close(half[0], torch.tensor([4.5, 6.0]))
    with pytest.raises(ValueError, match="one distillation gradient per task gradient"):
        clip_to_task_gradient(task, dist[:2])
    with pytest.raises(ValueError, match="scale"):
        clip_to_task_gradient(task, dist, scale=-1.0)


def test_module_declares_clipping_and_matches_functional():
    s = [torch.tensor(x) for x in _features(5)]
    t = [torch.tensor(x) for x in _features(6)]
    loss = build_loss("kdsvd")
    assert isinstance(loss, KDSVD) and loss.clip_to_task_gradient and loss.init_epochs == 0
    out = loss(ModelOutputs(torch.zeros(3, 2), s), ModelOutputs(torch.zeros(3, 2), t), None)
    assert float(out) == pytest.approx(float(kdsvd_loss(s, t)), rel=1e-12)
    sub = KDSVD(layers=[1, 2])(ModelOutputs(torch.zeros(3, 2), s), ModelOutputs(torch.zeros(3, 2), t), None)
    assert float(sub) == pytest.approx(float(kdsvd_loss(s[1:], t[1:])), rel=1e-12)


def test_errors_name_the_layer():
    s = [torch.randn(2, 4, 4, 4), torch.randn(2, 6, 2, 2)]
    t = [torch.randn(2, 4, 4, 4), torch.randn(2, 12, 2, 2)]
    with pytest.raises(ValueError, match=r"layer 1 \('layer2'\): student has 6 channels but teacher has 12"):
        KDSVD(student_taps=["layer1", "layer2"])(ModelOutputs(torch.zeros(2, 2), s), ModelOutputs(torch.zeros(2, 2), t), None)
    with pytest.raises(ValueError, match="at least 2 layers"):
        kdsvd_loss(s[:1], t[:1])
    with pytest.raises(ValueError, match="layer 0: student features contains 1 non-finite"):
        bad = s[0].clone()
        bad[0, 0, 0, 0] = float("nan")
        kdsvd_loss([bad, s[1]], [t[0], s[1]])
    with pytest.raises(ValueError, match="student_k >= teacher_k"):
        KDSVD(teacher_k=4, student_k=1)
    with pytest.raises(ValueError, match="teacher_k"):
        KDSVD(teacher_k=0)
