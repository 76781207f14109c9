"""The CRD benchmark's CIFAR ShuffleNetV1, ``shufflenetv1`` = RepDistiller's ``ShuffleV1``.

RepDistiller's ``ShuffleNetv1.py`` (after kuangliu's CIFAR port of Zhang et al., 2018)
with 3 groups: a 1×1 stem of 24 channels (no stride, no max-pool), three stages of
4, 8, 4 bottlenecks ending at 240, 480, 960 channels, global average pooling and a
linear head. A 32×32 image ends at 4×4.

Bottleneck: grouped 1×1 → BN → ReLU → shuffle → 3×3 depthwise (stride) → BN → ReLU →
grouped 1×1 → BN, then ReLU of (out + input), or, in the first, stride-2 block of a
stage, ReLU of the concatenation [out, 3×3 average pool of the input] (so that block's
convolutions produce ``out_planes - in_planes`` channels). Bottleneck width is a quarter
of the block's convolution output. Kept from the reference: the very first block (on the
24-channel stem) uses an ungrouped first 1×1 convolution and no shuffle.

Parameter names are the reference's (``layer1.0.conv1`` … ``bn3``, ``linear``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from geokd.models._common import GlobalAvgPool, check_positive_int
from geokd.models.batchnorm import BatchNorm2d
from geokd.models.crd._shuffle import ChannelShuffle

__all__ = ["CifarShuffleNetV1"]


class Bottleneck(nn.Module):
    """The ShuffleNetV1 unit; ``stride=2`` concatenates an average-pooled shortcut."""

    def __init__(self, in_planes: int, out_planes: int, *, stride: int, groups: int, first_groups: int):
        super().__init__()
        mid = out_planes // 4
        self.stride = stride
        self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=first_groups, bias=False)
        self.bn1 = BatchNorm2d(mid)
        self.relu1 = nn.ReLU()
        self.shuffle1 = ChannelShuffle(first_groups)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = BatchNorm2d(mid)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(mid, out_planes, 1, groups=groups, bias=False)
        self.bn3 = BatchNorm2d(out_planes)
        # An empty Sequential (the identity) or the pool, as the reference: no parameters.
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1)) if stride == 2 else nn.Sequential()
        self.relu3 = nn.ReLU()   # its input is the reference's ``preact`` feature

    def forward(self, x: Tensor) -> Tensor:
        out = self.shuffle1(self.relu1(self.bn1(self.conv1(x))))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = self.shortcut(x)
        return self.relu3(torch.cat([out, shortcut], 1) if self.stride == 2 else out + shortcut)


class CifarShuffleNetV1(nn.Module):
    """ShuffleNetV1 for 32×32 inputs as the CRD benchmark trains it.

    Parameters
    ----------
    out_planes : sequence of 3 int
        Channels at the end of each stage (``(240, 480, 960)`` for 3 groups); each must be
        a multiple of ``groups`` and, less the previous stage's, of 4.
    num_blocks : sequence of 3 int
        Bottlenecks per stage (``(4, 8, 4)``).
    groups : int
        Groups of the 1×1 convolutions (3).
    num_classes : int
        Classes of the linear head.
    in_channels : int
        Input channels.

    Attributes
    ----------
    sensing_points : tuple of str
        ``("relu", "layer1", "layer2", "layer3", "pool")``: the five features of the
        reference's ``forward(is_feat=True)``.

    Examples
    --------
    >>> import torch
    >>> net = CifarShuffleNetV1()
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 100])
    >>> sum(p.numel() for p in net.parameters())    # RepDistiller's ShuffleV1
    949258
    """

    sensing_points = ("relu", "layer1", "layer2", "layer3", "pool")

    def __init__(self, *, out_planes: Sequence[int] = (240, 480, 960), num_blocks: Sequence[int] = (4, 8, 4),
                 groups: int = 3, num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        out_planes, num_blocks = (tuple(v) if isinstance(v, Sequence) and not isinstance(v, str) else v
                                  for v in (out_planes, num_blocks))
        for name, value in (("out_planes", out_planes), ("num_blocks", num_blocks)):
            if not isinstance(value, tuple) or len(value) != 3:
                raise ValueError(f"CifarShuffleNetV1: {name} must be 3 numbers (one per stage), got {value!r}")
            for item in value:
                check_positive_int(f"CifarShuffleNetV1 {name} entry", item)
        check_positive_int("groups", groups)
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        stem = 24
        previous = (stem,) + out_planes[:2]
        for planes, before in zip(out_planes, previous):
            conv_out = planes - before
            if conv_out < 4 or conv_out % 4 or planes % groups or (conv_out // 4) % groups or (planes // 4) % groups:
                raise ValueError(
                    f"CifarShuffleNetV1: stage width {planes} after {before} channels does not split into "
                    f"{groups} groups with a bottleneck of a quarter (out_planes={out_planes})")
        self.out_planes = out_planes
        self.num_blocks = num_blocks
        self.groups = groups
        self.num_classes = num_classes
        self.in_channels = in_channels

        self.conv1 = nn.Conv2d(in_channels, stem, 1, bias=False)
        self.bn1 = BatchNorm2d(stem)
        self.relu = nn.ReLU()
        in_planes = stem
        stages = []
        for stage, (planes, count) in enumerate(zip(out_planes, num_blocks)):
            blocks = []
            for index in range(count):
                # The first block of a stage concatenates its pooled input, so its
                # convolutions make only the missing channels. The reference keys the
                # ungrouped first 1×1 on "input has 24 channels", i.e. the very first block.
                blocks.append(Bottleneck(in_planes, planes - (in_planes if index == 0 else 0),
                                         stride=2 if index == 0 else 1, groups=groups,
                                         first_groups=1 if (stage, index) == (0, 0) else groups))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = GlobalAvgPool()   # the reference's avg_pool2d(·, 4) on a CIFAR image's 4×4 maps
        self.linear = nn.Linear(out_planes[2], num_classes)
        # PyTorch's default initialisation, as the reference.

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(self.pool(out))

    def config(self) -> dict:
        """Keyword arguments that rebuild this architecture."""
        return {"out_planes": list(self.out_planes), "num_blocks": list(self.num_blocks), "groups": self.groups,
                "num_classes": self.num_classes, "in_channels": self.in_channels}
