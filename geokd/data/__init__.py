"""Datasets and mini-batches.

``load_dataset(name, split=...)`` returns a whole split as uint8 tensors
(:class:`TensorDataset`), for a named dataset, ``imagefolder:PATH`` or a user's
``MODULE:CALLABLE`` factory; :func:`write_image_folder` exports one as PNGs;
:class:`BatchLoader` turns it into normalized float batches on any device, with
batched crop/flip augmentation.

Examples
--------
>>> from geokd.data import load_dataset, BatchLoader
>>> train = load_dataset("digits", split="train")
>>> x, y = next(iter(BatchLoader(train, batch_size=32, shuffle=False)))
>>> x.shape, x.dtype, y.dtype
(torch.Size([32, 1, 8, 8]), torch.float32, torch.int64)
"""

from geokd.data import augment
from geokd.data.augment import normalize, random_crop_flip
from geokd.data.cache import cache_root
from geokd.data.dataset import TensorDataset, balanced_indices
from geokd.data.imagefolder import write_image_folder
from geokd.data.loader import BatchLoader
from geokd.data.registry import (
    available_datasets,
    dataset_defaults,
    dataset_folder,
    fetch_dataset,
    load_dataset,
)

__all__ = [
    "BatchLoader",
    "TensorDataset",
    "augment",
    "available_datasets",
    "balanced_indices",
    "cache_root",
    "dataset_defaults",
    "dataset_folder",
    "fetch_dataset",
    "load_dataset",
    "normalize",
    "random_crop_flip",
    "write_image_folder",
]
