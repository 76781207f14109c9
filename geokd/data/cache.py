"""Where datasets live on disk, and how their integrity is recorded and checked.

Every fetched dataset is stored once as plain ``.npy`` arrays in its own folder,
``<root>/<name>/``, beside a ``manifest.json`` that records each array file's size
and sha256. Loading re-checks the manifest, so a truncated or edited cache is refused
(:class:`~geokd.errors.DataIntegrityError`) instead of being used. Hashing ~180 MB
costs a fraction of a second; the verdict is remembered per process for files whose
path, size, inode and modification time have not changed, so repeated loads are cheap.

Folders are written under a temporary name and renamed into place in one step, so an
interrupted fetch never leaves a half-written dataset where a complete one is expected.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

from geokd.errors import DataIntegrityError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1

_verified: dict[tuple, str] = {}
_verified_lock = threading.Lock()


def cache_root(root: str | os.PathLike | None = None) -> Path:
    """The folder datasets are stored in.

    ``root`` if given, else the environment variable ``GEOKD_CACHE``, else
    ``~/.cache/geokd``.

    Examples
    --------
    >>> str(cache_root("/tmp/somewhere"))
    '/tmp/somewhere'
    """
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("GEOKD_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "geokd"


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks.

    Examples
    --------
    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile(delete=False) as f:
    ...     _ = f.write(b"abc")
    >>> file_digest(f.name)[:16]
    'ba7816bf8f01cfea'
    >>> os.remove(f.name)
    """
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _stat_key(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_ino, st.st_mtime_ns)


def verified_sha256(path: Path) -> str:
    """sha256 of ``path``, computed once per process for an unchanged file."""
    key = _stat_key(path)
    with _verified_lock:
        if key in _verified:
            return _verified[key]
    digest = file_digest(path)
    with _verified_lock:
        _verified[key] = digest
    return digest


def _recovery_hint(folder: Path, name: str) -> str:
    return f"delete the folder {folder} and re-run `geokd data fetch {name}`"


def write_arrays(folder: Path, name: str, arrays: dict[str, np.ndarray], *, info: dict) -> Path:
    """Store ``arrays`` as ``<key>.npy`` plus a manifest in ``folder``, atomically.

    If another process finished the same folder first, its copy is kept (after it
    passes verification) and ours is discarded.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        files = {}
        for key, array in arrays.items():
            array = np.ascontiguousarray(array)
            filename = f"{key}.npy"
            np.save(staging / filename, array, allow_pickle=False)
            files[filename] = {
                "sha256": file_digest(staging / filename),
                "size": (staging / filename).stat().st_size,
                "shape": list(array.shape),
                "dtype": str(array.dtype),
            }
        manifest = {"dataset": name, "format": MANIFEST_FORMAT, "files": files, **info}
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the cache is meant to be shared
        try:
            os.rename(staging, folder)
        except OSError:
            if not (folder / MANIFEST_NAME).is_file():
                raise
            # Someone else completed the same fetch concurrently: theirs is as good as ours.
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def read_manifest(folder: Path, name: str) -> dict:
    """The manifest of a cached dataset folder; refuse a folder that has none."""
    path = Path(folder) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataIntegrityError(
            f"{name}: cache folder {folder} has no {MANIFEST_NAME} (an interrupted or "
            f"foreign copy); {_recovery_hint(folder, name)}"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataIntegrityError(
            f"{name}: {path} is not valid JSON ({exc}); {_recovery_hint(folder, name)}"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DataIntegrityError(
            f"{name}: {path} has format {manifest.get('format') if isinstance(manifest, dict) else '?'}"
            f", expected {MANIFEST_FORMAT}; {_recovery_hint(folder, name)}"
        )
    return manifest


def load_arrays(folder: Path, name: str, keys: tuple[str, ...]) -> tuple[dict[str, np.ndarray], dict]:
    """Load ``keys`` from a cached folder after checking sizes and sha256s.

    Returns the arrays and the manifest (which also carries what the fetch recorded,
    e.g. the source and the training-set normalization constants).
    """
    folder = Path(folder)
    manifest = read_manifest(folder, name)
    out = {}
    for key in keys:
        filename = f"{key}.npy"
        entry = manifest.get("files", {}).get(filename)
        path = folder / filename
        if entry is None:
            raise DataIntegrityError(
                f"{name}: manifest in {folder} lists no {filename}; {_recovery_hint(folder, name)}"
            )
        if not path.is_file():
            raise DataIntegrityError(f"{name}: {path} is missing; {_recovery_hint(folder, name)}")
        size = path.stat().st_size
        if size != entry["size"]:
            raise DataIntegrityError(
                f"{name}: {path} has {size} bytes, the manifest recorded {entry['size']} "
                f"(truncated or modified); {_recovery_hint(folder, name)}"
            )
        digest = verified_sha256(path)
        if digest != entry["sha256"]:
            raise DataIntegrityError(
                f"{name}: sha256 of {path} is {digest}, the manifest recorded {entry['sha256']} "
                f"(the file was modified); {_recovery_hint(folder, name)}"
            )
        array = np.load(path, allow_pickle=False)
        if list(array.shape) != entry["shape"] or str(array.dtype) != entry["dtype"]:
            raise DataIntegrityError(
                f"{name}: {path} holds {array.dtype}{list(array.shape)}, manifest says "
                f"{entry['dtype']}{entry['shape']}; {_recovery_hint(folder, name)}"
            )
        out[key] = array
    return out, manifest
