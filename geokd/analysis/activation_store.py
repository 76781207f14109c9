"""On-disk store of a network's sensing-point features, read back a checksummed block at a time.

A whole-split analysis cannot hold its activations in memory (the WRN-28-1 teacher's
``layer1`` on CIFAR-10's 50,000 training images is 3.3 GB in float32; ResNet-18's on
ImageNet's validation set, 40 GB). So the forward pass writes each layer's node features
once to ``<folder>/<layer>.f16`` or ``.f32`` (the user's choice of precision), at the rows of
their nodes, and every metric reads them back in blocks (:class:`StoredRows`, a
:mod:`geokd.graphs.row_source`).

Integrity, as for every file geokd writes: ``<layer>.json`` records the sha256 of every
block of ``block_rows`` rows and of the row norms, and every read verifies the blocks it
touches, so a corrupt block is a :class:`geokd.errors.DataIntegrityError` naming the file,
the block and its rows, never a silently wrong graph. Rows are checked as they arrive: a
NaN/Inf activation or one beyond float16's range is refused there, naming the node.

Reads and writes go through ``pread``/``pwrite``, not a memory map: mapped pages count as the
process's resident memory, the page cache that serves ``pread`` does not, so the memory
budget (:mod:`geokd.analysis.memory_budget`) holds whatever the store's size.

Examples
--------
>>> import tempfile
>>> store = ActivationStore(tempfile.mkdtemp(), dtype="float16")
>>> writer = store.writer("layer1", num_rows=3, width=2)
>>> writer.write(np.array([2, 0]), np.array([[4.0, 5.0], [0.5, 1.0]], dtype=np.float32))
>>> writer.write(np.array([1]), np.array([[2.0, 3.0]], dtype=np.float32))
>>> rows = writer.finish()
>>> rows.shape, rows.read(0, 3).tolist(), rows.take(np.array([2])).tolist()
((3, 2), [[0.5, 1.0], [2.0, 3.0], [4.0, 5.0]], [[4.0, 5.0]])
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from geokd.errors import DataIntegrityError

STORE_DTYPES = {"float16": np.float16, "float32": np.float32}
#: Stored bytes per checksummed block: large enough that hashing costs little per read,
#: small enough that a read of a few rows does not pull in much more.
BLOCK_BYTES = 16 * 2 ** 20
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def _safe_name(layer: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in layer)


class ActivationStore:
    """A folder of one network's stored layers.

    Parameters
    ----------
    folder : str or path
        Created if missing.
    dtype : {"float16", "float32"}
        Precision the features are kept in (float16 halves the disk and the reads; the
        metrics then see features rounded to 11 significant bits).
    """

    def __init__(self, folder, *, dtype: str = "float32"):
        if dtype not in STORE_DTYPES:
            raise ValueError(f"expected a store dtype in {sorted(STORE_DTYPES)}, got {dtype!r}")
        self.folder = Path(folder)
        self.dtype = dtype
        self.folder.mkdir(parents=True, exist_ok=True)

    def writer(self, layer: str, *, num_rows: int, width: int, label: str = "") -> "LayerWriter":
        """A writer of ``num_rows`` rows of ``width`` features for ``layer`` (``label`` names it in errors)."""
        suffix = ".f16" if self.dtype == "float16" else ".f32"
        return LayerWriter(self.folder / f"{_safe_name(layer)}{suffix}", num_rows=num_rows, width=width,
                           dtype=self.dtype, label=label or layer)

    def remove(self) -> None:
        """Delete the folder and what it holds."""
        shutil.rmtree(self.folder, ignore_errors=True)


class LayerWriter:
    """Writes one layer's rows at their positions, then seals them with checksums (:meth:`finish`)."""

    def __init__(self, path: Path, *, num_rows: int, width: int, dtype: str, label: str):
        self.path, self.label, self.dtype = path, label, STORE_DTYPES[dtype]
        self.shape = (int(num_rows), int(width))
        self.row_bytes = self.shape[1] * np.dtype(self.dtype).itemsize
        self.block_rows = max(1, min(self.shape[0], BLOCK_BYTES // max(1, self.row_bytes)))
        self.norms = np.full(self.shape[0], np.nan, dtype=np.float32)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(self._fd, self.shape[0] * self.row_bytes)

    def write(self, positions: np.ndarray, rows: np.ndarray) -> None:
        """Store ``rows`` (float32, ``(len(positions), width)``) at node ``positions``."""
        positions = np.asarray(positions, dtype=np.int64)
        if rows.shape != (positions.size, self.shape[1]):
            raise ValueError(f"{self.label}: expected rows of shape ({positions.size}, {self.shape[1]}), "
                             f"got {rows.shape}")
        finite = np.isfinite(rows).all(axis=1)
        if not finite.all():
            raise ValueError(f"{self.label}: expected finite activations, got NaN/Inf at node "
                             f"{int(positions[np.flatnonzero(~finite)[0]])}")
        if self.dtype == np.float16:
            biggest = float(np.abs(rows).max()) if rows.size else 0.0
            if biggest > _FLOAT16_MAX:
                raise ValueError(f"{self.label}: expected activations within float16's range (|x| <= "
                                 f"{_FLOAT16_MAX:g}) for a float16 store, got {biggest:.4g}; "
                                 "store them in float32 (--store-dtype float32)")
        stored = rows.astype(self.dtype, copy=False)
        # Norms of the values as stored (what the graphs will see), computed as the k-NN graphs
        # compute them for in-memory rows, so both give the same graphs.
        as_stored = torch.from_numpy(np.require(stored, np.float32, ["C", "W"]))   # a copy if read-only
        self.norms[positions] = torch.linalg.vector_norm(as_stored, dim=1).numpy()
        order = np.argsort(positions, kind="stable")
        sorted_positions = positions[order]
        # One pwrite per run of consecutive positions (a whole batch, for a sorted node set).
        breaks = np.flatnonzero(np.diff(sorted_positions) != 1) + 1
        for run in np.split(np.arange(positions.size), breaks):
            if run.size == 0:
                continue
            chunk = np.ascontiguousarray(stored[order[run]])
            os.pwrite(self._fd, chunk.tobytes(), int(sorted_positions[run[0]]) * self.row_bytes)

    def finish(self) -> "StoredRows":
        """Checksum every block, write the manifest, and return the rows for reading."""
        missing = np.flatnonzero(np.isnan(self.norms))
        if missing.size:
            os.close(self._fd)
            raise ValueError(f"{self.label}: expected every one of the {self.shape[0]} rows written, got "
                             f"{missing.size} missing (first: node {int(missing[0])})")
        os.fsync(self._fd)
        os.close(self._fd)
        digests = []
        with open(self.path, "rb") as handle:
            while chunk := handle.read(self.block_rows * self.row_bytes):
                digests.append(hashlib.sha256(chunk).hexdigest())
        norms_path = self.path.with_suffix(".norms.npy")
        np.save(norms_path, self.norms)
        manifest = {"layer": self.label, "file": self.path.name, "dtype": np.dtype(self.dtype).name,
                    "shape": list(self.shape), "block_rows": self.block_rows, "block_sha256": digests,
                    "norms_sha256": hashlib.sha256(self.norms.tobytes()).hexdigest()}
        self.path.with_suffix(".json").write_text(json.dumps(manifest, indent=1))
        return StoredRows(self.path, shape=self.shape, dtype=self.dtype, block_rows=self.block_rows,
                          digests=digests, norms=self.norms, label=self.label)


class StoredRows:
    """A layer's stored features as a row source (``read``, ``take``; float32 out).

    Every block a read touches is verified against its sha256 first.
    """

    in_memory = False

    def __init__(self, path: Path, *, shape, dtype, block_rows: int, digests: list[str], norms: np.ndarray,
                 label: str):
        self.path, self.shape, self.dtype, self.label = Path(path), tuple(shape), np.dtype(dtype), label
        self.block_rows, self.digests = int(block_rows), list(digests)
        self.row_bytes = self.shape[1] * self.dtype.itemsize
        self.norms = torch.from_numpy(norms)
        # Blocks verified by an earlier read of this object, with the file's (size, mtime) then:
        # re-hashing every read tripled the cost of a pass over the store.
        self._verified = np.zeros(len(self.digests), dtype=bool)
        self._stamp = None

    @classmethod
    def open(cls, manifest_path) -> "StoredRows":
        """The rows a :meth:`LayerWriter.finish` sealed, from their manifest ``<layer>.json``."""
        manifest_path = Path(manifest_path)
        manifest = json.loads(manifest_path.read_text())
        path = manifest_path.with_name(manifest["file"])
        norms = np.load(path.with_suffix(".norms.npy"))
        if hashlib.sha256(norms.tobytes()).hexdigest() != manifest["norms_sha256"]:
            raise DataIntegrityError(f"{manifest['layer']}: stored row norms {path.with_suffix('.norms.npy')} fail "
                                     "their checksum; run the analysis again")
        return cls(path, shape=manifest["shape"], dtype=manifest["dtype"], block_rows=manifest["block_rows"],
                   digests=manifest["block_sha256"], norms=norms, label=manifest["layer"])

    @property
    def nbytes_float32(self) -> int:
        """Bytes the whole layer takes as a float32 array in memory."""
        return self.shape[0] * self.shape[1] * 4

    def _open(self) -> int:
        fd = os.open(self.path, os.O_RDONLY)
        status = os.fstat(fd)
        stamp = (status.st_size, status.st_mtime_ns, status.st_ino)
        if stamp != self._stamp:   # written to since it was verified: verify every block again
            self._verified[:] = False
            self._stamp = stamp
        return fd

    def _block(self, fd: int, index: int) -> np.ndarray:
        start = index * self.block_rows
        rows = min(self.block_rows, self.shape[0] - start)
        data = np.empty((rows, self.shape[1]), dtype=self.dtype)   # writable: torch takes it as it is
        got = os.preadv(fd, [memoryview(data).cast("B")], start * self.row_bytes)
        if got == data.nbytes and self._verified[index]:
            return data
        if got != data.nbytes or hashlib.sha256(data).hexdigest() != self.digests[index]:
            raise DataIntegrityError(
                f"{self.label}: stored activations {self.path} fail their checksum in block {index} (rows "
                f"{start}..{start + rows - 1}): expected sha256 {self.digests[index][:16]}..., the file changed "
                f"after it was written ({got} of {data.nbytes} bytes read); run the analysis again")
        self._verified[index] = True
        return data

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` as a float32 ``(stop - start, d)`` tensor."""
        start, stop = max(0, int(start)), min(self.shape[0], int(stop))
        out = torch.empty((max(0, stop - start), self.shape[1]), dtype=torch.float32)
        fd = self._open()
        try:
            for index in range(start // self.block_rows, -(-stop // self.block_rows) if stop > start else 0):
                block = torch.from_numpy(self._block(fd, index))
                b0 = index * self.block_rows
                lo, hi = max(start, b0), min(stop, b0 + block.shape[0])
                out[lo - start:hi - start] = block[lo - b0:hi - b0]   # torch's vectorized float16 -> float32
        finally:
            os.close(fd)
        return out

    def take(self, positions) -> torch.Tensor:
        """The rows at ``positions`` (any order, repeats allowed) as a float32 tensor."""
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        if positions.size and (positions.min() < 0 or positions.max() >= self.shape[0]):
            raise IndexError(f"{self.label}: expected row positions in 0..{self.shape[0] - 1}, got "
                             f"{int(positions.min())}..{int(positions.max())}")
        out = torch.empty((positions.size, self.shape[1]), dtype=torch.float32)
        ascending = bool((np.diff(positions) >= 0).all())
        order = np.arange(positions.size) if ascending else np.argsort(positions, kind="stable")
        blocks = positions[order] // self.block_rows
        fd = self._open()
        try:
            for index in np.unique(blocks).tolist():
                lo, hi = np.searchsorted(blocks, [index, index + 1])
                wanted = order[lo:hi]
                block = torch.from_numpy(self._block(fd, index))
                picked = block.index_select(0, torch.from_numpy(positions[wanted] - index * self.block_rows))
                if ascending:   # a slice: converted in place, no scatter
                    out[lo:hi] = picked
                else:
                    out[torch.from_numpy(wanted)] = picked.float()
        finally:
            os.close(fd)
        return out

    def to_array(self) -> np.ndarray:
        """All rows as a float32 NumPy array (the caller checks they fit its budget)."""
        return self.read(0, self.shape[0]).numpy()
