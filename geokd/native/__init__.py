"""geokd's compiled CPU kernels, built on first use (see :mod:`geokd.native.build`).

Only one today: the passes of the channels-last batch norm
(:class:`geokd.models.batchnorm.BatchNorm2d`). Where they cannot be built or used, the
callers run ATen operations instead, with the same results up to rounding;
:func:`native_status` says which it is and why.

Examples
--------
>>> status = native_status()
>>> sorted(status)
['batchnorm', 'reason']
>>> with native_disabled():
...     batchnorm_kernels() is None
True
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

from geokd.native.build import NativeUnavailable, load_library

__all__ = ["NativeUnavailable", "batchnorm_kernels", "native_disabled", "native_status"]

_state = {"kernels": None, "reason": None, "tried": False, "disabled": 0}
_lock = threading.Lock()


def batchnorm_kernels():
    """The batch-norm kernels (:class:`~geokd.native.batchnorm.BatchNormKernels`), or ``None``
    when they are unavailable or disabled by :func:`native_disabled`."""
    if _state["disabled"]:
        return None
    if not _state["tried"]:
        with _lock:
            if not _state["tried"]:
                from geokd.native.batchnorm import BatchNormKernels

                try:
                    _state["kernels"] = BatchNormKernels(load_library("batchnorm"))
                except NativeUnavailable as exc:
                    _state["reason"] = str(exc)
                _state["tried"] = True
    return _state["kernels"]


def native_status() -> dict:
    """``{"batchnorm": bool, "reason": str | None}``: whether the kernels run, and if not, why."""
    kernels = batchnorm_kernels()
    reason = "disabled by native_disabled()" if _state["disabled"] else _state["reason"]
    return {"batchnorm": kernels is not None, "reason": reason}


@contextlib.contextmanager
def native_disabled() -> Iterator[None]:
    """Run the ATen fallbacks inside the block (to compare both paths, or to time them)."""
    with _lock:
        _state["disabled"] += 1
    try:
        yield
    finally:
        with _lock:
            _state["disabled"] -= 1
