"""See the graphs: networks' graphs of a node set at each sensing point under each variant.

What ``geokd graphs`` draws: for every network, its graph of every sensing point under every
graph variant, built on the node set as the GKD loss builds it
(:mod:`geokd.analysis.variant_graphs`). Given a teacher, the teacher comes first and every
other network's graph takes the teacher's k-NN mask of the same layer and variant, as a
student's does in the loss; without one, each network's graph has its own mask.

Written to a folder: ``graphs.npz`` (every matrix as float32 under
``<network>__<layer>__<variant>``, plus ``labels`` and ``node_indices``) and, per network,
``<network>.png`` / ``.pdf`` / ``.csv`` (heat maps: variants as rows, sensing points as
columns, nodes sorted by class with the class boundaries marked).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from geokd.analysis.pipeline import Network


@dataclass
class GraphViews:
    """Graphs of one node set: ``matrices[network][(layer, variant)]`` is an ``(N, N)`` float32 array."""

    labels: np.ndarray
    node_indices: np.ndarray
    matrices: dict[str, dict[tuple[str, str], np.ndarray]] = field(default_factory=dict)


def network_graphs(networks: Sequence[Network], images, labels, *, graphs: Sequence, node_indices, mean, std,
                   teacher: Network | None = None, layers: Sequence[str] | None = None,
                   student_layers: Sequence[str] | None = None, device="cpu", batch_size: int = 500) -> GraphViews:
    """Every network's graph of the nodes at each sensing point under each variant.

    Parameters
    ----------
    networks : sequence of Network
        The networks to draw (students, or any networks that ``geokd analyze`` takes).
    images : torch.Tensor
        ``(N, C, H, W)`` uint8 images.
    labels : array-like of int, shape (N,)
    graphs : sequence of GraphSpec or str
        Graph variants (names such as ``"cos-sym-k10-inter-p1"``).
    node_indices : array-like of int
        Positions in ``images`` of the nodes.
    mean, std : sequence of float
        The networks' input normalization.
    teacher : Network, optional
        Drawn first; the other networks' graphs take its k-NN masks.
    layers : sequence of str, optional
        Sensing points (default: each network's own ``sensing_points``); the teacher's when
        a teacher is given.
    student_layers : sequence of str, optional
        The other networks' sensing points when their names differ (matched by position).

    Returns
    -------
    GraphViews

    Examples
    --------
    >>> import torch
    >>> from geokd.models import build_model
    >>> torch.manual_seed(0) is not None
    True
    >>> net = lambda: build_model("small_cnn", in_channels=1, num_classes=2, widths=(2, 2, 2))
    >>> images = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
    >>> views = network_graphs([Network("s", "s", None, net())], images, [0, 1] * 4, graphs=["cos-sym-k2-inter-p1"],
    ...                        node_indices=range(8), mean=(0.5,), std=(0.25,), teacher=Network("t", "t", None, net()))
    >>> sorted(views.matrices["s"]), views.matrices["s"]["pool", "cos-sym-k2-inter-p1"].shape
    ([('pool', 'cos-sym-k2-inter-p1'), ('stage1', 'cos-sym-k2-inter-p1'), ('stage2', 'cos-sym-k2-inter-p1')], (8, 8))
    """
    from geokd.analysis.collect import collect_activations
    from geokd.analysis.variant_graphs import check_variants, variant_graphs_of
    from geokd.graphs.spec_names import parse_graph_names

    specs = parse_graph_names(graphs, where="graph variants")
    labels = np.asarray(labels, dtype=np.int64)
    nodes = np.asarray(node_indices, dtype=np.int64)
    node_labels = labels[nodes]
    check_variants(specs, num_nodes=nodes.size)
    views = GraphViews(labels=node_labels, node_indices=nodes)
    images = images[nodes]   # only the nodes are needed: one forward pass over them

    def draw(net: Network, names, *, keys=None, teacher_masks=None):
        model = net.load(device)
        points = tuple(names or getattr(model, "sensing_points", ()) or ())
        if not points:
            raise ValueError(f"{net.name}: expected layer names (--layers) for a {type(model).__name__}, which has "
                             "no sensing_points; `geokd layers NETWORK` lists the names")
        keys = points if keys is None else tuple(keys)
        if len(keys) != len(points):
            raise ValueError(f"{net.name}: expected as many sensing points as the teacher's {len(keys)} "
                             f"({', '.join(keys)}), compared by position; got {len(points)} ({', '.join(points)})")
        acts = collect_activations(model, images, node_indices=np.arange(nodes.size), layers=points, mean=mean,
                                   std=std, batch_size=batch_size, device=device, description=net.name)
        del model
        shown, made = views.matrices.setdefault(net.name, {}), {}
        for key, point in zip(keys, points):
            built = variant_graphs_of(acts.features[point], node_labels, specs, device=device, spectrum=False,
                                      masks=None if teacher_masks is None else teacher_masks[key],
                                      name=f"{net.name} {point}")
            made[key] = {name: graph.knn_mask for name, graph in built.items()}
            for name, graph in built.items():
                shown[(key, name)] = graph.adjacency.cpu().numpy().astype(np.float32)
        return keys, made

    if teacher is None:
        for net in networks:
            draw(net, layers)
    else:
        keys, masks = draw(teacher, layers)
        for net in networks:
            draw(net, student_layers or layers, keys=keys, teacher_masks=masks)
    return views


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "network"


def write_graph_views(views: GraphViews, out: str) -> list[str]:
    """Write ``graphs.npz`` and every network's heat-map figure to ``out``; return the paths.

    Every network's panels share the first network's colour scales (the teacher's, when one
    was given), so that the figures compare.
    """
    from geokd.plots_variants import colour_scale, plot_variant_graphs

    os.makedirs(out, exist_ok=True)
    arrays = {f"{net}__{layer}__{variant}": matrix for net, graphs in views.matrices.items()
              for (layer, variant), matrix in graphs.items()}
    npz = os.path.join(out, "graphs.npz")
    np.savez_compressed(npz, labels=views.labels, node_indices=views.node_indices, **arrays)
    written = [npz]
    first = next(iter(views.matrices), None)
    scales = {key: colour_scale(matrix) for key, matrix in views.matrices.get(first, {}).items()}
    for net, graphs in views.matrices.items():
        shared = "" if net == first else f", {first}'s colour scales"
        written += plot_variant_graphs(graphs, views.labels, os.path.join(out, _file_name(net)), scales=scales,
                                       title=f"{net}: graphs of {views.labels.size} nodes sorted by class "
                                             f"(white lines: class borders{shared})")
    return written
