"""Degree normalization of dense batch graphs, and float64 Laplacians for analysis.

Degree policy: a node whose degree is <= 0 (an all-zero row, or negative cosines that
outweigh the positive ones) gets ``D^-1/2 = 0`` (``D^-1 = 0`` for ``rw``), so its row and
column of the normalized graph are 0 instead of inf/NaN. This matches PyGSP, which gives
disconnected nodes a zero inverse degree.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from geokd.graphs._validation import check_square

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
    if mode == "none":
        return a
    deg = a.sum(dim=1) if degrees is None else degrees
    if mode == "sym":
        inv_sqrt = _safe_inverse_power(deg, -0.5)
        # One symmetric factor (products commute) keeps a symmetric A exactly symmetric.
        return a * (inv_sqrt.unsqueeze(1) * inv_sqrt.unsqueeze(0))
    return _safe_inverse_power(deg, -1.0).unsqueeze(1) * a


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
