"""The analysis on the GKD authors' released CIFAR-10 networks (real data, slow)."""

import os

import numpy as np
import pytest

from geokd.analysis.nodes import balanced_node_set
from geokd.analysis.pipeline import Network, analyze_networks

pytestmark = pytest.mark.slow

# The released networks' training normalization (REFERENCE §3).
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def test_released_teacher_and_students_on_a_small_node_set(graph_kd_dir):
    import pygsp

    from geokd.analysis.collect import collect_activations
    from geokd.analysis.layer_graph import cosine_knn_graph
    from geokd.checkpoints import load_any
    from geokd.data import load_dataset

    data = load_dataset("cifar10", split="test")
    labels = data.labels.numpy()
    nodes = balanced_node_set(labels, per_class=20, seed=0)
    images, node_labels = data.images[nodes], labels[nodes]
    teacher_path = os.path.join(graph_kd_dir, "WideResNet28-1_0.pth")
    gkd_path = os.path.join(graph_kd_dir, "GKD_28-1_teaches_28-0.5_0.0_0.0_25.0_1_128_False_False_False_0.pth")
    result = analyze_networks(
        Network("teacher", "teacher", None, teacher_path),
        [Network("teacher-copy", "copy", 0, teacher_path), Network("gkd-0", "gkd", 0, gkd_path)],
        images, node_labels, node_indices=np.arange(nodes.size), mean=MEAN, std=STD, k=10, heatmap_per_class=2)
    value = {(r["network"], r["layer"], r["metric"]): r["value"] for r in result.rows}
    # A trained network separates the classes more and more with depth.
    ratios = [value[("teacher", layer, "smoothness_ratio")] for layer in ("layer1", "layer2", "pool")]
    assert ratios[0] > ratios[1] > ratios[2]
    assert value[("teacher", "pool", "knn_accuracy")] > 0.85
    assert value[("teacher", "output", "test_error")] < 12.0
    for layer in ("layer1", "layer2", "pool"):
        assert value[("teacher-copy", layer, "aligned_distance")] == pytest.approx(0.0, abs=1e-5)
        assert value[("teacher-copy", layer, "lambda_distance")] == pytest.approx(0.0, abs=1e-6)
        assert value[("gkd-0", layer, "aligned_distance")] > 1e-3
    assert value[("gkd-0", "output", "agreement")] > 0.8

    # Smoothness of the real pooled features equals an independent PyGSP computation.
    acts = collect_activations(load_any(teacher_path, device="cpu"), images, node_indices=np.arange(nodes.size),
                               layers=["pool"], mean=MEAN, std=STD)
    w = cosine_knn_graph(acts.features["pool"], k=10)
    graph = pygsp.graphs.Graph(w)
    graph.compute_laplacian("combinatorial")
    one_hot = np.eye(10)[node_labels]
    expected = np.trace(one_hot.T @ (graph.L @ one_hot)) / w.sum()
    assert value[("teacher", "pool", "smoothness_ratio")] == pytest.approx(expected, rel=1e-6)
