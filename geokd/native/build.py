"""Compile a C source shipped with geokd once per machine and load it with ctypes.

The library is built with ``-O3 -march=native -fopenmp`` (:data:`FLAGS`) into
``<cache>/native/<name>-<key>.so`` (``<cache>``: ``$GEOKD_CACHE`` or ``~/.cache/geokd``),
where the key hashes the source, the compiler's version, the flags and the CPU's feature
flags, so a cache shared between machines never hands one machine code built for
another. It is written under a temporary name and renamed into place, so concurrent
builds (pytest-xdist workers, parallel trainings) never load a half-written file; one
that fails to load (truncated, foreign) is rebuilt once.

Anything that prevents it (no compiler, a failed build, a torch not on GNU OpenMP, a
platform other than Linux, ``GEOKD_NATIVE=0``) makes :func:`load_library` raise
:class:`NativeUnavailable` naming the cause; callers fall back to ATen operations.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

__all__ = ["NativeUnavailable", "library_path", "load_library", "omp_runtimes"]

FLAGS = ("-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=c11",
         # -std=c11 turns off gcc's contraction of a * b + c into one fused multiply-add;
         # the Gram product's inner loop is nothing but those (1.5x slower without).
         "-ffp-contract=fast",
         # Nothing reads errno; without this, sqrt() in a loop stays scalar.
         "-fno-math-errno",
         # gcc picks 256-bit vectors on AVX-512 CPUs unless told; the kernels' register
         # accumulators are twice as fast in 512-bit ones (measured on the 2-core Xeon VM).
         *(("-mprefer-vector-width=512",) if platform.machine() in ("x86_64", "AMD64") else ()))
LIBS = ("-lm",)
_SOURCES = Path(__file__).resolve().parent
_lock = threading.Lock()


class NativeUnavailable(RuntimeError):
    """geokd's compiled kernels cannot be used here; the message says why."""


def omp_runtimes() -> list[str]:
    """Paths of the OpenMP runtimes mapped into this process (Linux; empty elsewhere).

    Examples
    --------
    >>> import torch
    >>> isinstance(omp_runtimes(), list)
    True
    """
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    names = ("libgomp", "libiomp", "libomp")
    return sorted({line.split()[-1] for line in maps.splitlines()
                   if "/" in line and any(n in line.rsplit("/", 1)[-1] for n in names)})


def _compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc or not shutil.which(cc):
        raise NativeUnavailable(f"no C compiler found (expected $CC, cc or gcc on PATH, got CC={os.environ.get('CC')!r})")
    return cc


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return ""


def _key(source: bytes, cc: str) -> str:
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise NativeUnavailable(f"the C compiler {cc!r} does not run: {exc}") from None
    digest = hashlib.sha256(b"\0".join([source, version.encode(), " ".join(FLAGS + LIBS).encode(), _cpu_flags().encode()]))
    return digest.hexdigest()[:16]


def _check_environment() -> None:
    if os.environ.get("GEOKD_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        raise NativeUnavailable("disabled by GEOKD_NATIVE=0")
    if not sys.platform.startswith("linux"):
        raise NativeUnavailable(f"built only on Linux, this is {sys.platform}")
    import torch

    if "OpenMP" not in torch.__config__.parallel_info().split("ATen parallel backend:")[-1].splitlines()[0]:
        raise NativeUnavailable("torch's parallel backend is not OpenMP")
    runtimes = omp_runtimes()
    if not any("libgomp" in path for path in runtimes):
        # Loading our library would bring a second OpenMP runtime whose threads fight ATen's.
        raise NativeUnavailable(f"torch does not run on GNU OpenMP (OpenMP runtimes loaded: {runtimes or 'none'})")


def _build(source_path: Path, target: Path, cc: str) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise NativeUnavailable(f"cannot write the build to {target.parent}: {exc}") from None
    try:
        done = subprocess.run([cc, *FLAGS, "-o", tmp, str(source_path), *LIBS], capture_output=True, text=True,
                              timeout=300)
        if done.returncode != 0:
            raise NativeUnavailable(f"{cc} failed to build {source_path.name}: {done.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    except (OSError, subprocess.SubprocessError) as exc:
        raise NativeUnavailable(f"could not build {source_path.name} with {cc}: {exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def library_path(name: str, *, cache: str | os.PathLike | None = None) -> Path:
    """Where the build of ``geokd/native/<name>.c`` for this machine and compiler goes.

    Raises
    ------
    NativeUnavailable
        When there is no working C compiler.
    """
    return _library_path(name, _compiler(), cache)


def _library_path(name: str, cc: str, cache) -> Path:
    from geokd.data.cache import cache_root

    return cache_root(cache) / "native" / f"{name}-{_key((_SOURCES / f'{name}.c').read_bytes(), cc)}.so"


def load_library(name: str, *, cache: str | os.PathLike | None = None) -> ctypes.CDLL:
    """Build (once per machine) and load ``geokd/native/<name>.c``.

    Parameters
    ----------
    name : str
        The source's stem, e.g. ``"batchnorm"``.
    cache : path, optional
        Cache folder (default: ``$GEOKD_CACHE`` or ``~/.cache/geokd``); the library goes
        to its ``native/`` subfolder.

    Raises
    ------
    NativeUnavailable
        With the reason, when the library cannot be built or used here.
    """
    _check_environment()
    source_path = _SOURCES / f"{name}.c"
    cc = _compiler()
    target = _library_path(name, cc, cache)
    with _lock:
        for attempt in range(2):
            if not target.is_file():
                _build(source_path, target, cc)
            try:
                return ctypes.CDLL(str(target))
            except OSError as exc:
                if attempt:
                    raise NativeUnavailable(f"built {target} but cannot load it: {exc}") from None
                target.unlink(missing_ok=True)  # a truncated or foreign file: build it again
    raise AssertionError("unreachable")
