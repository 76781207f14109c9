"""Latent geometry graphs: dense differentiable batch graphs and dataset-scale k-NN graphs.

Batch scale (torch, any device, differentiable): :func:`similarity`, :func:`normalize`,
:func:`knn_mask`, :func:`task_mask`, :func:`graph_power`, :class:`GraphSpec`,
:func:`batch_graph`, :func:`graph_pair`; several variants of one layer from one
Gram product: :func:`gram`, :func:`similarity_from_gram`, :func:`graph_from_similarity`.
Analysis helpers in float64: :func:`degrees`, :func:`laplacian`. Dataset scale (sparse, chunked): :func:`knn_graph`, :func:`to_pygsp`,
:func:`to_networkx`.
"""

from geokd.graphs.batch import BatchGraph, batch_graph, graph_from_similarity, graph_pair
from geokd.graphs.dataset_knn import knn_graph
from geokd.graphs.export import to_networkx, to_pygsp
from geokd.graphs.kernels import gram, pairwise_distances, similarity, similarity_from_gram
from geokd.graphs.masks import graph_power, knn_mask, task_mask
from geokd.graphs.normalize import degrees, laplacian, normalize
from geokd.graphs.spec import GraphSpec

__all__ = [
    "BatchGraph", "GraphSpec", "batch_graph", "degrees", "graph_from_similarity", "graph_pair", "graph_power",
    "gram", "knn_graph", "knn_mask", "laplacian", "normalize", "pairwise_distances", "similarity",
    "similarity_from_gram", "task_mask",
    "to_networkx", "to_pygsp",
]
