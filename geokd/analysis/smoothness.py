"""Label smoothness of a layer: how much graph weight crosses class boundaries.

On a graph ``W`` of a layer's representations of a node set, with one-hot labels ``Y``,
the smoothness is ``s = tr(Y^T L Y)``. For the combinatorial Laplacian ``L = D - W`` it
equals ``sum_ij W_ij 1[y_i != y_j]`` over ordered pairs: the weight of the edges that
cross classes. Small ``s`` means a smooth label signal, i.e. classes already separated by
the layer's geometry. ``ratio`` divides the crossing weight by the total weight, which
makes layers of different scale comparable. The normalized version uses
``L_sym = I - D^-1/2 W D^-1/2`` (Chung's and PyGSP's convention for an isolated node: its
row and column of ``L_sym`` are zero).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from geokd.analysis._validate import as_labels, as_weight_matrix, where

LAPLACIANS = ("combinatorial", "normalized", "ratio")


def _inverse_sqrt_degrees(w: sp.csr_matrix) -> np.ndarray:
    degrees = np.asarray(w.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(degrees)
    np.power(degrees, -0.5, where=degrees > 0, out=inv_sqrt)
    return inv_sqrt


def smoothness_from_graph(w, labels, *, laplacian: str = "combinatorial", name: str | None = None) -> float:
    """Label smoothness ``tr(Y^T L Y)`` of ``labels`` on the graph ``w``.

    Parameters
    ----------
    w : array-like or scipy.sparse matrix, shape (N, N)
        Symmetric, nonnegative, zero-diagonal weights.
    labels : array-like of int, shape (N,)
    laplacian : {"combinatorial", "normalized", "ratio"}
        ``combinatorial``: ``L = D - W``; ``normalized``: ``L = I - D^-1/2 W D^-1/2``;
        ``ratio``: crossing weight divided by the total weight (in [0, 1]).
    name : str, optional
        The layer's name, used in error messages.

    Returns
    -------
    float

    Examples
    --------
    >>> w = np.array([[0, 1, 2], [1, 0, 0], [2, 0, 0]], dtype=float)
    >>> smoothness_from_graph(w, [0, 0, 1])          # edge 0-2 crosses, both directions
    4.0
    >>> smoothness_from_graph(w, [0, 0, 1], laplacian="ratio")
    0.6666666666666666
    """
    if laplacian not in LAPLACIANS:
        raise ValueError(f"{where(name)}expected laplacian in {LAPLACIANS}, got {laplacian!r}")
    csr = as_weight_matrix(w, name=name)
    y = as_labels(labels, csr.shape[0], name=name)
    coo = csr.tocoo()
    crossing_edges = y[coo.row] != y[coo.col]
    if laplacian == "combinatorial":
        return float(coo.data[crossing_edges].sum())
    if laplacian == "ratio":
        total = float(coo.data.sum())
        if total <= 0:
            raise ValueError(f"{where(name)}expected a graph with positive total weight for the ratio, got 0")
        return float(coo.data[crossing_edges].sum()) / total
    # tr(Y^T Y) counts the connected nodes (isolated ones have L_ii = 0); subtract the
    # normalized weight kept inside classes.
    inv_sqrt = _inverse_sqrt_degrees(csr)
    normalized = coo.data * inv_sqrt[coo.row] * inv_sqrt[coo.col]
    connected = np.count_nonzero(inv_sqrt)
    return float(connected - normalized[~crossing_edges].sum())


def smoothness_metrics(w, labels, *, name: str | None = None) -> dict[str, float]:
    """All three smoothness values of ``labels`` on ``w`` (keys as in ``LAPLACIANS``).

    Examples
    --------
    >>> w = np.array([[0, 1], [1, 0]], dtype=float)
    >>> smoothness_metrics(w, [0, 1])
    {'combinatorial': 2.0, 'normalized': 2.0, 'ratio': 1.0}
    """
    return {lap: smoothness_from_graph(w, labels, laplacian=lap, name=name) for lap in LAPLACIANS}


def label_smoothness(features, labels, *, k: int = 10, laplacian: str = "combinatorial",
                     device="cpu", name: str | None = None) -> float:
    """Label smoothness of one layer's features on their cosine k-NN graph.

    The graph is :func:`geokd.analysis.layer_graph.cosine_knn_graph` (symmetric union of
    each node's ``k`` nearest neighbours, zero diagonal, negative cosines clipped at 0).

    Parameters
    ----------
    features : array-like or torch.Tensor, shape (N, ...)
        One row per input (flattened channel-major).
    labels : array-like of int, shape (N,)
    k : int
        Neighbours per node before the union.
    laplacian : {"combinatorial", "normalized", "ratio"}
    device : str or torch.device
        Where the similarities are computed.
    name : str, optional
        The layer's name, used in error messages.

    Examples
    --------
    >>> x = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1]])
    >>> label_smoothness(x, [0, 0, 1, 1], k=1)       # neighbours stay inside classes
    0.0
    >>> label_smoothness(x, [0, 1, 0, 1], k=1) > 0
    True
    """
    from geokd.analysis.layer_graph import cosine_knn_graph

    w = cosine_knn_graph(features, k=k, device=device, name=name)
    return smoothness_from_graph(w, labels, laplacian=laplacian, name=name)
