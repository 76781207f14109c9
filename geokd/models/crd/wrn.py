"""The CRD benchmark's wide ResNets ``wrn_16_1`` … ``wrn_40_2`` (RepDistiller ``wrn.py``).

These are *pre-activation* WRNs (Zagoruyko & Komodakis): each block runs
BN → ReLU → conv3x3 → BN → ReLU → conv3x3 and adds its shortcut without a ReLU after it;
a last BN → ReLU precedes the pooling. geokd's own :class:`~geokd.models.WideResNet`
(the GKD paper's) is post-activation, a different network, hence this class.

Two details of the reference are kept because they change the function computed:

- a block whose width changes pre-activates its input once and feeds *that* to both its
  first convolution and its 1×1 shortcut convolution (no BN on the shortcut);
- a block of equal widths adds the raw, not pre-activated, input.

Parameter names are the reference's (``block1.layer.0.convShortcut``, ``bn1``, ``fc``), so
the benchmark's released teachers load strictly.
"""

from __future__ import annotations

from torch import Tensor, nn

from geokd.models._common import GlobalAvgPool, check_positive_int
from geokd.models.batchnorm import BatchNorm2d
from geokd.models.crd._init import conv_fan_out_

__all__ = ["CrdWideResNet"]


class PreActBlock(nn.Module):
    """BN → ReLU → conv3x3 (stride) → BN → ReLU → [dropout] → conv3x3, plus the shortcut."""

    def __init__(self, in_planes: int, planes: int, *, stride: int, drop_rate: float):
        super().__init__()
        self.bn1 = BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        # Only a module when used, so the default network has no idle module to list or tap.
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else None
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == planes
        # The reference pairs "equal widths" with stride 1 (every stride-2 block widens).
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(activated)))
        if self.dropout is not None:
            out = self.dropout(out)
        out = self.conv2(out)
        shortcut = x if self.equal_in_out else self.convShortcut(activated)
        return shortcut + out


class NetworkBlock(nn.Module):
    """One stage: ``count`` pre-activation blocks in ``.layer`` (the reference's nesting)."""

    def __init__(self, count: int, in_planes: int, planes: int, *, stride: int, drop_rate: float):
        super().__init__()
        self.layer = nn.Sequential(*[
            PreActBlock(in_planes if index == 0 else planes, planes, stride=stride if index == 0 else 1,
                        drop_rate=drop_rate)
            for index in range(count)
        ])

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class CrdWideResNet(nn.Module):
    """Pre-activation WRN-``depth``-``widen_factor`` of the CRD benchmark.

    Parameters
    ----------
    depth : int
        ``6·n + 4`` (16, 22, 28, 40…): ``n`` blocks per stage.
    widen_factor : int
        Stage widths ``16·k, 32·k, 64·k``; the stem stays at 16 channels.
    drop_rate : float
        Dropout between a block's two convolutions (0 in the benchmark).
    num_classes : int
        Classes of the linear head.
    in_channels : int
        Input channels.

    Attributes
    ----------
    sensing_points : tuple of str
        ``("conv1", "block1", "block2", "block3", "pool")``: the five features of the
        reference's ``forward(is_feat=True)``. The stage outputs are sums before any BN;
        the reference's ``preact`` variant is their next BN: ``"block2.layer.0.bn1"``,
        ``"block3.layer.0.bn1"``, ``"bn1"``.

    Examples
    --------
    >>> import torch
    >>> net = CrdWideResNet(depth=16, widen_factor=2)
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 100])
    >>> sum(p.numel() for p in net.parameters())    # RepDistiller's wrn_16_2
    703284
    """

    sensing_points = ("conv1", "block1", "block2", "block3", "pool")

    def __init__(self, *, depth: int = 40, widen_factor: int = 2, drop_rate: float = 0.0, num_classes: int = 100,
                 in_channels: int = 3):
        super().__init__()
        check_positive_int("depth", depth)
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"CrdWideResNet: depth must be 6*n + 4 with n >= 1 (10, 16, 22, 28, 40…), got {depth}")
        check_positive_int("widen_factor", widen_factor)
        if isinstance(drop_rate, bool) or not isinstance(drop_rate, (int, float)) or not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"CrdWideResNet: drop_rate must be in [0, 1), got {drop_rate!r}")
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        self.depth = depth
        self.widen_factor = widen_factor
        self.drop_rate = float(drop_rate)
        self.num_classes = num_classes
        self.in_channels = in_channels

        count = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(count, 16, widths[0], stride=1, drop_rate=self.drop_rate)
        self.block2 = NetworkBlock(count, widths[0], widths[1], stride=2, drop_rate=self.drop_rate)
        self.block3 = NetworkBlock(count, widths[1], widths[2], stride=2, drop_rate=self.drop_rate)
        self.bn1 = BatchNorm2d(widths[2])
        self.relu = nn.ReLU()
        self.pool = GlobalAvgPool()   # the reference's avg_pool2d(·, 8) on a CIFAR image's 8×8 maps
        self.fc = nn.Linear(widths[2], num_classes)
        conv_fan_out_(self, linear="zero_bias")

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(self.pool(self.relu(self.bn1(out))))

    def config(self) -> dict:
        """Keyword arguments that rebuild this architecture."""
        return {"depth": self.depth, "widen_factor": self.widen_factor, "drop_rate": self.drop_rate,
                "num_classes": self.num_classes, "in_channels": self.in_channels}
