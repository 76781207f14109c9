"""The CRD benchmark's CIFAR MobileNetV2, ``mobilenetv2`` = RepDistiller's ``mobile_half``.

RepDistiller's ``mobilenetv2.py`` (from *Knowledge Distillation via Route Constrained
Optimization*) at width 0.5 and expansion 6. It differs from torchvision's MobileNetV2 in
ways that change the parameter count, kept here:

- every inverted residual block has its 1×1 expansion convolution, even at expansion 1
  (the first block);
- the last 1×1 convolution has 1280 channels whatever the width (< 1 keeps 1280);
- the stem has stride 2 and the stages strides 1, 1, 2, 2, 1, 2, 1, so a 32×32 image
  ends at 2×2 before the global average pool; the head is a bare linear layer.

Stages (expansion, channels at width 1, blocks, first stride): (1, 16, 1, 1),
(6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1).
Parameter names are the reference's (``conv1.0``, ``blocks.3.1.conv.4``, ``conv2.0``,
``classifier.0``).
"""

from __future__ import annotations

from torch import Tensor, nn

from geokd.models._common import GlobalAvgPool, check_positive_int
from geokd.models.batchnorm import BatchNorm2d
from geokd.models.crd._init import conv_fan_out_

__all__ = ["CifarMobileNetV2"]

# (expansion or None for the network's, channels at width 1, blocks, stride of the first)
_STAGES = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2), (None, 96, 3, 1),
           (None, 160, 3, 2), (None, 320, 1, 1))
LAST_CHANNELS = 1280


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
                         BatchNorm2d(out_channels), nn.ReLU())


class InvertedResidual(nn.Module):
    """1×1 expand → BN → ReLU → 3×3 depthwise (stride) → BN → ReLU → 1×1 project → BN (+ input)."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        # The residual is added only where shapes agree, as in the reference.
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False), BatchNorm2d(hidden), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), BatchNorm2d(hidden), nn.ReLU(),
            nn.Conv2d(hidden, out_channels, 1, bias=False), BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 for 32×32 inputs as the CRD benchmark trains it.

    Parameters
    ----------
    width_mult : float
        Channel multiplier of the stem and the stages (0.5 in the benchmark).
    expansion : int
        Expansion ratio of every stage but the first (6 in the benchmark).
    num_classes : int
        Classes of the linear head.
    in_channels : int
        Input channels.

    Attributes
    ----------
    sensing_points : tuple of str
        ``("conv1", "blocks.1", "blocks.2", "blocks.4", "blocks.6", "pool")``: the six
        features of the reference's ``forward(is_feat=True)``.

    Examples
    --------
    >>> import torch
    >>> net = CifarMobileNetV2()
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 100])
    >>> sum(p.numel() for p in net.parameters())    # RepDistiller's mobile_half
    812836
    """

    sensing_points = ("conv1", "blocks.1", "blocks.2", "blocks.4", "blocks.6", "pool")

    def __init__(self, *, width_mult: float = 0.5, expansion: int = 6, num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or width_mult <= 0:
            raise ValueError(f"CifarMobileNetV2: width_mult must be a positive number, got {width_mult!r}")
        if int(8 * width_mult) < 1:   # the narrowest stage has 16·w channels, the halved one 8·w
            raise ValueError(f"CifarMobileNetV2: width_mult {width_mult} gives a stage of 0 channels")
        check_positive_int("expansion", expansion)
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        self.width_mult = float(width_mult)
        self.expansion = expansion
        self.num_classes = num_classes
        self.in_channels = in_channels

        channels = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(in_channels, channels, 3, 2)
        stages = []
        for stage_expansion, base, count, stride in _STAGES:
            out_channels = int(base * width_mult)
            blocks = []
            for index in range(count):
                blocks.append(InvertedResidual(channels, out_channels, stride=stride if index == 0 else 1,
                                               expansion=stage_expansion or expansion))
                channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.ModuleList(stages)
        last = int(LAST_CHANNELS * width_mult) if width_mult > 1.0 else LAST_CHANNELS
        self.conv2 = _conv_bn_relu(channels, last, 1, 1)
        self.pool = GlobalAvgPool()   # the reference's AvgPool2d(2, ceil_mode=True) on the 2×2 maps
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        conv_fan_out_(self, linear="small_normal")

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(x)
        for stage in self.blocks:
            out = stage(out)
        return self.classifier(self.pool(self.conv2(out)))

    def config(self) -> dict:
        """Keyword arguments that rebuild this architecture."""
        return {"width_mult": self.width_mult, "expansion": self.expansion, "num_classes": self.num_classes,
                "in_channels": self.in_channels}
