"""geokd.models: architectures, parameter names and counts, registry round trips."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geokd.models import (
    MLP,
    CifarResNet,
    SmallCNN,
    WideResNet,
    available_models,
    build_model,
    model_config,
)


def test_wrn_parameter_counts_match_the_released_networks():
    # README of the release: teacher 369,690 parameters, student 94,154.
    teacher = build_model("wrn", depth=28, widen_factor=1, num_classes=10)
    student = build_model("wrn", depth=28, widen_factor=0.5, num_classes=10)
    assert sum(p.numel() for p in teacher.parameters()) == 369_690
    assert sum(p.numel() for p in student.parameters()) == 94_154


def _functional_wrn(state, x, *, depth):
    """Independent re-statement of the released forward pass with torch.nn.functional."""

    def bn(h, prefix):
        return F.batch_norm(h, state[prefix + ".running_mean"], state[prefix + ".running_var"],
                            state[prefix + ".weight"], state[prefix + ".bias"], False, 0.0, 1e-5)

    h = F.relu(bn(F.conv2d(x, state["conv1.weight"], padding=1), "bn"))
    for stage, first_stride in ((1, 1), (2, 2), (3, 2)):
        for block in range((depth - 4) // 6):
            p = f"layer{stage}.{block}"
            s = first_stride if block == 0 else 1
            out = F.relu(bn(F.conv2d(h, state[p + ".conv1.weight"], stride=s, padding=1), p + ".bn1"))
            out = bn(F.conv2d(out, state[p + ".conv2.weight"], padding=1), p + ".bn2")
            if p + ".shortcut.0.weight" in state:
                short = bn(F.conv2d(h, state[p + ".shortcut.0.weight"], stride=s), p + ".shortcut.1")
            else:
                short = h
            h = F.relu(out + short)
    pooled = F.avg_pool2d(h, 8).flatten(1)
    return F.linear(pooled, state["linear.weight"], state["linear.bias"]), pooled


@pytest.mark.parametrize("widen", [1.0, 0.5])
def test_wrn_forward_matches_a_functional_restatement(widen):
    torch.manual_seed(0)
    net = WideResNet(depth=16, widen_factor=widen, num_classes=7)
    # Non-trivial BN statistics so eval-mode BN is not the identity.
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    net.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected, pooled = _functional_wrn(net.state_dict(), x, depth=16)
        torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)
        h = net.layer3(net.layer2(net.layer1(net.relu(net.bn(net.conv1(x))))))
        torch.testing.assert_close(net.pool(h), F.avg_pool2d(h, 8).flatten(1), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(net.pool(h), pooled, rtol=1e-5, atol=1e-5)


def test_wrn_stage_widths_and_shortcuts():
    net = WideResNet(depth=28, widen_factor=0.5)
    assert net.conv1.out_channels == 16  # the stem stays at 16 channels
    assert [net.layer1[0].conv1.out_channels, net.layer2[0].conv1.out_channels, net.layer3[0].conv1.out_channels] == [8, 16, 32]
    assert len(net.layer1) == 4
    assert len(net.layer1[0].shortcut) == 2 and len(net.layer1[1].shortcut) == 0
    assert len(WideResNet(depth=28, widen_factor=1).layer1[0].shortcut) == 0  # 16 → 16: identity


def test_every_relu_is_its_own_module_and_runs_once():
    for net in (WideResNet(depth=16, widen_factor=0.5), CifarResNet(depth=8), SmallCNN(), MLP(in_features=64, hidden_sizes=(8, 8))):
        relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]
        assert len(relus) == len({id(m) for m in relus})
        calls = {id(m): 0 for m in relus}
        handles = [m.register_forward_hook(lambda mod, a, o: calls.__setitem__(id(mod), calls[id(mod)] + 1)) for m in relus]
        x = torch.randn(2, 64) if isinstance(net, MLP) else torch.randn(2, 3 if not isinstance(net, SmallCNN) else 1, 16, 16)
        net.eval()(x)
        for h in handles:
            h.remove()
        assert set(calls.values()) == {1}
    # WRN-16: stem + 2 per block × 2 blocks × 3 stages.
    assert sum(isinstance(m, nn.ReLU) for m in WideResNet(depth=16).modules()) == 1 + 2 * 2 * 3


def test_one_channel_8x8_digits():
    net = build_model("wrn", depth=10, widen_factor=0.5, num_classes=10, in_channels=1)
    assert net(torch.randn(4, 1, 8, 8)).shape == (4, 10)
    assert build_model("small_cnn", in_channels=1)(torch.randn(4, 1, 8, 8)).shape == (4, 10)
    assert build_model("small_cnn", in_channels=1)(torch.randn(4, 1, 28, 28)).shape == (4, 10)
    assert build_model("mlp", in_features=64, hidden_sizes=[50])(torch.randn(4, 1, 8, 8)).shape == (4, 10)


@pytest.mark.parametrize("depth", [8, 14, 20, 32, 56])
def test_cifar_resnet_depth_counts_weighted_layers(depth):
    net = build_model(f"resnet{depth}")
    convs3 = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert len(convs3) + len(linears) == depth
    with torch.no_grad():
        assert net(torch.randn(1, 3, 8, 8)).shape == (1, 10)


def test_registry_round_trips_every_model():
    kwargs = {"mlp": {"in_features": 64, "hidden_sizes": (16, 8)}, "small_cnn": {"widths": (4, 8, 8)}}
    for name in available_models():
        net = build_model(name, **kwargs.get(name, {}))
        config = model_config(net)
        again = build_model(**config)
        assert type(again) is type(net)
        assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
        assert model_config(again) == config
        assert isinstance(net.sensing_points, tuple) and net.sensing_points


def test_registry_errors_are_clear():
    with pytest.raises(ValueError, match=r"unknown model 'wrm'.*did you mean 'wrn'"):
        build_model("wrm")
    with pytest.raises(ValueError, match=r"fixes depth=20; got depth=32"):
        build_model("resnet20", depth=32)
    with pytest.raises(ValueError, match="unexpected keyword"):
        build_model("wrn", width=3)
    with pytest.raises(ValueError, match="not a geokd model"):
        model_config(nn.Linear(2, 2))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"depth": 27}, "6\\*n \\+ 4"),
        ({"widen_factor": 0}, "positive number"),
        ({"widen_factor": 0.01}, "0 channels"),
        ({"num_classes": 0}, "num_classes must be a positive integer, got 0"),
        ({"in_channels": 2.0}, "in_channels must be a positive integer"),
    ],
)
def test_wrn_rejects_bad_hyper_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WideResNet(**kwargs)


def test_small_models_reject_wrong_inputs():
    with pytest.raises(ValueError, match="expected inputs with 64 features, got 784"):
        MLP(in_features=64, hidden_sizes=(4,))(torch.randn(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"expected a \(B, 1, H, W\) batch, got shape \(2, 3, 8, 8\)"):
        SmallCNN(in_channels=1)(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="hidden_sizes"):
        MLP(in_features=4, hidden_sizes=())
    with pytest.raises(ValueError, match="depth must be 6\\*n \\+ 2"):
        CifarResNet(depth=21)
