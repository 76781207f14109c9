"""The run directory: what a finished or interrupted run leaves on disk.

``<run_dir>/`` holds

- ``config.json``  the resolved :class:`~geokd.train.config.TrainConfig`;
- ``meta.json``    seed, versions (python, torch, numpy, geokd), git revision, device,
  start and end times, status (``running`` / ``finished`` / ``failed``);
- ``metrics.jsonl`` one JSON object per finished epoch;
- ``state.pt``     the resumable state (see :mod:`geokd.train.state`);
- ``model.pt``     the final network (:func:`geokd.checkpoints.save_checkpoint`);
- ``lock``         held with ``flock`` while a process writes the run, so a second
  process refuses instead of interleaving (the OS drops it if the holder dies).

:func:`directory_lock` is that mechanism for any output directory: ``geokd analyze
--out DIR`` and ``geokd reproduce`` hold it (as ``DIR/.lock``) on the analysis and
study directories they write.

Examples
--------
>>> import tempfile
>>> run = RunDir(tempfile.mkdtemp())
>>> with run.lock():
...     run.append_metrics({"epoch": 1, "test_error": 0.5})
>>> run.read_metrics()
[{'epoch': 1, 'test_error': 0.5}]
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

import geokd
from geokd.errors import DirectoryLockedError, RunLockedError
from geokd.train.state import atomic_write_bytes

__all__ = ["DirectoryLockedError", "RunDir", "RunLockedError", "directory_lock", "environment_info",
           "git_revision", "utc_now"]

try:  # POSIX advisory locks; elsewhere fall back to an exclusive-create file.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


@contextlib.contextmanager
def directory_lock(path: str | Path, *, kind: str = "directory", lock_name: str = ".lock",
                   error: type[DirectoryLockedError] = DirectoryLockedError) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``path/lock_name`` while writing ``path``.

    The directory is created if needed. If another process holds the lock, ``error`` is
    raised at once (no waiting), naming the directory and the holder (``pid N on host``,
    which the holder writes into the lock file). The OS releases the lock when the holder
    exits, even if it is killed, so a stale lock file never blocks anyone. Locks are
    per open file: a second ``directory_lock`` on the same path in the same process
    refuses too.

    Examples
    --------
    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> with directory_lock(out, kind="analysis directory"):
    ...     try:
    ...         with directory_lock(out, kind="analysis directory"):
    ...             pass
    ...     except DirectoryLockedError as exc:
    ...         print(str(exc).split(" is being")[0] == f"analysis directory {out}")
    True
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    handle = open(path / lock_name, "a+")
    try:
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise error(
                    f"{kind} {path} is being written by {holder}; wait for it to finish or use another {kind}"
                ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {platform.node()}")
        handle.flush()
        yield path
    finally:
        handle.close()  # closing releases the flock


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def git_revision(path: str | Path | None = None) -> str | None:
    """The commit of the geokd source tree (``+dirty`` if modified), or None outside git."""
    where = Path(path) if path else Path(geokd.__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
            cwd=where, capture_output=True, text=True, timeout=10,
        )
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment_info() -> dict[str, Any]:
    """Versions and machine facts recorded beside every run.

    ``geokd_native`` says whether geokd's compiled CPU kernels ran (and why not): they
    change float rounding, not results, of channels-last CPU training.
    """
    from geokd.native import native_status

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "geokd": geokd.__version__,
        "git_revision": git_revision(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "geokd_native": native_status(),
        "argv": list(sys.argv),
    }


class RunDir:
    """Paths and small read/write helpers for one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    config_path = property(lambda self: self.path / "config.json")
    meta_path = property(lambda self: self.path / "meta.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    state_path = property(lambda self: self.path / "state.pt")
    model_path = property(lambda self: self.path / "model.pt")
    lock_path = property(lambda self: self.path / "lock")

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run's lock; raise :class:`RunLockedError` if another process holds it."""
        with directory_lock(self.path, kind="run directory", lock_name=self.lock_path.name, error=RunLockedError):
            yield

    # JSON files -----------------------------------------------------------------
    def write_json(self, path: Path, data: dict) -> None:
        atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())

    def read_json(self, path: Path) -> dict:
        with open(path) as handle:
            return json.load(handle)

    def read_meta(self) -> dict:
        return self.read_json(self.meta_path) if self.meta_path.is_file() else {}

    def update_meta(self, **fields: Any) -> dict:
        meta = self.read_meta()
        meta.update(fields)
        self.write_json(self.meta_path, meta)
        return meta

    def is_finished(self) -> bool:
        return self.model_path.is_file() and self.read_meta().get("status") == "finished"

    # metrics --------------------------------------------------------------------
    def append_metrics(self, record: dict) -> None:
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.is_file():
            return []
        records = []
        with open(self.metrics_path) as handle:
            for line in handle:
                line = line.strip()
                if line:
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError:
                        break  # a line cut by a crash: everything after it is unreliable
        return records

    def truncate_metrics(self, *, last_epoch: int) -> None:
        """Keep only the records of epochs ``<= last_epoch`` (after resuming)."""
        kept = [r for r in self.read_metrics() if r.get("epoch", 0) <= last_epoch]
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept)
        atomic_write_bytes(self.metrics_path, text.encode())
