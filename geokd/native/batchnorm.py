"""ctypes bindings of ``batchnorm.c``: a channels-last CPU batch norm, forward and backward.

The map is passed as its dense channels-last memory, seen as a ``(rows, width)`` matrix
whose column ``k`` holds channel ``k % C`` (``width = r·C`` for the ``r`` of
:func:`geokd.models.batchnorm._wide_rows`). :class:`geokd.models.batchnorm.BatchNorm2d`
is the caller; the checks here keep the C code in bounds, they do not replace its own.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from geokd.native._bind import KERNEL_DTYPES, bind_by_dtype

__all__ = ["BatchNormKernels"]

_P, _I64, _INT, _D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
_SIGNATURES = {
    # x, out, rows, width, channels, weight, bias, running_mean, running_var, momentum, eps, threads, mean, invstd
    "forward": [_P, _P, _I64, _I64, _I64, _P, _P, _P, _P, _D, _D, _INT, _P, _P],
    # x, dy, dx, rows, width, channels, mean, invstd, weight, threads, grad_weight, grad_bias
    "backward": [_P, _P, _P, _I64, _I64, _I64, _P, _P, _P, _INT, _P, _P],
}


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _check_map(x: Tensor, name: str) -> None:
    if (x.device.type != "cpu" or x.dtype not in KERNEL_DTYPES or x.dim() != 4
            or not x.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError(f"batch norm kernel: expected {name} as a channels-last float32/float64 CPU map, "
                         f"got {x.dtype} {tuple(x.shape)} on {x.device}, strides {x.stride()}")


def _check_vector(v: Tensor | None, like: Tensor, channels: int, name: str) -> None:
    if v is not None and (v.device.type != "cpu" or v.dtype != like.dtype or not v.is_contiguous()
                          or tuple(v.shape) != (channels,)):
        raise ValueError(f"batch norm kernel: expected {name} as a contiguous CPU {like.dtype} vector of "
                         f"{channels}, got {v.dtype} {tuple(v.shape)} on {v.device}")


class BatchNormKernels:
    """The loaded library's forward and backward, dispatched on dtype.

    Parameters
    ----------
    library : ctypes.CDLL
        ``batchnorm.c`` built by :func:`geokd.native.build.load_library`.
    """

    def __init__(self, library: ctypes.CDLL):
        self._fns = bind_by_dtype(library, prefix="bn_", signatures=_SIGNATURES)

    def _call(self, name: str, dtype: torch.dtype, *args) -> None:
        if self._fns[name, dtype](*args) != 0:
            raise MemoryError(f"batch norm kernel {name}: could not allocate its per-thread sums")

    def forward(self, x: Tensor, *, rows: int, weight: Tensor | None, bias: Tensor | None,
                running_mean: Tensor | None, running_var: Tensor | None, momentum: float,
                eps: float) -> tuple[Tensor, Tensor, Tensor]:
        """Training-mode batch norm of ``x``; updates the running statistics in place.

        Returns ``(out, mean, invstd)``: the channels-last output, the batch mean (dtype of
        ``x``) and ``1 / sqrt(var + eps)`` in float64, which the backward takes.
        """
        n, c, h, w = x.shape
        _check_map(x, "x")
        for v, name in ((weight, "weight"), (bias, "bias"), (running_mean, "running_mean"),
                        (running_var, "running_var")):
            _check_vector(v, x, c, name)
        if (n * h * w) % rows or (running_mean is None) != (running_var is None):
            raise ValueError(f"batch norm kernel: {rows} rows do not divide {n * h * w} pixels, "
                             "or only one running statistic was given")
        out = torch.empty_like(x, memory_format=torch.channels_last)
        mean = torch.empty(c, dtype=x.dtype)
        invstd = torch.empty(c, dtype=torch.float64)
        self._call("forward", x.dtype, _ptr(x), _ptr(out), rows, n * h * w * c // rows, c, _ptr(weight),
                   _ptr(bias), _ptr(running_mean), _ptr(running_var), momentum, eps, torch.get_num_threads(),
                   _ptr(mean), _ptr(invstd))
        return out, mean, invstd

    def backward(self, x: Tensor, dy: Tensor, *, rows: int, mean: Tensor, invstd: Tensor,
                 weight: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``(dx, grad_weight, grad_bias)`` of :meth:`forward` (``None`` gradients without ``weight``)."""
        n, c, h, w = x.shape
        _check_map(x, "x")
        _check_map(dy, "dy")
        _check_vector(mean, x, c, "mean")
        _check_vector(weight, x, c, "weight")
        if dy.shape != x.shape or dy.dtype != x.dtype or invstd.dtype != torch.float64 or invstd.shape != (c,):
            raise ValueError(f"batch norm kernel: expected dy like x {tuple(x.shape)} {x.dtype} and float64 "
                             f"invstd of {c}, got dy {tuple(dy.shape)} {dy.dtype}, invstd {invstd.dtype}")
        dx = torch.empty_like(x, memory_format=torch.channels_last)
        grad_weight = None if weight is None else torch.empty_like(weight)
        grad_bias = None if weight is None else torch.empty_like(weight)
        self._call("backward", x.dtype, _ptr(x), _ptr(dy), _ptr(dx), rows, n * h * w * c // rows, c, _ptr(mean),
                   _ptr(invstd), _ptr(weight), torch.get_num_threads(), _ptr(grad_weight), _ptr(grad_bias))
        return dx, grad_weight, grad_bias
