"""Conversions of sparse graphs to PyGSP and NetworkX."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def _checked_symmetric(w) -> sp.csr_matrix:
    if not sp.issparse(w):
        w = np.asarray(w)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"expected a square weight matrix (N, N), got shape {w.shape}")
    w = sp.csr_matrix(w, dtype=np.float64)
    if not np.all(np.isfinite(w.data)):
        raise ValueError("expected finite weights, got NaN/Inf")
    asym = abs(w - w.T)
    if asym.nnz and asym.max() > 1e-12 * max(1.0, abs(w).max()):
        raise ValueError(f"expected a symmetric weight matrix, got max |W - W^T| = {asym.max():.3g}")
    if w.diagonal().any():
        raise ValueError("expected a zero diagonal (no self-loops)")
    return w


def to_pygsp(w, *, coords=None):
    """A :class:`pygsp.graphs.Graph` from a symmetric sparse or dense ``W``.

    Examples
    --------
    >>> g = to_pygsp(sp.csr_matrix(np.array([[0.0, 2.0], [2.0, 0.0]])))
    >>> g.n_vertices, int(g.n_edges), g.dw.tolist()
    (2, 1, [2.0, 2.0])
    """
    import pygsp

    w = _checked_symmetric(w)
    if coords is not None:
        coords = np.asarray(coords)
        if coords.shape[0] != w.shape[0]:
            raise ValueError(f"expected coords with {w.shape[0]} rows, got shape {coords.shape}")
    return pygsp.graphs.Graph(w, coords=coords)


def to_networkx(w):
    """An undirected :class:`networkx.Graph` with edge attribute ``weight``.

    Examples
    --------
    >>> g = to_networkx(np.array([[0.0, 0.5, 0.0], [0.5, 0.0, 1.0], [0.0, 1.0, 0.0]]))
    >>> sorted(g.edges(data="weight"))
    [(0, 1, 0.5), (1, 2, 1.0)]
    """
    import networkx as nx

    return nx.from_scipy_sparse_array(_checked_symmetric(w), edge_attribute="weight")
