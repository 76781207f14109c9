"""Datasets by name: one loader, one cache layout, per-dataset defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from geokd.data import cifar10, digits, mnist
from geokd.data.cache import cache_root, load_arrays, read_manifest, write_arrays
from geokd.data.dataset import TensorDataset, balanced_indices, check_fraction
from geokd.errors import DatasetNotFoundError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    padding: int
    flip: bool
    # None: computed from the training split (stored in the manifest when cached).
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    find_local: Callable[[Path], tuple[dict, dict] | None] | None
    fetch: Callable[..., tuple[dict, dict]] | None
    places_looked: Callable[[Path], list[Path]]
    description: str


_SPECS = {
    "digits": DatasetSpec(
        name="digits", num_classes=10, image_shape=(1, 8, 8), padding=1, flip=False,
        mean=None, std=None, find_local=None, fetch=None, places_looked=lambda root: [],
        description="scikit-learn's bundled 8x8 digits (offline); fixed stratified 70/30 split",
    ),
    "cifar10": DatasetSpec(
        name="cifar10", num_classes=10, image_shape=(3, 32, 32), padding=4, flip=True,
        mean=cifar10.PAPER_MEAN, std=cifar10.PAPER_STD,
        find_local=cifar10.find_local, fetch=cifar10.fetch, places_looked=cifar10.places_looked,
        description="CIFAR-10 (official order; verified against the official binary MD5s)",
    ),
    "mnist": DatasetSpec(
        name="mnist", num_classes=10, image_shape=(1, 28, 28), padding=2, flip=False,
        mean=None, std=None,
        find_local=lambda root: mnist.find_local("mnist", root),
        fetch=lambda root, **kw: mnist.fetch("mnist", root, **kw),
        places_looked=lambda root: mnist.places_looked("mnist", root),
        description="MNIST from the official IDX files (verified by their MD5s)",
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist", num_classes=10, image_shape=(1, 28, 28), padding=2, flip=True,
        mean=None, std=None,
        find_local=lambda root: mnist.find_local("fashion-mnist", root),
        fetch=lambda root, **kw: mnist.fetch("fashion-mnist", root, **kw),
        places_looked=lambda root: mnist.places_looked("fashion-mnist", root),
        description="Fashion-MNIST from the official IDX files (verified by their MD5s)",
    ),
}


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`.

    Examples
    --------
    >>> available_datasets()
    ['cifar10', 'digits', 'fashion-mnist', 'mnist']
    """
    return sorted(_SPECS)


def get_spec(name: str) -> DatasetSpec:
    if name not in _SPECS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {available_datasets()}")
    return _SPECS[name]


def dataset_defaults(name: str) -> dict:
    """Default augmentation for ``name``: ``{"padding": int, "flip": bool}``.

    CIFAR-10 uses the paper's crop with 4-pixel padding and horizontal flips; digits
    (8x8) a 1-pixel padding and no flip, as handwritten digits are not mirror-symmetric;
    MNIST (28x28) a 2-pixel padding and no flip; Fashion-MNIST a 2-pixel padding and
    flips (clothes are left-right symmetric classes).

    Examples
    --------
    >>> dataset_defaults("cifar10"), dataset_defaults("digits")
    ({'padding': 4, 'flip': True}, {'padding': 1, 'flip': False})
    """
    spec = get_spec(name)
    return {"padding": spec.padding, "flip": spec.flip}


def train_mean_std(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images scaled to [0, 1].

    Computed from each channel's 256-bin histogram, which is exact and needs no
    float copy of the images.

    Examples
    --------
    >>> import numpy as np
    >>> train_mean_std(np.array([0, 255], dtype=np.uint8).reshape(2, 1, 1, 1))
    ((0.5,), (0.5,))
    """
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = np.bincount(np.ascontiguousarray(images[:, c]).ravel(), minlength=256)
        p = hist / hist.sum()
        mean = float((p * values).sum())
        means.append(mean)
        stds.append(float(np.sqrt((p * (values - mean) ** 2).sum())))
    return tuple(means), tuple(stds)


def dataset_folder(name: str, root=None) -> Path:
    """The cache folder of ``name`` (``<root>/<name>``)."""
    get_spec(name)
    return cache_root(root) / name


def _not_found(spec: DatasetSpec, root: Path, reason: str) -> DatasetNotFoundError:
    looked = [root / spec.name, *spec.places_looked(root)]
    return DatasetNotFoundError(
        f"dataset {spec.name!r} not found: looked in {', '.join(str(p) for p in looked)} ({reason}); "
        f"run `geokd data fetch {spec.name} --root {root}` (or pass root= a folder holding it)"
    )


def fetch_dataset(name: str, *, root=None, download: bool = True, progress: bool | None = None,
                  verify: bool = True) -> Path:
    """Make sure ``name`` is cached under ``root``; return its folder.

    A cached copy is verified (every array against the manifest if ``verify``, else
    only the manifest's presence; loading verifies what it reads); otherwise a user's torchvision-format copy under
    ``root`` is imported, else (if ``download``) the data is downloaded. Everything is
    checked against the official hashes before being stored.
    """
    spec = get_spec(name)
    root = cache_root(root)
    folder = root / name
    if spec.fetch is None:
        return folder  # bundled with a library: nothing to store
    if folder.exists():
        if verify:
            load_arrays(folder, name, tuple(f"{s}_{k}" for s in SPLITS for k in ("images", "labels")))
        else:
            read_manifest(folder, name)
        return folder
    found = spec.find_local(root)
    if found is None:
        if not download:
            raise _not_found(spec, root, "download=False")
        try:
            found = spec.fetch(root, progress=progress)
        except OSError as exc:
            raise _not_found(spec, root, f"fetching failed: {exc}") from None
    arrays, info = found
    mean, std = train_mean_std(arrays["train_images"])
    write_arrays(folder, name, arrays, info={**info, "train_mean": mean, "train_std": std})
    return folder


def load_dataset(name: str, *, split: str = "train", root=None, download: bool = True,
                 fraction: float | None = None, seed: int = 0) -> TensorDataset:
    """Load one split of a dataset as uint8 tensors.

    Parameters
    ----------
    name : str
        One of :func:`available_datasets` (``digits`` needs no download).
    split : {"train", "test"}
    root : path, optional
        Cache folder (default: ``$GEOKD_CACHE`` or ``~/.cache/geokd``); also searched
        for a torchvision-format copy (``cifar-10-batches-py``, ``MNIST/raw``,
        ``FashionMNIST/raw``).
    download : bool
        Fetch the data if it is not there; if False a missing dataset raises
        :class:`~geokd.errors.DatasetNotFoundError`.
    fraction : float in (0, 1], optional
        Keep a seeded class-balanced subset with ``floor(fraction * m)`` samples per
        class, ``m`` the smallest class size (exactly 10 % of CIFAR-10 for 0.1).
    seed : int
        Seed of that subset.

    Returns
    -------
    TensorDataset
        ``mean``/``std`` are the paper's constants for CIFAR-10, else those of the
        training split.

    Examples
    --------
    >>> ds = load_dataset("digits", split="test")
    >>> ds.images.shape, ds.images.dtype, ds.num_classes
    (torch.Size([540, 1, 8, 8]), torch.uint8, 10)
    >>> len(load_dataset("digits", fraction=0.5))
    610
    """
    spec = get_spec(name)
    if split not in SPLITS:
        raise ValueError(f"dataset {name!r}: unknown split {split!r}; expected one of {SPLITS}")
    if fraction is not None:
        check_fraction(fraction)  # before any download
    keys = (f"{split}_images", f"{split}_labels")
    if spec.fetch is None:
        arrays = digits.load_digits_arrays()
        mean, std = train_mean_std(arrays["train_images"])
        source = "sklearn.datasets.load_digits"
    else:
        folder = fetch_dataset(name, root=root, download=download, verify=False)
        arrays, manifest = load_arrays(folder, name, keys)
        mean, std = manifest["train_mean"], manifest["train_std"]
        source = manifest.get("source", "")
    if spec.mean is not None:
        mean, std = spec.mean, spec.std
    images = torch.from_numpy(np.ascontiguousarray(arrays[keys[0]]))
    labels = torch.from_numpy(arrays[keys[1]].astype(np.int64))
    if tuple(images.shape[1:]) != spec.image_shape:
        raise ValueError(f"dataset {name!r}: expected images of shape {spec.image_shape}, got {tuple(images.shape[1:])}")
    dataset = TensorDataset(images=images, labels=labels, num_classes=spec.num_classes,
                            mean=tuple(mean), std=tuple(std), name=name, split=split, source=source)
    if fraction is not None:
        index = balanced_indices(labels.numpy(), fraction=fraction, num_classes=spec.num_classes, seed=seed)
        dataset = dataset.subset(index)
    return dataset
