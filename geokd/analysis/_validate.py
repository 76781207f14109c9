"""Input checks shared by the analysis metrics (one place for the error wording).

A metric checks its graph at the door with :func:`as_weight_matrix`. The pipeline hands one
layer's k-NN graph to half a dozen metrics, so it checks it once with :func:`check_graph`;
the :class:`CheckedGraph` it gets back passes every later door without being checked or
converted again (its arrays are read-only, so what was checked stays what is used).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch


def where(name: str | None) -> str:
    """A prefix naming the layer a message is about, or nothing."""
    return f"{name}: " if name else ""


@dataclass(frozen=True, eq=False)
class CheckedGraph:
    """A weight matrix that has passed :func:`as_weight_matrix`; metrics take it as it is.

    Examples
    --------
    >>> g = check_graph(np.array([[0.0, 1.0], [1.0, 0.0]]))
    >>> as_weight_matrix(g) is g.matrix, g.shape
    (True, (2, 2))
    >>> g.matrix.data[0] = -1.0
    Traceback (most recent call last):
    ...
    ValueError: assignment destination is read-only
    """

    matrix: sp.csr_matrix

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape


def check_graph(w, *, name: str | None = None, what: str = "W") -> CheckedGraph:
    """Check ``w`` once (:func:`as_weight_matrix`) and freeze it for the metrics that follow."""
    if isinstance(w, CheckedGraph):
        return w
    # A copy: the CSR may share its arrays with the caller's matrix, which stays writable.
    csr = as_weight_matrix(w, name=name, what=what).copy()
    for array in (csr.data, csr.indices, csr.indptr):
        array.flags.writeable = False
    return CheckedGraph(csr)


def as_weight_matrix(w, *, name: str | None = None, what: str = "W") -> sp.csr_matrix:
    """Return ``w`` as a float64 CSR matrix after checking it is a valid graph.

    A valid graph here is square, symmetric, finite, nonnegative, with a zero diagonal.
    A :class:`CheckedGraph` was checked when it was made and is returned as it is.
    """
    if isinstance(w, CheckedGraph):
        return w.matrix
    if isinstance(w, torch.Tensor):
        w = w.detach().cpu().double().numpy()
    if not sp.issparse(w):
        return _dense_weight_matrix(np.asarray(w, dtype=np.float64), name=name, what=what)
    csr = sp.csr_matrix(w, dtype=np.float64)
    n, m = csr.shape
    if n != m:
        raise ValueError(f"{where(name)}expected a square (N, N) {what}, got shape {csr.shape}")
    if n < 2:
        raise ValueError(f"{where(name)}expected a graph of at least 2 nodes, got {n}")
    if not np.all(np.isfinite(csr.data)):
        raise ValueError(f"{where(name)}expected finite weights in {what}, got NaN or inf")
    if csr.data.size and csr.data.min() < 0:
        raise ValueError(
            f"{where(name)}expected nonnegative weights in {what}, got a minimum of {csr.data.min():.3g}"
        )
    if np.any(csr.diagonal() != 0):
        raise ValueError(f"{where(name)}expected a zero diagonal in {what} (no self-loops)")
    asym = abs(csr - csr.T)
    scale = max(float(abs(csr).max()), 1e-300) if csr.nnz else 1.0
    if asym.nnz and asym.max() > 1e-6 * scale:
        raise ValueError(f"{where(name)}expected a symmetric {what}, got max |W - W^T| = {asym.max():.3g}")
    csr.eliminate_zeros()
    return csr


def _dense_weight_matrix(arr: np.ndarray, *, name: str | None, what: str) -> sp.csr_matrix:
    """:func:`as_weight_matrix` of a dense array: the same checks, on the dense array
    (vectorized passes, several times faster than on its CSR form for a full graph)."""
    if arr.ndim != 2:
        raise ValueError(f"{where(name)}expected {what} as a 2-D (N, N) matrix, got shape {arr.shape}")
    n, m = arr.shape
    if n != m:
        raise ValueError(f"{where(name)}expected a square (N, N) {what}, got shape {arr.shape}")
    if n < 2:
        raise ValueError(f"{where(name)}expected a graph of at least 2 nodes, got {n}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{where(name)}expected finite weights in {what}, got NaN or inf")
    if arr.min() < 0:
        raise ValueError(f"{where(name)}expected nonnegative weights in {what}, got a minimum of {arr.min():.3g}")
    if np.any(np.diagonal(arr) != 0):
        raise ValueError(f"{where(name)}expected a zero diagonal in {what} (no self-loops)")
    asym = float(np.abs(arr - arr.T).max())
    scale = max(float(arr.max()), 1e-300)
    if asym > 1e-6 * scale:
        raise ValueError(f"{where(name)}expected a symmetric {what}, got max |W - W^T| = {asym:.3g}")
    return sp.csr_matrix(arr)


def as_labels(labels, n: int, *, name: str | None = None) -> np.ndarray:
    """Return integer labels of length ``n`` as an int64 array."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{where(name)}expected labels of shape ({n},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{where(name)}expected integer class labels, got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise ValueError(f"{where(name)}expected class labels >= 0, got {y.min()}")
    return y.astype(np.int64, copy=False)


def as_features(features, *, name: str | None = None) -> np.ndarray:
    """Return features flattened to a float32 ``(N, D)`` array (channel-major flattening)."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().float().numpy()
    x = np.asarray(features, dtype=np.float32)
    if x.ndim < 2:
        raise ValueError(f"{where(name)}expected features of shape (N, ...), got {x.shape}")
    x = x.reshape(x.shape[0], -1)
    if x.shape[0] < 2:
        raise ValueError(f"{where(name)}expected at least 2 inputs, got {x.shape[0]}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{where(name)}expected finite features, got NaN or inf")
    return x
