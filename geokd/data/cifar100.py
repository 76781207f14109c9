"""CIFAR-100 (100 fine classes): a user's torchvision folder or the official download.

Sources, in order:

1. a torchvision-format folder ``cifar-100-python`` (files ``train``, ``test``, ``meta``)
   under the cache root;
2. the official tarball through torchvision's downloader, tried only when the host
   answers within a few seconds.

Each file is checked against the MD5 torchvision itself uses for ``CIFAR100`` *before* it
is unpickled, and then read with the restricted unpickler of :mod:`geokd.data.cifar10`
(numpy arrays and plain containers only), never with plain ``pickle``.

Examples
--------
>>> FILE_MD5["train"], OFFICIAL_TGZ_MD5
('16019d7e3df5f24257cddd939b257f8d', 'eb9058c3a382ffc7106e4002c42a8d85')
"""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path

import numpy as np

from geokd.data.cache import file_digest
from geokd.data.cifar10 import ArrayOnlyUnpickler
from geokd.data.fetch import host_reachable
from geokd.errors import DataIntegrityError

NAME = "cifar100"
NUM_CLASSES = 100
TORCHVISION_FOLDER = "cifar-100-python"

OFFICIAL_HOST = "www.cs.toronto.edu"
OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
# torchvision.datasets.CIFAR100: tgz_md5, train_list, test_list and meta["md5"].
OFFICIAL_TGZ_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
FILE_MD5 = {
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
}
SPLIT_SIZE = {"train": 50_000, "test": 10_000}


def manual_hint(root: Path) -> str:
    """How to provide the data by hand (for machines without access to the official host)."""
    folder = Path(root) / TORCHVISION_FOLDER
    return (f"to install it by hand, download {OFFICIAL_URL} (MD5 {OFFICIAL_TGZ_MD5}), extract it and "
            f"put the folder {TORCHVISION_FOLDER} in {root} (so that {folder}/train, {folder}/test and "
            f"{folder}/meta exist)")


def verify_folder(folder: Path) -> dict[str, str]:
    """Check ``train``, ``test`` and ``meta`` in ``folder`` against torchvision's MD5s.

    Returns ``{file: md5}``; raises :class:`DataIntegrityError` naming every missing or
    differing file with the expected and the actual MD5.
    """
    folder = Path(folder)
    missing = [name for name in FILE_MD5 if not (folder / name).is_file()]
    if missing:
        raise DataIntegrityError(
            f"cifar100: {folder} lacks {', '.join(missing)}; expected the files train, test and meta "
            f"extracted from {OFFICIAL_URL}"
        )
    wrong = []
    for name, expected in FILE_MD5.items():
        got = file_digest(folder / name, "md5")
        if got != expected:
            wrong.append(f"{folder / name} (MD5 {got}, expected {expected})")
    if wrong:
        raise DataIntegrityError(
            f"cifar100: {', '.join(wrong)} differ from torchvision's CIFAR100 files; refusing them "
            f"(delete {folder} and put the one extracted from {OFFICIAL_URL} there)"
        )
    return dict(FILE_MD5)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            content = ArrayOnlyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataIntegrityError(f"cifar100: {path} is not a readable CIFAR-100 python file ({exc})") from None
    if not isinstance(content, dict):
        raise DataIntegrityError(f"cifar100: {path} holds a {type(content).__name__}, expected a dict")
    # Python 2 pickles decode keys to str, Python 3 ones may keep bytes keys.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in content.items()}


def read_split_file(path: Path, *, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` uint8 and fine labels of one pickled split file."""
    content = _unpickle(Path(path))
    if "data" not in content or "fine_labels" not in content:
        raise DataIntegrityError(f"cifar100: {path} has keys {sorted(content)}, expected 'data' and 'fine_labels'")
    data = np.asarray(content["data"])
    n = SPLIT_SIZE[split]
    if data.dtype != np.uint8 or data.shape != (n, 3072):
        raise DataIntegrityError(f"cifar100: {path} holds data {data.dtype}{data.shape}, expected uint8 ({n}, 3072)")
    labels = np.asarray(content["fine_labels"], dtype=np.int64)
    if labels.shape != (n,) or labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise DataIntegrityError(f"cifar100: {path} holds {labels.shape[0]} fine labels, expected {n} in 0..99")
    return data.reshape(n, 3, 32, 32), labels


def read_torchvision_folder(folder: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """Arrays and the fine class names of a verified ``cifar-100-python`` folder."""
    folder = Path(folder)
    verify_folder(folder)  # before any unpickling
    arrays = {}
    for split in ("train", "test"):
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = read_split_file(folder / split, split=split)
    classes = [str(c) for c in _unpickle(folder / "meta").get("fine_label_names", [])]
    if len(classes) != NUM_CLASSES:
        raise DataIntegrityError(f"cifar100: {folder / 'meta'} lists {len(classes)} fine label names, expected 100")
    return arrays, classes


def find_local(root: Path) -> tuple[dict[str, np.ndarray], dict] | None:
    """A user's ``root/cifar-100-python`` folder, verified, or ``None`` if there is none."""
    folder = Path(root) / TORCHVISION_FOLDER
    if not folder.exists():
        return None
    arrays, classes = read_torchvision_folder(folder)
    return arrays, {"source": f"torchvision folder {folder}", "verified_md5": FILE_MD5, "classes": classes}


def fetch(root: Path, *, progress: bool | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Download the official tarball (if its host answers) and read it; ``OSError`` otherwise."""
    if not host_reachable(OFFICIAL_HOST):
        raise OSError(f"{OFFICIAL_HOST} is not reachable")
    from torchvision.datasets.utils import download_and_extract_archive

    Path(root).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".cifar100-download-", dir=root) as tmp:
        try:
            # Only the archive (checked by its MD5): the pickles are read by read_torchvision_folder.
            download_and_extract_archive(OFFICIAL_URL, tmp, md5=OFFICIAL_TGZ_MD5)
        except (OSError, RuntimeError) as exc:
            raise OSError(f"official download of {OFFICIAL_URL}: {exc}") from None
        arrays, classes = read_torchvision_folder(Path(tmp) / TORCHVISION_FOLDER)
    return arrays, {"source": OFFICIAL_URL, "verified_md5": FILE_MD5, "classes": classes}


def places_looked(root: Path) -> list[Path]:
    """Folders a user's copy is searched in (for error messages)."""
    return [Path(root) / TORCHVISION_FOLDER]
