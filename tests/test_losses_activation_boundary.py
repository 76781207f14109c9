"""Activation Boundary: hinge oracle, connector + stage weights, setup, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geokd.losses import build_loss
from geokd.losses.activation_boundary import ActivationBoundary, boundary_hinge, connector, stage_weights
from geokd.models.outputs import ModelOutputs


def numpy_alternative_l2(s: np.ndarray, t: np.ndarray, margin: float) -> float:
    """The authors' piecewise form: (s+μ)² where s > −μ and t ≤ 0; (s−μ)² where s ≤ μ and t > 0; summed."""
    total = 0.0
    for a, b in zip(s.ravel(), t.ravel()):
        if b <= 0 and a > -margin:
            total += (a + margin) ** 2
        elif b > 0 and a <= margin:
            total += (a - margin) ** 2
    return total


@pytest.mark.parametrize("margin", [1.0, 0.5, 0.0])
def test_hinge_matches_piecewise_reference(margin):
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(4, 3, 5, 5)) * 2, rng.normal(size=(4, 3, 5, 5))
    got = boundary_hinge(torch.tensor(s), torch.tensor(t), margin=margin)
    assert float(got) == pytest.approx(numpy_alternative_l2(s, t, margin) / 4, rel=1e-12)


def test_hinge_zero_when_student_clears_the_margin():
    t = torch.tensor([[2.0, -0.5, 0.0, 3.0]])
    s = torch.where(t > 0, 1.5, -1.5)
    assert float(boundary_hinge(s, t)) == 0.0


def test_stage_weights():
    assert stage_weights(1) == [1.0]
    assert stage_weights(3) == [0.25, 0.5, 1.0]
    assert stage_weights(4) == [0.125, 0.25, 0.5, 1.0]


def test_full_term_matches_manual_computation():
    torch.manual_seed(0)
    s_feats = [torch.randn(3, 2, 6, 6), torch.randn(3, 4, 3, 3), torch.randn(3, 5, 2, 2), torch.randn(3, 7)]
    t_feats = [torch.randn(3, 3, 6, 6), torch.randn(3, 6, 3, 3), torch.randn(3, 8, 2, 2), torch.randn(3, 9)]
    s, t = ModelOutputs(torch.zeros(3, 2), s_feats), ModelOutputs(torch.zeros(3, 2), t_feats)
    loss = build_loss("activation_boundary")
    loss.setup(s, t)
    assert len(loss.connectors) == 3  # the pooled vector is not a map
    loss.double()
    loss.train()
    expected = 0.0
    for w, link, sf, tf in zip([0.25, 0.5, 1.0], loss.connectors, s_feats, t_feats):
        conv, bn = link
        y = F.conv2d(sf.double(), conv.weight)
        # training-mode batch norm: batch statistics, biased variance
        mean = y.mean(dim=(0, 2, 3), keepdim=True)
        var = y.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        y = (y - mean) / torch.sqrt(var + bn.eps) * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
        expected += w * numpy_alternative_l2(y.detach().numpy(), tf.numpy(), 1.0) / 3
    got = loss(ModelOutputs(s.logits, [f.double() for f in s_feats]), ModelOutputs(t.logits, [f.double() for f in t_feats]), None)
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_connector_shape_and_init():
    link = connector(4, 16)
    assert link[0].kernel_size == (1, 1) and link[0].bias is None
    assert isinstance(link[1], torch.nn.BatchNorm2d) and link[1].num_features == 16
    # He-normal with fan-out: std sqrt(2 / 16) over 64 weights
    assert 0.15 < link[0].weight.std().item() < 0.55


def test_connectors_train_and_teacher_gets_no_gradient():
    torch.manual_seed(1)
    s = ModelOutputs(torch.zeros(4, 2), [torch.randn(4, 3, 4, 4, requires_grad=True)])
    t = ModelOutputs(torch.zeros(4, 2), [torch.randn(4, 5, 4, 4, requires_grad=True)])
    loss = ActivationBoundary.from_outputs(s, t)
    loss(s, t, None).backward()
    assert loss.connectors[0][0].weight.grad is not None and s.features[0].grad is not None
    assert t.features[0].grad is None
    assert len(list(loss.parameters())) == 3  # conv weight, BN weight and bias


def test_gradcheck_hinge():
    torch.manual_seed(2)
    s = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: boundary_hinge(x, t), (s,))


def test_explicit_channels_and_setup_reuse():
    loss = ActivationBoundary(student_channels=[3, 4], teacher_channels=[6, 8], init_epochs=5, init_only=True,
                              student_taps=["a.relu:input", "b.relu:input"], teacher_taps=["c.relu:input", "d.relu:input"])
    assert (loss.init_epochs, loss.init_only, loss.teacher_taps) == (5, True, ("c.relu:input", "d.relu:input"))
    s = ModelOutputs(torch.zeros(2, 2), [torch.randn(2, 3, 4, 4), torch.randn(2, 4, 2, 2)])
    t = ModelOutputs(torch.zeros(2, 2), [torch.randn(2, 6, 4, 4), torch.randn(2, 8, 2, 2)])
    before = loss.connectors
    loss.setup(s, t)
    assert loss.connectors is before
    assert loss(s, t, None).item() > 0


def test_errors_name_the_layer():
    s = ModelOutputs(torch.zeros(2, 2), [torch.randn(2, 3, 4, 4), torch.randn(2, 4, 2, 2)])
    t = ModelOutputs(torch.zeros(2, 2), [torch.randn(2, 6, 4, 4), torch.randn(2, 8, 1, 1)])
    with pytest.raises(ValueError, match="connectors are not built yet"):
        ActivationBoundary()(s, t, None)
    loss = ActivationBoundary(student_taps=["x:input", "y:input"])
    loss.setup(s, t)
    with pytest.raises(ValueError, match=r"layer 1 \('y:input'\): student response is \(2, 2\) but teacher response is \(1, 1\)"):
        loss(s, t, None)
    wide = ModelOutputs(t.logits, [torch.randn(2, 7, 4, 4), torch.randn(2, 8, 2, 2)])
    good = ActivationBoundary(student_channels=[3, 4], teacher_channels=[6, 8])
    with pytest.raises(ValueError, match="layer 0: connector maps 3 -> 6 channels but the student has 3 and the teacher 7"):
        good(s, wide, None)
    with pytest.raises(ValueError, match="built 2 connectors but 1 layers are compared"):
        ActivationBoundary(student_channels=[3, 4], teacher_channels=[6, 8], layers=[0])(s, wide, None)
    inf = ModelOutputs(s.logits, [s.features[0], torch.full((2, 4, 2, 2), float("inf"))])
    t_ok = ModelOutputs(t.logits, [t.features[0], torch.randn(2, 8, 2, 2)])
    with pytest.raises(ValueError, match="layer 1: student features contains 32 non-finite"):
        good(inf, t_ok, None)
    with pytest.raises(ValueError, match="give both student_channels and teacher_channels"):
        ActivationBoundary(teacher_channels=[3])
    with pytest.raises(ValueError, match="one student and one teacher channel count per compared layer"):
        ActivationBoundary(student_channels=[3], teacher_channels=[3, 4])
    with pytest.raises(ValueError, match="margin"):
        ActivationBoundary(margin=-1)
