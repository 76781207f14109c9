"""The in-memory dataset every loader returns: uint8 images, int64 labels, metadata."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch


@dataclass(frozen=True, eq=False)
class TensorDataset:
    """A whole split held as two tensors.

    Attributes
    ----------
    images : torch.Tensor
        ``(N, C, H, W)`` ``torch.uint8`` pixels in 0..255.
    labels : torch.Tensor
        ``(N,)`` ``torch.int64`` class indices in ``0..num_classes-1``.
    num_classes : int
    mean, std : tuple of float
        Per-channel normalization constants for pixels scaled to [0, 1], always those
        of the dataset's *training* split (so train and test are normalized alike).
    name, split : str

    Examples
    --------
    >>> import torch
    >>> ds = TensorDataset(images=torch.zeros(4, 1, 2, 2, dtype=torch.uint8),
    ...                    labels=torch.tensor([0, 1, 0, 1]), num_classes=2,
    ...                    mean=(0.5,), std=(0.25,), name="toy", split="train")
    >>> len(ds), len(ds.subset([1, 3])), ds.subset([1, 3]).labels.tolist()
    (4, 2, [1, 1])
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    split: str
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        where = f"dataset {self.name!r} ({self.split})"
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            got = f"{images.dtype} of shape {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"{where}: expected images as a (N, C, H, W) torch.uint8 tensor, got {got}")
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.dim() != 1:
            got = f"{labels.dtype} of shape {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ValueError(f"{where}: expected labels as a (N,) torch.int64 tensor, got {got}")
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"{where}: {images.shape[0]} images but {labels.shape[0]} labels")
        channels = images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(
                f"{where}: expected {channels} mean and std values (one per channel), "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if any(not s > 0 for s in self.std):
            raise ValueError(f"{where}: std values must be positive, got {self.std}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"{where}: labels must lie in 0..{self.num_classes - 1}, got range "
                f"{int(labels.min())}..{int(labels.max())}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self.images.shape[1:])

    def subset(self, indices) -> "TensorDataset":
        """The samples at ``indices`` (a sequence, array or 1-D tensor of ints), in that order."""
        index = torch.as_tensor(np.asarray(indices) if not isinstance(indices, torch.Tensor) else indices)
        if index.dim() != 1 or (index.numel() and index.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)):
            raise ValueError(
                f"dataset {self.name!r} ({self.split}): subset expects a 1-D sequence of integer "
                f"indices, got {index.dtype} of shape {tuple(index.shape)}"
            )
        index = index.to(torch.int64)
        n = len(self)
        if index.numel() and (index.min() < 0 or index.max() >= n):
            raise ValueError(
                f"dataset {self.name!r} ({self.split}): subset indices must lie in 0..{n - 1}, "
                f"got range {int(index.min())}..{int(index.max())}"
            )
        return replace(self, images=self.images[index], labels=self.labels[index])


def check_fraction(fraction) -> None:
    """Refuse anything but a number in (0, 1]."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}")


def balanced_indices(labels: np.ndarray, *, fraction: float, num_classes: int, seed: int) -> np.ndarray:
    """Indices of a seeded, class-balanced subset: the same count from every class.

    The count per class is ``floor(fraction * m)`` with ``m`` the size of the smallest
    class (so on a balanced set such as CIFAR-10, ``fraction=0.1`` keeps exactly 10 %).
    For one seed, a smaller fraction's subset is contained in a larger one's. Indices
    are returned in increasing order (the dataset's own order).

    Examples
    --------
    >>> import numpy as np
    >>> idx = balanced_indices(np.array([0, 1] * 10), fraction=0.3, num_classes=2, seed=0)
    >>> len(idx), np.bincount(np.array([0, 1] * 10)[idx]).tolist()
    (6, [3, 3])
    """
    check_fraction(fraction)
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=num_classes)
    smallest = int(counts.min())
    per_class = int(np.floor(fraction * smallest + 1e-9))
    if per_class < 1:
        raise ValueError(
            f"fraction={fraction} keeps no sample of the smallest class ({smallest} samples); "
            f"expected a fraction of at least {1 / smallest:.4g}"
        )
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        chosen.append(members[rng.permutation(members.size)[:per_class]])
    return np.sort(np.concatenate(chosen))
