"""FitNet hints: numpy oracle of the regressed hint, regressor shapes, setup, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from geokd.losses import build_loss
from geokd.losses.fitnet import FitNet, fitnet_loss
from geokd.models.outputs import ModelOutputs


def numpy_valid_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cross-correlation without padding, by explicit loops: (B,Ci,H,W) * (Co,Ci,kh,kw)."""
    batch, _, h, wd = x.shape
    co, _, kh, kw = w.shape
    out = np.zeros((batch, co, h - kh + 1, wd - kw + 1))
    for n in range(batch):
        for o in range(co):
            for i in range(h - kh + 1):
                for j in range(wd - kw + 1):
                    out[n, o, i, j] = np.sum(x[n, :, i:i + kh, j:j + kw] * w[o]) + b[o]
    return out


def _outputs(seed=0, *, s_shape=(3, 4, 6, 6), t_shape=(3, 5, 4, 4), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    s = ModelOutputs(torch.zeros(s_shape[0], 2), [torch.randn(s_shape, generator=g, dtype=dtype)] * 3)
    t = ModelOutputs(torch.zeros(t_shape[0], 2), [torch.randn(t_shape, generator=g, dtype=dtype)] * 3)
    return s, t


def test_value_matches_numpy_convolution():
    s, t = _outputs()
    loss = FitNet.from_outputs(s, t)
    assert loss.regressor.kernel_size == (3, 3) and loss.regressor.weight.dtype == torch.float64
    w = loss.regressor.weight.detach().numpy()
    b = loss.regressor.bias.detach().numpy()
    regressed = numpy_valid_conv(s.features[1].numpy(), w, b)
    u = t.features[1].numpy()
    expected = 0.5 * np.sum((u - regressed) ** 2) / 3
    assert loss(s, t, None).item() == pytest.approx(expected, rel=1e-12)


def test_hand_computed_functional():
    regressed = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    hint = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    # ½ (0 + 4 + 9 + 16) / 2 inputs
    assert float(fitnet_loss(regressed, hint)) == pytest.approx(29 / 4)


def test_identity_regressor_on_equal_features_gives_zero():
    feats = [torch.randn(2, 3, 4, 4)]
    s = ModelOutputs(torch.zeros(2, 2), feats)
    loss = FitNet(student_channels=3, teacher_channels=3, hint_layer=0)
    with torch.no_grad():
        loss.regressor.weight.copy_(torch.eye(3)[:, :, None, None])
        loss.regressor.bias.zero_()
    assert loss(s, s, None).item() == 0.0


def test_setup_kernel_rule_and_middle_layer():
    s = ModelOutputs(torch.zeros(2, 2), [torch.rand(2, 4, 8, 8), torch.rand(2, 6, 7, 5), torch.rand(2, 3)])
    t = ModelOutputs(torch.zeros(2, 2), [torch.rand(2, 8, 8, 8), torch.rand(2, 9, 4, 4), torch.rand(2, 5)])
    loss = build_loss("fitnet")
    loss.setup(s, t)
    # middle sensing point: kernel n_S − n_T + 1 per axis
    assert loss.regressor.kernel_size == (4, 2) and loss.regressor.in_channels == 6 and loss.regressor.out_channels == 9
    assert loss(s, t, None).shape == ()
    pooled = FitNet.from_outputs(s, t, hint_layer=-1)
    assert isinstance(pooled.regressor, nn.Linear) and pooled.regressor.weight.shape == (5, 3)
    same = FitNet.from_outputs(s, t, hint_layer=0)
    assert same.regressor.kernel_size == (1, 1)


def test_setup_keeps_a_fitting_regressor_and_parameters_train():
    s, t = _outputs(dtype=torch.float32)
    loss = FitNet.from_outputs(s, t)
    before = loss.regressor
    loss.setup(s, t)
    assert loss.regressor is before
    assert {id(p) for p in loss.parameters()} == {id(loss.regressor.weight), id(loss.regressor.bias)}
    out = loss(s, t, None)
    out.backward()
    assert loss.regressor.weight.grad is not None


def test_explicit_channels_with_a_pooled_hint():
    s = ModelOutputs(torch.zeros(2, 2), [torch.rand(2, 3, dtype=torch.float64)])
    t = ModelOutputs(torch.zeros(2, 2), [torch.rand(2, 5, dtype=torch.float64)])
    loss = FitNet(student_channels=3, teacher_channels=5).double()
    w = loss.regressor.weight.detach()[:, :, 0, 0]
    expected = 0.5 * ((t.features[0] - (s.features[0] @ w.T + loss.regressor.bias.detach())) ** 2).sum() / 2
    assert loss(s, t, None).item() == pytest.approx(float(expected), rel=1e-12)


def test_gradcheck_through_regressor():
    torch.manual_seed(0)
    reg = nn.Conv2d(2, 3, 2).double()
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    u = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: fitnet_loss(reg(v), u), (x,))


def test_teacher_gets_no_gradient():
    s, t = _outputs(dtype=torch.float32)
    t.features[1].requires_grad_(True)
    FitNet.from_outputs(s, t)(s, t, None).backward()
    assert t.features[1].grad is None


def test_errors():
    s, t = _outputs(dtype=torch.float32)
    with pytest.raises(ValueError, match="regressor is not built yet"):
        FitNet()(s, t, None)
    with pytest.raises(ValueError, match="give both student_channels and teacher_channels"):
        FitNet(student_channels=3)
    with pytest.raises(ValueError, match="student map .* is smaller than the teacher hint"):
        FitNet.from_outputs(t, s)
    with pytest.raises(ValueError, match="hint_layer 3 is out of range for 3 sensing points"):
        FitNet.from_outputs(s, t, hint_layer=3)
    wrong = FitNet(student_channels=4, teacher_channels=5)  # 1x1 kernel but sizes 6 vs 4
    with pytest.raises(ValueError, match=r"layer 1: the regressor maps the student's \(4, 6, 6\) to \(5, 6, 6\)"):
        wrong(s, t, None)
    nan = ModelOutputs(s.logits, [x.clone() for x in s.features])
    nan.features[1][0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="layer 1: student features contains 1 non-finite"):
        FitNet.from_outputs(s, t)(nan, t, None)
    few = ModelOutputs(t.logits, t.features[:2])
    with pytest.raises(ValueError, match="same positive number of student and teacher sensing points, got 3 and 2"):
        FitNet.from_outputs(s, t)(s, few, None)
    short = ModelOutputs(torch.zeros(2, 2), [x[:2] for x in t.features])
    with pytest.raises(ValueError, match="student batch has 3 inputs but teacher batch has 2"):
        FitNet.from_outputs(s, t)(s, short, None)
    with pytest.raises(ValueError, match="init_only=True needs init_epochs > 0"):
        FitNet(init_only=True)
    with pytest.raises(ValueError, match="init_epochs"):
        FitNet(init_epochs=-1)


def test_stage_attributes():
    loss = FitNet(init_epochs=3, init_only=True, student_taps=["layer2"], teacher_taps=["layer2"])
    assert (loss.init_epochs, loss.init_only, loss.student_taps, loss.clip_to_task_gradient) == (3, True, ("layer2",), False)


def test_setup_builds_float32_parameters_from_half_precision_outputs():
    s, t = _outputs(dtype=torch.bfloat16)
    assert FitNet.from_outputs(s, t).regressor.weight.dtype == torch.float32
