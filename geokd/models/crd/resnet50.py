"""The CRD benchmark's ``ResNet50`` for CIFAR (RepDistiller ``resnetv2.py``).

The ImageNet bottleneck ResNet (stages of 64, 128, 256, 512 planes, expansion 4, blocks
``(3, 4, 6, 3)`` for ResNet-50) with a CIFAR stem: one 3×3 stride-1 convolution and no
max-pool, so a 32×32 image reaches the last stage at 4×4. The benchmark uses it as the
teacher of MobileNetV2 and VGG-8.

Parameter names are the reference's (``layer1.0.shortcut.0``, ``linear``). Every ReLU is a
module, so the block's pre-activation is the tap ``"layerK.I.relu3:input"``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from geokd.models._common import GlobalAvgPool, check_positive_int
from geokd.models.batchnorm import BatchNorm2d
from geokd.models.crd._init import conv_fan_out_

__all__ = ["BottleneckResNet"]

EXPANSION = 4


class Bottleneck(nn.Module):
    """1×1 → BN → ReLU → 3×3 (stride) → BN → ReLU → 1×1 (×4) → BN → (+ shortcut) → ReLU."""

    def __init__(self, in_planes: int, planes: int, *, stride: int = 1):
        super().__init__()
        out_planes = EXPANSION * planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = BatchNorm2d(out_planes)
        self.relu3 = nn.ReLU()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                                          BatchNorm2d(out_planes))
        else:
            self.shortcut = nn.Sequential()   # the identity, without parameters, as the reference

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + self.shortcut(x))


class BottleneckResNet(nn.Module):
    """Bottleneck ResNet with a CIFAR stem (``num_blocks=(3, 4, 6, 3)``: the benchmark's ResNet50).

    Parameters
    ----------
    num_blocks : sequence of 4 int
        Bottleneck blocks per stage: ``(3, 4, 6, 3)`` ResNet-50, ``(3, 4, 23, 3)`` ResNet-101.
    num_classes : int
        Classes of the linear head.
    in_channels : int
        Input channels.

    Attributes
    ----------
    sensing_points : tuple of str
        ``("relu", "layer1", "layer2", "layer3", "layer4", "pool")``: the six features of
        the reference's ``forward(is_feat=True)``.

    Examples
    --------
    >>> import torch
    >>> net = BottleneckResNet(num_blocks=(1, 1, 1, 1), num_classes=10)
    >>> net(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 10])
    >>> net.layer4[0].conv3.out_channels
    2048
    """

    sensing_points = ("relu", "layer1", "layer2", "layer3", "layer4", "pool")

    def __init__(self, *, num_blocks: Sequence[int] = (3, 4, 6, 3), num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        num_blocks = tuple(num_blocks) if isinstance(num_blocks, Sequence) and not isinstance(num_blocks, str) \
            else num_blocks
        if not isinstance(num_blocks, tuple) or len(num_blocks) != 4:
            raise ValueError(f"BottleneckResNet: num_blocks must be 4 block counts, got {num_blocks!r}")
        for count in num_blocks:
            check_positive_int("BottleneckResNet block count", count)
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        self.num_blocks = num_blocks
        self.num_classes = num_classes
        self.in_channels = in_channels

        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = BatchNorm2d(64)
        self.relu = nn.ReLU()
        in_planes = 64
        stages = []
        for planes, count, stride in zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2)):
            blocks = []
            for index in range(count):
                blocks.append(Bottleneck(in_planes, planes, stride=stride if index == 0 else 1))
                in_planes = EXPANSION * planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = GlobalAvgPool()
        self.linear = nn.Linear(512 * EXPANSION, num_classes)
        conv_fan_out_(self)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(self.pool(out))

    def config(self) -> dict:
        """Keyword arguments that rebuild this architecture."""
        return {"num_blocks": list(self.num_blocks), "num_classes": self.num_classes, "in_channels": self.in_channels}
