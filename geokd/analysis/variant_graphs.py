"""A layer's graphs under any graph variant, built on the node set exactly as the GKD loss builds them.

One float64 Gram product ``G = X Xᵀ`` per layer and network serves every variant
(:func:`layer_gram`); each variant's graph is then read from it by the GKD loss's own
builders (:func:`geokd.graphs.similarity_from_gram`, :func:`geokd.graphs.graph_from_similarity`):
the kernel, the normalization with the degrees of the unmasked graph (unless ``renorm``),
the class mask from the nodes' labels, the teacher's k-NN mask (a student's graph takes the
teacher's, as in the loss), then the power. So the squared aligned distance between a
teacher's and a student's graph under a variant is that variant's one-layer GKD term on
those nodes (float64: the tests compare it with :func:`geokd.losses.gkd_loss` to 1e-6).

The spectral metrics and the label smoothness need an undirected graph with nonnegative
weights and no self-loops; :func:`analysis_graph` makes it from the variant's graph: the
symmetric part (an ``rw`` graph is directed), the diagonal dropped (a power ``p >= 2`` has
walks back to the start) and negative weights clipped at 0 (as the default k-NN graph
does: a negative cosine is not an affinity).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from geokd.analysis._validate import CheckedGraph, as_features, check_graph
from geokd.graphs.spec import GraphSpec

#: Variant graphs are dense ``(N, N)`` float64 matrices (the teacher's kept for every layer
#: and variant: 72 MB each at this size) with exact spectra; above, a clear error.
VARIANT_NODE_LIMIT = 3000


def check_variants(specs: Sequence[GraphSpec], *, num_nodes: int) -> None:
    """Refuse, before any network is loaded, variants the node set cannot take.

    Examples
    --------
    >>> check_variants([], num_nodes=50_000)      # no variants: a whole split is fine
    >>> check_variants([GraphSpec(k=200)], num_nodes=200)
    Traceback (most recent call last):
    ...
    ValueError: graph variant 'cos-sym-k200-all-p1': expected k < the node count 200 (a node has 199 possible neighbours), got k = 200; use a smaller k or 'full' (every edge)
    """
    if len(specs) and num_nodes > VARIANT_NODE_LIMIT:
        raise ValueError(f"graph variants build dense (N, N) graphs with exact spectra: expected at most "
                         f"{VARIANT_NODE_LIMIT:,} nodes, got {num_nodes:,}; use a smaller node set "
                         "(--per-class) for --graphs")
    for spec in specs:
        if not isinstance(spec, GraphSpec):
            raise ValueError(f"expected graph variants as GraphSpec, got {type(spec).__name__}")
        if spec.k is not None and spec.k >= num_nodes:
            raise ValueError(f"graph variant {spec.name!r}: expected k < the node count {num_nodes} (a node has "
                             f"{num_nodes - 1} possible neighbours), got k = {spec.k}; use a smaller k or 'full' "
                             "(every edge)")


def layer_gram(features, *, device="cpu", name: str | None = None) -> torch.Tensor:
    """The exactly symmetric float64 Gram matrix ``X Xᵀ`` of a layer's node-set features.

    Examples
    --------
    >>> layer_gram(np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32))
    tensor([[ 5., 11.],
            [11., 25.]], dtype=torch.float64)
    """
    from geokd.graphs.kernels import gram

    x = torch.from_numpy(as_features(features, name=name)).to(device=device, dtype=torch.float64)
    with torch.no_grad():
        return gram(x)


@dataclass(frozen=True)
class VariantGraph:
    """One network's graph of one layer under one variant, and what its metrics read.

    Attributes
    ----------
    spec : GraphSpec
    adjacency : torch.Tensor
        ``(N, N)`` float64, the graph as the GKD loss builds it.
    knn_mask : torch.Tensor or None
        The boolean k-NN mask applied (the teacher's, for a student), ``None`` without k-NN.
    graph : CheckedGraph
        :func:`analysis_graph` of ``adjacency``, checked once for every metric.
    spectrum : numpy.ndarray or None
        Normalized-Laplacian eigenvalues of ``graph`` (``None`` if not asked for).
    isolated : numpy.ndarray
        Positions of the nodes without an edge in ``graph`` (e.g. the only node of its
        class under ``intra``).
    """

    spec: GraphSpec
    adjacency: torch.Tensor
    knn_mask: torch.Tensor | None
    graph: CheckedGraph
    spectrum: np.ndarray | None
    isolated: np.ndarray


def analysis_graph(adjacency: torch.Tensor, *, name: str | None = None) -> CheckedGraph:
    """The undirected, nonnegative, loop-free graph the spectra and smoothness are taken on.

    Examples
    --------
    >>> a = torch.tensor([[0.5, 1.0, -0.2], [0.0, 0.0, 0.4], [-0.2, 0.4, 0.0]], dtype=torch.float64)
    >>> analysis_graph(a).matrix.toarray()
    array([[0. , 0.5, 0. ],
           [0.5, 0. , 0.4],
           [0. , 0.4, 0. ]])
    """
    from geokd.graphs.dataset_knn import _small_torch_ops

    a = adjacency.detach().to(device="cpu", dtype=torch.float64)
    with _small_torch_ops(a.device):   # elementwise: one thread (see variant_graph)
        w = 0.5 * (a + a.T)
        w.fill_diagonal_(0.0)
        w.clamp_min_(0.0)
    return check_graph(w.numpy(), name=name)


def variant_graph(gram: torch.Tensor, spec: GraphSpec, labels, *, mask: torch.Tensor | None = None,
                  spectrum: bool = True, name: str | None = None) -> VariantGraph:
    """The graph of the rows whose Gram matrix is ``gram`` under ``spec``, with its spectrum.

    Parameters
    ----------
    gram : torch.Tensor
        ``(N, N)`` float64 Gram matrix of the layer's features (:func:`layer_gram`).
    spec : GraphSpec
    labels : array-like of int, shape (N,)
        The nodes' classes (for ``intra`` / ``inter``).
    mask : torch.Tensor, optional
        A k-NN mask to apply instead of this graph's own (the teacher's, for a student).
    spectrum : bool
        Also compute the normalized-Laplacian spectrum (a dense eigensolve; not needed to
        draw the graph).
    name : str, optional
        Names the network and layer in error messages.

    Examples
    --------
    >>> x = np.abs(np.random.default_rng(0).normal(size=(6, 4))).astype(np.float32)
    >>> g = variant_graph(layer_gram(x), GraphSpec(task="intra"), [0, 0, 0, 1, 1, 2])
    >>> g.isolated.tolist(), g.spectrum.shape            # node 5 is alone in its class
    ([5], (6,))
    """
    from geokd.analysis.spectral import laplacian_spectrum
    from geokd.graphs.batch import graph_from_similarity
    from geokd.graphs.dataset_knn import _small_torch_ops
    from geokd.graphs.kernels import similarity_from_gram
    from geokd.graphs.masks import graph_power

    tag = f"{name} ({spec.name})" if name else spec.name
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64), device=gram.device)
    with torch.no_grad():
        # The (N, N) elementwise steps on one thread: on 2 shared cores, each multi-threaded
        # one was an OpenMP barrier that another process's load made 10-30x slower (2.6 ms
        # against 74 ms for the similarity of 1,000 nodes). The power, the one product, last
        # (as in the builders), keeps every thread.
        with _small_torch_ops(gram.device):
            sim = similarity_from_gram(gram, kernel=spec.kernel, sigma=spec.sigma,
                                       clamp_negative=spec.clamp_negative, where=tag)
            built = graph_from_similarity(sim, spec=dataclasses.replace(spec, power=1), mask=mask, where=tag,
                                          labels=y if spec.task != "all" else None)
        adjacency = built.adjacency
        if spec.power > 1:
            adjacency = graph_power(adjacency, power=spec.power)
            if not bool(torch.isfinite(adjacency).all()):
                raise ValueError(f"{tag}: the power {spec.power} of the graph overflows {adjacency.dtype}: its "
                                 "entries are too large (an unnormalized or dot-product graph?)")
    graph = analysis_graph(adjacency, name=tag)
    degrees = np.asarray(graph.matrix.sum(axis=1)).ravel()
    # The k-NN mask as booleans (an eighth of the memory): the builders take it as 0/1 weights.
    knn = None if built.knn_mask is None else built.knn_mask.bool()
    return VariantGraph(spec=spec, adjacency=adjacency, knn_mask=knn, graph=graph,
                        spectrum=laplacian_spectrum(graph, name=tag) if spectrum else None,
                        isolated=np.flatnonzero(degrees <= 0))


def describe_isolated(isolated: np.ndarray, labels, *, limit: int = 5) -> str:
    """A note naming nodes without edges, e.g. ``"2 nodes without edges: 7 (class 3), 9 (class 4)"``.

    Examples
    --------
    >>> describe_isolated(np.array([5]), [0, 0, 0, 1, 1, 2])
    '1 node without edges (positions in the node set): 5 (class 2)'
    """
    if isolated.size == 0:
        return ""
    y = np.asarray(labels)
    shown = ", ".join(f"{int(i)} (class {int(y[i])})" for i in isolated[:limit])
    more = f", and {isolated.size - limit} more" if isolated.size > limit else ""
    plural = "node" if isolated.size == 1 else "nodes"
    return f"{isolated.size} {plural} without edges (positions in the node set): {shown}{more}"


def variant_graphs_of(features, labels, specs: Sequence[GraphSpec], *, masks=None, device="cpu",
                      spectrum: bool = True, name: str | None = None) -> dict[str, VariantGraph]:
    """Every variant's graph of one layer from one Gram product (``masks``: the teacher's
    k-NN mask per variant name, for a student; ``spectrum`` as in :func:`variant_graph`).

    Examples
    --------
    >>> x = np.abs(np.random.default_rng(0).normal(size=(8, 5))).astype(np.float32)
    >>> graphs = variant_graphs_of(x, [0, 1] * 4, [GraphSpec(), GraphSpec(k=2, task="inter")])
    >>> list(graphs), graphs["cos-sym-k2-inter-p1"].knn_mask.shape
    (['cos-sym-full-all-p1', 'cos-sym-k2-inter-p1'], torch.Size([8, 8]))
    """
    gram = layer_gram(features, device=device, name=name)
    out = {}
    for spec in specs:
        mask = None if masks is None else masks.get(spec.name)
        out[spec.name] = variant_graph(gram, spec, labels, mask=mask, spectrum=spectrum, name=name)
    del gram
    return out
