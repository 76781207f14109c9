"""FSP: Gram-matrix oracle, pooling of the larger map, invariances, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geokd.losses import build_loss
from geokd.losses.fsp import FSP, fsp_loss, fsp_matrix
from geokd.models.outputs import ModelOutputs


def numpy_fsp(f1: np.ndarray, f2: np.ndarray) -> np.ndarray:
    """G[b, i, j] = Σ_{h,w} f1[b,i,h,w] f2[b,j,h,w] / (h w), by loops over positions."""
    b, c1, h, w = f1.shape
    g = np.zeros((b, c1, f2.shape[1]))
    for y in range(h):
        for x in range(w):
            g += f1[:, :, y, x][:, :, None] * f2[:, :, y, x][:, None, :]
    return g / (h * w)


def numpy_max_pool2(x: np.ndarray) -> np.ndarray:
    b, c, h, w = x.shape
    return x.reshape(b, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def test_fsp_matrix_matches_numpy():
    rng = np.random.default_rng(0)
    f1, f2 = rng.normal(size=(3, 4, 5, 5)), rng.normal(size=(3, 6, 5, 5))
    np.testing.assert_allclose(fsp_matrix(torch.tensor(f1), torch.tensor(f2)).numpy(), numpy_fsp(f1, f2), rtol=1e-12)


def test_larger_map_is_max_pooled_like_the_reference():
    rng = np.random.default_rng(1)
    big, small = rng.normal(size=(2, 3, 8, 8)), rng.normal(size=(2, 5, 4, 4))
    expected = numpy_fsp(numpy_max_pool2(big), small)
    np.testing.assert_allclose(fsp_matrix(torch.tensor(big), torch.tensor(small)).numpy(), expected, rtol=1e-12)
    avg = big.reshape(2, 3, 4, 2, 4, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(
        fsp_matrix(torch.tensor(big), torch.tensor(small), pool="avg").numpy(), numpy_fsp(avg, small), rtol=1e-12
    )


def test_pooled_vector_counts_as_a_one_by_one_map():
    rng = np.random.default_rng(2)
    m, v = rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 5))
    expected = numpy_max_pool2(numpy_max_pool2(m)).reshape(2, 3)[:, :, None] * v[:, None, :]
    np.testing.assert_allclose(fsp_matrix(torch.tensor(m), torch.tensor(v)).numpy(), expected, rtol=1e-12)


def test_loss_matches_numpy_over_consecutive_pairs():
    rng = np.random.default_rng(3)
    s = [rng.normal(size=(4, 3, 4, 4)), rng.normal(size=(4, 5, 4, 4)), rng.normal(size=(4, 2, 4, 4))]
    t = [rng.normal(size=x.shape) for x in s]
    expected = sum(
        np.mean(np.sum((numpy_fsp(t[i], t[i + 1]) - numpy_fsp(s[i], s[i + 1])) ** 2, axis=(1, 2))) for i in range(2)
    )
    got = fsp_loss([torch.tensor(x) for x in s], [torch.tensor(x) for x in t])
    assert float(got) == pytest.approx(expected, rel=1e-12)


def test_invariances_and_zero():
    torch.manual_seed(0)
    s = [torch.randn(5, 3, 4, 4, dtype=torch.float64), torch.randn(5, 4, 2, 2, dtype=torch.float64)]
    t = [torch.randn(5, 3, 4, 4, dtype=torch.float64), torch.randn(5, 4, 2, 2, dtype=torch.float64)]
    assert float(fsp_loss(s, s)) == 0.0
    base = float(fsp_loss(s, t))
    perm = torch.randperm(5)
    assert float(fsp_loss([x[perm] for x in s], [x[perm] for x in t])) == pytest.approx(base, rel=1e-12)
    # the same spatial permutation of every map (after pooling sizes agree) leaves Gram matrices unchanged
    same = [torch.randn(5, 3, 4, 4, dtype=torch.float64), torch.randn(5, 4, 4, 4, dtype=torch.float64)]
    other = [torch.randn(5, 3, 4, 4, dtype=torch.float64), torch.randn(5, 4, 4, 4, dtype=torch.float64)]
    idx = torch.randperm(16)
    shuffled = [x.flatten(2)[:, :, idx].reshape(5, -1, 4, 4) for x in same]
    assert float(fsp_loss(shuffled, other)) == pytest.approx(float(fsp_loss(same, other)), rel=1e-12)


def test_gradcheck_and_no_teacher_gradient():
    torch.manual_seed(1)
    a = torch.randn(2, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    t = [torch.randn(2, 2, 2, 2, dtype=torch.float64, requires_grad=True), torch.randn(2, 3, 2, 2, dtype=torch.float64)]
    assert torch.autograd.gradcheck(lambda x, y: fsp_loss([x, y], t), (a, b))
    fsp_loss([a, b], t).backward()
    assert t[0].grad is None


def test_module_uses_all_sensing_points_and_attributes():
    torch.manual_seed(2)
    feats = [torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2), torch.randn(2, 6)]
    tfeats = [torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2), torch.randn(2, 6)]
    s, t = ModelOutputs(torch.zeros(2, 2), feats), ModelOutputs(torch.zeros(2, 2), tfeats)
    loss = build_loss("fsp", init_epochs=4, init_only=True)
    assert (loss.init_epochs, loss.init_only, loss.clip_to_task_gradient) == (4, True, False)
    assert float(loss(s, t, None)) == pytest.approx(float(fsp_loss(feats, tfeats)), rel=1e-6)
    assert float(FSP(layers=[0, 1])(s, t, None)) == pytest.approx(float(fsp_loss(feats[:2], tfeats[:2])), rel=1e-6)


def test_errors_name_the_layer():
    s = ModelOutputs(torch.zeros(2, 2), [torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2)])
    t = ModelOutputs(torch.zeros(2, 2), [torch.randn(2, 3, 4, 4), torch.randn(2, 10, 2, 2)])
    with pytest.raises(ValueError, match=r"layer 1 \('layer2'\): student has 5 channels but teacher has 10"):
        FSP(student_taps=["layer1", "layer2"])(s, t, None)
    with pytest.raises(ValueError, match="at least 2 layers"):
        FSP(layers=[0])(s, t, None)
    with pytest.raises(ValueError, match="as many student as teacher sensing points"):
        FSP()(s, ModelOutputs(t.logits, t.features[:1]), None)
    nan = ModelOutputs(s.logits, [torch.full((2, 3, 4, 4), float("nan")), s.features[1]])
    with pytest.raises(ValueError, match="layer 0: teacher features contains 96 non-finite"):
        FSP()(s, nan, None)
    with pytest.raises(ValueError, match=r"expected \(B, C\) or \(B, C, H, W\) features"):
        fsp_loss([torch.randn(2, 3, 4), torch.randn(2, 3)], [torch.randn(2, 3, 4), torch.randn(2, 3)])
    with pytest.raises(ValueError, match="student batch has 2 inputs, teacher batch has 3"):
        fsp_loss([torch.randn(2, 3), torch.randn(2, 3)], [torch.randn(3, 3), torch.randn(3, 3)])
    with pytest.raises(ValueError, match="pool"):
        FSP(pool="median")
