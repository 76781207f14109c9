"""The memory layout inputs are fed in: one rule for every training loop.

Examples
--------
>>> import torch
>>> x = torch.zeros(2, 3, 4, 4)
>>> batch_in_layout(x, channels_last=True).is_contiguous(memory_format=torch.channels_last)
True
>>> batch_in_layout(torch.zeros(2, 5), channels_last=True).shape  # not a map: as it is
torch.Size([2, 5])
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["batch_in_layout"]


def batch_in_layout(x: Tensor, *, channels_last: bool) -> Tensor:
    """``x`` as a model in that layout takes it: 4-D maps made channels-last when asked,
    anything else (flat inputs, or ``channels_last=False``) unchanged."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x
