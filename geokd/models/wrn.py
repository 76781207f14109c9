"""The wide ResNet of the GKD paper, with the released checkpoints' parameter names.

The released networks (``cadurosar/graph_kd``) call it ``PreActWideResNet`` but the block
is post-activation: conv → BN → ReLU → conv → BN → add shortcut → ReLU. Parameter names
here match the released state dicts exactly (``conv1``, ``bn``, ``layer1.0.conv1``…,
``layer1.0.shortcut.0``, ``linear``) so their weights load strictly.

Every ReLU is its own ``nn.ReLU`` module (``relu``, ``layerK.i.relu1``, ``layerK.i.relu2``)
so that pre-activation responses can be tapped as ``"layer1.0.relu2:input"``; the final
global average pooling is the parameter-free module ``pool`` so pooled features can be
tapped by name.
"""

from __future__ import annotations

from torch import Tensor, nn

from geokd.models._common import GlobalAvgPool, check_positive_int
from geokd.models.batchnorm import BatchNorm2d


class WideBasicBlock(nn.Module):
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
            # An empty Sequential is the identity and adds no parameters, as in the release.
            self.shortcut = nn.Sequential()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class WideResNet(nn.Module):
    """Wide ResNet WRN-``depth``-``widen_factor`` as released with the GKD paper.

    Parameters
    ----------
    depth : int
        Total depth, ``6·n + 4`` with ``n`` blocks per stage (28 → 4 blocks).
    widen_factor : float
        Width multiplier ``w``; stage widths are ``int(16·w), int(32·w), int(64·w)``
        (the stem stays at 16 channels). ``w = 0.5`` is the paper's student.
    num_classes : int
        Number of classes of the linear head.
    in_channels : int
        Input channels (3 for CIFAR, 1 for grey-scale digits).

    Attributes
    ----------
    sensing_points : tuple of str
        ``("layer1", "layer2", "pool")``: the outputs of the first two stages and the
        pooled, flattened third stage, the three points the paper distils.

    Examples
    --------
    >>> import torch
    >>> net = WideResNet(depth=16, widen_factor=0.5, num_classes=10)
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    >>> net.sensing_points
    ('layer1', 'layer2', 'pool')
    """

    sensing_points = ("layer1", "layer2", "pool")

    def __init__(self, *, depth: int = 28, widen_factor: float = 1.0, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        check_positive_int("depth", depth)
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet: depth must be 6*n + 4 with n >= 1 (10, 16, 22, 28, 40…), got {depth}")
        if not isinstance(widen_factor, (int, float)) or isinstance(widen_factor, bool) or widen_factor <= 0:
            raise ValueError(f"WideResNet: widen_factor must be a positive number, got {widen_factor!r}")
        if int(16 * widen_factor) < 1:
            raise ValueError(f"WideResNet: widen_factor {widen_factor} gives a first stage of 0 channels")
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        self.depth = depth
        self.widen_factor = float(widen_factor)
        self.num_classes = num_classes
        self.in_channels = in_channels

        blocks_per_stage = (depth - 4) // 6
        widths = (int(16 * widen_factor), int(32 * widen_factor), int(64 * widen_factor))
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn = BatchNorm2d(16)
        self.relu = nn.ReLU()
        in_planes = 16
        stages = []
        for width, stride in zip(widths, (1, 2, 2)):
            blocks = []
            for index in range(blocks_per_stage):
                blocks.append(WideBasicBlock(in_planes, width, stride=stride if index == 0 else 1))
                in_planes = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = GlobalAvgPool()
        self.linear = nn.Linear(widths[2], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(self.pool(out))

    def config(self) -> dict:
        """Keyword arguments that rebuild this architecture."""
        return {
            "depth": self.depth,
            "widen_factor": self.widen_factor,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
        }
