"""The channel shuffle of the ShuffleNets, as a module so a block's output can be tapped.

Examples
--------
>>> import torch
>>> ChannelShuffle(2)(torch.arange(6.).reshape(1, 6, 1, 1)).flatten().tolist()
[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ChannelShuffle"]


class ChannelShuffle(nn.Module):
    """``(B, g·c, H, W) → (B, c·g, H, W)``: interleave the channels of ``groups`` groups."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        if channels % self.groups:
            raise ValueError(f"ChannelShuffle: {channels} channels do not split into {self.groups} groups")
        return (x.view(batch, self.groups, channels // self.groups, height, width)
                .transpose(1, 2).reshape(batch, channels, height, width))

    def extra_repr(self) -> str:
        return f"groups={self.groups}"
