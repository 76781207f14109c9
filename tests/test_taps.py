"""geokd.models.taps: named activations of any module, hooks always removed."""

import pytest
import torch
import torchvision
from torch import nn

from geokd.models import build_model
from geokd.models.taps import FeatureTaps, forward_with_features


def _no_hooks_left(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.fixture(scope="module")
def wrn():
    torch.manual_seed(0)
    net = build_model("wrn", depth=10, widen_factor=0.5).eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
    return net


def test_features_equal_a_manual_forward(wrn):
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        out = forward_with_features(wrn, x)
        stem = wrn.relu(wrn.bn(wrn.conv1(x)))
        l1 = wrn.layer1(stem)
        l2 = wrn.layer2(l1)
        pooled = wrn.layer3(l2).mean(dim=(2, 3))
        block = wrn.layer1[0]
        pre = block.bn2(block.conv2(block.relu1(block.bn1(block.conv1(stem))))) + block.shortcut(stem)
        pre_tap = FeatureTaps(wrn, ["layer1.0.relu2:input"])(x).features[0]
    torch.testing.assert_close(out.features[0], l1)
    torch.testing.assert_close(out.features[1], l2)
    torch.testing.assert_close(out.features[2], pooled)
    torch.testing.assert_close(out.logits, wrn.linear(pooled))
    torch.testing.assert_close(pre_tap, pre)
    assert (pre_tap < 0).any() and torch.equal(torch.relu(pre_tap), block.relu2(pre))
    assert _no_hooks_left(wrn)


def test_batch_permutation_permutes_features(wrn):
    x = torch.randn(6, 3, 32, 32)
    perm = torch.randperm(6)
    with torch.no_grad():
        a = forward_with_features(wrn, x)
        b = forward_with_features(wrn, x[perm])
    for fa, fb in zip(a.features, b.features):
        torch.testing.assert_close(fa[perm], fb, rtol=1e-5, atol=1e-6)


def test_unknown_name_lists_close_names(wrn):
    with pytest.raises(ValueError, match=r"no module named 'layer1.0.relu3' in WideResNet; did you mean .*'layer1.0.relu1'"):
        FeatureTaps(wrn, ["layer1.0.relu3"])
    with pytest.raises(ValueError, match="only suffix understood is ':input'"):
        FeatureTaps(wrn, ["pool:output"])
    with pytest.raises(ValueError, match="sequence of module names"):
        FeatureTaps(wrn, "pool")
    with pytest.raises(ValueError, match="no sensing_points"):
        forward_with_features(nn.Sequential(nn.Linear(2, 2)), torch.randn(1, 2))


def test_autograd_flows_through_features(wrn):
    wrn.zero_grad()
    out = forward_with_features(wrn, torch.randn(2, 3, 32, 32))
    assert all(f.requires_grad for f in out.features)
    out.features[0].square().sum().backward()
    assert wrn.conv1.weight.grad is not None and wrn.conv1.weight.grad.abs().sum() > 0
    assert wrn.linear.weight.grad is None  # layer1 does not depend on the head
    with torch.no_grad():
        assert not any(f.requires_grad for f in forward_with_features(wrn, torch.randn(2, 3, 32, 32)).features)
    with torch.inference_mode():
        assert forward_with_features(wrn, torch.randn(2, 3, 32, 32)).features[2].shape == (2, 32)


def test_hooks_are_removed_when_the_forward_fails(wrn):
    with pytest.raises(RuntimeError):
        FeatureTaps(wrn, ["layer1", "pool"])(torch.randn(2, 5, 32, 32))  # wrong channel count
    assert _no_hooks_left(wrn)
    with FeatureTaps(wrn, ["layer2"]) as taps:
        taps(torch.randn(1, 3, 32, 32))
    assert _no_hooks_left(wrn)


class _Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.unused = nn.Linear(3, 3)

    def forward(self, x):
        return self.fc(self.fc(x))


def test_shared_and_unused_modules_are_errors():
    net = _Shared()
    with pytest.raises(ValueError, match="'fc': the module ran 2 times"):
        FeatureTaps(net, ["fc"])(torch.randn(2, 3))
    with pytest.raises(ValueError, match="'unused': the module did not run"):
        FeatureTaps(net, ["unused"])(torch.randn(2, 3))
    assert _no_hooks_left(net)


def test_any_torchvision_model_with_inplace_relu():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = FeatureTaps(net, ["relu:input", "layer1", "avgpool"])(x)
        bn1 = net.bn1(net.conv1(x))
        torch.testing.assert_close(out.features[0], bn1)  # captured before the in-place ReLU
        assert (out.features[0] < 0).any()
        stem = net.maxpool(torch.relu(bn1))
        torch.testing.assert_close(out.features[1], net.layer1(stem))
        assert out.features[2].shape == (2, 512, 1, 1) and out.logits.shape == (2, 5)
        # bn1's output is overwritten by the in-place ReLU: refuse rather than return it.
        with pytest.raises(ValueError, match="'bn1': its output was modified in place"):
            FeatureTaps(net, ["bn1"])(x)
    assert _no_hooks_left(net)


def test_inference_mode_with_inplace_relu_returns_the_value_before_overwrite():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        tapped = FeatureTaps(net, ["bn1"])(x).features[0]
        torch.testing.assert_close(tapped, net.bn1(net.conv1(x)))
        assert (tapped < 0).any()
