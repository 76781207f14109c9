"""Mini-batches built on the tensor side: no per-image Python, no worker processes."""

from __future__ import annotations

import math

import torch

from geokd.data.augment import random_crop_flip
from geokd.data.dataset import TensorDataset
from geokd.data.registry import dataset_defaults


class BatchLoader:
    """Iterate over normalized float32 ``(x, y)`` batches of a :class:`TensorDataset`.

    The whole uint8 dataset is copied to ``device`` once; each epoch draws a
    permutation from ``generator`` (when ``shuffle``), gathers a batch, optionally
    crops and flips it (:func:`~geokd.data.augment.random_crop_flip`) and normalizes
    with the dataset's ``mean``/``std``: ``(x/255 - mean) / std``.

    Parameters
    ----------
    dataset : TensorDataset
    batch_size : int
    shuffle : bool
    augment : bool
        Random crop with zero padding (+ flip) as in the paper's CIFAR-10 training.
    device : str or torch.device
    generator : torch.Generator, optional
        Drives the permutation and the augmentation (reproducible runs).
    drop_last : bool
        Drop the last incomplete batch.
    padding, flip : optional
        Augmentation settings; ``None`` takes the dataset's defaults
        (:func:`~geokd.data.dataset_defaults`: CIFAR-10 padding 4 + flip; digits
        padding 1, no flip).

    Examples
    --------
    >>> import torch
    >>> from geokd.data import load_dataset
    >>> loader = BatchLoader(load_dataset("digits"), batch_size=500, shuffle=True,
    ...                      augment=True, generator=torch.Generator().manual_seed(0))
    >>> len(loader), [tuple(x.shape) for x, _ in loader]
    (3, [(500, 1, 8, 8), (500, 1, 8, 8), (257, 1, 8, 8)])
    """

    def __init__(self, dataset: TensorDataset, *, batch_size: int, shuffle: bool, augment: bool = False,
                 device="cpu", generator: torch.Generator | None = None, drop_last: bool = False,
                 padding: int | None = None, flip: bool | None = None) -> None:
        if not isinstance(dataset, TensorDataset):
            raise ValueError(f"expected a geokd TensorDataset, got {type(dataset).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if len(dataset) == 0:
            raise ValueError(f"dataset {dataset.name!r} ({dataset.split}) is empty: nothing to batch")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        # Datasets built by hand (not by name or spec) get the paper's CIFAR-10 setting.
        try:
            defaults = dataset_defaults(dataset.name, image_size=dataset.image_shape[-1])
        except ValueError:
            defaults = {"padding": 4, "flip": True}
        padding = defaults["padding"] if padding is None else padding
        flip = defaults["flip"] if flip is None else flip
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding must be a non-negative int, got {padding!r}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.augment = bool(augment)
        self.device = torch.device(device)
        self.generator = generator
        self.drop_last = bool(drop_last)
        self.padding = padding
        self.flip = bool(flip)
        self._images = dataset.images.to(self.device)
        self._labels = dataset.labels.to(self.device)
        channels = dataset.images.shape[1]
        std = torch.tensor(dataset.std, dtype=torch.float32, device=self.device).view(1, channels, 1, 1)
        mean = torch.tensor(dataset.mean, dtype=torch.float32, device=self.device).view(1, channels, 1, 1)
        # (x/255 - mean)/std folded into one multiply-add.
        self._scale = 1.0 / (255.0 * std)
        self._shift = -mean / std

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _order(self) -> torch.Tensor:
        n = len(self.dataset)
        if not self.shuffle:
            return torch.arange(n, device=self.device)
        gen_device = self.generator.device if self.generator is not None else torch.device("cpu")
        return torch.randperm(n, generator=self.generator, device=gen_device).to(self.device)

    def __iter__(self):
        order = self._order()
        for i in range(len(self)):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            x = self._images[index]
            if self.augment:
                x = random_crop_flip(x, padding=self.padding, flip=self.flip, generator=self.generator)
            x = torch.addcmul(self._shift, x.to(torch.float32), self._scale)
            yield x, self._labels[index]
