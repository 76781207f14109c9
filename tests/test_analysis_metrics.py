"""Analysis metrics against independent oracles (PyGSP, scikit-learn, brute force)."""

import numpy as np
import pygsp
import pytest
import scipy.sparse as sp
import torch
from sklearn.neighbors import kneighbors_graph

from geokd.analysis.consistency import block_consistency, knn_vote, output_agreement
from geokd.analysis.crossgraph import cross_graph_variation
from geokd.analysis.layer_graph import gkd_adjacency
from geokd.analysis.nodes import balanced_node_set, whole_set
from geokd.analysis.smoothness import smoothness_from_graph, smoothness_metrics
from geokd.analysis.spectral import (
    aligned_distance,
    heat_trace,
    laplacian_spectrum,
    spectral_distances,
)


def clustered_features(n_per_class=15, classes=3, dim=8, seed=0, spread=0.6):
    rng = np.random.default_rng(seed)
    centers = np.abs(rng.normal(size=(classes, dim))) * 2
    x = np.vstack([np.abs(c + spread * rng.normal(size=(n_per_class, dim))) for c in centers])
    y = np.repeat(np.arange(classes), n_per_class)
    return x, y


def sklearn_cosine_knn(x, k):
    """An independent cosine k-NN graph: scikit-learn neighbours, union, weight = cosine."""
    conn = kneighbors_graph(x, n_neighbors=k, metric="cosine", mode="connectivity", include_self=False)
    conn = conn.maximum(conn.T).tocoo()
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    weights = np.einsum("ij,ij->i", z[conn.row], z[conn.col])
    return sp.csr_matrix((weights, (conn.row, conn.col)), shape=conn.shape)


def pygsp_trace(w, y, lap_type):
    graph = pygsp.graphs.Graph(sp.csr_matrix(w))
    graph.compute_laplacian(lap_type)
    one_hot = np.eye(y.max() + 1)[y]
    return float(np.trace(one_hot.T @ (graph.L @ one_hot)))


@pytest.mark.parametrize("lap_type", ["combinatorial", "normalized"])
def test_smoothness_matches_pygsp(lap_type):
    x, y = clustered_features()
    w = sklearn_cosine_knn(x, k=5)
    ours = smoothness_from_graph(w, y, laplacian=lap_type)
    assert ours == pytest.approx(pygsp_trace(w, y, lap_type), rel=1e-10, abs=1e-10)


def test_combinatorial_smoothness_is_crossing_weight_by_brute_force():
    x, y = clustered_features(spread=2.0, seed=3)
    dense = sklearn_cosine_knn(x, k=4).toarray()
    crossing = sum(dense[i, j] for i in range(len(y)) for j in range(len(y)) if y[i] != y[j])
    assert crossing > 0
    assert smoothness_from_graph(dense, y) == pytest.approx(crossing)
    assert smoothness_from_graph(dense, y, laplacian="ratio") == pytest.approx(crossing / dense.sum())


def test_normalized_smoothness_with_isolated_node_matches_pygsp():
    w = np.zeros((4, 4))
    w[0, 1] = w[1, 0] = 1.0
    w[1, 2] = w[2, 1] = 3.0
    y = np.array([0, 1, 1, 0])
    assert smoothness_from_graph(w, y, laplacian="normalized") == pytest.approx(pygsp_trace(w, y, "normalized"))


def test_smoothness_invariances():
    x, y = clustered_features(spread=1.5)
    w = sklearn_cosine_knn(x, k=5)
    perm = np.random.default_rng(1).permutation(len(y))
    w_perm = w[perm][:, perm]
    before = smoothness_metrics(w, y)
    after = smoothness_metrics(w_perm, y[perm])
    assert after == pytest.approx(before)
    scaled = smoothness_metrics(w * 7.0, y)
    assert scaled["ratio"] == pytest.approx(before["ratio"])
    assert scaled["normalized"] == pytest.approx(before["normalized"])
    assert scaled["combinatorial"] == pytest.approx(7.0 * before["combinatorial"])
    # Renaming classes changes nothing.
    assert smoothness_metrics(w, (y + 1) % 3) == pytest.approx(before)


def test_smooth_labels_beat_random_labels():
    x, y = clustered_features()
    w = sklearn_cosine_knn(x, k=5)
    shuffled = np.random.default_rng(0).permutation(y)
    assert smoothness_from_graph(w, y, laplacian="ratio") < smoothness_from_graph(w, shuffled, laplacian="ratio")


@pytest.mark.parametrize(
    "w, message",
    [
        (np.array([[0.0, -1.0], [-1.0, 0.0]]), "nonnegative"),
        (np.array([[0.0, 1.0], [2.0, 0.0]]), "symmetric"),
        (np.array([[1.0, 1.0], [1.0, 0.0]]), "zero diagonal"),
        (np.array([[0.0, np.nan], [np.nan, 0.0]]), "finite"),
        (np.zeros((2, 3)), "square"),
    ],
)
def test_bad_graphs_are_refused(w, message):
    with pytest.raises(ValueError, match=message):
        smoothness_from_graph(w, [0, 1], name="layer2")


def test_bad_labels_and_laplacian_are_refused():
    w = np.array([[0.0, 1.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match=r"layer1: expected labels of shape \(2,\)"):
        smoothness_from_graph(w, [0, 1, 1], name="layer1")
    with pytest.raises(ValueError, match="laplacian"):
        smoothness_from_graph(w, [0, 1], laplacian="random_walk")
    with pytest.raises(ValueError, match="integer"):
        smoothness_from_graph(w, [0.5, 1.0])


def test_spectrum_matches_pygsp():
    x, _ = clustered_features()
    w = sklearn_cosine_knn(x, k=5)
    graph = pygsp.graphs.Graph(w)
    graph.compute_laplacian("normalized")
    graph.compute_fourier_basis()
    np.testing.assert_allclose(laplacian_spectrum(w), graph.e, atol=1e-10)


def test_spectral_distance_zero_for_identical_and_invariant_to_relabeling():
    x, _ = clustered_features()
    w = sklearn_cosine_knn(x, k=5)
    perm = np.random.default_rng(2).permutation(w.shape[0])
    assert spectral_distances(w, w) == {"lambda_distance": 0.0, "heat_trace_distance": 0.0}
    relabeled = spectral_distances(w, w[perm][:, perm])
    assert relabeled["lambda_distance"] == pytest.approx(0.0, abs=1e-10)
    assert relabeled["heat_trace_distance"] == pytest.approx(0.0, abs=1e-10)
    other = sklearn_cosine_knn(clustered_features(seed=5, spread=2.0)[0], k=5)
    d_ab = spectral_distances(w, other)
    assert d_ab["lambda_distance"] > 1e-3 and d_ab["heat_trace_distance"] > 1e-5
    assert spectral_distances(other, w) == pytest.approx(d_ab)


def test_heat_trace_by_hand():
    # Two nodes, one edge: normalized-Laplacian eigenvalues 0 and 2.
    w = np.array([[0.0, 5.0], [5.0, 0.0]])
    spectrum = laplacian_spectrum(w)
    np.testing.assert_allclose(spectrum, [0.0, 2.0], atol=1e-12)
    t = np.array([0.01, 1.0, 100.0])
    np.testing.assert_allclose(heat_trace(spectrum, times=t), (1 + np.exp(-2 * t)) / 2)


def test_spectral_distance_refuses_different_sizes():
    with pytest.raises(ValueError, match="same number of nodes"):
        spectral_distances(np.ones((3, 3)) - np.eye(3), np.ones((4, 4)) - np.eye(4), name="pool")


def test_gkd_adjacency_matches_float64_reference():
    x, _ = clustered_features(n_per_class=4)
    n = x.shape[0]
    a = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                a[i, j] = x[i] @ x[j] / (np.linalg.norm(x[i]) * np.linalg.norm(x[j]))
    d = a.sum(axis=1)
    expected = a / np.sqrt(np.outer(d, d))
    np.testing.assert_allclose(gkd_adjacency(x).numpy(), expected, rtol=1e-5, atol=1e-7)
    # Feature scaling per input does not change a cosine graph.
    scaled = x * np.arange(1, n + 1)[:, None]
    np.testing.assert_allclose(gkd_adjacency(scaled).numpy(), expected, rtol=1e-5, atol=1e-7)
    assert aligned_distance(gkd_adjacency(x), torch.from_numpy(expected)) == pytest.approx(0.0, abs=1e-5)


def test_gkd_adjacency_refuses_zero_rows_and_negative_degrees():
    with pytest.raises(ValueError, match="pool: .*all-zero rows"):
        gkd_adjacency(np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]), name="pool")
    with pytest.raises(ValueError, match="positive degrees"):
        gkd_adjacency(np.array([[1.0, 0.0], [-1.0, 0.0], [-1.0, 0.01]]))


def test_output_agreement_by_hand():
    labels = np.array([0, 1, 2, 3, 0, 1])
    teacher = np.array([0, 1, 2, 0, 1, 1])  # right on 0,1,2,5; wrong on 3,4
    student = np.array([0, 2, 2, 0, 0, 1])  # agrees on 0,2,3,5
    out = output_agreement(student, teacher, labels)
    assert out["agreement"] == pytest.approx(4 / 6)
    assert out["agreement_teacher_right"] == pytest.approx(3 / 4)
    assert out["agreement_teacher_wrong"] == pytest.approx(1 / 2)
    assert out["student_accuracy"] == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="none it gets wrong"):
        output_agreement(labels, labels, labels)


def brute_force_vote(x, y, k):
    """Cosine neighbours by a plain loop, union, weighted vote: an independent oracle."""
    n = len(y)
    cos = np.array([[x[i] @ x[j] / np.linalg.norm(x[i]) / np.linalg.norm(x[j]) for j in range(n)] for i in range(n)])
    neighbours = [set() for _ in range(n)]
    for i in range(n):
        order = sorted((j for j in range(n) if j != i), key=lambda j: -cos[i, j])[:k]
        for j in order:
            neighbours[i].add(j)
            neighbours[j].add(i)
    votes = []
    for i in range(n):
        totals = {}
        for j in neighbours[i]:
            totals[y[j]] = totals.get(y[j], 0.0) + max(cos[i, j], 0.0)
        votes.append(max(sorted(totals), key=lambda c: totals[c]))
    return np.array(votes)


def test_knn_vote_equals_brute_force_on_sklearn_graph():
    x, y = clustered_features(spread=2.5, seed=4)
    votes = knn_vote(sklearn_cosine_knn(x, k=3), y)
    np.testing.assert_array_equal(votes, brute_force_vote(x, y, 3))


def test_knn_consistency_equals_brute_force_count():
    from geokd.analysis.layer_graph import cosine_knn_graph

    x_t, y = clustered_features(spread=2.5, seed=4)
    x_s = x_t + np.abs(np.random.default_rng(9).normal(scale=1.5, size=x_t.shape))
    teacher_final = np.where(np.arange(len(y)) % 7 == 0, (y + 1) % 3, y)
    out = block_consistency(cosine_knn_graph(x_s, k=3), cosine_knn_graph(x_t, k=3), y, teacher_final)
    s_votes, t_votes = brute_force_vote(x_s, y, 3), brute_force_vote(x_t, y, 3)
    n = len(y)
    assert out["agreement_teacher_block"] == sum(int(a == b) for a, b in zip(s_votes, t_votes)) / n
    assert out["agreement_teacher_output"] == sum(int(a == b) for a, b in zip(s_votes, teacher_final)) / n
    assert out["knn_accuracy_student"] == sum(int(a == b) for a, b in zip(s_votes, y)) / n
    assert 0 < out["agreement_teacher_block"] < 1


def test_knn_vote_marks_isolated_nodes():
    w = np.zeros((3, 3))
    w[0, 1] = w[1, 0] = 1.0
    assert knn_vote(w, [0, 1, 1]).tolist() == [1, 0, -1]


def test_cross_graph_variation():
    x, _ = clustered_features()
    w_t = sklearn_cosine_knn(x, k=5)
    same = cross_graph_variation(w_t, w_t, num_eigenvectors=3)
    np.testing.assert_allclose(same["student_variation"], same["teacher_eigenvalues"], atol=1e-10)
    np.testing.assert_allclose(same["teacher_eigenvalues"], laplacian_spectrum(w_t)[:3], atol=1e-10)
    # A graph of unrelated geometry makes the teacher's smooth signals rough.
    x_other, _ = clustered_features(seed=11)
    other = cross_graph_variation(w_t, sklearn_cosine_knn(x_other[np.random.default_rng(0).permutation(len(x))], k=5),
                                  num_eigenvectors=3)
    assert other["mean_student_variation"] > same["mean_student_variation"] + 0.1
    # Relabeling the nodes of both graphs together changes nothing.
    perm = np.random.default_rng(3).permutation(len(x))
    w_s = sklearn_cosine_knn(x + 0.3, k=4)
    base = cross_graph_variation(w_t, w_s, num_eigenvectors=3)["mean_student_variation"]
    moved = cross_graph_variation(w_t[perm][:, perm], w_s[perm][:, perm], num_eigenvectors=3)
    assert moved["mean_student_variation"] == pytest.approx(base, abs=1e-8)
    with pytest.raises(ValueError, match="num_eigenvectors"):
        cross_graph_variation(w_t, w_t, num_eigenvectors=0)


def test_balanced_node_set():
    labels = np.random.default_rng(0).integers(0, 4, size=200)
    nodes = balanced_node_set(labels, per_class=10, seed=3)
    assert np.bincount(labels[nodes]).tolist() == [10, 10, 10, 10]
    assert len(set(nodes.tolist())) == 40
    np.testing.assert_array_equal(nodes, balanced_node_set(labels, per_class=10, seed=3))
    assert not np.array_equal(nodes, balanced_node_set(labels, per_class=10, seed=4))
    assert np.all(np.diff(labels[nodes]) >= 0)
    with pytest.raises(ValueError, match="at least 1000 inputs of class"):
        balanced_node_set(labels, per_class=1000)
    assert sorted(whole_set(labels).tolist()) == list(range(200))


def test_spectrum_with_isolated_node_matches_pygsp():
    w = np.zeros((4, 4))
    w[0, 1] = w[1, 0] = 1.0
    w[1, 2] = w[2, 1] = 3.0
    graph = pygsp.graphs.Graph(w)
    graph.compute_laplacian("normalized")
    graph.compute_fourier_basis()
    np.testing.assert_allclose(laplacian_spectrum(w), graph.e, atol=1e-10)


def test_a_checked_graph_is_checked_once_and_gives_the_same_metrics():
    from geokd.analysis._validate import CheckedGraph, as_weight_matrix, check_graph
    from geokd.analysis.pipeline import layer_graphs
    from geokd.analysis.smoothness import smoothness_metrics

    rng = np.random.default_rng(0)
    raw = sp.random(30, 30, density=0.2, random_state=1, format="csr")
    raw = (raw + raw.T).tocsr()
    raw.setdiag(0)
    raw.eliminate_zeros()
    labels = rng.integers(0, 3, size=30)
    checked = check_graph(raw)
    # Passing the door again neither re-checks nor copies ...
    assert as_weight_matrix(checked) is checked.matrix and check_graph(checked) is checked
    # ... the metrics agree with the unchecked input, and the caller's matrix stays writable.
    assert smoothness_metrics(checked, labels) == smoothness_metrics(raw, labels)
    raw.data[0] = raw.data[0]
    # The pipeline hands the metrics one checked graph per layer.
    features = rng.uniform(size=(40, 8)).astype(np.float32)  # post-ReLU-like: nonnegative
    graphs = layer_graphs(features, rng.integers(0, 2, size=40), k=3, num_classes=2, device="cpu", name="l")
    assert isinstance(graphs.knn, CheckedGraph)
