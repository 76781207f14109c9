"""Latent geometry graphs: dense differentiable batch graphs and dataset-scale k-NN graphs.

Batch scale (torch, any device, differentiable): :func:`similarity`, :func:`normalize`,
:func:`knn_mask`, :func:`task_mask`, :func:`graph_power`, :class:`GraphSpec`,
:func:`batch_graph`, :func:`graph_pair`. Analysis helpers in float64: :func:`degrees`,
:func:`laplacian`. Dataset scale (sparse, chunked): :func:`knn_graph`, :func:`to_pygsp`,
:func:`to_networkx`.
"""

from geokd.graphs.batch import BatchGraph, batch_graph, graph_pair
from geokd.graphs.dataset_knn import knn_graph
from geokd.graphs.export import to_networkx, to_pygsp
from geokd.graphs.kernels import pairwise_distances, similarity
from geokd.graphs.masks import graph_power, knn_mask, task_mask
from geokd.graphs.normalize import degrees, laplacian, normalize
from geokd.graphs.spec import GraphSpec

__all__ = [
    "BatchGraph", "GraphSpec", "batch_graph", "degrees", "graph_pair", "graph_power",
    "knn_graph", "knn_mask", "laplacian", "normalize", "pairwise_distances", "similarity", "task_mask",
    "to_networkx", "to_pygsp",
]
