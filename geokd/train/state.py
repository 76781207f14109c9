"""The resumable training state: written atomically, checksummed, weights-only loadable.

The file holds one ``dict`` ``{"format", "sha256", "payload"}`` where ``payload`` is a
``uint8`` tensor with the bytes of a nested ``torch.save`` of the real state; the
checksum is verified before those bytes are unpickled (also with ``weights_only=True``).
Everything inside is tensors, numbers, strings, lists and dicts, so no pickle code runs.

RNG states covered: torch's CPU generator, every CUDA generator, NumPy's legacy global
generator, Python's ``random`` and any extra ``torch.Generator`` passed by name (the
data order and augmentation generator of the trainer).

Examples
--------
>>> import tempfile, os, torch
>>> path = os.path.join(tempfile.mkdtemp(), "state.pt")
>>> write_state(path, {"epoch": 3, "w": torch.arange(3.0)})
>>> read_state(path)["epoch"]
3
"""

from __future__ import annotations

import hashlib
import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geokd.errors import CheckpointError

__all__ = ["write_state", "read_state", "atomic_write_bytes", "capture_rng", "restore_rng"]

_FORMAT = "geokd-train-state-v1"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old or the new file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        # On ENOSPC/EIO the partial temporary would keep the disk full: remove it, keep the old file.
        tmp.unlink(missing_ok=True)
        raise
    # Make the rename itself durable.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_state(path: str | Path, state: dict) -> None:
    """Serialize ``state`` atomically with its sha256."""
    inner = io.BytesIO()
    torch.save(state, inner)
    payload = inner.getvalue()
    outer = io.BytesIO()
    torch.save(
        {
            "format": _FORMAT,
            "sha256": hashlib.sha256(payload).hexdigest(),
            "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8),
        },
        outer,
    )
    atomic_write_bytes(path, outer.getvalue())


def read_state(path: str | Path) -> dict:
    """Load a state written by :func:`write_state`, refusing a corrupt or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training state not found: {path}")
    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or not a torch file at all
        raise CheckpointError(f"{path}: unreadable training state ({type(exc).__name__}: {exc})") from None
    if not isinstance(outer, dict) or outer.get("format") != _FORMAT:
        raise CheckpointError(f"{path}: expected a {_FORMAT} file, got {type(outer).__name__}")
    payload = outer["payload"].numpy().tobytes()
    digest = hashlib.sha256(payload).hexdigest()
    if digest != outer["sha256"]:
        raise CheckpointError(f"{path}: checksum mismatch (recorded {outer['sha256'][:12]}…, got {digest[:12]}…)")
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)


def capture_rng(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every RNG state the training loop draws from, as weights-only-safe values."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
        "generators": {name: gen.get_state() for name, gen in (generators or {}).items()},
    }
    return state


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Put back what :func:`capture_rng` saved (the named generators in place)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    saved = state["generators"]
    for name, gen in (generators or {}).items():
        if name not in saved:
            raise CheckpointError(f"training state has no RNG state for generator {name!r} (has {sorted(saved)})")
        gen.set_state(saved[name])
