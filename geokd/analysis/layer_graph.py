"""The graphs the analysis measures a layer on, built from its features.

Two graphs per layer and node set:

- the cosine k-NN graph (sparse, symmetric union, zero diagonal) used for smoothness,
  k-NN consistency and spectra; built by :func:`geokd.graphs.knn_graph`;
- the GKD graph ``Â = D^-1/2 A D^-1/2`` of the full cosine similarity with a zero
  diagonal (the graph the GKD loss compares), for the aligned distance.

Negative cosines: the k-NN graph keeps the k most similar neighbours, and any negative
weight among them is clipped to 0 (a negative cosine is not an affinity; keeping it would
make the Laplacian indefinite and the smoothness meaningless). Post-ReLU and pooled
post-ReLU features, the paper's sensing points, have no negative cosines at all.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from geokd.analysis._validate import as_features, where


def _check_nonzero_rows(x: np.ndarray, name: str | None) -> None:
    norms = np.linalg.norm(x, axis=1)
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise ValueError(
            f"{where(name)}expected nonzero feature vectors for the cosine similarity, "
            f"got {zero.size} all-zero rows (first at index {zero[0]})"
        )


def cosine_knn_graph(features, *, k: int = 10, device="cpu", name: str | None = None) -> sp.csr_matrix:
    """Cosine k-NN graph of a layer: symmetric union, zero diagonal, weights ``>= 0``.

    Parameters
    ----------
    features : array-like or torch.Tensor, shape (N, ...)
    k : int
        Neighbours per node before the union; ``1 <= k < N``.
    device : str or torch.device
    name : str, optional
        The layer's name, used in error messages.

    Returns
    -------
    scipy.sparse.csr_matrix, float64, shape (N, N)

    Examples
    --------
    >>> w = cosine_knn_graph(np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1]]), k=1)
    >>> w.shape, w.nnz                        # two mutual pairs
    ((4, 4), 4)
    """
    from geokd.graphs import knn_graph

    x = as_features(features, name=name)
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k < x.shape[0]:
        raise ValueError(f"{where(name)}expected an integer k with 1 <= k < N = {x.shape[0]}, got {k!r}")
    _check_nonzero_rows(x, name)
    w = knn_graph(torch.from_numpy(x), k=int(k), kernel="cosine", device=device)
    w = sp.csr_matrix(w, dtype=np.float64)
    w.setdiag(0)
    np.maximum(w.data, 0, out=w.data)
    # Float32 similarities can be asymmetric in the last bit: make the union exactly symmetric.
    w = w.maximum(w.T).tocsr()
    w.eliminate_zeros()
    return w


def gkd_adjacency(features, *, device="cpu", name: str | None = None) -> torch.Tensor:
    """The GKD graph ``Â = D^-1/2 A D^-1/2`` of a node set (full cosine graph, zero diagonal).

    Returns a dense float32 ``(N, N)`` tensor on ``device``.

    Examples
    --------
    >>> a = gkd_adjacency(np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]))
    >>> bool(torch.allclose(a, a.T)), float(a.diagonal().abs().sum())
    (True, 0.0)
    """
    x = torch.from_numpy(as_features(features, name=name)).to(device)
    _check_nonzero_rows(x.cpu().numpy(), name)
    z = torch.nn.functional.normalize(x, dim=1)
    a = z @ z.T
    a.fill_diagonal_(0)
    degrees = a.sum(dim=1)
    if bool((degrees <= 0).any()):
        bad = int(torch.nonzero(degrees <= 0)[0])
        raise ValueError(
            f"{where(name)}expected positive degrees in the cosine graph, got {float(degrees[bad]):.3g} "
            f"at node {bad} (negative cosines dominate; use post-ReLU features)"
        )
    inv_sqrt = degrees.rsqrt()
    return inv_sqrt[:, None] * a * inv_sqrt[None, :]
