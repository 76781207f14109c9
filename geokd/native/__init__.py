"""geokd's compiled CPU kernels, built on first use (see :mod:`geokd.native.build`).

Two libraries today:

- ``batchnorm``: the passes of the channels-last batch norm
  (:class:`geokd.models.batchnorm.BatchNorm2d`);
- ``graphs``: the symmetric Gram product and the ``(B, B)`` arithmetic of the GKD and
  RKD-D layer terms (:mod:`geokd.losses.gkd`, :mod:`geokd.losses.rkd`).

Where they cannot be built or used, the callers run ATen operations instead, with the
same results up to rounding; :func:`native_status` says which it is and why.

Examples
--------
>>> status = native_status()
>>> sorted(status)
['batchnorm', 'graphs', 'reason']
>>> with native_disabled():
...     batchnorm_kernels() is None and graph_kernels() is None
True
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

from geokd.native.build import NativeUnavailable, load_library

__all__ = ["NativeUnavailable", "batchnorm_kernels", "graph_kernels", "native_disabled", "native_status"]

_LIBRARIES = ("batchnorm", "graphs")
_state = {"kernels": {}, "reasons": {}, "disabled": 0}
_lock = threading.Lock()


def _kernels(name: str):
    if _state["disabled"]:
        return None
    if name not in _state["kernels"]:
        with _lock:
            if name not in _state["kernels"]:
                if name == "batchnorm":
                    from geokd.native.batchnorm import BatchNormKernels as wrapper
                else:
                    from geokd.native.graphs import GraphKernels as wrapper
                kernels = None
                try:
                    kernels = wrapper(load_library(name))
                except NativeUnavailable as exc:
                    _state["reasons"][name] = str(exc)
                _state["kernels"][name] = kernels
    return _state["kernels"][name]


def batchnorm_kernels():
    """The batch-norm kernels (:class:`~geokd.native.batchnorm.BatchNormKernels`), or ``None``
    when they are unavailable or disabled by :func:`native_disabled`."""
    return _kernels("batchnorm")


def graph_kernels():
    """The graph kernels (:class:`~geokd.native.graphs.GraphKernels`), or ``None`` when they
    are unavailable or disabled by :func:`native_disabled`."""
    return _kernels("graphs")


def native_status() -> dict:
    """``{"batchnorm": bool, "graphs": bool, "reason": str | None}``: whether each library
    runs, and if one does not, why."""
    available = {name: _kernels(name) is not None for name in _LIBRARIES}
    if _state["disabled"]:
        reason = "disabled by native_disabled()"
    else:
        reasons = [f"{name}: {_state['reasons'][name]}" for name in _LIBRARIES if name in _state["reasons"]]
        reason = "; ".join(reasons) or None
    return {**available, "reason": reason}


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
