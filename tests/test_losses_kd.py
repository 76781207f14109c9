"""Hinton KD: float64 oracle, known gradient, invariances and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geokd.losses import build_loss
from geokd.losses.kd import HintonKD, kd_loss
from geokd.models.outputs import ModelOutputs


def numpy_kd(zs: np.ndarray, zt: np.ndarray, t: float) -> float:
    """T² · mean over inputs of Σ_c p_T log(p_T / p_S), written with explicit loops."""
    total = 0.0
    for row_s, row_t in zip(zs, zt):
        ps = np.exp(row_s / t - np.max(row_s / t))
        ps /= ps.sum()
        pt = np.exp(row_t / t - np.max(row_t / t))
        pt /= pt.sum()
        total += sum(a * np.log(a / b) for a, b in zip(pt, ps))
    return t * t * total / len(zs)


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_matches_float64_reference(temperature):
    rng = np.random.default_rng(0)
    zs, zt = rng.normal(size=(6, 5)) * 3, rng.normal(size=(6, 5)) * 3
    got = kd_loss(torch.tensor(zs), torch.tensor(zt), temperature=temperature)
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(numpy_kd(zs, zt, temperature), rel=1e-12)


def test_hand_computed_two_classes():
    # p_S = (1/2, 1/2), p_T = softmax(1, 0) = (e/(e+1), 1/(e+1)); T = 4 so T² = 16.
    a = np.e / (np.e + 1)
    expected = 16 * (a * np.log(2 * a) + (1 - a) * np.log(2 * (1 - a)))
    got = kd_loss(torch.zeros(1, 2, dtype=torch.float64), torch.tensor([[4.0, 0.0]], dtype=torch.float64))
    assert float(got) == pytest.approx(expected, rel=1e-12)


def test_gradient_is_t_times_probability_gap():
    # d/dz_S [T² KL(p_T || p_S)] = T (p_S − p_T) / B: the classic KD gradient.
    torch.manual_seed(0)
    zs = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(4, 7, dtype=torch.float64)
    t = 3.0
    kd_loss(zs, zt, temperature=t).backward()
    expected = t * (torch.softmax(zs.detach() / t, 1) - torch.softmax(zt / t, 1)) / 4
    torch.testing.assert_close(zs.grad, expected, rtol=1e-10, atol=1e-12)


def test_gradcheck():
    torch.manual_seed(1)
    zs = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(3, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: kd_loss(z, zt, temperature=2.0), (zs,))


def test_zero_for_equal_logits_and_row_shifts():
    torch.manual_seed(2)
    z = torch.randn(5, 3, dtype=torch.float64)
    assert float(kd_loss(z, z)) == 0.0
    shifted = z + torch.randn(5, 1, dtype=torch.float64) * 10  # softmax ignores per-row shifts
    assert float(kd_loss(shifted, z)) == pytest.approx(0.0, abs=1e-12)


def test_batch_permutation_invariant_and_positive():
    torch.manual_seed(3)
    zs, zt = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 4, dtype=torch.float64)
    perm = torch.randperm(8)
    assert float(kd_loss(zs, zt)) > 0
    assert float(kd_loss(zs[perm], zt[perm])) == pytest.approx(float(kd_loss(zs, zt)), rel=1e-12)


def test_confident_teacher_stays_finite():
    zs = torch.zeros(2, 3)
    zt = torch.tensor([[1e4, -1e4, 0.0], [0.0, 0.0, 1e4]])
    assert torch.isfinite(kd_loss(zs, zt, temperature=1.0))


def test_teacher_gets_no_gradient():
    zs = torch.randn(2, 3, requires_grad=True)
    zt = torch.randn(2, 3, requires_grad=True)
    kd_loss(zs, zt).backward()
    assert zt.grad is None and zs.grad is not None


def test_registered_module_and_alpha_mapping():
    loss = build_loss("kd", temperature=4.0)
    assert isinstance(loss, HintonKD) and loss.init_epochs == 0 and loss.needs_teacher
    assert not loss.clip_to_task_gradient and loss.student_taps is None
    torch.manual_seed(4)
    zs, zt, y = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64), torch.arange(6) % 5
    s, t = ModelOutputs(zs, []), ModelOutputs(zt, [])
    # Hinton's objective, computed independently, equals (1-α)·CE + α·term (ce_weight = 1-α, weight = α).
    alpha = 0.9
    log_ps = np.log(np.exp(zs.numpy()) / np.exp(zs.numpy()).sum(1, keepdims=True))
    ce = -np.mean(log_ps[np.arange(6), y.numpy()])
    hinton = (1 - alpha) * ce + alpha * numpy_kd(zs.numpy(), zt.numpy(), 4.0)
    ours = (1 - alpha) * torch.nn.functional.cross_entropy(zs, y) + alpha * loss(s, t, y)
    assert float(ours) == pytest.approx(hinton, rel=1e-12)


@pytest.mark.parametrize(
    "student, teacher, match",
    [
        (torch.zeros(2, 3), torch.zeros(3, 3), "differ in shape"),
        (torch.zeros(2, 3), torch.zeros(2, 4), "differ in shape"),
        (torch.zeros(2, 3, 1), torch.zeros(2, 3, 1), r"shape \(B, num_classes\)"),
        (torch.tensor([[0.0, float("nan")]]), torch.zeros(1, 2), "student logits contains 1 non-finite"),
        (torch.zeros(1, 2), torch.tensor([[float("inf"), 0.0]]), "teacher logits contains 1 non-finite"),
    ],
)
def test_bad_logits(student, teacher, match):
    with pytest.raises(ValueError, match=match):
        kd_loss(student, teacher)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), "hot"])
def test_bad_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        HintonKD(temperature=temperature)


def test_module_bad_inputs():
    loss = HintonKD()
    s = ModelOutputs(torch.zeros(2, 3), [])
    with pytest.raises(ValueError, match="expected the teacher as ModelOutputs"):
        loss(s, torch.zeros(2, 3), None)
    with pytest.raises(ValueError, match="student batch has 2 inputs but teacher batch has 3"):
        loss(s, ModelOutputs(torch.zeros(3, 3), []), None)
    with pytest.raises(ValueError, match="expected 2 labels"):
        loss(s, s, torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError):
        HintonKD(4.0)  # hyper-parameters are keyword-only


@pytest.mark.parametrize(
    "name, clip",
    [("kd", False), ("fitnet", False), ("attention", False), ("activation_boundary", False), ("fsp", False), ("kdsvd", True)],
)
def test_every_family_is_registered_with_the_trainer_attributes(name, clip):
    from geokd.losses import available_losses, get_loss_class

    assert name in available_losses()
    loss = build_loss(name)
    assert isinstance(loss, torch.nn.Module) and isinstance(loss, get_loss_class(name))
    assert loss.clip_to_task_gradient is clip
    assert loss.init_epochs == 0 and loss.init_only is False and loss.needs_teacher is True
    assert loss.student_taps is None and loss.teacher_taps is None
