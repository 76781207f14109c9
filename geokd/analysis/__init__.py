"""Graph-signal-processing analysis of a network's layers, and of a student against its teacher.

Per sensing point, on a fixed evaluation node set:

- :func:`label_smoothness` / :func:`smoothness_from_graph`: ``tr(Yᵀ L Y)`` on the layer's
  cosine k-NN graph (combinatorial, normalized, and the scale-free crossing-weight ratio);
- :func:`output_agreement`, :func:`knn_vote`, :func:`block_consistency`,
  :func:`linear_probe_predictions`: classification consistency with the teacher;
- :func:`spectral_distances`, :func:`aligned_distance`: teacher-student graph distances;
- :func:`cross_graph_variation`: the teacher's smooth signals seen on the student's graph;
- :func:`balanced_node_set`, :func:`collect_activations`, :func:`analyze_networks`: the
  whole pipeline, as tidy rows (:mod:`geokd.analysis.tables`).

Examples
--------
>>> import numpy as np
>>> x = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1]])
>>> label_smoothness(x, [0, 0, 1, 1], k=1, laplacian="ratio")
0.0
"""

from geokd.analysis.collect import Activations, collect_activations
from geokd.analysis.consistency import block_consistency, knn_vote, linear_probe_predictions, output_agreement
from geokd.analysis.crossgraph import cross_graph_variation, low_frequency_basis, signal_variation
from geokd.analysis.layer_graph import cosine_knn_graph, gkd_adjacency
from geokd.analysis.nodes import balanced_node_set, whole_set
from geokd.analysis.pipeline import AnalysisResult, Network, analyze_networks
from geokd.analysis.smoothness import label_smoothness, smoothness_from_graph, smoothness_metrics
from geokd.analysis.spectral import (
    aligned_distance,
    heat_trace,
    heat_trace_distance,
    lambda_distance,
    laplacian_spectrum,
    normalized_laplacian,
    sparse_normalized_laplacian,
    spectral_distances,
)
from geokd.analysis.tables import make_row, read_table, write_table

__all__ = [
    "Activations", "AnalysisResult", "Network", "aligned_distance", "analyze_networks", "balanced_node_set",
    "block_consistency", "collect_activations", "cosine_knn_graph", "cross_graph_variation", "gkd_adjacency",
    "heat_trace", "heat_trace_distance", "knn_vote", "label_smoothness", "lambda_distance", "laplacian_spectrum",
    "linear_probe_predictions", "low_frequency_basis", "make_row", "normalized_laplacian", "output_agreement",
    "read_table", "signal_variation", "smoothness_from_graph", "smoothness_metrics", "sparse_normalized_laplacian",
    "spectral_distances", "whole_set", "write_table",
]
