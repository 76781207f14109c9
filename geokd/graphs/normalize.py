"""Degree normalization of dense batch graphs, and float64 Laplacians for analysis.

Degree policy: a node whose degree is <= 0 (an all-zero row, or negative cosines that
outweigh the positive ones) gets ``D^-1/2 = 0`` (``D^-1 = 0`` for ``rw``), so its row and
column of the normalized graph are 0 instead of inf/NaN. This matches PyGSP, which gives
disconnected nodes a zero inverse degree.

Range policy: NaN/Inf graphs are refused. Half-precision graphs are normalized in
float32 and cast back. The normalization is scale-free, so when the degrees overflow
(huge weights) or a tiny positive degree makes ``D^-1`` infinite, the graph and its
degrees are divided by one power of two and normalized again; a result that still does
not fit the dtype (a degree cancelled to nearly 0 beside large weights) raises
``ValueError``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from geokd.graphs._numerics import fit_dtype, full_precision, pow2_scale, working
from geokd.graphs._validation import check_finite_graph, check_square

NORMALIZATIONS = ("sym", "rw", "none")


def _safe_inverse_power(deg: torch.Tensor, exponent: float) -> torch.Tensor:
    positive = deg > 0
    # The inner where keeps the backward pass of pow away from non-positive degrees.
    safe = torch.where(positive, deg, torch.ones_like(deg))
    return torch.where(positive, safe.pow(exponent), torch.zeros_like(deg))


def normalize(a: torch.Tensor, *, mode: str = "sym", degrees: torch.Tensor | None = None,
              where: str | None = None) -> torch.Tensor:
    """Normalize a dense ``(N, N)`` graph by its degrees ``D = diag(A 1)``.

    Parameters
    ----------
    a : torch.Tensor
        ``(N, N)`` adjacency.
    mode : {"sym", "rw", "none"}
        ``"sym"``: ``D^-1/2 A D^-1/2`` (the GKD paper); ``"rw"``: ``D^-1 A`` (rows sum to 1);
        ``"none"``: ``A`` unchanged.
    degrees : torch.Tensor, optional
        ``(N,)`` degrees to use instead of ``A 1`` (e.g. the degrees of the unmasked graph).
    where : str, optional
        Prefix for error messages.

    Examples
    --------
    >>> a = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    >>> normalize(a)
    tensor([[0.0000, 0.7071, 0.7071],
            [0.7071, 0.0000, 0.0000],
            [0.7071, 0.0000, 0.0000]])
    >>> normalize(a, mode="rw")
    tensor([[0.0000, 0.5000, 0.5000],
            [1.0000, 0.0000, 0.0000],
            [1.0000, 0.0000, 0.0000]])
    """
    check_square(a, where=where)
    if mode not in NORMALIZATIONS:
        raise ValueError(f"expected normalization mode in {NORMALIZATIONS}, got {mode!r}")
    check_finite_graph(a, where=where)
    if degrees is not None:
        p = f"{where}: " if where else ""
        if not isinstance(degrees, torch.Tensor) or tuple(degrees.shape) != (a.shape[0],):
            got = tuple(degrees.shape) if isinstance(degrees, torch.Tensor) else type(degrees).__name__
            raise ValueError(f"{p}expected degrees of shape ({a.shape[0]},), got {got}")
        if not bool(torch.isfinite(degrees).all()):
            raise ValueError(f"{p}expected finite degrees, got NaN/Inf")
    if mode == "none":
        return a
    with full_precision(a):
        out = _normalize(working(a), mode=mode, degrees=None if degrees is None else working(degrees), where=where)
        return fit_dtype(out, a.dtype, what=f"{mode}-normalized graph values", where=where,
                         hint="a degree is too close to 0 for this dtype; normalize in float32")


def _by_degrees(a: torch.Tensor, deg: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "sym":
        inv_sqrt = _safe_inverse_power(deg, -0.5)
        # One symmetric factor (products commute) keeps a symmetric A exactly symmetric.
        return a * (inv_sqrt.unsqueeze(1) * inv_sqrt.unsqueeze(0))
    return _safe_inverse_power(deg, -1.0).unsqueeze(1) * a


def _normalize(a: torch.Tensor, *, mode: str, degrees: torch.Tensor | None = None,
               where: str | None = None, checked: bool = True) -> torch.Tensor:
    """:func:`normalize` of a validated, finite float32/float64 graph, autocast off.

    ``checked=False`` skips the range check and its retry: an overflow then shows as
    NaN/Inf in the result (the GKD loss checks its total once and recomputes with checks
    only if that is not finite).
    """
    if mode == "none":
        return a
    deg = a.sum(dim=1) if degrees is None else degrees
    out = _by_degrees(a, deg, mode)
    if not checked:
        return out
    # One cheap (N, N) check: an infinite degree would silently zero its row (D^-1/2 = 0).
    with torch.no_grad():
        in_range = bool(torch.isfinite(deg.sum() + out.sum()))
    if not in_range:
        if degrees is None:
            a = a / pow2_scale(a)
            deg = a.sum(dim=1)
        else:
            scale = pow2_scale(torch.stack([a.abs().amax(), deg.abs().amax()]))
            a, deg = a / scale, deg / scale
        out = _by_degrees(a, deg, mode)
        if not bool(torch.isfinite(out).all()):
            p = f"{where}: " if where else ""
            raise ValueError(f"{p}the {mode}-normalized graph overflows {a.dtype}: a degree is too close "
                             "to 0 for the weights beside it (negative weights cancelling positive ones)")
    return out


def _as_float64_square(w):
    if isinstance(w, torch.Tensor):
        w = w.detach().cpu().to(torch.float64).numpy()
    if sp.issparse(w):
        w = sp.csr_matrix(w, dtype=np.float64)
    else:
        w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"expected a square weight matrix (N, N), got shape {w.shape}")
    values = w.data if sp.issparse(w) else w
    if not np.all(np.isfinite(values)):
        raise ValueError("expected finite weights, got NaN/Inf")
    return w


def degrees(w) -> np.ndarray:
    """Weighted degrees ``W 1`` of a dense or sparse graph, in float64.

    Examples
    --------
    >>> degrees(np.array([[0, 1, 0], [1, 0, 2], [0, 2, 0]]))
    array([1., 3., 2.])
    """
    w = _as_float64_square(w)
    return np.asarray(w.sum(axis=1)).ravel()


def laplacian(w, *, kind: str = "combinatorial"):
    """Graph Laplacian of a symmetric dense or sparse ``W``, in float64.

    ``"combinatorial"``: ``L = D - W``. ``"normalized"``: ``L = I - D^-1/2 W D^-1/2``, where
    a node of degree <= 0 gets ``D^-1/2 = 0`` and ``L_ii = 0`` (as PyGSP does for
    disconnected nodes). Sparse in, sparse (CSR) out; dense in (NumPy or torch), NumPy out.

    Examples
    --------
    >>> w = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 2.0], [0.0, 2.0, 0.0]])
    >>> laplacian(w)
    array([[ 1., -1.,  0.],
           [-1.,  3., -2.],
           [ 0., -2.,  2.]])
    >>> np.round(laplacian(w, kind="normalized"), 4)
    array([[ 1.    , -0.5774,  0.    ],
           [-0.5774,  1.    , -0.8165],
           [ 0.    , -0.8165,  1.    ]])
    """
    if kind not in ("combinatorial", "normalized"):
        raise ValueError(f"expected kind in ('combinatorial', 'normalized'), got {kind!r}")
    w = _as_float64_square(w)
    deg = degrees(w)
    n = w.shape[0]
    if kind == "combinatorial":
        if sp.issparse(w):
            return (sp.diags(deg) - w).tocsr()
        return np.diag(deg) - w
    positive = deg > 0
    inv_sqrt = np.zeros(n)
    inv_sqrt[positive] = deg[positive] ** -0.5
    if sp.issparse(w):
        d = sp.diags(inv_sqrt)
        return (sp.diags(positive.astype(np.float64)) - d @ w @ d).tocsr()
    return np.diag(positive.astype(np.float64)) - inv_sqrt[:, None] * w * inv_sqrt[None, :]
