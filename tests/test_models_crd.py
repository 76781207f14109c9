"""The CRD benchmark's CIFAR-100 networks (geokd.models.crd) against RepDistiller's definitions."""

import pytest
import torch

from geokd.models import CifarResNet, build_model, forward_with_features, model_config
from geokd.models.crd import CRD_MODELS, CrdResNet
from geokd.models.layer_table import layer_table

# Parameter counts at num_classes=100 of RepDistiller's models (HobbitLong/RepDistiller,
# models/*.py at commit eedab9d, mobilenetv2.py at b13aecc). Computed independently of
# geokd's modules: conv/BN/linear sizes summed by hand from the reference definitions
# (k·k·in/groups·out per conv, 2·C per BN, in·out + out per linear). The rounded values
# agree with the "#Params" usually tabulated for the CRD benchmark (0.28M resnet20, 0.47M
# resnet32, 0.86M resnet56, 1.74M resnet110, 1.23M resnet8x4, 7.43M resnet32x4, 0.70M
# wrn_16_2, 0.57M wrn_40_1, 2.26M wrn_40_2, 3.96-3.97M vgg8, 9.46M vgg13, 0.81M
# MobileNetV2, 0.95M ShuffleV1, 1.36M ShuffleV2), recalled from the KD literature, not
# checked against a stored copy; ResNet50's 23.71M also appears in a CIFAR-100 model
# table of a public pytorch-models README (the same CIFAR-stem bottleneck ResNet-50).
REFERENCE_PARAMS = {
    "resnet8": 83_892,        # ResNet(8, [16, 16, 32, 64]); = geokd's CifarResNet, reused
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,   # ResNet(8, [32, 64, 128, 256])
    "resnet32x4": 7_433_860,  # ResNet(32, [32, 64, 128, 256])
    "ResNet50": 23_705_252,   # resnetv2.ResNet(Bottleneck, [3, 4, 6, 3])
    "wrn_16_1": 180_916,      # wrn.WideResNet(depth, widen_factor), pre-activation
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,        # vgg8_bn: cfg "S" with batch norm
    "vgg13": 9_462_180,       # vgg13_bn: cfg "B" with batch norm
    "mobilenetv2": 812_836,   # mobile_half = mobilenetv2_T_w(6, 0.5)
    "shufflenetv1": 949_258,  # ShuffleV1: out_planes (240, 480, 960), blocks (4, 8, 4), groups 3
    "shufflenetv2": 1_355_528,  # ShuffleV2: net_size 1
}

# The reference's spellings name the same networks.
ALIASES = {"mobile_half": "mobilenetv2", "ShuffleV1": "shufflenetv1", "ShuffleV2": "shufflenetv2",
           "resnet50": "ResNet50"}

# Per model: (sensing point, shape without the batch axis) on a 32×32 input, as the
# reference's forward(is_feat=True) returns its features.
SENSING = {
    "resnet8x4": [("relu", (32, 32, 32)), ("layer1", (64, 32, 32)), ("layer2", (128, 16, 16)),
                  ("layer3", (256, 8, 8)), ("pool", (256,))],
    "resnet32x4": [("relu", (32, 32, 32)), ("layer1", (64, 32, 32)), ("layer2", (128, 16, 16)),
                   ("layer3", (256, 8, 8)), ("pool", (256,))],
    "ResNet50": [("relu", (64, 32, 32)), ("layer1", (256, 32, 32)), ("layer2", (512, 16, 16)),
                 ("layer3", (1024, 8, 8)), ("layer4", (2048, 4, 4)), ("pool", (2048,))],
    "wrn_16_2": [("conv1", (16, 32, 32)), ("block1", (32, 32, 32)), ("block2", (64, 16, 16)),
                 ("block3", (128, 8, 8)), ("pool", (128,))],
    "wrn_40_2": [("conv1", (16, 32, 32)), ("block1", (32, 32, 32)), ("block2", (64, 16, 16)),
                 ("block3", (128, 8, 8)), ("pool", (128,))],
    "wrn_40_1": [("conv1", (16, 32, 32)), ("block1", (16, 32, 32)), ("block2", (32, 16, 16)),
                 ("block3", (64, 8, 8)), ("pool", (64,))],
    "vgg8": [("relu0", (64, 32, 32)), ("relu1", (128, 16, 16)), ("relu2", (256, 8, 8)),
             ("relu3", (512, 4, 4)), ("relu4", (512, 4, 4)), ("pool", (512,))],
    "vgg13": [("relu0", (64, 32, 32)), ("relu1", (128, 16, 16)), ("relu2", (256, 8, 8)),
              ("relu3", (512, 4, 4)), ("relu4", (512, 4, 4)), ("pool", (512,))],
    "mobilenetv2": [("conv1", (16, 16, 16)), ("blocks.1", (12, 16, 16)), ("blocks.2", (16, 8, 8)),
                    ("blocks.4", (48, 4, 4)), ("blocks.6", (160, 2, 2)), ("pool", (1280,))],
    "shufflenetv1": [("relu", (24, 32, 32)), ("layer1", (240, 16, 16)), ("layer2", (480, 8, 8)),
                     ("layer3", (960, 4, 4)), ("pool", (960,))],
    "shufflenetv2": [("relu1", (24, 32, 32)), ("layer1", (116, 16, 16)), ("layer2", (232, 8, 8)),
                     ("layer3", (464, 4, 4)), ("pool", (1024,))],
}

# Teacher → student pairs of the CRD table (same and different architecture families).
CRD_PAIRS = [
    ("resnet56", "resnet20"), ("resnet110", "resnet20"), ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"),
    ("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("vgg13", "vgg8"), ("vgg13", "mobilenetv2"),
    ("ResNet50", "mobilenetv2"), ("ResNet50", "vgg8"), ("resnet32x4", "shufflenetv1"),
    ("resnet32x4", "shufflenetv2"), ("wrn_40_2", "shufflenetv1"),
]


def _count(net) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_parameter_count_equals_the_reference(name):
    assert _count(build_model(name, num_classes=100)) == REFERENCE_PARAMS[name]


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_reference_spellings_build_the_same_network(alias):
    net = build_model(alias)   # num_classes defaults to the benchmark's 100
    assert _count(net) == REFERENCE_PARAMS[ALIASES[alias]]
    assert type(net) is type(build_model(ALIASES[alias]))


@pytest.mark.parametrize("name", sorted(SENSING))
def test_logits_and_sensing_point_shapes(name):
    torch.manual_seed(0)
    net = build_model(name, num_classes=100)
    assert net.num_classes == 100 == build_model(name).num_classes   # 100 is the default
    out = forward_with_features(net, torch.randn(2, 3, 32, 32))
    assert out.logits.shape == (2, 100)
    assert list(net.sensing_points) == [point for point, _ in SENSING[name]]
    assert [tuple(f.shape) for f in out.features] == [(2, *shape) for _, shape in SENSING[name]]
    head = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert out.features[-1].shape == (2, head.in_features)   # `pool` is the pre-logit feature


@pytest.mark.parametrize("name", ["resnet8x4", "wrn_40_1", "vgg8", "mobilenetv2", "shufflenetv1", "shufflenetv2"])
def test_the_layer_table_lists_the_sensing_points_as_tappable(name):
    # what `geokd layers` and the analysis read: every declared point runs once, with its shape
    rows = {row.name: row for row in layer_table(build_model(name), torch.zeros(1, 3, 32, 32))}
    for point, shape in SENSING[name]:
        assert rows[point].tappable and rows[point].output_shape == shape


def test_geokd_layers_prints_the_default_sensing_points(capsys):
    from geokd.cli import main

    assert main(["layers", "geokd:shufflenetv2"]) == 0
    assert "default sensing points: relu1 layer1 layer2 layer3 pool" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(CRD_MODELS))
def test_model_config_rebuilds_the_network(name):
    net = build_model(name, num_classes=7)
    config = model_config(net)
    again = build_model(**config)
    assert type(again) is type(net) and _count(again) == _count(net)
    assert config["num_classes"] == 7
    assert {k: tuple(v.shape) for k, v in again.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in net.state_dict().items()}


@pytest.mark.parametrize("name, keys", [
    # Spelled as in the reference, so its released checkpoints load with strict=True.
    ("resnet8x4", ["conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight", "layer3.0.bn2.bias",
                   "fc.weight"]),
    ("wrn_40_2", ["conv1.weight", "block1.layer.0.bn1.weight", "block1.layer.0.convShortcut.weight",
                  "block3.layer.5.conv2.weight", "bn1.weight", "fc.bias"]),
    ("vgg13", ["block0.0.weight", "block0.0.bias", "block0.1.weight", "block0.3.weight", "block0.4.running_var",
               "block4.4.weight", "classifier.weight"]),
    ("mobilenetv2", ["conv1.0.weight", "conv1.1.weight", "blocks.0.0.conv.0.weight", "blocks.6.0.conv.7.bias",
                     "conv2.0.weight", "classifier.0.weight"]),
    ("shufflenetv1", ["conv1.weight", "layer1.0.conv1.weight", "layer3.3.bn3.weight", "linear.weight"]),
    ("shufflenetv2", ["conv1.weight", "layer1.0.conv5.weight", "layer1.0.bn5.weight", "layer2.7.conv3.weight",
                      "conv2.weight", "bn2.weight", "linear.weight"]),
    ("ResNet50", ["layer1.0.shortcut.0.weight", "layer4.2.bn3.weight", "linear.weight"]),
])
def test_parameter_names_follow_the_reference(name, keys):
    state = build_model(name).state_dict()
    assert set(keys) <= set(state)
    assert not any(".relu" in key or "pool" in key for key in state)   # the added modules hold no state


def test_first_shufflenetv1_block_keeps_the_references_ungrouped_conv():
    net = build_model("shufflenetv1")
    assert net.layer1[0].conv1.groups == 1 and net.layer1[1].conv1.groups == 3 and net.layer2[0].conv1.groups == 3
    assert net.layer1[0].conv3.out_channels == 240 - 24   # the pooled input fills the rest


@pytest.mark.parametrize("depth", [8, 20, 56])
def test_benchmark_plain_resnets_are_geokds_cifar_resnets(depth):
    # Why "resnet20" & co. keep resolving to CifarResNet: with the plain widths, the CRD
    # class computes the same function from the same parameters (only two names differ).
    torch.manual_seed(depth)
    ours = CifarResNet(depth=depth, num_classes=100).eval()
    crd = CrdResNet(depth=depth, widths=(16, 16, 32, 64), num_classes=100).eval()
    renamed = {key.replace(".shortcut.", ".downsample.").replace("linear.", "fc."): value
               for key, value in ours.state_dict().items()}
    crd.load_state_dict(renamed, strict=True)
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(crd(x), ours(x))
    assert _count(crd) == REFERENCE_PARAMS[f"resnet{depth}"]


def test_every_pair_of_the_crd_table_builds_with_matching_sensing_points():
    for teacher, student in CRD_PAIRS:
        t, s = build_model(teacher, num_classes=100), build_model(student, num_classes=100)
        # GKD compares one graph per sensing point: the pair must declare as many.
        assert len(t.sensing_points) == len(s.sensing_points), (teacher, student)
        assert _count(t) > _count(s), (teacher, student)


@pytest.mark.parametrize("name, kwargs, message", [
    ("crd_resnet", {"depth": 10}, "6\\*n \\+ 2"),
    ("crd_resnet", {"widths": (16, 32, 64)}, "4 channel counts"),
    ("crd_wrn", {"depth": 18}, "6\\*n \\+ 4"),
    ("crd_wrn", {"widen_factor": 1.5}, "widen_factor"),
    ("crd_vgg", {"depth": 12}, "depth must be one of"),
    ("shufflenetv2", {"net_size": 0.75}, "net_size must be one of"),
    ("shufflenetv1", {"out_planes": (250, 480, 960)}, "does not split"),
    ("mobilenetv2", {"width_mult": 0}, "width_mult"),
    ("resnet32x4", {"depth": 8}, "fixes depth=32"),
])
def test_bad_hyper_parameters_are_refused(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model(name, **kwargs)


@pytest.mark.slow
def test_gkd_from_resnet32x4_to_shufflenetv2_on_real_cifar10_images():
    from geokd.data import load_dataset, normalize
    from geokd.losses import gkd_loss

    data = load_dataset("cifar10", split="test", download=False)
    x = normalize(data.images[:8], mean=data.mean, std=data.std)   # 8 images, 32×32 as they are
    torch.manual_seed(0)
    teacher = build_model("resnet32x4", num_classes=100).eval()
    student = build_model("shufflenetv2", num_classes=100).train()
    with torch.no_grad():
        t_feats = forward_with_features(teacher, x).features
    s_out = forward_with_features(student, x)
    loss = gkd_loss(s_out.features, t_feats, layer_names=list(student.sensing_points))
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    grads = {name: p.grad for name, p in student.named_parameters()}
    # Every parameter up to the pooled feature gets a finite gradient; the head is past it.
    for name, grad in grads.items():
        if name.startswith("linear."):
            assert grad is None
        else:
            assert grad is not None and torch.isfinite(grad).all(), name
    assert sum(float(g.abs().sum()) for g in grads.values() if g is not None) > 0
    assert all(p.grad is None for p in teacher.parameters())
