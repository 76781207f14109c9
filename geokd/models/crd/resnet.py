"""The CRD benchmark's CIFAR ResNets, as ``resnet8x4`` and ``resnet32x4`` (RepDistiller ``resnet.py``).

Depth ``6·n + 2``: a 3×3 stem, three stages of ``n`` basic blocks with strides 1, 2, 2,
a global average pool and a linear head. Unlike geokd's :class:`~geokd.models.CifarResNet`
the stem width is its own number: the "×4" networks have a 32-channel stem before stages
of 64, 128, 256 channels, so their first stage opens with a 1×1 projection (which a stem
of ``16·4`` would not need). With widths ``(16, 16, 32, 64)`` this class is the same
network as geokd's ``resnet20`` … ``resnet110``, which the registry keeps for those names.

Parameter names are the reference's (``conv1``, ``bn1``, ``layer1.0.downsample.0``,
``fc``), so the benchmark's released teachers load strictly. Every ReLU is a module: the
block's pre-activation (the reference's ``preact`` features) is the tap
``"layerK.I.relu2:input"``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from geokd.models._common import GlobalAvgPool, check_positive_int
from geokd.models.batchnorm import BatchNorm2d
from geokd.models.crd._init import conv_fan_out_

__all__ = ["CrdResNet"]


class BasicBlock(nn.Module):
    """conv3x3 → BN → ReLU → conv3x3 → BN → (+ shortcut) → ReLU (post-activation)."""

    def __init__(self, in_planes: int, planes: int, *, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        # The reference projects (1×1 conv + BN) whenever the shape changes, else adds the
        # identity; ``None`` keeps the identity out of the state dict, as there.
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                            BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + residual)


class CrdResNet(nn.Module):
    """CIFAR ResNet-``depth`` with a stem and three stages of the given widths.

    Parameters
    ----------
    depth : int
        ``6·n + 2`` (8, 14, 20, 32, 44, 56, 110): ``n`` basic blocks per stage.
    widths : sequence of 4 int
        Channels of the stem and of the three stages: ``(32, 64, 128, 256)`` for the
        benchmark's ``resnet8x4`` / ``resnet32x4``, ``(16, 16, 32, 64)`` for the plain ones.
    num_classes : int
        Classes of the linear head (100 for CIFAR-100, the benchmark's dataset).
    in_channels : int
        Input channels.

    Attributes
    ----------
    sensing_points : tuple of str
        ``("relu", "layer1", "layer2", "layer3", "pool")``: the five features of the
        reference's ``forward(is_feat=True)`` (stem, three stages, pooled pre-logits).

    Examples
    --------
    >>> import torch
    >>> net = CrdResNet(depth=8, widths=(32, 64, 128, 256))
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 100])
    >>> sum(p.numel() for p in net.parameters())    # RepDistiller's resnet8x4
    1233540
    """

    sensing_points = ("relu", "layer1", "layer2", "layer3", "pool")

    def __init__(self, *, depth: int = 20, widths: Sequence[int] = (16, 16, 32, 64), num_classes: int = 100,
                 in_channels: int = 3):
        super().__init__()
        check_positive_int("depth", depth)
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CrdResNet: depth must be 6*n + 2 with n >= 1 (8, 14, 20, 32, 56…), got {depth}")
        widths = tuple(widths) if isinstance(widths, Sequence) and not isinstance(widths, str) else widths
        if not isinstance(widths, tuple) or len(widths) != 4:
            raise ValueError(f"CrdResNet: widths must be 4 channel counts (stem, stage 1, 2, 3), got {widths!r}")
        for width in widths:
            check_positive_int("CrdResNet width", width)
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        self.depth = depth
        self.widths = widths
        self.num_classes = num_classes
        self.in_channels = in_channels

        blocks_per_stage = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        in_planes = widths[0]
        stages = []
        for planes, stride in zip(widths[1:], (1, 2, 2)):
            blocks = []
            for index in range(blocks_per_stage):
                blocks.append(BasicBlock(in_planes, planes, stride=stride if index == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = GlobalAvgPool()   # the reference's AvgPool2d(8) on the 8×8 maps of a CIFAR image
        self.fc = nn.Linear(widths[3], num_classes)
        conv_fan_out_(self)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(self.pool(out))

    def config(self) -> dict:
        """Keyword arguments that rebuild this architecture."""
        return {"depth": self.depth, "widths": list(self.widths), "num_classes": self.num_classes,
                "in_channels": self.in_channels}
