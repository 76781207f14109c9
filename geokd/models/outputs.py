"""The one structure that flows from models to losses, trainer and analysis."""

from __future__ import annotations

from typing import NamedTuple

import torch


class ModelOutputs(NamedTuple):
    """A forward pass seen through its sensing points.

    Attributes
    ----------
    logits : torch.Tensor
        ``(B, num_classes)`` class scores.
    features : list[torch.Tensor]
        One tensor per sensing point, in the order the points were named, each of shape
        ``(B, ...)`` (not flattened: graphs and losses flatten as they need).

    Examples
    --------
    >>> out = ModelOutputs(torch.zeros(2, 3), [torch.ones(2, 4, 5, 5)])
    >>> out.logits.shape, len(out.features)
    (torch.Size([2, 3]), 1)
    """

    logits: torch.Tensor
    features: list[torch.Tensor]
