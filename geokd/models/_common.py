"""Small parameter-free building blocks and argument checks shared by geokd's models."""

from __future__ import annotations

from torch import Tensor, nn


class GlobalAvgPool(nn.Module):
    """Average over all spatial positions and flatten: ``(B, C, H, W) → (B, C)``.

    A named module (rather than a call in ``forward``) so the pooled features can be
    tapped. On the 8×8 maps of a 32×32 CIFAR input it equals ``avg_pool2d(x, 8)``.

    Examples
    --------
    >>> import torch
    >>> GlobalAvgPool()(torch.arange(8.).reshape(1, 2, 2, 2))
    tensor([[1.5000, 5.5000]])
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"GlobalAvgPool: expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        return x.mean(dim=(2, 3))


def check_positive_int(name: str, value) -> None:
    """Raise a ValueError unless ``value`` is an ``int`` ≥ 1 (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
