"""Batched, device-side augmentation: random crop with zero padding and horizontal flip.

Equivalent in distribution to torchvision's per-image ``RandomCrop(size, padding=p)``
followed by ``RandomHorizontalFlip()``, but done for a whole batch with one gather on
whatever device the batch lives on. Crop and flip are fused: a flipped crop reads the
window's columns in reverse order.
"""

from __future__ import annotations

import torch


def _check_batch(x: torch.Tensor, padding: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected a (B, C, H, W) tensor of images, got {got}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a non-negative int, got {padding!r}")


def _draw(high: int, size: int, *, generator: torch.Generator | None, device) -> torch.Tensor:
    # Drawn on the generator's device (CPU by default) so a seed gives the same
    # augmentation whichever device the images are on.
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(high, (size,), generator=generator, device=gen_device).to(device)


def random_crop_flip(x: torch.Tensor, *, padding: int = 4, flip: bool = True,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Randomly crop (after zero padding) and horizontally flip every image of a batch.

    Each image is padded with ``padding`` zeros on every side and an ``H×W`` window is
    taken at an offset drawn uniformly from ``0..2*padding`` in each direction; then,
    if ``flip``, it is mirrored left-right with probability 1/2. Works for any dtype
    (uint8 pixels or floats in [0, 1]; zero padding is black either way, as in
    torchvision) and on any device.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, C, H, W)`` images.
    padding : int
        Zero padding per side; 0 disables cropping.
    flip : bool
        Whether to flip horizontally with probability 1/2.
    generator : torch.Generator, optional
        Source of randomness (CPU or the data's device), for reproducible runs.

    Returns
    -------
    torch.Tensor
        New tensor of the same shape, dtype and device.

    Examples
    --------
    >>> import torch
    >>> x = torch.arange(16.).reshape(1, 1, 4, 4)
    >>> torch.equal(random_crop_flip(x, padding=0, flip=False), x)
    True
    >>> random_crop_flip(x, padding=2, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([1, 1, 4, 4])
    """
    _check_batch(x, padding)
    b, c, h, w = x.shape
    if padding == 0 and not flip:
        return x.clone()
    device = x.device
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    top = _draw(2 * padding + 1, b, generator=generator, device=device)
    left = _draw(2 * padding + 1, b, generator=generator, device=device)
    col_index = cols.expand(b, w)
    if flip:
        mirrored = _draw(2, b, generator=generator, device=device).bool()
        col_index = torch.where(mirrored[:, None], (w - 1) - cols, cols)
    padded_w = w + 2 * padding
    if padding:
        # Zero canvas + one copy: much cheaper than F.pad for small integer images.
        padded = x.new_zeros(b, c, h + 2 * padding, padded_w)
        padded[:, :, padding : padding + h, padding : padding + w] = x
    else:
        padded = x.contiguous()
    # Flat position of every output pixel in its padded image, shared by all channels.
    flat = (top[:, None, None] + rows[None, :, None]) * padded_w + (left[:, None, None] + col_index[:, None, :])
    flat = flat.reshape(b, 1, h * w).expand(b, c, h * w)
    return torch.gather(padded.reshape(b, c, -1), 2, flat).reshape(b, c, h, w)


def normalize(x: torch.Tensor, *, mean, std) -> torch.Tensor:
    """uint8 pixels (or floats in [0, 1]) to ``(x/255 - mean) / std`` as float32.

    Examples
    --------
    >>> import torch
    >>> normalize(torch.tensor([[[[0, 255]]]], dtype=torch.uint8), mean=(0.5,), std=(0.5,))
    tensor([[[[-1.,  1.]]]])
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}")
    if len(mean) != x.shape[1] or len(std) != x.shape[1]:
        raise ValueError(f"expected {x.shape[1]} mean/std values (one per channel), got {len(mean)}/{len(std)}")
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    scale = 255.0 if x.dtype == torch.uint8 else 1.0
    return (x.to(torch.float32) / scale - m) / s
