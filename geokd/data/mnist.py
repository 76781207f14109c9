"""MNIST and Fashion-MNIST from the official IDX files, checked by their MD5s.

The four files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, gzipped or not) are read from a
user's torchvision folder (``<root>/MNIST/raw`` or ``<root>/FashionMNIST/raw``), else
downloaded through torchvision when its mirror answers, else, for Fashion-MNIST, taken
from the Debian package ``dataset-fashion-mnist`` (``apt-get download``; the .deb is
unpacked in Python). Re-compressed copies differ as .gz files, so the check is on the
MD5s of the *uncompressed* official files.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from geokd.data.fetch import host_reachable, progress_bar, run_command
from geokd.errors import DataIntegrityError

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# MD5s of the uncompressed official IDX files.
RAW_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}
TORCHVISION_CLASS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
MIRROR_HOSTS = {"mnist": "ossci-datasets.s3.amazonaws.com",
                "fashion-mnist": "fashion-mnist.s3-website.eu-central-1.amazonaws.com"}
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEB_DATA_DIR = "usr/share/datasets/fashion-mnist"
APT_TIMEOUT_S = 600
NUM_CLASSES = 10


def parse_idx(data: bytes, *, what: str) -> np.ndarray:
    """An IDX file (unsigned-byte data) as a numpy array.

    Examples
    --------
    >>> parse_idx(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]), what="labels").tolist()
    [7, 8, 9]
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataIntegrityError(f"{what}: not an unsigned-byte IDX file (header {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        raise DataIntegrityError(f"{what}: IDX header announces {shape} ({expected} bytes), file has {len(data)}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def _read_raw(folder: Path, filename: str) -> bytes | None:
    plain, packed = folder / filename, folder / f"{filename}.gz"
    if plain.is_file():
        return plain.read_bytes()
    if packed.is_file():
        return gzip.decompress(packed.read_bytes())
    return None


def arrays_from_raw(name: str, raw: dict[str, bytes], *, source: str) -> dict[str, np.ndarray]:
    """Check the four uncompressed IDX files' MD5s, then parse them into arrays."""
    wrong = []
    for filename, data in raw.items():
        digest = hashlib.md5(data).hexdigest()
        if digest != RAW_MD5[name][filename]:
            wrong.append(f"{filename} (md5 {digest}, official {RAW_MD5[name][filename]})")
    if wrong:
        raise DataIntegrityError(
            f"{name} from {source} differs from the official release in: {', '.join(wrong)}; "
            f"refusing it (delete that copy and re-run `geokd data fetch {name}`)"
        )
    out = {}
    for key, filename in FILES.items():
        array = parse_idx(raw[filename], what=f"{name} {filename}")
        out[key] = array[:, None, :, :] if key.endswith("images") else array.astype(np.int64)
    return out


def read_folder(name: str, folder: Path) -> dict[str, np.ndarray] | None:
    """Arrays from a folder holding the four IDX files, or ``None`` if any is absent."""
    raw = {}
    for filename in FILES.values():
        data = _read_raw(Path(folder), filename)
        if data is None:
            return None
        raw[filename] = data
    return arrays_from_raw(name, raw, source=str(folder))


def places_looked(name: str, root: Path) -> list[Path]:
    """Folders a user's copy is searched in (for error messages)."""
    return [Path(root) / TORCHVISION_CLASS[name] / "raw"]


def find_local(name: str, root: Path) -> tuple[dict[str, np.ndarray], dict] | None:
    for folder in places_looked(name, root):
        arrays = read_folder(name, folder)
        if arrays is not None:
            return arrays, {"source": f"torchvision folder {folder}", "verified_md5": RAW_MD5[name]}
    return None


def _ar_members(data: bytes) -> dict[str, bytes]:
    """Members of a Unix ``ar`` archive (the container format of a .deb)."""
    if not data.startswith(b"!<arch>\n"):
        raise DataIntegrityError("not a Debian package: missing the ar archive signature")
    members, pos = {}, 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        members[name] = data[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)
    return members


def raw_from_deb(deb: bytes) -> dict[str, bytes]:
    """The four uncompressed IDX files inside the ``dataset-fashion-mnist`` .deb."""
    members = _ar_members(deb)
    data_name = next((m for m in members if m.startswith("data.tar")), None)
    if data_name is None:
        raise DataIntegrityError(f"Debian package holds {sorted(members)}, expected a data.tar.*")
    blob = members[data_name]
    if data_name.endswith(".xz"):
        blob = lzma.decompress(blob)
    elif data_name.endswith(".gz"):
        blob = gzip.decompress(blob)
    elif data_name != "data.tar":
        raise DataIntegrityError(f"Debian package member {data_name} uses an unsupported compression")
    raw = {}
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tar:
        for filename in FILES.values():
            member = f"./{DEB_DATA_DIR}/{filename}.gz"
            try:
                raw[filename] = gzip.decompress(tar.extractfile(member).read())
            except KeyError:
                raise DataIntegrityError(f"Debian package has no {member}") from None
    return raw


def _fetch_debian(workdir: Path, *, progress: bool | None) -> dict[str, np.ndarray]:
    with progress_bar(total=1, desc=f"fashion-mnist: apt-get download {DEBIAN_PACKAGE} (~31 MB)",
                      progress=progress) as bar:
        run_command(["apt-get", "download", DEBIAN_PACKAGE], cwd=workdir, timeout=APT_TIMEOUT_S)
        bar.update(1)
    debs = sorted(workdir.glob(f"{DEBIAN_PACKAGE}_*.deb"))
    if not debs:
        raise OSError(f"apt-get download {DEBIAN_PACKAGE} left no .deb in {workdir}")
    return arrays_from_raw("fashion-mnist", raw_from_deb(debs[-1].read_bytes()),
                           source=f"Debian package {debs[-1].name}")


def _fetch_torchvision(name: str, workdir: Path) -> dict[str, np.ndarray]:
    import torchvision.datasets as tvd

    cls = getattr(tvd, TORCHVISION_CLASS[name])
    # torchvision checks the .gz MD5s while downloading; we re-check the raw files.
    cls(root=str(workdir), train=True, download=True)
    arrays = read_folder(name, workdir / TORCHVISION_CLASS[name] / "raw")
    if arrays is None:
        raise OSError(f"torchvision's download left no IDX files in {workdir}")
    return arrays


def fetch(name: str, root: Path, *, progress: bool | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Download ``mnist`` or ``fashion-mnist``; raises ``OSError`` saying why each source failed."""
    failures = []
    Path(root).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-download-", dir=root) as tmp:
        workdir = Path(tmp)
        host = MIRROR_HOSTS[name]
        if host_reachable(host):
            try:
                return _fetch_torchvision(name, workdir), {"source": f"torchvision download ({host})",
                                                             "verified_md5": RAW_MD5[name]}
            except DataIntegrityError:
                raise
            except Exception as exc:  # any network/archive failure: try the next source
                failures.append(f"torchvision download: {exc}")
        else:
            failures.append(f"torchvision download: {host} is not reachable")
        if name == "fashion-mnist":
            try:
                return _fetch_debian(workdir, progress=progress), {"source": f"debian:{DEBIAN_PACKAGE}",
                                                                  "verified_md5": RAW_MD5[name]}
            except OSError as exc:
                failures.append(f"Debian package: {exc}")
        else:
            failures.append(
                "no registry copy of the full MNIST exists; download the four official IDX files "
                f"and put them (gzipped or not) in {places_looked(name, root)[0]}"
            )
    raise OSError("; ".join(failures))
