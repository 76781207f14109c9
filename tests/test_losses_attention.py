"""Attention Transfer: numpy oracle, invariances, pooling policy, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geokd.losses import build_loss
from geokd.losses.attention import AttentionTransfer, attention_map, attention_transfer_loss
from geokd.models.outputs import ModelOutputs


def numpy_attention(a: np.ndarray) -> np.ndarray:
    """Per input: energy[h, w] = mean_c a[c, h, w]², flattened, divided by its L2 norm."""
    out = []
    for sample in a:
        energy = np.zeros(sample.shape[1:])
        for channel in sample:
            energy += channel**2
        energy = (energy / sample.shape[0]).ravel()
        out.append(energy / np.sqrt(np.sum(energy**2)))
    return np.array(out)


def numpy_at_loss(students, teachers, beta=1000.0) -> float:
    return beta * sum(np.mean((numpy_attention(s) - numpy_attention(t)) ** 2) for s, t in zip(students, teachers))


def _pair(seed=0, b=3):
    rng = np.random.default_rng(seed)
    s = [rng.normal(size=(b, 4, 6, 6)), rng.normal(size=(b, 5, 3, 3))]
    t = [rng.normal(size=(b, 7, 6, 6)), rng.normal(size=(b, 2, 3, 3))]
    return s, t


def test_attention_map_matches_numpy():
    s, _ = _pair()
    got = attention_map(torch.tensor(s[0]))
    np.testing.assert_allclose(got.numpy(), numpy_attention(s[0]), rtol=1e-12)
    assert torch.allclose(got.norm(dim=1), torch.ones(3, dtype=torch.float64))


def test_hand_computed_map():
    a = torch.zeros(1, 2, 1, 2)
    a[0, 0] = torch.tensor([[3.0, 0.0]])
    a[0, 1] = torch.tensor([[0.0, 4.0]])
    # energy = (9/2, 16/2) → normalized (9, 16)/sqrt(337)
    expected = torch.tensor([[9.0, 16.0]]) / np.sqrt(337.0)
    torch.testing.assert_close(attention_map(a), expected)


def test_loss_matches_numpy_and_channels_may_differ():
    s, t = _pair()
    got = attention_transfer_loss([torch.tensor(x) for x in s], [torch.tensor(x) for x in t])
    assert float(got) == pytest.approx(numpy_at_loss(s, t), rel=1e-12)


def test_invariances():
    s, t = _pair(1, b=5)
    s, t = [torch.tensor(x) for x in s], [torch.tensor(x) for x in t]
    base = float(attention_transfer_loss(s, t))
    # scaling a map (even by a negative number) leaves its attention unchanged
    scaled = [-3.5 * s[0], 0.01 * s[1]]
    assert float(attention_transfer_loss(scaled, t)) == pytest.approx(base, rel=1e-10)
    # permuting channels leaves the channel mean unchanged
    perm_c = [s[0][:, torch.randperm(4)], s[1][:, torch.randperm(5)]]
    assert float(attention_transfer_loss(perm_c, t)) == pytest.approx(base, rel=1e-10)
    # permuting the batch (both sides together) leaves the mean unchanged
    perm_b = torch.randperm(5)
    assert float(attention_transfer_loss([x[perm_b] for x in s], [x[perm_b] for x in t])) == pytest.approx(base, rel=1e-10)
    assert float(attention_transfer_loss(s, s)) == 0.0


def test_beta_is_linear():
    s, t = _pair(2)
    s, t = [torch.tensor(x) for x in s], [torch.tensor(x) for x in t]
    assert float(attention_transfer_loss(s, t, beta=500.0)) == pytest.approx(
        float(attention_transfer_loss(s, t)) / 2, rel=1e-12
    )


def test_gradcheck():
    torch.manual_seed(0)
    s = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: attention_transfer_loss([x], [t]), (s,))


def test_spatial_mismatch_is_an_error_naming_the_layer():
    loss = AttentionTransfer(student_taps=("stage1", "stage2"))
    s = ModelOutputs(torch.zeros(2, 3), [torch.rand(2, 3, 8, 8), torch.rand(2, 3, 4, 4)])
    t = ModelOutputs(torch.zeros(2, 3), [torch.rand(2, 3, 8, 8), torch.rand(2, 3, 2, 2)])
    with pytest.raises(ValueError, match=r"layer 1 \('stage2'\): student map is \(4, 4\) but teacher map is \(2, 2\)"):
        loss(s, t, None)


def test_resize_pool_equals_pooling_first():
    torch.manual_seed(1)
    s, t = torch.rand(2, 3, 8, 8, dtype=torch.float64), torch.rand(2, 5, 4, 4, dtype=torch.float64)
    got = attention_transfer_loss([s], [t], resize="pool")
    expected = attention_transfer_loss([F.avg_pool2d(s, 2)], [t])
    assert float(got) == pytest.approx(float(expected), rel=1e-12)
    got_t = attention_transfer_loss([t], [s], resize="pool")  # the teacher may be the larger one
    assert float(got_t) == pytest.approx(float(expected), rel=1e-12)


def test_module_refuses_a_pooled_vector_instead_of_dropping_it_and_selects_layers():
    # The WRN's default sensing points end with the pooled vector: comparing only the maps
    # silently distilled one stage fewer than the paper's every-stage recipe.
    torch.manual_seed(2)
    maps = [torch.rand(2, 3, 4, 4), torch.rand(2, 6)]
    tmaps = [torch.rand(2, 5, 4, 4), torch.rand(2, 9)]
    s, t = ModelOutputs(torch.zeros(2, 3), maps), ModelOutputs(torch.zeros(2, 3), tmaps)
    with pytest.raises(ValueError, match=r"attention: layer 1 \('pool'\) is a pooled \(B, C\) vector of shape \(2, 6\)"
                                         r".*tap the stage outputs before pooling.*or choose the maps with layers=\[0\]"):
        AttentionTransfer(student_taps=("layer1", "pool"))(s, t, None)
    chosen = AttentionTransfer(layers=[0])
    assert float(chosen(s, t, None)) == pytest.approx(float(attention_transfer_loss(maps[:1], tmaps[:1])))
    with pytest.raises(ValueError, match=r"layer 1: expected a \(B, C, H, W\) student feature map, got \(2, 6\)"):
        AttentionTransfer(layers=[0, 1])(s, t, None)


def test_default_compares_every_map():
    torch.manual_seed(3)
    maps = [torch.rand(2, 3, 8, 8), torch.rand(2, 4, 4, 4), torch.rand(2, 6, 2, 2)]
    tmaps = [torch.rand(2, 5, 8, 8), torch.rand(2, 7, 4, 4), torch.rand(2, 9, 2, 2)]
    s, t = ModelOutputs(torch.zeros(2, 3), maps), ModelOutputs(torch.zeros(2, 3), tmaps)
    got = build_loss("attention")(s, t, None)
    want = numpy_at_loss([m.double().numpy() for m in maps], [m.double().numpy() for m in tmaps])
    assert float(got) == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="layer index 5 is out of range for 3 sensing points"):
        AttentionTransfer(layers=[5])(s, t, None)


@pytest.mark.parametrize(
    "s_feats, t_feats, match",
    [
        ([torch.rand(2, 3, 4, 4)], [torch.rand(3, 3, 4, 4)], "student batch has 2 inputs, teacher batch has 3"),
        ([torch.rand(2, 3, 4, 4)], [], "as many student as teacher sensing points"),
        ([torch.full((2, 3, 4, 4), float("nan"))], [torch.rand(2, 3, 4, 4)], "student features contains 96 non-finite"),
        ([torch.rand(2, 6)], [torch.rand(2, 6)], r"layer 0 is a pooled \(B, C\) vector .*for a WRN\)$"),
    ],
)
def test_bad_features(s_feats, t_feats, match):
    s = ModelOutputs(torch.zeros(2, 3), s_feats)
    t = ModelOutputs(torch.zeros(t_feats[0].shape[0] if t_feats else 2, 3), t_feats)
    if t.logits.shape[0] != 2:
        t = ModelOutputs(torch.zeros(2, 3), t_feats)
    with pytest.raises(ValueError, match=match):
        AttentionTransfer()(s, t, None)


@pytest.mark.parametrize("kwargs, match", [({"beta": -1}, "beta"), ({"p": 0}, "p"), ({"resize": "crop"}, "resize")])
def test_bad_hyper_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AttentionTransfer(**kwargs)
