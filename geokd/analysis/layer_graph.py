"""The graphs the analysis measures a layer on, built from its features.

Two graphs per layer and node set:

- the cosine k-NN graph (sparse, symmetric union, zero diagonal) used for smoothness,
  k-NN consistency and spectra; built by :func:`geokd.graphs.knn_graph`;
- the GKD graph ``Â = D^-1/2 A D^-1/2`` of the full cosine similarity with a zero
  diagonal (the graph the GKD loss compares), for the aligned distance.

:func:`cosine_graphs` builds both from one Gram product (what the analysis uses while the
``N x N`` matrix fits in memory); :func:`cosine_knn_graph` alone never forms it.

Negative cosines: the k-NN graph keeps the k most similar neighbours, and any negative
weight among them is clipped to 0 (a negative cosine is not an affinity; keeping it would
make the Laplacian indefinite and the smoothness meaningless). Post-ReLU and pooled
post-ReLU features, the paper's sensing points, have no negative cosines at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from geokd.analysis._validate import as_features, where


def _check_k(k, n: int, name: str | None) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k < n:
        raise ValueError(f"{where(name)}expected an integer k with 1 <= k < N = {n}, got {k!r}")


def _check_nonzero_rows(x: np.ndarray, name: str | None) -> None:
    _check_nonzero_norms(np.linalg.norm(x, axis=1), name)


def _check_nonzero_norms(norms: np.ndarray, name: str | None) -> None:
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise ValueError(
            f"{where(name)}expected nonzero feature vectors for the cosine similarity, "
            f"got {zero.size} all-zero rows (first at index {zero[0]})"
        )


def cosine_knn_graph(features, *, k: int = 10, device="cpu", name: str | None = None, approximate: bool = False,
                     candidates: int | None = None, memory_budget: int | None = None,
                     shard=None) -> sp.csr_matrix:
    """Cosine k-NN graph of a layer: symmetric union, zero diagonal, weights ``>= 0``.

    Parameters
    ----------
    features : array-like, torch.Tensor or row source, shape (N, ...)
        A row source (:mod:`geokd.graphs.row_source`, e.g. stored activations) is read a
        block at a time and never held whole.
    k : int
        Neighbours per node before the union; ``1 <= k < N``.
    device : str or torch.device
    name : str, optional
        The layer's name, used in error messages.
    approximate, candidates, memory_budget, shard
        As :func:`geokd.graphs.knn_graph` takes them (default: exact, its default budget, one process).

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
    from geokd.graphs.dataset_knn import DEFAULT_MEMORY_BUDGET
    from geokd.graphs.row_source import is_row_source

    if is_row_source(features):
        x = features
        _check_k(k, x.shape[0], name)
        _check_nonzero_norms(x.norms.numpy(), name)
    else:
        x = as_features(features, name=name)
        _check_k(k, x.shape[0], name)
        _check_nonzero_rows(x, name)
        x = torch.from_numpy(x)
    options = {} if candidates is None else {"candidates": int(candidates)}
    w = knn_graph(x, k=int(k), kernel="cosine", device=device, approximate=bool(approximate),
                  memory_budget=int(memory_budget or DEFAULT_MEMORY_BUDGET), shard=shard, **options)
    w = sp.csr_matrix(w, dtype=np.float64)
    w.setdiag(0)
    np.maximum(w.data, 0, out=w.data)
    # Float32 similarities can be asymmetric in the last bit: make the union exactly symmetric.
    w = w.maximum(w.T).tocsr()
    w.eliminate_zeros()
    return w


def _gkd_normalize_(similarity: torch.Tensor, name: str | None) -> torch.Tensor:
    """``D^-1/2 A D^-1/2`` of a zero-diagonal cosine matrix ``A``, in place."""
    # float32 row sums: torch sums pairwise (relative error ~1e-7 at 10,000 terms), and a
    # float64 sum would first convert the whole N x N matrix (about 20x slower).
    degrees = similarity.sum(dim=1)
    if bool((degrees <= 0).any()):
        bad = int(torch.nonzero(degrees <= 0)[0])
        raise ValueError(
            f"{where(name)}expected positive degrees in the cosine graph, got {float(degrees[bad]):.3g} "
            f"at node {bad} (negative cosines dominate; use post-ReLU features)"
        )
    inv_sqrt = degrees.rsqrt()
    return similarity.mul_(inv_sqrt[:, None]).mul_(inv_sqrt[None, :])


def _cosine_matrix(features, *, device, name: str | None, block: int | None = None) -> torch.Tensor:
    from geokd.graphs.dense_cosine import cosine_similarity_matrix
    from geokd.graphs.row_source import is_row_source

    x = features if is_row_source(features) else as_features(features, name=name)
    try:
        return cosine_similarity_matrix(x, device=device, **({} if block is None else {"block": int(block)}))
    except ValueError as error:   # e.g. an all-zero row: say which layer
        raise ValueError(f"{where(name)}{error}") from None


def gkd_adjacency(features, *, device="cpu", name: str | None = None) -> torch.Tensor:
    """The GKD graph ``Â = D^-1/2 A D^-1/2`` of a node set (full cosine graph, zero diagonal).

    Returns a dense float32 ``(N, N)`` tensor on ``device``.

    Examples
    --------
    >>> a = gkd_adjacency(np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]))
    >>> bool(torch.allclose(a, a.T)), float(a.diagonal().abs().sum())
    (True, 0.0)
    """
    return _gkd_normalize_(_cosine_matrix(features, device=device, name=name), name)


@dataclass(frozen=True)
class CosineGraphs:
    """The graphs of one layer read from one cosine matrix (see :func:`cosine_graphs`)."""

    knn: sp.csr_matrix                 # cosine k-NN graph of the node set
    adjacency: torch.Tensor            # dense GKD graph Â of the node set
    subset_knn: sp.csr_matrix | None   # cosine k-NN graph of the nodes ``subset`` (None: no subset)


def cosine_graphs(features, *, k: int = 10, subset=None, device="cpu", name: str | None = None,
                  block: int | None = None) -> CosineGraphs:
    """The graphs of a layer from one Gram product: k-NN graph, GKD graph ``Â``, subset k-NN graph.

    The same graphs as :func:`cosine_knn_graph` and :func:`gkd_adjacency` (up to float32
    rounding of the similarities, which can swap neighbours tied to the last bit), for the
    cost of one of them: the ``N x N`` cosine matrix is computed once (``N²·4`` bytes on
    ``device``), ranked, and then turned into ``Â`` in place.

    Parameters
    ----------
    features : array-like or torch.Tensor, shape (N, ...)
    k : int
        Neighbours of the k-NN graphs, ``1 <= k < N`` (and below the subset's size).
    subset : array-like of int, optional
        Positions of nodes whose own k-NN graph (their features alone) is wanted too.
    device : str or torch.device
    name : str, optional
        The layer's name, used in error messages.
    block : int, optional
        Rows of one product panel of the similarity (stored rows: two such blocks are read
        and held at once).

    Examples
    --------
    >>> graphs = cosine_graphs(np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1]]), k=1, subset=[0, 2, 3])
    >>> graphs.knn.nnz, tuple(graphs.adjacency.shape), graphs.subset_knn.shape
    (4, (4, 4), (3, 3))
    """
    similarity = _cosine_matrix(features, device=device, name=name, block=block)
    n = similarity.shape[0]
    _check_k(k, n, name)
    knn = _clipped_knn(similarity, int(k))
    subset_knn = None
    if subset is not None:
        chosen = torch.as_tensor(np.asarray(subset, dtype=np.int64), device=similarity.device)
        if chosen.ndim != 1 or not 1 <= int(k) < chosen.numel() or int(chosen.min()) < 0 or int(chosen.max()) >= n:
            raise ValueError(f"{where(name)}expected a subset of more than k = {k} positions in 0..{n - 1}, "
                             f"got {chosen.numel()} positions")
        subset_knn = _clipped_knn(similarity[chosen][:, chosen], int(k))
    return CosineGraphs(knn=knn, adjacency=_gkd_normalize_(similarity, name), subset_knn=subset_knn)


def _clipped_knn(similarity: torch.Tensor, k: int) -> sp.csr_matrix:
    from geokd.graphs.dense_cosine import knn_from_similarity

    knn = knn_from_similarity(similarity, k=k)
    np.maximum(knn.data, 0, out=knn.data)  # as in cosine_knn_graph: a negative cosine is no affinity
    knn.eliminate_zeros()
    return knn
