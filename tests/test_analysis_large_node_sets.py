"""The analysis paths for large node sets: one Gram product for both graphs, sparse eigenvectors,
spectra on a class-balanced subset. Checked against the dense paths and independent oracles."""

import numpy as np
import pygsp
import pytest
import scipy.sparse as sp
import scipy.sparse.csgraph
import torch

import geokd.analysis.pipeline as pipeline
from geokd.analysis.collect import collect_activations
from geokd.analysis.crossgraph import low_frequency_basis, signal_variation
from geokd.analysis.layer_graph import cosine_graphs, cosine_knn_graph, gkd_adjacency
from geokd.analysis.nodes import balanced_node_set
from geokd.analysis.pipeline import Network, analyze_networks, spectral_subset
from geokd.analysis.spectral import aligned_distance, heat_trace_distance, lambda_distance, laplacian_spectrum
from tests.test_analysis_pipeline import small_cnn


def clustered(n_per_class=60, classes=4, dim=24, seed=0, spread=0.7):
    rng = np.random.default_rng(seed)
    centers = np.abs(rng.normal(size=(classes, dim))) * 2
    x = np.vstack([np.abs(c + spread * rng.normal(size=(n_per_class, dim))) for c in centers])
    return x.astype(np.float32), np.repeat(np.arange(classes), n_per_class)


def test_cosine_graphs_equal_the_separate_builders():
    x, _ = clustered()
    subset = np.arange(0, x.shape[0], 3)
    graphs = cosine_graphs(x, k=6, subset=subset)
    np.testing.assert_allclose(graphs.knn.toarray(), cosine_knn_graph(x, k=6).toarray(), atol=1e-6)
    np.testing.assert_allclose(graphs.adjacency.numpy(), gkd_adjacency(x).numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(graphs.subset_knn.toarray(), cosine_knn_graph(x[subset], k=6).toarray(), atol=1e-6)


def test_cosine_graphs_refuse_bad_k_and_subset():
    x, _ = clustered(n_per_class=5)
    with pytest.raises(ValueError, match="layer1: expected an integer k with 1 <= k < N = 20, got 20"):
        cosine_graphs(x, k=20, name="layer1")
    with pytest.raises(ValueError, match="subset of more than k = 3 positions in 0..19, got 3"):
        cosine_graphs(x, k=3, subset=[0, 1, 2])
    with pytest.raises(ValueError, match="subset of more than k"):
        cosine_graphs(x, k=3, subset=[0, 1, 2, 25])


def test_aligned_distance_over_chunks_matches_float64():
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.random((1500, 1500), dtype=np.float32) / 1500)  # more rows than one chunk
    b = torch.from_numpy(rng.random((1500, 1500), dtype=np.float32) / 1500)
    expected = np.linalg.norm(a.double().numpy() - b.double().numpy())
    assert aligned_distance(a, b) == pytest.approx(expected, rel=1e-6)


def _knn_graph_with_isolated_node():
    x, _ = clustered(n_per_class=400, classes=4, dim=16, seed=2)   # 1,600 nodes
    w = sp.lil_matrix(cosine_knn_graph(x, k=8))
    w[5, :] = 0
    w[:, 5] = 0
    return sp.csr_matrix(w)


@pytest.mark.parametrize("dense_limit", [100, 3000])   # 100: every component through ARPACK
def test_sparse_low_frequency_basis_matches_dense_and_pygsp(monkeypatch, dense_limit):
    import geokd.analysis.crossgraph as crossgraph

    monkeypatch.setattr(crossgraph, "DENSE_EIGEN_LIMIT", dense_limit)
    w = _knn_graph_with_isolated_node()   # its components: the 4 classes and the isolated node
    assert sp.csgraph.connected_components(w)[0] == 5
    dense_values, dense_vectors = low_frequency_basis(w, num_eigenvectors=6, method="dense")
    values, vectors = low_frequency_basis(w, num_eigenvectors=6, method="sparse")
    np.testing.assert_allclose(values, dense_values, atol=1e-9)
    graph = pygsp.graphs.Graph(w)
    graph.compute_laplacian("normalized")
    graph.compute_fourier_basis()
    np.testing.assert_allclose(values, graph.e[:6], atol=1e-9)
    # Same invariant subspaces (eigenvectors are defined up to sign and rotation within a multiplicity).
    np.testing.assert_allclose(vectors @ vectors.T, dense_vectors @ dense_vectors.T, atol=1e-6)
    assert signal_variation(vectors, w) == pytest.approx(values, abs=1e-9)


def test_low_frequency_basis_refuses_unknown_method():
    with pytest.raises(ValueError, match="method 'auto', 'dense' or 'sparse', got 'arpack'"):
        low_frequency_basis(np.ones((3, 3)) - np.eye(3), method="arpack")


def test_signal_variation_equals_quadratic_form_of_the_dense_laplacian():
    w = _knn_graph_with_isolated_node()
    u = np.random.default_rng(0).normal(size=(w.shape[0], 3))
    graph = pygsp.graphs.Graph(w)
    graph.compute_laplacian("normalized")
    expected = np.einsum("ni,ni->i", u, graph.L.toarray() @ u)
    np.testing.assert_allclose(signal_variation(u, w), expected, rtol=1e-10)


def test_spectral_subset_is_class_balanced_and_fixed(monkeypatch):
    labels = np.repeat(np.arange(10), 400)
    assert spectral_subset(labels[:pipeline.EXACT_SPECTRUM_LIMIT]) is None
    chosen = spectral_subset(labels)
    assert np.bincount(labels[chosen]).tolist() == [100] * 10
    np.testing.assert_array_equal(chosen, spectral_subset(labels))
    # A rare class limits every class to its count.
    uneven = np.concatenate([labels, np.full(3, 10)])
    assert np.bincount(uneven[spectral_subset(uneven)]).tolist() == [3] * 11



def test_pipeline_takes_spectra_on_the_subset_above_the_limit(monkeypatch):
    """Above EXACT_SPECTRUM_LIMIT the spectral rows are those of the subset's graphs (named in
    node_set); every other metric stays on the whole node set."""
    from geokd.data import load_dataset

    digits = load_dataset("digits", split="test")
    labels = digits.labels.numpy()
    nodes = np.arange(len(labels))
    monkeypatch.setattr(pipeline, "EXACT_SPECTRUM_LIMIT", 200)
    monkeypatch.setattr(pipeline, "SPECTRUM_PER_CLASS", 12)
    teacher, student = small_cnn(0), small_cnn(1)
    result = analyze_networks(Network("t", "teacher", None, teacher), [Network("s", "other", 0, student)],
                              digits.images, labels, node_indices=nodes, mean=digits.mean, std=digits.std,
                              k=5, num_eigenvectors=4, node_set="digits", heatmap_per_class=2)
    rows = {(r["network"], r["layer"], r["metric"]): r for r in result.rows}
    subset = balanced_node_set(labels[nodes], per_class=12, seed=0)
    feats = {name: collect_activations(net, digits.images, node_indices=nodes, mean=digits.mean, std=digits.std)
             for name, net in (("t", teacher), ("s", student))}
    for layer in ("stage1", "stage2", "pool"):
        spectra = [laplacian_spectrum(cosine_knn_graph(feats[n].features[layer][subset], k=5)) for n in ("t", "s")]
        row = rows[("s", layer, "lambda_distance")]
        assert row["node_set"] == f"digits/spectral-{subset.size}nodes"
        assert row["value"] == pytest.approx(lambda_distance(*spectra), rel=1e-6)
        assert rows[("s", layer, "heat_trace_distance")]["value"] == pytest.approx(heat_trace_distance(*spectra),
                                                                                    rel=1e-6)
        aligned = aligned_distance(gkd_adjacency(feats["t"].features[layer]), gkd_adjacency(feats["s"].features[layer]))
        assert rows[("s", layer, "aligned_distance")]["node_set"] == "digits"
        assert rows[("s", layer, "aligned_distance")]["value"] == pytest.approx(aligned, rel=1e-5)


def test_collect_activations_restores_the_models_memory_format():
    from geokd.data import load_dataset

    digits = load_dataset("digits", split="test")
    net = small_cnn(0)
    collect_activations(net, digits.images[:20], node_indices=[0, 1, 2], mean=digits.mean, std=digits.std)
    assert all(p.is_contiguous() for p in net.parameters())
    # A model kept channels-last by its owner stays so.
    net.to(memory_format=torch.channels_last)
    collect_activations(net, digits.images[:20], node_indices=[0, 1, 2], mean=digits.mean, std=digits.std)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in net.parameters() if p.dim() == 4)
    assert any(not p.is_contiguous() for p in net.parameters() if p.dim() == 4)


def test_shipped_analysis_configs_name_the_released_networks(graph_kd_dir):  # skips without them
    import os

    from geokd.analysis.sources import expand_paths
    from geokd.analysis.study import load_study

    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "analysis")
    for name, per_class in (("released_checkpoints.toml", 100), ("released_full_test.toml", 0)):
        study = load_study(os.path.join(root, name))
        assert os.path.isfile(study.teacher), study.teacher
        assert len(expand_paths(study.students)) == 20
        assert (study.per_class, study.layers) == (per_class, ["layer1", "layer2", "pool"])
