"""The CRD benchmark's VGGs with batch norm, ``vgg8`` … ``vgg19`` (RepDistiller ``vgg.py``).

Five blocks of 3×3 convolutions (with bias) each followed by BN and ReLU, the blocks
joined by 2×2 max-pools, then a global average pool and one linear layer (the
ImageNet VGG's fully connected layers are gone). Channels per block:

=======  ===================================================
vgg8     64 | 128 | 256 | 512 | 512
vgg11    64 | 128 | 256 256 | 512 512 | 512 512
vgg13    64 64 | 128 128 | 256 256 | 512 512 | 512 512
vgg16    64 64 | 128 128 | 256 256 256 | 512 512 512 | 512 512 512
vgg19    64 64 | 128 128 | 256 ×4 | 512 ×4 | 512 ×4
=======  ===================================================

As in the reference, the pool between the fourth and fifth blocks runs only on 64×64
inputs, so on CIFAR the last two blocks both see 4×4 maps. Each block ends at its last BN
and its ReLU is the top-level module ``reluK``: the reference's features are those ReLUs'
outputs, its ``preact`` features their inputs (``"reluK:input"``). Parameter names are the
reference's (``block0.0``, ``block0.1``, …, ``classifier``).
"""

from __future__ import annotations

from torch import Tensor, nn

from geokd.models._common import GlobalAvgPool, check_positive_int
from geokd.models.batchnorm import BatchNorm2d
from geokd.models.crd._init import conv_fan_out_

__all__ = ["CrdVGG", "VGG_BLOCKS"]

# Convolution widths per block, by depth (the conv layers plus the classifier).
VGG_BLOCKS: dict[int, tuple[tuple[int, ...], ...]] = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def _block(in_channels: int, widths: tuple[int, ...]) -> nn.Sequential:
    # conv, BN, ReLU, …, conv, BN: the same indices as the reference's Sequential (whose
    # last ReLU is dropped and applied by the network), so state-dict keys agree.
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), BatchNorm2d(width), nn.ReLU()]
        in_channels = width
    return nn.Sequential(*layers[:-1])


class CrdVGG(nn.Module):
    """VGG-``depth`` with batch norm for 32×32 inputs.

    Parameters
    ----------
    depth : {8, 11, 13, 16, 19}
        Which configuration (see the module docstring).
    num_classes : int
        Classes of the linear head.
    in_channels : int
        Input channels.

    Attributes
    ----------
    sensing_points : tuple of str
        ``("relu0", "relu1", "relu2", "relu3", "relu4", "pool")``: the six features of the
        reference's ``forward(is_feat=True)``.

    Examples
    --------
    >>> import torch
    >>> net = CrdVGG(depth=8)
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 100])
    >>> sum(p.numel() for p in net.parameters())    # RepDistiller's vgg8 (vgg8_bn)
    3965028
    """

    sensing_points = ("relu0", "relu1", "relu2", "relu3", "relu4", "pool")

    def __init__(self, *, depth: int = 13, num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth not in VGG_BLOCKS:
            raise ValueError(f"CrdVGG: depth must be one of {sorted(VGG_BLOCKS)}, got {depth!r}")
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        self.depth = depth
        self.num_classes = num_classes
        self.in_channels = in_channels

        blocks = VGG_BLOCKS[depth]
        widths_in = (in_channels,) + tuple(block[-1] for block in blocks[:-1])
        self.block0, self.block1, self.block2, self.block3, self.block4 = (
            _block(c, widths) for c, widths in zip(widths_in, blocks))
        self.relu0, self.relu1, self.relu2, self.relu3, self.relu4 = (nn.ReLU() for _ in range(5))
        self.pool0, self.pool1, self.pool2, self.pool3 = (nn.MaxPool2d(2, stride=2) for _ in range(4))
        self.pool = GlobalAvgPool()
        self.classifier = nn.Linear(blocks[-1][-1], num_classes)
        conv_fan_out_(self, linear="small_normal")

    def forward(self, x: Tensor) -> Tensor:
        height = x.shape[2]
        x = self.pool0(self.relu0(self.block0(x)))
        x = self.pool1(self.relu1(self.block1(x)))
        x = self.pool2(self.relu2(self.block2(x)))
        x = self.relu3(self.block3(x))
        if height == 64:   # the reference's rule: a fourth pool only for 64×64 images
            x = self.pool3(x)
        x = self.relu4(self.block4(x))
        return self.classifier(self.pool(x))

    def config(self) -> dict:
        """Keyword arguments that rebuild this architecture."""
        return {"depth": self.depth, "num_classes": self.num_classes, "in_channels": self.in_channels}
