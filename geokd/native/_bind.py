"""ctypes functions of a geokd library, one per (name, dtype): ``geokd_<prefix><name>_f32/_f64``.

Examples
--------
>>> sorted(KERNEL_DTYPES.values())
['f32', 'f64']
"""

from __future__ import annotations

import ctypes

import torch

__all__ = ["KERNEL_DTYPES", "bind_by_dtype"]

#: The dtypes the C kernels are compiled for, and the suffix of their functions.
KERNEL_DTYPES = {torch.float32: "f32", torch.float64: "f64"}


def bind_by_dtype(library: ctypes.CDLL, *, prefix: str, signatures: dict[str, list]) -> dict:
    """``{(name, dtype): function}`` for every name of ``signatures`` (its argument types;
    every function returns a C ``int`` status) and every dtype of :data:`KERNEL_DTYPES`."""
    functions = {}
    for name, argtypes in signatures.items():
        for dtype, suffix in KERNEL_DTYPES.items():
            fn = getattr(library, f"geokd_{prefix}{name}_{suffix}")
            fn.argtypes, fn.restype = argtypes, ctypes.c_int
            functions[name, dtype] = fn
    return functions
