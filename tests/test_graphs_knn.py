"""Dataset-scale sparse k-NN graphs: scikit-learn oracle, recall of the approximate mode,
exports to PyGSP / NetworkX, bad input."""

import networkx as nx
import numpy as np
import pygsp
import pytest
import scipy.sparse as sp
import torch
from sklearn.neighbors import NearestNeighbors

from geokd.graphs import degrees, knn_graph, laplacian, to_networkx, to_pygsp


def structured(n, d, *, seed=0, clusters=20, latent=16):
    """Clustered, low-rank, post-ReLU-like points (the kind of data activations are)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, latent))
    z = centers[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, latent))
    lift = rng.standard_normal((latent, d)) / np.sqrt(latent)
    return (np.maximum(z @ lift, 0) + 0.05 * rng.random((n, d))).astype(np.float32)


def sklearn_union_graph(x, k, metric):
    nn = NearestNeighbors(n_neighbors=k + 1, metric=metric, algorithm="brute").fit(x)
    dist, idx = nn.kneighbors(x)
    n = len(x)
    rows, cols, vals = [], [], []
    for i in range(n):
        others = [(j, d) for j, d in zip(idx[i], dist[i]) if j != i][:k]
        for j, d in others:
            rows.append(i), cols.append(j), vals.append(d)
    directed = sp.csr_matrix((vals, (rows, cols)), shape=(n, n))
    pattern = ((directed != 0) + (directed != 0).T).astype(bool)
    return pattern, directed


def edges(w):
    w = sp.coo_matrix(w)
    return set(zip(w.row.tolist(), w.col.tolist()))


@pytest.mark.parametrize("k", [1, 5, 12])
def test_exact_cosine_matches_sklearn_brute_force(k):
    x = structured(400, 64, seed=k)
    w = knn_graph(x, k=k)
    assert isinstance(w, sp.csr_matrix) and w.dtype == np.float64 and w.shape == (400, 400)
    assert abs(w - w.T).max() == 0 and not w.diagonal().any()
    pattern, _ = sklearn_union_graph(x.astype(np.float64), k, "cosine")
    assert edges(w) == edges(pattern)
    xn = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    r, c = w.nonzero()
    np.testing.assert_allclose(np.asarray(w[r, c]).ravel(), np.sum(xn[r] * xn[c], axis=1), atol=1e-5)


def test_gaussian_kernel_matches_sklearn_euclidean():
    x = structured(300, 32, seed=3)
    k = 6
    w = knn_graph(x, k=k, kernel="gaussian")
    pattern, directed = sklearn_union_graph(x.astype(np.float64), k, "euclidean")
    assert edges(w) == edges(pattern)
    sigma = directed.data.mean()  # mean distance over the selected (directed) edges
    r, c = w.nonzero()
    d = np.linalg.norm(x[r].astype(np.float64) - x[c].astype(np.float64), axis=1)
    np.testing.assert_allclose(np.asarray(w[r, c]).ravel(), np.exp(-d ** 2 / (2 * sigma ** 2)), rtol=1e-3)


def test_result_does_not_depend_on_chunking_or_input_type():
    x = structured(257, 40, seed=5)
    reference = knn_graph(x, k=7)
    for kwargs in ({"chunk_size": 7}, {"chunk_size": 100}, {"chunk_size": 256}, {"memory_budget": 40000}):
        w = knn_graph(x, k=7, **kwargs)
        assert edges(w) == edges(reference), kwargs
        np.testing.assert_allclose(w.toarray(), reference.toarray(), atol=1e-6)
    as_tensor = knn_graph(torch.from_numpy(x).reshape(257, 4, 10), k=7, device="cpu")
    assert edges(as_tensor) == edges(reference)
    as_float64 = knn_graph(x.astype(np.float64), k=7)
    assert edges(as_float64) == edges(reference)


def test_approximate_recall_against_exact():
    x = structured(1500, 256, seed=7)
    exact = knn_graph(x, k=10)
    approx = knn_graph(x, k=10, approximate=True)
    recall = len(edges(exact) & edges(approx)) / len(edges(exact))
    assert recall >= 0.99
    assert abs(approx - approx.T).max() == 0 and not approx.diagonal().any()
    # same seed -> same graph; few candidates and dimensions -> measurably worse
    assert edges(knn_graph(x, k=10, approximate=True)) == edges(approx)
    poor = knn_graph(x, k=10, approximate=True, projection_dim=4, candidates=10)
    assert len(edges(exact) & edges(poor)) / len(edges(exact)) < recall


def test_zero_rows_and_duplicates():
    x = structured(50, 8, seed=2)
    x[3] = 0
    x[10] = x[11]
    w = knn_graph(x, k=3)
    assert w[3].nnz == 0 and w[:, 3].nnz == 0  # cosine 0 with everything: weight-0 edges dropped
    assert w[10, 11] == pytest.approx(1.0, abs=1e-6)
    assert np.isfinite(w.data).all()


def test_exports_to_pygsp_and_networkx():
    x = structured(120, 16, seed=4)
    w = knn_graph(x, k=5)
    g = to_pygsp(w)
    assert isinstance(g, pygsp.graphs.Graph) and g.n_vertices == 120
    assert int(g.n_edges) == w.nnz // 2
    np.testing.assert_allclose(g.dw, degrees(w))
    g.compute_laplacian("normalized")
    np.testing.assert_allclose(g.L.toarray(), laplacian(w, kind="normalized").toarray(), atol=1e-12)
    h = to_networkx(w)
    assert isinstance(h, nx.Graph) and h.number_of_nodes() == 120 and h.number_of_edges() == w.nnz // 2
    nx_degrees = dict(h.degree(weight="weight"))
    np.testing.assert_allclose([nx_degrees[i] for i in range(120)], degrees(w))
    np.testing.assert_allclose(nx.to_scipy_sparse_array(h, nodelist=range(120)).toarray(), w.toarray())
    with pytest.raises(ValueError, match="symmetric"):
        to_networkx(np.array([[0.0, 1.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="zero diagonal"):
        to_pygsp(np.eye(2))
    with pytest.raises(ValueError, match="coords with 120 rows"):
        to_pygsp(w, coords=np.zeros((3, 2)))


def test_bad_input():
    x = structured(20, 4)
    bad = x.copy()
    bad[7, 1] = np.nan
    with pytest.raises(ValueError, match="NaN/Inf .* in row 7"):
        knn_graph(bad, k=3)
    with pytest.raises(ValueError, match=r"1 <= k < N=20 .*got 20"):
        knn_graph(x, k=20)
    with pytest.raises(ValueError, match="got 0"):
        knn_graph(x, k=0)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        knn_graph(x[0], k=1)
    with pytest.raises(ValueError, match="at least 2 points"):
        knn_graph(x[:1], k=1)
    with pytest.raises(ValueError, match="NumPy array or torch.Tensor"):
        knn_graph([[1.0, 2.0]], k=1)
    with pytest.raises(ValueError, match="kernel"):
        knn_graph(x, k=3, kernel="dot")
    with pytest.raises(ValueError, match="approximate mode supports kernel='cosine'"):
        knn_graph(x, k=3, kernel="gaussian", approximate=True)
    with pytest.raises(ValueError, match="chunk_size"):
        knn_graph(x, k=3, chunk_size=0)
    with pytest.raises(ValueError, match="candidates"):
        knn_graph(x, k=3, approximate=True, candidates=2)
    with pytest.raises(ValueError, match="real numeric"):
        knn_graph(np.array([["a", "b"], ["c", "d"]]), k=1)


@pytest.mark.slow
def test_large_exact_and_approximate_against_sklearn_queries():
    n, d, k = 12000, 1024, 10
    x = structured(n, d, seed=11, clusters=60, latent=32)
    exact = knn_graph(x, k=k)
    queries = np.random.default_rng(0).choice(n, 300, replace=False)
    nn = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(x)
    _, idx = nn.kneighbors(x[queries])
    rows = exact.tolil().rows
    for q, found in zip(queries, idx):
        expected = [j for j in found if j != q][:k]
        assert set(expected) <= set(rows[q])  # union graph rows contain the directed k-NN
    approx = knn_graph(x, k=k, approximate=True)
    recall = len(edges(exact) & edges(approx)) / len(edges(exact))
    assert recall >= 0.99
