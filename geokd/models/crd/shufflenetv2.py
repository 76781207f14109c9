"""The CRD benchmark's CIFAR ShuffleNetV2, ``shufflenetv2`` = RepDistiller's ``ShuffleV2``.

RepDistiller's ``ShuffleNetv2.py`` (after kuangliu's CIFAR port of Ma et al., 2018) at
size 1×: a 1×1 stem of 24 channels with no stride and no max-pool, three stages of one
down-sampling block (stride 2) and 3, 7, 3 basic blocks of 116, 232, 464 channels, a 1×1
convolution to 1024 channels, global average pooling and a linear head. A 32×32 image
ends at 4×4.

Basic block: split the channels in two halves; the second goes 1×1 → BN → ReLU → 3×3
depthwise → BN → 1×1 → BN → ReLU; concatenate with the first half, shuffle (2 groups).
Down-sampling block: left 3×3 depthwise s2 → BN → 1×1 → BN → ReLU, right 1×1 → BN → ReLU
→ 3×3 depthwise s2 → BN → 1×1 → BN → ReLU, each half of the output; concatenate, shuffle.

Parameter names are the reference's (``layer1.0.conv1`` … ``bn5``, ``conv2``, ``linear``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from geokd.models._common import GlobalAvgPool, check_positive_int
from geokd.models.batchnorm import BatchNorm2d
from geokd.models.crd._shuffle import ChannelShuffle

__all__ = ["CifarShuffleNetV2", "SHUFFLENETV2_SIZES"]

# net_size -> (channels of the three stages and of the last 1×1 conv, basic blocks per stage)
SHUFFLENETV2_SIZES: dict[float, tuple[tuple[int, int, int, int], tuple[int, int, int]]] = {
    0.2: ((40, 80, 160, 512), (3, 3, 3)),
    0.3: ((40, 80, 160, 512), (3, 7, 3)),
    0.5: ((48, 96, 192, 1024), (3, 7, 3)),
    1: ((116, 232, 464, 1024), (3, 7, 3)),
    1.5: ((176, 352, 704, 1024), (3, 7, 3)),
    2: ((224, 488, 976, 2048), (3, 7, 3)),
}


class BasicBlock(nn.Module):
    """Half the channels pass through; the other half runs 1×1, depthwise 3×3, 1×1; then shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        self.half = channels // 2   # the reference's split ratio 0.5
        branch = channels - self.half
        self.conv1 = nn.Conv2d(branch, branch, 1, bias=False)
        self.bn1 = BatchNorm2d(branch)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(branch, branch, 3, padding=1, groups=branch, bias=False)
        self.bn2 = BatchNorm2d(branch)
        self.conv3 = nn.Conv2d(branch, branch, 1, bias=False)
        self.bn3 = BatchNorm2d(branch)
        self.relu3 = nn.ReLU()
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        kept, branch = x[:, :self.half], x[:, self.half:]
        out = self.relu1(self.bn1(self.conv1(branch)))
        out = self.relu3(self.bn3(self.conv3(self.bn2(self.conv2(out)))))
        return self.shuffle(torch.cat([kept, out], 1))


class DownBlock(nn.Module):
    """Two stride-2 branches of ``out_channels / 2`` each, concatenated and shuffled."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        # left branch
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False)
        self.bn1 = BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = BatchNorm2d(mid)
        self.relu2 = nn.ReLU()
        # right branch
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn3 = BatchNorm2d(mid)
        self.relu3 = nn.ReLU()
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = BatchNorm2d(mid)
        self.relu5 = nn.ReLU()
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        left = self.relu2(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.relu3(self.bn3(self.conv3(x)))
        right = self.relu5(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return self.shuffle(torch.cat([left, right], 1))


class CifarShuffleNetV2(nn.Module):
    """ShuffleNetV2 for 32×32 inputs as the CRD benchmark trains it (``net_size=1``).

    Parameters
    ----------
    net_size : {0.2, 0.3, 0.5, 1, 1.5, 2}
        The reference's size table :data:`SHUFFLENETV2_SIZES`; the benchmark uses 1.
    num_classes : int
        Classes of the linear head.
    in_channels : int
        Input channels.

    Attributes
    ----------
    sensing_points : tuple of str
        ``("relu1", "layer1", "layer2", "layer3", "pool")``: the five features of the
        reference's ``forward(is_feat=True)`` (stem, three stages, pooled pre-logits).

    Examples
    --------
    >>> import torch
    >>> net = CifarShuffleNetV2()
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 100])
    >>> sum(p.numel() for p in net.parameters())    # RepDistiller's ShuffleV2
    1355528
    """

    sensing_points = ("relu1", "layer1", "layer2", "layer3", "pool")

    def __init__(self, *, net_size: float = 1, num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        if isinstance(net_size, bool) or not isinstance(net_size, (int, float)) or net_size not in SHUFFLENETV2_SIZES:
            raise ValueError(f"CifarShuffleNetV2: net_size must be one of {sorted(SHUFFLENETV2_SIZES)}, "
                             f"got {net_size!r}")
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        self.net_size = net_size
        self.num_classes = num_classes
        self.in_channels = in_channels

        widths, counts = SHUFFLENETV2_SIZES[net_size]
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = BatchNorm2d(24)
        self.relu1 = nn.ReLU()
        channels = 24
        stages = []
        for width, count in zip(widths[:3], counts):
            stages.append(nn.Sequential(DownBlock(channels, width), *(BasicBlock(width) for _ in range(count))))
            channels = width
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(widths[2], widths[3], 1, bias=False)
        self.bn2 = BatchNorm2d(widths[3])
        self.relu2 = nn.ReLU()
        self.pool = GlobalAvgPool()   # the reference's avg_pool2d(·, 4) on a CIFAR image's 4×4 maps
        self.linear = nn.Linear(widths[3], num_classes)
        # PyTorch's default initialisation, as the reference.

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(self.pool(self.relu2(self.bn2(self.conv2(out)))))

    def config(self) -> dict:
        """Keyword arguments that rebuild this architecture."""
        return {"net_size": self.net_size, "num_classes": self.num_classes, "in_channels": self.in_channels}
