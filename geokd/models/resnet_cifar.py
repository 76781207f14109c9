"""CIFAR ResNets (He et al., 2016): depth 6·n + 2 (8, 14, 20, 32, 44, 56, 110).

Three stages of ``n`` basic blocks with 16, 32, 64 channels (times ``width``), strides
1, 2, 2; the shortcut is a 1×1 conv + BN projection when the shape changes (option B),
identity otherwise. Every ReLU is its own module so pre-activations can be tapped.

These are also the plain ResNets of the CRD distillation benchmark (``resnet8`` …
``resnet110``, same layers and parameter counts as its reference code), and their sensing
points are that benchmark's feature list: the stem's output, each stage's output and the
pooled pre-logit vector (what its feature methods distil: FitNet the middle stage, AT and
FSP the maps, RKD the pooled vector).
"""

from __future__ import annotations

from torch import Tensor, nn

from geokd.models._common import GlobalAvgPool, check_positive_int
from geokd.models.batchnorm import BatchNorm2d


class BasicBlock(nn.Module):
    """conv3x3 → BN → ReLU → conv3x3 → BN → (+ shortcut) → ReLU."""

    def __init__(self, in_planes: int, planes: int, *, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                BatchNorm2d(planes),
            )
        else:
            self.shortcut = nn.Sequential()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-``depth`` for 32×32 inputs (any size ≥ 4 works: the head pools globally).

    Parameters
    ----------
    depth : int
        ``6·n + 2`` (8, 14, 20, 32, 44, 56, 110).
    num_classes : int
        Classes of the linear head.
    in_channels : int
        Input channels.
    width : int
        Channel multiplier of the stages (16·width, 32·width, 64·width).

    Attributes
    ----------
    sensing_points : tuple of str
        ``("relu", "layer1", "layer2", "layer3", "pool")``: the stem's output (its ReLU),
        the three stages' outputs and the pooled ``(B, 64·width)`` vector, the features of
        the CRD benchmark's ``forward(is_feat=True)``.

    Examples
    --------
    >>> import torch
    >>> net = CifarResNet(depth=8, num_classes=10)
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    >>> sum(p.numel() for p in net.parameters())
    78042
    >>> net.sensing_points
    ('relu', 'layer1', 'layer2', 'layer3', 'pool')
    """

    sensing_points = ("relu", "layer1", "layer2", "layer3", "pool")

    def __init__(self, *, depth: int = 20, num_classes: int = 10, in_channels: int = 3, width: int = 1):
        super().__init__()
        check_positive_int("depth", depth)
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CifarResNet: depth must be 6*n + 2 with n >= 1 (8, 14, 20, 32, 56…), got {depth}")
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        check_positive_int("width", width)
        self.depth = depth
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.width = width

        blocks_per_stage = (depth - 2) // 6
        widths = (16 * width, 32 * width, 64 * width)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        in_planes = widths[0]
        stages = []
        for planes, stride in zip(widths, (1, 2, 2)):
            blocks = []
            for index in range(blocks_per_stage):
                blocks.append(BasicBlock(in_planes, planes, stride=stride if index == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = GlobalAvgPool()
        self.linear = nn.Linear(widths[2], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(self.pool(out))

    def config(self) -> dict:
        """Keyword arguments that rebuild this architecture."""
        return {"depth": self.depth, "num_classes": self.num_classes, "in_channels": self.in_channels, "width": self.width}
