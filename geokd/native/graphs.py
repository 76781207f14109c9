"""ctypes bindings of ``graphs.c``: the symmetric Gram product, the ``(B, B)`` part of one
GKD or RKD-D layer term (value, and its gradient with respect to the student's Gram), and
the product ``alpha S X`` that turns the latter into the student's gradient.

The callers are :mod:`geokd.losses.gkd` and :mod:`geokd.losses.rkd`; the checks here keep
the C code in bounds, they do not replace the losses' own validation.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from geokd.native._bind import KERNEL_DTYPES, bind_by_dtype

__all__ = ["GraphKernels", "NORMALIZATIONS", "TASKS"]

#: The codes graphs.c uses for the normalization and the class-relation task.
NORMALIZATIONS = {"none": 0, "sym": 1, "rw": 2}
TASKS = {"all": 0, "intra": 1, "inter": 2}
_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_SIGNATURES = {
    "gram": [_P, _I64, _I64, _I64, _P, _INT],  # x, b, f, row stride, out, threads
    "gkd_layer": [_P, _P, _I64, _INT, _P, _INT, _I64, _P, _P],  # gram_t, gram_s, b, norm, labels, task, k, loss, s
    "rkd_layer": [_P, _P, _I64, _INT, _P, _P],  # gram_t, gram_s, b, include_diagonal, loss, s
    # s, x, b, f, x's row stride, alpha, out, out's row stride, threads
    "scaled_product": [_P, _P, _I64, _I64, _I64, ctypes.c_double, _P, _I64, _INT],
}
#: Above this batch, the Gram kernel's per-thread tile sums (~B^2 doubles) are not worth it.
MAX_GRAM_ROWS = 1024


def _check_rows(x: Tensor) -> None:
    if (x.device.type != "cpu" or x.dtype not in KERNEL_DTYPES or x.dim() != 2 or x.shape[0] < 1 or x.shape[1] < 1
            or x.stride(1) != 1 or x.stride(0) < x.shape[1]):
        raise ValueError(f"graph kernel: expected (B, F) float32/float64 CPU rows with unit feature stride, "
                         f"got {x.dtype} {tuple(x.shape)} on {x.device}, strides {x.stride()}")


def _check_grams(gram_t: Tensor, gram_s: Tensor) -> int:
    b = gram_s.shape[0] if gram_s.dim() == 2 else -1
    for g, name in ((gram_t, "gram_t"), (gram_s, "gram_s")):
        if (g.device.type != "cpu" or g.dtype != gram_s.dtype or g.dtype not in KERNEL_DTYPES
                or tuple(g.shape) != (b, b) or b < 2 or not g.is_contiguous()):
            raise ValueError(f"graph kernel: expected {name} as a contiguous ({b}, {b}) float32/float64 CPU "
                             f"matrix like gram_s (B >= 2), got {g.dtype} {tuple(g.shape)} on {g.device}")
    return b


class GraphKernels:
    """The loaded library's functions, dispatched on dtype.

    Parameters
    ----------
    library : ctypes.CDLL
        ``graphs.c`` built by :func:`geokd.native.build.load_library`.
    """

    def __init__(self, library: ctypes.CDLL):
        self._fns = bind_by_dtype(library, prefix="", signatures=_SIGNATURES)

    def _call(self, name: str, dtype: torch.dtype, *args) -> int:
        status = self._fns[name, dtype](*args)
        if status < 0:
            raise MemoryError(f"graph kernel {name}: could not allocate its scratch memory")
        return status

    def gram(self, x: Tensor) -> Tensor:
        """Exactly symmetric ``x @ x.T`` of ``(B, F)`` rows (any row stride), sums of each
        1024-feature block in float32 (float64 rows: float64) added in float64."""
        _check_rows(x)
        b, f = x.shape
        out = torch.empty(b, b, dtype=x.dtype)
        self._call("gram", x.dtype, x.data_ptr(), b, f, x.stride(0), out.data_ptr(), torch.get_num_threads())
        return out

    def scaled_product(self, s: Tensor, x: Tensor, *, alpha: float = 1.0) -> Tensor:
        """``alpha * s @ x`` of a contiguous ``(B, B)`` matrix and ``(B, F)`` rows (any row
        stride): each value one float32 (float64 rows: float64) sum over ``B`` in order,
        ``alpha`` applied to ``s`` in float64 first; the same with any thread count."""
        _check_rows(x)
        b, f = x.shape
        if s.device.type != "cpu" or s.dtype != x.dtype or tuple(s.shape) != (b, b) or not s.is_contiguous():
            raise ValueError(f"graph kernel: expected s as a contiguous ({b}, {b}) {x.dtype} CPU matrix, "
                             f"got {s.dtype} {tuple(s.shape)} on {s.device}")
        out = torch.empty(b, f, dtype=x.dtype)
        self._call("scaled_product", x.dtype, s.data_ptr(), x.data_ptr(), b, f, x.stride(0), float(alpha),
                   out.data_ptr(), f, torch.get_num_threads())
        return out

    def gkd_layer(self, gram_t: Tensor, gram_s: Tensor, *, normalization: str, labels: Tensor | None,
                  task: str, k: int | None) -> tuple[float, Tensor] | None:
        """``(Σ (A_T - A_S ∘ M)^2, S)`` of one GKD layer from the two Gram matrices, or
        ``None`` when a squared row norm is out of the dtype's safe range (or not finite).

        ``A`` is the cosine graph normalized by ``normalization``, ``M`` the ``task`` mask
        of ``labels`` times the union k-NN mask of the teacher's masked graph (``k=None``:
        none; ties to the lower index), ``A_T`` the teacher's masked graph, and
        ``S = dL/dG_s + (dL/dG_s)^T``, so that the student's rows get ``S @ x``.
        """
        b = _check_grams(gram_t, gram_s)
        if normalization not in NORMALIZATIONS or task not in TASKS:
            raise ValueError(f"graph kernel: expected normalization in {tuple(NORMALIZATIONS)} and task in "
                             f"{tuple(TASKS)}, got {normalization!r} and {task!r}")
        if k is not None and not 1 <= k < b:
            raise ValueError(f"graph kernel: expected k in [1, {b - 1}] or None, got {k!r}")
        if task != "all" and (labels is None or labels.dtype != torch.int64 or labels.device.type != "cpu"
                              or tuple(labels.shape) != (b,)):
            got = None if labels is None else f"{labels.dtype} {tuple(labels.shape)} on {labels.device}"
            raise ValueError(f"graph kernel: expected ({b},) int64 CPU labels for task={task!r}, got {got}")
        labels = None if task == "all" else labels.contiguous()
        loss = ctypes.c_double()
        s = torch.empty_like(gram_s)
        status = self._call("gkd_layer", gram_s.dtype, gram_t.data_ptr(), gram_s.data_ptr(), b,
                            NORMALIZATIONS[normalization], None if labels is None else labels.data_ptr(),
                            TASKS[task], k or 0, ctypes.byref(loss), s.data_ptr())
        return None if status else (loss.value, s)

    def rkd_layer(self, gram_t: Tensor, gram_s: Tensor, *, include_diagonal: bool) -> tuple[float, Tensor] | None:
        """``(mean Huber(ψ_S - ψ_T), S)`` of one RKD-D layer (ψ the distances over their
        off-diagonal mean; the mean over ``B^2`` entries with ``include_diagonal``, else
        ``B(B-1)``), or ``None`` when the squared norms' sum is out of range."""
        b = _check_grams(gram_t, gram_s)
        loss = ctypes.c_double()
        s = torch.empty_like(gram_s)
        status = self._call("rkd_layer", gram_s.dtype, gram_t.data_ptr(), gram_s.data_ptr(), b,
                            int(bool(include_diagonal)), ctypes.byref(loss), s.data_ptr())
        return None if status else (loss.value, s)
