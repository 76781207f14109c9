"""The analysis' memory budget: how many bytes it may hold resident, and what is left.

``geokd analyze --memory-budget 4GB`` bounds the process's peak resident memory. The
budget is spent on what the process already holds (Python, torch, the images: measured,
not guessed, from ``/proc/self/statm``) and on the blocks the analysis reads its stored
activations in, which are sized from what is left (:meth:`MemoryBudget.available`). Work
that cannot be split further (one block of rows) and does not fit is refused before it
starts, naming the budget and the block (:class:`MemoryBudgetError`).
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass

_UNITS = {"": 1, "B": 1, "K": 2 ** 10, "KB": 2 ** 10, "KIB": 2 ** 10, "M": 2 ** 20, "MB": 2 ** 20, "MIB": 2 ** 20,
          "G": 2 ** 30, "GB": 2 ** 30, "GIB": 2 ** 30, "T": 2 ** 40, "TB": 2 ** 40, "TIB": 2 ** 40}


class MemoryBudgetError(ValueError):
    """Work that cannot fit in the memory budget, even split into its smallest blocks."""


def parse_bytes(text) -> int:
    """``"4GB"``, ``"512 MiB"``, ``"1.5G"`` or a plain number of bytes, as bytes (powers of 1024).

    Examples
    --------
    >>> parse_bytes("4GB"), parse_bytes("512 MiB"), parse_bytes(1024)
    (4294967296, 536870912, 1024)
    >>> parse_bytes("lots")
    Traceback (most recent call last):
    ...
    ValueError: expected a size such as 4GB, 512MB or a number of bytes, got 'lots'
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
        if not match or match.group(2).upper() not in _UNITS:
            raise ValueError(f"expected a size such as 4GB, 512MB or a number of bytes, got {text!r}")
        value, unit = float(match.group(1)), match.group(2).upper()
    size = int(value * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"expected a positive size, got {text!r}")
    return size


def format_bytes(size: float) -> str:
    """A byte count for people.

    Examples
    --------
    >>> format_bytes(4 * 2 ** 30), format_bytes(3 * 2 ** 20), format_bytes(512)
    ('4.0 GB', '3.0 MB', '512 B')
    """
    for unit, scale in (("GB", 2 ** 30), ("MB", 2 ** 20), ("KB", 2 ** 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{int(size)} B"


def resident_bytes() -> int:
    """This process's resident memory now (Linux ``/proc/self/statm``; elsewhere its peak so far)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def release_freed_memory() -> None:
    """Hand memory the process has freed back to the system (glibc's ``malloc_trim``).

    After a forward pass, glibc keeps its freed small-block arenas mapped (170 MB after 5,000
    WRN-28-1 images in batches of 500), which would count against the budget for the rest
    of the run. Elsewhere a no-op.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, looked up once (``find_library`` runs ``ldconfig`` in a
    subprocess: a fork of this whole process), or ``None`` where there is none."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


@dataclass(frozen=True)
class MemoryBudget:
    """At most ``total`` bytes resident for the whole process.

    Examples
    --------
    >>> budget = MemoryBudget(total=parse_bytes("64GB"))
    >>> 0 < budget.available() < budget.total
    True
    >>> MemoryBudget(total=parse_bytes("1MB")).require(2 ** 20, what="one block of 64 rows of layer1")
    Traceback (most recent call last):
    ...
    geokd.analysis.memory_budget.MemoryBudgetError: ...
    """

    total: int

    def available(self) -> int:
        """Bytes left for new work: the budget less what the process holds now (0 at least)."""
        return max(0, self.total - resident_bytes())

    def require(self, nbytes: int, *, what: str) -> int:
        """``nbytes`` if that much is left, else a :class:`MemoryBudgetError` naming ``what``."""
        held, left = resident_bytes(), self.available()
        if nbytes > left or held > self.total:
            raise MemoryBudgetError(
                f"memory budget {format_bytes(self.total)} too small: {what} needs {format_bytes(nbytes)}, and "
                f"{format_bytes(left)} is left beside the {format_bytes(held)} the process already holds "
                f"(raise --memory-budget to at least {format_bytes(held + nbytes)})")
        return nbytes
