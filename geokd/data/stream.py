"""Image folders too large for memory (ImageNet): decoded batch by batch in worker processes.

:class:`~geokd.data.BatchLoader` holds a whole split as one uint8 tensor, which suits
CIFAR (150 MB) but not ImageNet (1.28 million images, 190 GB at 224 x 224). A
:class:`StreamingImageFolder` reads the same ``imagefolder:PATH`` layouts
(:mod:`geokd.data.imagefolder`) with torchvision's ``ImageFolder`` and its recipe for
ImageNet:

- training (``augment=True``): ``RandomResizedCrop(image_size)`` and a horizontal flip;
- evaluation: resize the shorter side to ``round(image_size * 256 / 224)`` (256 for 224)
  and centre-crop ``image_size``;

then normalizes with the given ``mean``/``std`` (measuring them on ImageNet is not an
option: pass them, e.g. :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`).

It keeps the trainer's data-parallel rule (:mod:`geokd.train.distributed`): every rank
draws the same permutation of the training set from the same seeded generator and takes
its contiguous share of each global batch, but here each rank decodes only its share
(``yields_local_shards``: the loop does not shard its batches again). Augmentation draws
its randomness in the worker processes from seeds taken off that generator (without
workers, from torch's global generator, which the run seeds and saves), so a run is
reproducible from its seed and a resumed run continues the same sequence.

Examples
--------
>>> import tempfile, torch
>>> from geokd.data.dataset import TensorDataset
>>> from geokd.data.imagefolder import write_image_folder
>>> toy = TensorDataset(images=torch.randint(0, 256, (4, 3, 40, 48), dtype=torch.uint8),
...                     labels=torch.tensor([0, 0, 1, 1]), num_classes=2,
...                     mean=(0.5,) * 3, std=(0.25,) * 3, name="toy", split="test")
>>> folder = write_image_folder(toy, tempfile.mkdtemp(), class_names=["cat", "dog"])
>>> batches = StreamingImageFolder(folder, split="test", image_size=32, batch_size=3, shuffle=False,
...                                mean=IMAGENET_MEAN, std=IMAGENET_STD, workers=0)
>>> [(tuple(x.shape), y.tolist()) for x, y in batches]
[((3, 3, 32, 32), [0, 0, 1]), ((1, 3, 32, 32), [1])]
>>> batches.num_classes, len(batches)
(2, 2)
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from geokd.data.imagefolder import PREFIX, _check_same_classes, _image_folder, _split_folder, _where

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "StreamingImageFolder", "folder_of"]

#: torchvision's ImageNet normalization (its weights expect it).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def folder_of(name: str) -> str:
    """The folder of a dataset name ``imagefolder:PATH`` (``ValueError`` for any other name).

    >>> folder_of("imagefolder:/data/imagenet")
    '/data/imagenet'
    """
    if not isinstance(name, str) or not name.startswith(PREFIX) or not name[len(PREFIX):]:
        raise ValueError(f"streaming reads image folders: expected data.name = 'imagefolder:PATH', got {name!r}")
    return name[len(PREFIX):]


def _check_channels(what: str, values, where: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected {what} as 3 numbers (one per RGB channel), got {values!r}") from None
    if len(values) != 3 or not all(math.isfinite(v) for v in values) or (what == "std" and min(values) <= 0):
        raise ValueError(f"{where}: expected {what} as 3 finite numbers{' > 0' if what == 'std' else ''} "
                         f"(one per RGB channel), got {values!r}")
    return values


class StreamingImageFolder:
    """Normalized float ``(x, y)`` batches of an image folder, decoded as they are needed.

    Parameters
    ----------
    path : path
        The folder of ``imagefolder:PATH`` (``PATH/train`` and ``PATH/test`` or ``PATH/val``).
    split : {"train", "test"}
    image_size : int
        Side of the square crops the networks see.
    batch_size : int
        The *global* batch size (over all ranks).
    shuffle : bool
        A new permutation each epoch, drawn from ``generator``.
    mean, std : sequence of 3 floats
        Normalization constants.
    augment : bool
        The training recipe's random resized crop and flip; otherwise the evaluation
        resize and centre crop.
    generator : torch.Generator, optional
        Source of the permutations and of the augmentation's seeds (required for a
        shuffled or augmented stream, so that runs are reproducible).
    drop_last : bool
        Drop the last incomplete global batch.
    workers : int
        Decoding processes (0: decode in this process).
    rank, world_size : int
        This process's share of each global batch (its contiguous chunk, as
        :meth:`~geokd.train.distributed.DistributedContext.shard` takes it).
    device : str or torch.device
        Where the batches go.
    """

    #: The loop must not shard these batches again: each rank reads only its share.
    yields_local_shards = True

    def __init__(self, path, *, split: str, image_size: int, batch_size: int, shuffle: bool, mean, std,
                 augment: bool = False, generator: torch.Generator | None = None, drop_last: bool = False,
                 workers: int = 4, rank: int = 0, world_size: int = 1, device="cpu") -> None:
        where = _where(path)
        if split not in ("train", "test"):
            raise ValueError(f"{where}: unknown split {split!r}; expected 'train' or 'test'")
        for what, value, low in (("image_size", image_size, 1), ("batch_size", batch_size, 1),
                                 ("workers", workers, 0), ("world_size", world_size, 1), ("rank", rank, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{where}: expected {what} as an integer >= {low}, got {value!r}")
        if rank >= world_size:
            raise ValueError(f"{where}: rank {rank} is not below the world size {world_size}")
        if (shuffle or augment) and generator is None:
            raise ValueError(f"{where}: a shuffled or augmented stream needs a seeded generator (reproducible runs)")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"{where}: generator must be a torch.Generator, got {type(generator).__name__}")
        from torchvision.transforms import v2

        self.mean, self.std = _check_channels("mean", mean, where), _check_channels("std", std, where)
        folder, flat = _split_folder(path, split)
        if not flat:
            _check_same_classes(Path(path).expanduser(), where)
        if augment:
            geometry = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
        else:
            geometry = [v2.Resize(round(image_size * 256 / 224), antialias=True), v2.CenterCrop(image_size)]
        self.transform = v2.Compose([v2.ToImage(), *geometry, v2.ToDtype(torch.float32, scale=True),
                                     v2.Normalize(self.mean, self.std)])
        self.dataset = _image_folder(folder, where)
        self.dataset.transform = self.transform
        self.labels = torch.as_tensor(self.dataset.targets, dtype=torch.int64)
        self.num_classes = len(self.dataset.classes)
        self.classes = list(self.dataset.classes)
        self.split, self.image_size, self.batch_size = split, image_size, batch_size
        self.shuffle, self.augment, self.generator, self.drop_last = bool(shuffle), bool(augment), generator, drop_last
        self.workers, self.rank, self.world_size = workers, rank, world_size
        self.device = torch.device(device)
        self.source = f"image folder {folder}, streamed ({'random resized crop + flip' if augment else 'resize + centre crop'} to {image_size})"

    def __len__(self) -> int:
        """Global batches per pass."""
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _local_batches(self) -> list[list[int]]:
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        batches = []
        for i in range(len(self)):
            chunk = order[i * self.batch_size:(i + 1) * self.batch_size]
            share = chunk.chunk(self.world_size)[self.rank] if self.world_size > 1 else chunk
            batches.append(share.tolist())
        return batches

    def __iter__(self):
        batches = self._local_batches()
        seed = None
        if self.generator is not None:
            seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        # Worker k seeds its transforms with seed + k; without workers the transforms draw
        # from torch's global generator (seeded by the run and saved with its state).
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=batches, num_workers=self.workers,
            generator=torch.Generator().manual_seed(seed) if seed is not None else None,
            pin_memory=self.device.type == "cuda")
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
