"""Datasets by name or by spec: one loader, one cache layout, per-dataset defaults.

========================================  =====================================================
form                                      data
========================================  =====================================================
``digits``, ``cifar10``, ``cifar100``,    a named dataset (:func:`available_datasets`), fetched
``mnist``, ``fashion-mnist``              once into the cache and verified by official hashes
``imagefolder:PATH``                      torchvision ``ImageFolder`` layout: ``PATH/train/<class>``
                                          and ``PATH/test/<class>`` (or ``val``), or a flat
                                          ``PATH/<class>`` serving every split
``MODULE:CALLABLE[?KEY=VALUE&...]``       a map-style dataset of ``(image, label)`` pairs built by
                                          the user's callable (split passed as ``split=`` or
                                          ``train=`` when it takes one)
========================================  =====================================================
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from geokd.data import cifar10, cifar100, digits, imagefolder, mnist, user_dataset
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
    # How to provide the data by hand, appended to "not found" errors (None: no such advice).
    manual: Callable[[Path], str] | None = None


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
    "cifar100": DatasetSpec(
        name="cifar100", num_classes=100, image_shape=(3, 32, 32), padding=4, flip=True,
        mean=None, std=None,
        find_local=cifar100.find_local, fetch=cifar100.fetch, places_looked=cifar100.places_looked,
        description="CIFAR-100, 100 fine classes (verified by the MD5s torchvision uses)",
        manual=cifar100.manual_hint,
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

    Besides these names, :func:`load_dataset` takes ``imagefolder:PATH`` and
    ``MODULE:CALLABLE[?KEY=VALUE&...]`` (see the module docstring).

    Examples
    --------
    >>> available_datasets()
    ['cifar10', 'cifar100', 'digits', 'fashion-mnist', 'mnist']
    """
    return sorted(_SPECS)


def get_spec(name: str) -> DatasetSpec:
    if name not in _SPECS:
        raise ValueError(
            f"unknown dataset {name!r}; expected one of {available_datasets()}, "
            "'imagefolder:PATH' or 'MODULE:CALLABLE[?KEY=VALUE&...]'"
        )
    return _SPECS[name]


def _form(name) -> str:
    """``"named"``, ``"imagefolder"`` or ``"callable"``; a clear error for anything else."""
    if isinstance(name, str) and name in _SPECS:
        return "named"
    if isinstance(name, str) and name.startswith(imagefolder.PREFIX):
        if not name[len(imagefolder.PREFIX):]:
            raise ValueError("imagefolder: expected a folder after 'imagefolder:', got nothing")
        return "imagefolder"
    if user_dataset.is_user_spec(name):
        return "callable"
    get_spec(name)  # raises the "unknown dataset" error
    raise AssertionError("unreachable")


def dataset_defaults(name: str, *, image_size: int | None = None) -> dict:
    """Default augmentation for ``name``: ``{"padding": int, "flip": bool}``.

    CIFAR-10 and CIFAR-100 use the paper's crop with 4-pixel padding and horizontal flips;
    digits (8x8) a 1-pixel padding and no flip, as handwritten digits are not
    mirror-symmetric; MNIST (28x28) a 2-pixel padding and no flip; Fashion-MNIST a 2-pixel
    padding and flips (clothes are left-right symmetric classes).

    For ``imagefolder:PATH`` the padding is the image side // 8 (CIFAR's 4 for 32 px), the
    side being ``image_size`` or else the first image's height, and flips are on. For a
    ``MODULE:CALLABLE`` dataset, whose size is unknown until it is built, flips are on and
    the padding is ``image_size // 8`` if given, else 4 (the 32 px setting).

    Examples
    --------
    >>> dataset_defaults("cifar10"), dataset_defaults("digits")
    ({'padding': 4, 'flip': True}, {'padding': 1, 'flip': False})
    >>> dataset_defaults("mypackage.data:make_set", image_size=64)
    {'padding': 8, 'flip': True}
    """
    form = _form(name)
    if form == "named":
        spec = get_spec(name)
        return {"padding": spec.padding, "flip": spec.flip}
    _check_image_size(image_size)
    if form == "imagefolder":
        side = image_size or imagefolder.first_image_side(name[len(imagefolder.PREFIX):])
        return {"padding": side // 8, "flip": True}
    return {"padding": image_size // 8 if image_size else 4, "flip": True}


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
    manual = f"; {spec.manual(root)}" if spec.manual is not None else ""
    return DatasetNotFoundError(
        f"dataset {spec.name!r} not found: looked in {', '.join(str(p) for p in looked)} ({reason}); "
        f"run `geokd data fetch {spec.name} --root {root}` (or pass root= a folder holding it){manual}"
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


def _check_image_size(image_size) -> None:
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")


def _check_mean_std(mean, std) -> tuple | None:
    """``(mean, std)`` as float tuples, ``None`` if neither is given; both or neither."""
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise ValueError(f"give both mean and std or neither, got mean={mean!r} and std={std!r}")
    out = []
    for what, values in (("mean", mean), ("std", std)):
        try:
            values = tuple(float(v) for v in values)
        except (TypeError, ValueError):
            raise ValueError(f"{what} must be a sequence of numbers (one per channel), got {values!r}") from None
        if not values or not all(np.isfinite(values)):
            raise ValueError(f"{what} must be finite numbers, one per channel, got {values!r}")
        out.append(values)
    return tuple(out)


# Normalization measured on an image folder's train split, by the fingerprint of its file
# list: loading the test split after the train split then decodes the train images once.
_folder_stats: dict[str, tuple] = {}
_MAX_REMEMBERED = 32


def _read_form(form: str, name: str, split: str, image_size) -> dict:
    if form == "imagefolder":
        return imagefolder.read_split(name[len(imagefolder.PREFIX):], split=split, image_size=image_size)
    return user_dataset.read_split(name, split=split, image_size=image_size)


def _train_stats(form: str, name: str, image_size) -> tuple:
    """mean/std of the train split of a spec form (remembered for an unchanged folder)."""
    key = None
    try:
        if form == "imagefolder":
            key = imagefolder.fingerprint(name[len(imagefolder.PREFIX):], split="train", image_size=image_size)
            if key in _folder_stats:
                return _folder_stats[key]
        train = _read_form(form, name, "train", image_size)
    except DatasetNotFoundError as exc:
        raise DatasetNotFoundError(
            f"{exc}; the normalization is measured on the train split, so without one pass "
            "mean= and std= (CLI: --mean/--std)"
        ) from None
    stats = train_mean_std(train["images"].numpy())
    if key is not None:
        _remember(key, stats)
    return stats


def _remember(key: str, stats: tuple) -> None:
    if len(_folder_stats) >= _MAX_REMEMBERED:
        _folder_stats.clear()
    _folder_stats[key] = stats


def _load_form(form: str, name: str, *, split: str, image_size, stats) -> TensorDataset:
    """A split of ``imagefolder:PATH`` or ``MODULE:CALLABLE`` as a :class:`TensorDataset`."""
    key = None
    if stats is None and form == "imagefolder" and split == "train":
        # Taken before decoding, so a file changed meanwhile cannot be remembered as unchanged.
        key = imagefolder.fingerprint(name[len(imagefolder.PREFIX):], split="train", image_size=image_size)
    raw = _read_form(form, name, split, image_size)
    if stats is None:
        if split == "train" or raw["all_splits"]:
            stats = train_mean_std(raw["images"].numpy())
            if key is not None:
                _remember(key, stats)
        else:
            try:
                stats = _train_stats(form, name, image_size)
            except DatasetNotFoundError:
                # A folder of evaluation images only (a common case for analysis): its own
                # statistics are the best there are, and the source says they were used.
                stats = train_mean_std(raw["images"].numpy())
                raw["source"] += f"; no train split, so normalized by this {split} split's own mean/std"
    return TensorDataset(images=raw["images"], labels=raw["labels"], num_classes=raw["num_classes"],
                         mean=tuple(stats[0]), std=tuple(stats[1]), name=name, split=split,
                         source=raw["source"])


def load_dataset(name: str, *, split: str = "train", root=None, download: bool = True,
                 fraction: float | None = None, seed: int = 0, image_size: int | None = None,
                 mean=None, std=None) -> TensorDataset:
    """Load one split of a dataset as uint8 tensors.

    Parameters
    ----------
    name : str
        One of :func:`available_datasets` (``digits`` needs no download),
        ``imagefolder:PATH`` or ``MODULE:CALLABLE[?KEY=VALUE&...]`` (module docstring).
    split : {"train", "test"}
    root : path, optional
        Cache folder of named datasets (default: ``$GEOKD_CACHE`` or ``~/.cache/geokd``);
        also searched for a torchvision-format copy (``cifar-10-batches-py``,
        ``cifar-100-python``, ``MNIST/raw``, ``FashionMNIST/raw``). Unused by the spec forms.
    download : bool
        Fetch a named dataset if it is not there; if False a missing dataset raises
        :class:`~geokd.errors.DatasetNotFoundError`. Unused by the spec forms.
    fraction : float in (0, 1], optional
        Keep a seeded class-balanced subset with ``floor(fraction * m)`` samples per
        class, ``m`` the smallest class size (exactly 10 % of CIFAR-10 for 0.1).
    seed : int
        Seed of that subset.
    image_size : int, optional
        Spec forms only: resize the shorter side to ``image_size`` and centre-crop
        ``image_size x image_size``. Without it all images must share one size.
    mean, std : sequence of float, optional
        Per-channel normalization constants (both or neither), used instead of the
        dataset's own; for the spec forms they spare measuring the train split.

    Returns
    -------
    TensorDataset
        ``mean``/``std`` are the paper's constants for CIFAR-10, else those measured on
        the training split (the whole split, before ``fraction``), unless given.

    Examples
    --------
    >>> ds = load_dataset("digits", split="test")
    >>> ds.images.shape, ds.images.dtype, ds.num_classes
    (torch.Size([540, 1, 8, 8]), torch.uint8, 10)
    >>> len(load_dataset("digits", fraction=0.5))
    610
    >>> load_dataset("digits", mean=(0.3,), std=(0.4,)).mean
    (0.3,)
    """
    form = _form(name)
    if split not in SPLITS:
        raise ValueError(f"dataset {name!r}: unknown split {split!r}; expected one of {SPLITS}")
    if fraction is not None:
        check_fraction(fraction)  # before any download
    _check_image_size(image_size)
    stats = _check_mean_std(mean, std)
    if form == "named":
        if image_size is not None:
            raise ValueError(f"dataset {name!r} has a fixed image size; image_size applies to "
                             "'imagefolder:PATH' and 'MODULE:CALLABLE' datasets only")
        dataset = _load_named(name, split=split, root=root, download=download)
        if stats is not None:
            dataset = replace(dataset, mean=stats[0], std=stats[1])
    else:
        dataset = _load_form(form, name, split=split, image_size=image_size, stats=stats)
    if fraction is not None:
        index = balanced_indices(dataset.labels.numpy(), fraction=fraction, num_classes=dataset.num_classes,
                                 seed=seed)
        dataset = dataset.subset(index)
    return dataset


def _load_named(name: str, *, split: str, root, download: bool) -> TensorDataset:
    spec = get_spec(name)
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
    return TensorDataset(images=images, labels=labels, num_classes=spec.num_classes,
                         mean=tuple(mean), std=tuple(std), name=name, split=split, source=source)
