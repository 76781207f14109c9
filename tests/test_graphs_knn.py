"""Dataset-scale sparse k-NN graphs: scikit-learn oracle, recall and exact weights of the
approximate mode (and of its re-ranking against a brute-force oracle), exports to PyGSP /
NetworkX, bad input."""

import math
import networkx as nx
import numpy as np
import pygsp
import pytest
import scipy.sparse as sp
import torch
from sklearn.neighbors import NearestNeighbors

from geokd.graphs import degrees, knn_graph, laplacian, to_networkx, to_pygsp
from geokd.graphs.dataset_knn import search_dtype


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


def sklearn_neighbours(x, k):
    """Each row's true k neighbours by brute-force cosine (scikit-learn), self dropped."""
    _, idx = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(x).kneighbors(x)
    return [[j for j in row if j != i][:k] for i, row in enumerate(idx)]


def neighbour_recall(w, truth):
    """Share of the true (i, j) neighbour pairs that are edges of the graph w."""
    rows = w.tolil().rows
    return np.mean([j in set(rows[i]) for i, found in enumerate(truth) for j in found])


def test_approximate_recall_against_exact():
    # d > projection_dim (384 by default), so the projection is really used.
    x = structured(1500, 512, seed=7)
    exact = knn_graph(x, k=10)
    approx = knn_graph(x, k=10, approximate=True)
    recall = len(edges(exact) & edges(approx)) / len(edges(exact))
    assert recall >= 0.99
    assert neighbour_recall(approx, sklearn_neighbours(x.astype(np.float64), 10)) >= 0.99
    assert abs(approx - approx.T).max() == 0 and not approx.diagonal().any()
    # same seed -> same graph; few candidates and dimensions -> measurably worse
    assert edges(knn_graph(x, k=10, approximate=True)) == edges(approx)
    poor = knn_graph(x, k=10, approximate=True, projection_dim=4, candidates=10)
    assert len(edges(exact) & edges(poor)) / len(edges(exact)) < recall


def test_approximate_edges_carry_exact_cosines():
    # Approximate mode may miss an edge, never mis-weight one: every weight is the cosine.
    x = structured(700, 640, seed=8, clusters=12)
    w = knn_graph(x, k=8, approximate=True, projection_dim=32, candidates=16, seed=3)
    xn = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    r, c = w.nonzero()
    np.testing.assert_allclose(np.asarray(w[r, c]).ravel(), np.sum(xn[r] * xn[c], axis=1), atol=1e-5)
    # each row keeps at least its k best among what it saw: never fewer than k edges
    assert (np.diff(w.indptr) >= 8).all()


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_search_precision_moves_candidates_never_weights(precision):
    # bfloat16 only chooses the candidates: the recall stays, every weight is the float64 cosine.
    x = structured(1500, 512, seed=7)
    exact = knn_graph(x, k=10)
    w = knn_graph(x, k=10, approximate=True, search_precision=precision)
    assert len(edges(exact) & edges(w)) / len(edges(exact)) >= 0.99
    xn = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    r, c = w.nonzero()
    np.testing.assert_allclose(np.asarray(w[r, c]).ravel(), np.sum(xn[r] * xn[c], axis=1), atol=1e-5)
    assert abs(w - w.T).max() == 0 and not w.diagonal().any()


def test_search_precision_auto_is_the_resolved_explicit_one():
    x = structured(900, 512, seed=11)
    explicit = "bfloat16" if search_dtype("auto", "cpu") == torch.bfloat16 else "float32"
    auto = knn_graph(x, k=8, approximate=True, seed=2)
    assert (auto != knn_graph(x, k=8, approximate=True, seed=2, search_precision=explicit)).nnz == 0
    # The option really changes the search: with no spare candidates (candidates = k) the
    # edges are the search's own choice, and bfloat16 scores choose some differently.
    lean = dict(k=8, approximate=True, seed=2, candidates=8, projection_dim=64)
    assert (knn_graph(x, search_precision="float32", **lean) != knn_graph(x, search_precision="bfloat16", **lean)).nnz > 0


def test_bfloat16_search_scores_are_shifted_before_rounding():
    # Rows like projected activations: a dominant common direction, cosines near 0.9.
    from geokd.graphs.dataset_knn import _search_coordinates

    rng = np.random.default_rng(4)
    z = np.abs(rng.standard_normal(64)) + 0.35 * rng.standard_normal((400, 64))
    z = (0.93 * z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)
    zt = torch.from_numpy(z)
    left, right = _search_coordinates(zt, torch.bfloat16)
    assert left.dtype == right.dtype == torch.bfloat16
    z64 = z.astype(np.float64)
    # what ranks row i's candidates: <z_i, z_j> up to a constant per row, here -|z_i|^2
    target = z64 @ z64.T - (z64 * z64).sum(axis=1, keepdims=True)
    shifted = (left @ right.T).double().numpy()
    plain = (zt.bfloat16() @ zt.bfloat16().T).double().numpy() - (z64 * z64).sum(axis=1, keepdims=True)

    def rank_error(scores):  # a constant per row (the rounded shift) changes no ranking
        err = scores - target
        return np.abs(err - np.median(err, axis=1, keepdims=True)).max()

    assert rank_error(shifted) < 8e-4  # the rounding of scores within ~0.13 of 0
    assert rank_error(plain) > 3 * rank_error(shifted)
    # float32 asks for no change
    same_left, same_right = _search_coordinates(zt, torch.float32)
    assert same_left is zt and same_right is zt


def test_approximate_recall_on_cluster_structure_across_seeds():
    # 40 tight clusters of 50 in 1024 dimensions, plus low-rank structure inside them:
    # the kind of data the principal projection is meant for.
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((40, 1024))
    labels = np.repeat(np.arange(40), 50)
    inner = rng.standard_normal((2000, 8)) @ rng.standard_normal((8, 1024))
    x = (centers[labels] + 0.15 * inner + 0.05 * rng.standard_normal((2000, 1024))).astype(np.float32)
    truth = sklearn_neighbours(x.astype(np.float64), 10)
    for seed in (0, 1):
        w = knn_graph(x, k=10, approximate=True, seed=seed)
        assert neighbour_recall(w, truth) >= 0.99
        # neighbours stay in their cluster, as the exact ones do
        r, c = w.nonzero()
        assert np.mean(labels[r] == labels[c]) > 0.99


def test_approximate_with_all_candidates_is_exact():
    x = structured(300, 96, seed=9)
    exact = knn_graph(x, k=6)
    assert edges(knn_graph(x, k=6, approximate=True, projection_dim=8, candidates=299)) == edges(exact)
    # a projection with as many dimensions as the data: the exact scan is used
    assert edges(knn_graph(x, k=6, approximate=True, projection_dim=96)) == edges(exact)


def test_rerank_groups_matches_brute_force_oracle():
    # The re-ranking's contract: each row's best k (exact cosine) among its own candidates
    # and the group's shared ones (candidates of >= DENSE_SHARE rows of the group), both
    # for the GEMM path (shared) and the dot-product path (the rest).
    import geokd.graphs.dataset_knn as dk

    rng = np.random.default_rng(4)
    n, d, k, c, group = 256, 48, 5, 12, 64
    x = torch.from_numpy(structured(n, d, seed=4))
    inv_norm = 1 / torch.linalg.vector_norm(x, dim=1)
    # random candidate lists (little sharing: the dot-product path), plus a few popular
    # points in many lists (the GEMM path)
    popular = rng.choice(n, 6, replace=False)
    cand = np.empty((n, c), dtype=np.int64)
    for i in range(n):
        pool = np.setdiff1d(np.arange(n), [i])
        own = list(rng.choice(np.setdiff1d(pool, popular), c - 3, replace=False))
        cand[i] = own + list(rng.choice(np.setdiff1d(popular, [i]), 3, replace=False))
    order = torch.from_numpy(rng.permutation(n))
    cos = (x * inv_norm[:, None]).double() @ (x * inv_norm[:, None]).double().T
    for workers in (1, 2):
        values, indices = dk._rerank_groups(x, inv_norm, torch.from_numpy(cand), order, k, group, 2 ** 20,
                                            workers=workers)
        for start in range(0, n, group):
            members = order[start:start + group].numpy()
            ids, counts = np.unique(cand[members], return_counts=True)
            shared = ids[counts >= dk.DENSE_SHARE]
            assert shared.size and shared.size < ids.size  # both paths are exercised
            for r, i in enumerate(members):
                seen = np.setdiff1d(np.union1d(shared, cand[i]), [i])
                best = seen[np.argsort(-cos[i, seen].numpy(), kind="stable")[:k]]
                assert set(indices[i].tolist()) == set(best.tolist())
                np.testing.assert_allclose(np.sort(values[i].numpy()), np.sort(cos[i, best].numpy()), atol=1e-5)


def test_orthonormal_basis_even_for_rank_deficient_input():
    import geokd.graphs.dataset_knn as dk

    gen = torch.Generator().manual_seed(0)
    full = torch.randn(500, 40, generator=gen) @ torch.diag(torch.logspace(0, -3, 40))
    q = dk._orthonormal(full)
    np.testing.assert_allclose((q.T @ q).numpy(), np.eye(40), atol=1e-4)
    # same span: projecting the input on q changes nothing
    np.testing.assert_allclose((q @ (q.T @ full)).numpy(), full.numpy(), atol=1e-4)
    deficient = torch.randn(500, 5, generator=gen) @ torch.randn(5, 40, generator=gen)
    q = dk._orthonormal(deficient)
    assert torch.isfinite(q).all()
    # Q^T Q <= I: no direction is inflated; the 5 real ones are kept
    assert torch.linalg.eigvalsh((q.T @ q).double()).max() <= 1 + 1e-4
    np.testing.assert_allclose((q @ (q.T @ deficient)).numpy(), deficient.numpy(), atol=1e-3)
    assert not dk._orthonormal(torch.zeros(50, 4)).any()


def test_sample_basis_keeps_every_direction_of_a_spread_spectrum():
    # Unit rows whose singular values fall 60-fold over the kept directions, as layer1
    # activations do: each subspace iteration squares that spread (3,600, then ~1e7 in
    # the Gram), and a float32 orthonormalization of the iterate used to drop 2/3 of the
    # columns (recall of the approximate mode fell from 0.997 to 0.980 on real data).
    import geokd.graphs.dataset_knn as dk

    gen = torch.Generator().manual_seed(0)
    m, d, dim = 600, 256, 48
    left = dk._orthonormal(torch.randn(m, dim, generator=gen).double()).float()
    right = dk._orthonormal(torch.randn(d, dim, generator=gen).double()).float()
    sigma = torch.logspace(math.log10(60.0), 0.0, dim)
    x = (left * sigma) @ right.T + 1e-3 * torch.randn(m, d, generator=gen)
    inv_norm = 1 / torch.linalg.vector_norm(x, dim=1)
    basis = dk._sample_basis(x, inv_norm, dim, m, dk.POWER_ITERATIONS, 2 ** 26, gen)
    assert basis.shape == (d, dim)
    np.testing.assert_allclose((basis.T @ basis).numpy(), np.eye(dim), atol=1e-4)
    # it spans the planted directions: their projections on the basis keep their length
    kept = torch.linalg.vector_norm(basis.T @ right, dim=0)
    assert float(kept.min()) > 0.99


def test_approximate_with_fewer_points_than_projection_dimensions():
    # 200-300 points, 384 projection dimensions by default: the sample's iterate has rank
    # <= N (its float64 Gram is singular up to rounding; the Cholesky shift must absorb it).
    gen = torch.Generator().manual_seed(1)
    for n in (200, 300):
        x = torch.rand(n, 2000, generator=gen)
        approx = knn_graph(x, k=5, approximate=True)
        exact = knn_graph(x, k=5)
        # all N - 1 < 384 directions fit in the projection: the same edges, the same cosines
        assert ((approx != 0) != (exact != 0)).nnz == 0
        np.testing.assert_allclose(approx.toarray(), exact.toarray(), atol=1e-5)


def test_approximate_degenerate_data_stays_finite():
    # rank-deficient points (a 3-dim subspace of R^600), zero rows, duplicates
    rng = np.random.default_rng(5)
    x = (np.abs(rng.standard_normal((400, 3))) @ np.abs(rng.standard_normal((3, 600)))).astype(np.float32)
    x[5] = 0
    x[20] = x[21]
    w = knn_graph(x, k=4, approximate=True, projection_dim=64)
    assert np.isfinite(w.data).all() and abs(w - w.T).max() == 0 and not w.diagonal().any()
    assert w[5].nnz == 0 and w[20, 21] == pytest.approx(1.0, abs=1e-6)
    assert knn_graph(np.zeros((30, 500), dtype=np.float32), k=3, approximate=True).nnz == 0


def test_device_argument_and_thread_count():
    x = structured(200, 450, seed=6)
    reference = edges(knn_graph(x, k=5))
    tensor = torch.from_numpy(x)
    for device in ("cpu", torch.device("cpu")):
        assert edges(knn_graph(tensor, k=5, device=device)) == reference
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the suite may run on one thread; 1 -> 1 would prove nothing
    try:
        approx = knn_graph(tensor, k=5, approximate=True, device="cpu")
        assert torch.get_num_threads() == 2  # the re-ranking's single-thread section is undone
    finally:
        torch.set_num_threads(threads)
    assert len(edges(approx) & reference) / len(reference) >= 0.99
    if torch.cuda.is_available():
        assert edges(knn_graph(tensor, k=5, device="cuda")) == reference
        assert edges(knn_graph(tensor, k=5, device="cuda", approximate=True)) == edges(approx)


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
    # B8: an empty set of points was a RuntimeError from torch's reshape
    with pytest.raises(ValueError, match="at least 2 points, got 0"):
        knn_graph(torch.zeros(0, 3), k=1)
    with pytest.raises(ValueError, match="at least 2 points, got 0"):
        knn_graph(np.zeros((0, 3, 2), dtype=np.float32), k=1, approximate=True)
    with pytest.raises(ValueError, match="at least one feature"):
        knn_graph(np.zeros((5, 0)), k=1)
    with pytest.raises(ValueError, match="NumPy array or torch.Tensor"):
        knn_graph([[1.0, 2.0]], k=1)
    with pytest.raises(ValueError, match="kernel"):
        knn_graph(x, k=3, kernel="dot")
    with pytest.raises(ValueError, match=r"search_precision in \('auto', 'float32', 'bfloat16'\), got 'half'"):
        knn_graph(x, k=3, approximate=True, search_precision="half")
    with pytest.raises(ValueError, match="approximate mode supports kernel='cosine'"):
        knn_graph(x, k=3, kernel="gaussian", approximate=True)
    with pytest.raises(ValueError, match="chunk_size"):
        knn_graph(x, k=3, chunk_size=0)
    with pytest.raises(ValueError, match="candidates"):
        knn_graph(x, k=3, approximate=True, candidates=2)
    with pytest.raises(ValueError, match="sample_size"):
        knn_graph(x, k=3, approximate=True, sample_size=0)
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


# Reliability B11: finite points near float32's limits once gave -inf/NaN weights (block
# products overflowed, 1/|x| of subnormal rows was inf). Both kernels are scale-free, so
# the graph must be the one of the same points scaled into the ordinary range.
@pytest.mark.parametrize("kernel", ["cosine", "gaussian"])
@pytest.mark.parametrize("scale", [2.0 ** 120, 2.0 ** -130])
def test_points_near_float32_limits_give_the_graph_of_the_rescaled_points(kernel, scale):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 6, generator=g)
    w_ref = knn_graph(x, k=4, kernel=kernel, progress=False).toarray()
    w = knn_graph(x * scale, k=4, kernel=kernel, progress=False).toarray()
    assert np.isfinite(w).all()
    # Subnormal inputs keep fewer bits: compare loosely there, tightly otherwise.
    np.testing.assert_allclose(w, w_ref, atol=1e-5 if scale > 1 else 2e-2)


def test_a_huge_and_an_opposite_point_are_neighbours_with_cosine_minus_one():
    w = knn_graph(torch.tensor([[2.674932597158948e36], [-9.430107577603728e37]]), k=1, progress=False)
    assert w.toarray().tolist() == [[0.0, -1.0], [-1.0, 0.0]]
