"""Image folders in torchvision's ``ImageFolder`` layout, read into uint8 arrays, and written.

Layouts accepted for ``imagefolder:PATH``:

- ``PATH/train/<class>/<image>`` and ``PATH/test/<class>/<image>`` (``val`` is accepted
  as the test folder's name; ``test`` wins when both exist);
- a flat ``PATH/<class>/<image>``, whose images then serve whichever split is asked.

Class discovery, file extensions and decoding (PIL, converted to RGB) are torchvision's
own (:class:`torchvision.datasets.ImageFolder`), so a folder reads here as it does there.
Labels are the class folders' indices in sorted order; images come class by class, each
class in file-name order (so a folder written by :func:`write_image_folder` reads back in
the order of a stable sort of its labels).

Examples
--------
>>> import tempfile, torch
>>> from geokd.data.dataset import TensorDataset
>>> toy = TensorDataset(images=torch.arange(4 * 3 * 2 * 2, dtype=torch.uint8).view(4, 3, 2, 2),
...                     labels=torch.tensor([0, 0, 1, 1]), num_classes=2,
...                     mean=(0.5,) * 3, std=(0.25,) * 3, name="toy", split="test")
>>> folder = write_image_folder(toy, tempfile.mkdtemp(), class_names=["cat", "dog"])
>>> split = read_split(folder, split="test")
>>> torch.equal(split["images"], toy.images), split["labels"].tolist(), split["num_classes"]
(True, [0, 0, 1, 1], 2)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from geokd.data.fetch import progress_bar
from geokd.errors import DatasetNotFoundError

PREFIX = "imagefolder:"
TEST_FOLDERS = ("test", "val")
# The official CIFAR-10 class names, in label order (and sorted, so ImageFolder keeps it).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_KNOWN_CLASS_NAMES = {"cifar10": CIFAR10_CLASSES}
SIZE_HINT = "pass image_size=N (CLI: --image-size N) to resize the shorter side to N and centre-crop N x N"


def _where(path) -> str:
    return f"imagefolder:{path}"


def _split_folder(path, split: str) -> tuple[Path, bool]:
    """The folder holding ``split`` and whether it is a flat folder serving every split."""
    path = Path(path).expanduser()
    if not path.exists():
        parent = path.parent
        state = "exists" if parent.is_dir() else "does not exist either"
        raise DatasetNotFoundError(f"{_where(path)}: {path} does not exist (its parent {parent} {state})")
    if not path.is_dir():
        raise ValueError(f"{_where(path)}: {path} is a file; expected a folder of class folders")
    train = path / "train"
    tests = [path / name for name in TEST_FOLDERS if (path / name).is_dir()]
    if not train.is_dir() and not tests:
        return path, True
    if split == "train":
        if not train.is_dir():
            raise DatasetNotFoundError(f"{_where(path)}: {path} has {tests[0].name}/ but no train/ folder")
        return train, False
    if not tests:
        raise DatasetNotFoundError(f"{_where(path)}: {path} has train/ but no test/ (or val/) folder")
    return tests[0], False


def _classes(folder: Path, where: str) -> list[str]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

    try:
        classes, _ = find_classes(str(folder))
    except FileNotFoundError:
        loose = [p.name for p in folder.iterdir() if p.suffix.lower() in IMG_EXTENSIONS]
        hint = (f"; it holds {len(loose)} image files directly (e.g. {loose[0]}): put them in one "
                "folder per class") if loose else ""
        raise DatasetNotFoundError(
            f"{where}: no class folders in {folder} (expected {folder}/<class>/<image files>){hint}"
        ) from None
    return classes


def _check_same_classes(path: Path, where: str) -> None:
    """Train and test must name the same classes, or their label indices would disagree."""
    train, tests = path / "train", [path / n for n in TEST_FOLDERS if (path / n).is_dir()]
    if not train.is_dir() or not tests:
        return
    a, b = set(_classes(train, where)), set(_classes(tests[0], where))
    if a != b:
        raise ValueError(
            f"{where}: {train} and {tests[0]} must hold the same class folders; only in train: "
            f"{sorted(a - b)}, only in {tests[0].name}: {sorted(b - a)}"
        )


def _image_folder(folder: Path, where: str):
    """torchvision's ImageFolder over ``folder``, with our messages for empty classes."""
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    classes = _classes(folder, where)
    try:
        dataset = ImageFolder(str(folder), allow_empty=True)  # empty classes are reported below, all at once
    except TypeError:  # torchvision < 0.17 has no allow_empty and refuses empty classes itself
        try:
            dataset = ImageFolder(str(folder))
        except FileNotFoundError as exc:
            raise ValueError(f"{where}: {exc}") from None
    counts = np.bincount(np.asarray(dataset.targets, dtype=np.int64), minlength=len(classes))
    empty = [str(folder / c) for c, n in zip(dataset.classes, counts) if n == 0]
    if empty:
        raise ValueError(
            f"{where}: class folder(s) with no image files: {', '.join(empty)} "
            f"(image files end in {', '.join(IMG_EXTENSIONS)})"
        )
    return dataset


def fingerprint(path, *, split: str, image_size: int | None = None) -> str:
    """A digest of the file list (paths, sizes, modification times) behind ``split``.

    It changes when any image is added, removed or rewritten, so statistics measured on a
    folder can be remembered safely for as long as the fingerprint stays the same.
    """
    folder, _ = _split_folder(path, split)
    dataset = _image_folder(folder, _where(path))
    h = hashlib.sha256(f"{folder.resolve()}\0{image_size}\n".encode())
    for file, target in dataset.samples:
        st = Path(file).stat()
        h.update(f"{file}\0{target}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _decode(loader, file: str, where: str):
    from PIL import Image

    try:
        return loader(file)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{where}: cannot decode the image file {file} ({type(exc).__name__}: {exc})") from None


def read_split(path, *, split: str, image_size: int | None = None, progress: bool | None = None) -> dict:
    """Decode every image of ``split`` under ``path`` into one uint8 ``(N, 3, H, W)`` tensor.

    Parameters
    ----------
    path : path
        The ``imagefolder:`` folder (see the module docstring for the layouts).
    split : {"train", "test"}
    image_size : int, optional
        Resize the shorter side to ``image_size`` (antialiased bilinear) and centre-crop
        ``image_size x image_size``; without it all images must share one size.
    progress : bool, optional
        A tqdm bar while decoding (default: only on an interactive terminal).

    Returns
    -------
    dict
        ``images`` (uint8), ``labels`` (int64), ``num_classes``, ``classes``, ``source`` and
        ``all_splits`` (True for a flat folder, whose images serve every split).
    """
    from torchvision.transforms.v2 import functional as F

    where = _where(path)
    folder, flat = _split_folder(path, split)
    if not flat:
        _check_same_classes(Path(path).expanduser(), where)
    dataset = _image_folder(folder, where)
    samples = dataset.samples
    images = None
    first = None
    with progress_bar(total=len(samples), desc=f"{where}: decoding {split}", progress=progress) as bar:
        for i, (file, _) in enumerate(samples):
            image = _decode(dataset.loader, file, where)
            if image_size is not None:
                image = F.center_crop(F.resize(image, [image_size]), [image_size, image_size])
            elif first is None:
                first = (file, image.size)
            elif image.size != first[1]:
                (w0, h0), (w1, h1) = first[1], image.size
                raise ValueError(
                    f"{where}: images differ in size: {first[0]} is {w0}x{h0} but {file} is "
                    f"{w1}x{h1}; {SIZE_HINT}"
                )
            pixels = np.asarray(image, dtype=np.uint8)  # (H, W, 3): the loader converted to RGB
            if images is None:
                images = np.empty((len(samples), 3, *pixels.shape[:2]), dtype=np.uint8)
            images[i] = pixels.transpose(2, 0, 1)
            bar.update(1)
    labels = np.asarray(dataset.targets, dtype=np.int64)
    size = f", resized (shorter side {image_size}) and centre-cropped to {image_size}x{image_size}" if image_size else ""
    if flat:
        source = f"flat image folder {folder} (no train/test subfolders: the same images serve every split){size}"
    else:
        source = f"image folder {folder}{size}"
    return {"images": torch.from_numpy(images), "labels": torch.from_numpy(labels),
            "num_classes": len(dataset.classes), "classes": list(dataset.classes),
            "source": source, "all_splits": flat}


def first_image_side(path) -> int:
    """The height of the first image of the train split (or of the flat folder).

    Reads one file header only: used for the default crop padding of a folder.
    """
    from PIL import Image

    try:
        folder, _ = _split_folder(path, "train")
    except DatasetNotFoundError:
        folder, _ = _split_folder(path, "test")
    dataset = _image_folder(folder, _where(path))
    file = dataset.samples[0][0]
    try:
        with Image.open(file) as image:
            return int(image.size[1])
    except OSError as exc:
        raise ValueError(f"{_where(path)}: cannot decode the image file {file} ({exc})") from None


def _class_names(dataset, class_names) -> list[str]:
    if class_names is None:
        known = _KNOWN_CLASS_NAMES.get(dataset.name)
        if known is not None and len(known) == dataset.num_classes:
            return list(known)
        width = len(str(dataset.num_classes - 1))
        return [f"{k:0{width}d}" for k in range(dataset.num_classes)]  # zero-padded: sorts as it counts
    names = [str(n) for n in class_names]
    if len(names) != dataset.num_classes:
        raise ValueError(f"expected {dataset.num_classes} class_names (one per class), got {len(names)}")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be distinct, got {names}")
    bad = [n for n in names if not n or n in (".", "..") or "/" in n or "\\" in n]
    if bad:
        raise ValueError(f"class_names must be plain folder names, got {bad}")
    if names != sorted(names):
        # ImageFolder numbers classes in sorted order: any other order would relabel on reading.
        raise ValueError(f"class_names must be in sorted order (ImageFolder numbers classes that way), got {names}")
    return names


def write_image_folder(dataset, folder, *, split: str = "test", class_names=None,
                       progress: bool | None = None) -> Path:
    """Write ``dataset`` as lossless PNGs ``folder/<split>/<class_name>/<index:05d>.png``.

    Every class gets a folder (even one without images, which ``imagefolder:`` then
    refuses rather than silently renumbering the classes). Reading ``imagefolder:folder``
    back gives the same pixels and labels; one-channel images come back as RGB.

    Parameters
    ----------
    dataset : TensorDataset
        1- or 3-channel images.
    folder : path
        Created if needed; ``folder/<split>`` must not exist or be empty.
    split : str
    class_names : sequence of str, optional
        In label order, which must also be sorted order. Default: the official names for
        ``cifar10``, else zero-padded label numbers (``0``..``9``, ``00``..``99``).

    Returns
    -------
    Path
        ``folder``, ready for ``load_dataset(f"imagefolder:{folder}")``.
    """
    from PIL import Image

    folder = Path(folder).expanduser()
    channels = dataset.images.shape[1]
    if channels not in (1, 3):
        raise ValueError(f"write_image_folder: expected 1- or 3-channel images, got {channels} channels")
    if not split or "/" in split or split in (".", ".."):
        raise ValueError(f"write_image_folder: split must be a plain folder name, got {split!r}")
    names = _class_names(dataset, class_names)
    out = folder / split
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"write_image_folder: {out} already holds files; choose an empty folder")
    for name in names:
        (out / name).mkdir(parents=True, exist_ok=True)
    pixels = dataset.images.permute(0, 2, 3, 1).contiguous().numpy()
    labels = dataset.labels.tolist()
    with progress_bar(total=len(labels), desc=f"writing {out}", progress=progress) as bar:
        for i, label in enumerate(labels):
            array = pixels[i, :, :, 0] if channels == 1 else pixels[i]
            # compress_level 1: PNG stays lossless, writing is several times faster than the default.
            Image.fromarray(array).save(out / names[label] / f"{i:05d}.png", compress_level=1)
            bar.update(1)
    return folder
