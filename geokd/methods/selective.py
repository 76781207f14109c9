"""Selective knowledge distillation (after Ge et al., TIP 2019): distill only on the inputs
the teacher embeds well, found by a graph cut on the teacher's embedding graph.

Definition used here ("embeds poorly", made precise)
----------------------------------------------------
Let W be the symmetric cosine k-NN graph of the teacher's embeddings of the training set
(:func:`geokd.graphs.knn_graph`; zero diagonal; weights must be ≥ 0) and d_i = Σ_j W_ij.
For every class c, solve the minimum s–t cut of the flow network

* an edge i–j of capacity W_ij for every edge of the graph;
* s → i of capacity λ·d_i for every input labelled c (its label ties it to c's side);
* i → t of capacity λ·d_i for every input of another class;

with λ = ``label_trust`` > 0. Inputs labelled c that fall on the **sink side** are embedded
poorly: the teacher's geometry puts them among other classes so strongly that cutting them
away from their own label is cheaper than cutting their neighbourhood. For a single input
whose neighbours are not themselves moved, this happens exactly when more than a fraction
(1 + λ)/2 of its edge weight goes to other classes (λ = 0.2 → 60 %); because the cut is
global, a *group* of mislabelled or atypical inputs that only vouch for one another is
removed together, which a per-node vote would keep. Ties (several minimum cuts) keep the
input: the sink side is the smallest one (the nodes that can still reach t in the residual
network of a maximum flow).

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> centers = np.eye(3) * 5 + 1
>>> x = np.concatenate([c + rng.normal(scale=0.3, size=(20, 3)) for c in centers])
>>> labels = np.repeat([0, 1, 2], 20)
>>> labels[[3, 25]] = [1, 2]          # two inputs carry another cluster's label
>>> sel = select_well_embedded(x, labels, k=5)
>>> sel.dropped.tolist()
[3, 25]
>>> sel.report()["dropped"], sel.report()["kept"]
(2, 58)
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import networkx as nx
import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["Selection", "select_well_embedded", "cut_class", "teacher_embeddings"]

_SOURCE, _SINK = "s", "t"


@dataclass(frozen=True)
class Selection:
    """Which training inputs to distill on.

    Attributes
    ----------
    kept, dropped : numpy.ndarray of int
        Sorted indices into the training set.
    dropped_per_class : dict[int, int]
    cut_values : dict[int, float]
        The minimum cut of each class's flow network.
    label_trust : float
    k : int
    """

    kept: np.ndarray
    dropped: np.ndarray
    dropped_per_class: dict
    cut_values: dict
    label_trust: float
    k: int

    def report(self) -> dict:
        """Counts for a table: total, kept, dropped, dropped fraction and per class."""
        total = len(self.kept) + len(self.dropped)
        return {
            "total": total,
            "kept": int(len(self.kept)),
            "dropped": int(len(self.dropped)),
            "dropped_fraction": len(self.dropped) / total if total else 0.0,
            "dropped_per_class": dict(self.dropped_per_class),
            "k": self.k,
            "label_trust": self.label_trust,
        }


def _check_graph(w) -> sp.csr_matrix:
    if not sp.issparse(w):
        w = sp.csr_matrix(np.asarray(w, dtype=np.float64))
    w = sp.csr_matrix(w, dtype=np.float64)
    if w.shape[0] != w.shape[1]:
        raise ValueError(f"graph: expected a square adjacency, got shape {w.shape}")
    if w.nnz and not np.isfinite(w.data).all():
        raise ValueError("graph: expected finite weights, got NaN/Inf")
    if w.nnz and w.data.min() < 0:
        raise ValueError(
            f"graph: a cut needs non-negative weights, got a minimum of {w.data.min():.3g}; use "
            "non-negative (e.g. post-ReLU) embeddings or a Gaussian kernel"
        )
    if abs(w - w.T).sum() > 1e-9 * max(1.0, abs(w).sum()):
        raise ValueError("graph: expected a symmetric adjacency")
    return w


def _check_labels(labels, n: int) -> np.ndarray:
    labels = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels: expected shape ({n},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: expected integer class indices, got dtype {labels.dtype}")
    return labels.astype(np.int64)


def cut_class(w, labels, cls: int, *, label_trust: float = 0.2) -> tuple[np.ndarray, float]:
    """The minimum s–t cut for one class (see the module docstring).

    Returns
    -------
    sink_side : numpy.ndarray of bool, shape (N,)
        True for inputs on the (smallest) sink side.
    cut_value : float

    Examples
    --------
    >>> w = np.array([[0, 1, 0.1], [1, 0, 0.1], [0.1, 0.1, 0]])
    >>> side, value = cut_class(w, [0, 1, 1], 0, label_trust=0.5)
    >>> side.tolist(), round(value, 3)       # node 0 sits with class 1: cut its label tie 0.5·1.1
    ([True, True, True], 0.55)
    """
    if not label_trust > 0:
        raise ValueError(f"label_trust: expected > 0 (with 0 nothing ties an input to its label), got {label_trust}")
    w = _check_graph(w)
    labels = _check_labels(labels, w.shape[0])
    degree = np.asarray(w.sum(axis=1)).ravel()
    graph = nx.DiGraph()
    coo = sp.triu(w, k=1).tocoo()
    for i, j, weight in zip(coo.row.tolist(), coo.col.tolist(), coo.data.tolist()):
        graph.add_edge(i, j, capacity=weight)
        graph.add_edge(j, i, capacity=weight)
    for i in range(w.shape[0]):
        if labels[i] == cls:
            graph.add_edge(_SOURCE, i, capacity=label_trust * degree[i])
        else:
            graph.add_edge(i, _SINK, capacity=label_trust * degree[i])
    graph.add_node(_SOURCE)
    graph.add_node(_SINK)
    residual = nx.algorithms.flow.preflow_push(graph, _SOURCE, _SINK)
    cut_value = residual.graph["flow_value"]
    # Nodes that can still push flow to t: walk residual edges backwards from t.
    eps = 1e-12 * max(1.0, float(w.sum()))
    can_reach_sink = {_SINK}
    queue = deque([_SINK])
    while queue:
        v = queue.popleft()
        for u, _, attr in residual.in_edges(v, data=True):
            if u not in can_reach_sink and attr["capacity"] - attr["flow"] > eps:
                can_reach_sink.add(u)
                queue.append(u)
    sink_side = np.array([i in can_reach_sink for i in range(w.shape[0])])
    return sink_side, float(cut_value)


def select_well_embedded(
    embeddings,
    labels,
    *,
    k: int = 10,
    label_trust: float = 0.2,
    graph=None,
    device: str | torch.device = "cpu",
) -> Selection:
    """Drop the training inputs the teacher embeds poorly; keep the rest.

    Parameters
    ----------
    embeddings : array-like or torch.Tensor, shape (N, ...)
        The teacher's embeddings of the training set (e.g. its pooled penultimate layer).
    labels : array-like of int, shape (N,)
    k : int
        Neighbours per input in the cosine k-NN graph (union, symmetric).
    label_trust : float
        λ > 0 of the module docstring: larger keeps more inputs.
    graph : scipy.sparse matrix, optional
        A precomputed non-negative symmetric graph on the N inputs (skips the k-NN step).
    device : torch device for the k-NN search.

    Returns
    -------
    Selection
    """
    if graph is None:
        from geokd.graphs import knn_graph

        n = len(embeddings)
        if not isinstance(k, int) or not 1 <= k < n:
            raise ValueError(f"k: expected an int in 1..{n - 1} for {n} inputs, got {k!r}")
        graph = knn_graph(embeddings, k=k, kernel="cosine", device=device)
    w = _check_graph(graph)
    labels = _check_labels(labels, w.shape[0])
    dropped_mask = np.zeros(w.shape[0], dtype=bool)
    dropped_per_class, cut_values = {}, {}
    for cls in np.unique(labels).tolist():
        sink_side, value = cut_class(w, labels, cls, label_trust=label_trust)
        poorly = sink_side & (labels == cls)
        dropped_mask |= poorly
        dropped_per_class[int(cls)] = int(poorly.sum())
        cut_values[int(cls)] = value
    return Selection(
        kept=np.flatnonzero(~dropped_mask),
        dropped=np.flatnonzero(dropped_mask),
        dropped_per_class=dropped_per_class,
        cut_values=cut_values,
        label_trust=float(label_trust),
        k=int(k),
    )


@torch.no_grad()
def teacher_embeddings(model: torch.nn.Module, x: torch.Tensor, *, layer: str, batch_size: int = 256,
                       device: str | torch.device = "cpu") -> torch.Tensor:
    """The output of module ``layer`` for every input of ``x``, flattened to ``(N, D)``.

    Runs the model in eval mode (restored afterwards) batch by batch on ``device``.
    """
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ValueError(f"layer {layer!r} is not a module of the model (e.g. {sorted(modules)[1:8]}...)")
    captured: list[torch.Tensor] = []
    handle = modules[layer].register_forward_hook(lambda _m, _i, out: captured.append(out.flatten(1).cpu()))
    was_training = model.training
    model.eval().to(device)
    try:
        for start in range(0, x.shape[0], batch_size):
            model(x[start : start + batch_size].to(device))
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(captured)
