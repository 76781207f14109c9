"""Dense, differentiable graphs of one batch (the GKD latent geometry graphs).

Half-precision activations are turned into graphs in float32 (see
:mod:`geokd.graphs._numerics`) and the final graph is cast back; a graph whose values
do not fit the activations' dtype (e.g. a high power of a dot-product graph in float16)
is refused with ``ValueError``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from geokd.graphs._numerics import fit_dtype, full_precision, working
from geokd.graphs._validation import (
    check_activations, check_finite_graph, check_k, check_labels, check_pair_batch, check_square,
)
from geokd.graphs.kernels import _similarity
from geokd.graphs.masks import _knn_mask, graph_power, task_mask
from geokd.graphs.normalize import _normalize
from geokd.graphs.spec import GraphSpec

_PAPER = GraphSpec()


class BatchGraph(NamedTuple):
    """A batch graph and the k-NN mask it was built with.

    Attributes
    ----------
    adjacency : torch.Tensor
        ``(B, B)`` final graph (after masks and power).
    knn_mask : torch.Tensor or None
        ``(B, B)`` 0/1 k-NN mask applied (``None`` without k-NN), reusable for the student.
    """

    adjacency: torch.Tensor
    knn_mask: torch.Tensor | None


def batch_graph(x: torch.Tensor, *, spec: GraphSpec = _PAPER, labels: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, num_classes: int | None = None,
                where: str | None = None) -> BatchGraph:
    """The graph of one layer's batch, in the paper's order of operations.

    1. similarity (``spec.kernel``) of flattened rows, zero diagonal;
    2. normalization (``spec.normalization``) with the degrees of this full graph;
    3. task mask (``spec.task``) elementwise;
    4. k-NN mask: ``mask`` if given (e.g. the teacher's), else computed from the graph of
       steps 2-3 with ``spec.k``;
    5. no renormalization, unless ``spec.renormalize`` (then the masked similarity graph is
       normalized by its own degrees; the k-NN selection is unchanged);
    6. power ``spec.power`` by repeated product.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, ...)`` activations.
    spec : GraphSpec
        The graph variant (default: the paper's full cosine graph).
    labels : torch.Tensor, optional
        ``(B,)`` integer labels, required when ``spec.task != "all"``.
    mask : torch.Tensor, optional
        ``(B, B)`` k-NN mask to apply instead of computing one.
    num_classes : int, optional
        If given, labels must be ``< num_classes``.
    where : str, optional
        Prefix for error messages (e.g. ``"layer 1 (teacher)"``).

    Examples
    --------
    >>> x = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    >>> g = batch_graph(x, spec=GraphSpec(k=1))
    >>> g.knn_mask
    tensor([[0., 1., 0., 0.],
            [1., 0., 0., 0.],
            [0., 0., 0., 1.],
            [0., 0., 1., 0.]])
    >>> bool((g.adjacency == g.adjacency.T).all())
    True
    """
    if not isinstance(spec, GraphSpec):
        raise ValueError(f"expected spec to be a GraphSpec, got {type(spec).__name__}")
    flat = check_activations(x, where=where)
    with full_precision(flat):
        graph, knn = _batch_graph(working(flat), spec=spec, labels=labels, mask=mask, num_classes=num_classes,
                                  where=where)
        return BatchGraph(_fit(graph, flat, spec, where), None if knn is None else knn.to(flat.dtype))


def _fit(graph: torch.Tensor, flat: torch.Tensor, spec: GraphSpec, where) -> torch.Tensor:
    return fit_dtype(graph, flat.dtype, what=f"graph {spec.name!r} values", where=where, inputs=flat,
                     hint="compute the graph in float32 (or use a normalized cosine graph)")


def _task_mask_checked(spec: GraphSpec, labels, mask, b: int, *, num_classes, like: torch.Tensor,
                       where) -> torch.Tensor | None:
    """Check ``spec.k`` against ``b``, the k-NN ``mask``'s shape and the labels; return the
    class mask (``None`` for ``task="all"``) in ``like``'s dtype and device."""
    if spec.k is not None and mask is None:
        check_k(spec.k, b, where=where)
    if mask is not None and (not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (b, b)):
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{where + ': ' if where else ''}expected a k-NN mask of shape ({b}, {b}), got {got}")
    if spec.task == "all":
        return None
    if labels is None:
        raise ValueError(f"{where + ': ' if where else ''}task={spec.task!r} needs class labels, got labels=None")
    labels = check_labels(labels, b, num_classes=num_classes, device=like.device, where=where)
    return task_mask(labels, task=spec.task, dtype=like.dtype, where=where)


def _batch_graph(flat: torch.Tensor, *, spec: GraphSpec, labels, mask, num_classes, where,
                 checked: bool = True) -> BatchGraph:
    """:func:`batch_graph` of already validated, flattened float32/float64 rows, in their dtype.

    ``checked=False`` leaves out the intermediate range checks (and the rescaled retries
    they trigger): an overflow then shows as NaN/Inf in the graph, which the caller must
    check (the GKD loss checks its total and recomputes with ``checked=True``).
    """
    b = flat.shape[0]
    tmask = _task_mask_checked(spec, labels, mask, b, num_classes=num_classes, like=flat, where=where)
    sim = _similarity(flat, kernel=spec.kernel, sigma=spec.sigma, clamp_negative=spec.clamp_negative, where=where,
                      checked=checked)
    return _graph_from_similarity(sim, spec=spec, tmask=tmask, mask=mask, where=where, checked=checked)


def graph_from_similarity(sim: torch.Tensor, *, spec: GraphSpec = _PAPER, labels: torch.Tensor | None = None,
                          mask: torch.Tensor | None = None, num_classes: int | None = None,
                          where: str | None = None) -> BatchGraph:
    """Steps 2-6 of :func:`batch_graph` on a similarity graph already made (step 1).

    With :func:`geokd.graphs.kernels.similarity_from_gram`, several variants of one layer's
    graph come from one Gram product, each built by the same operations as the GKD loss
    builds it (degrees of the unmasked graph unless ``spec.renormalize``, the class mask
    from ``labels``, the k-NN mask ``mask`` if given, else from this graph, then the power).
    ``spec.kernel``, ``spec.sigma`` and ``spec.clamp_negative`` were for step 1 and are not
    read here.

    Parameters
    ----------
    sim : torch.Tensor
        ``(B, B)`` float32/float64 similarity graph with a zero diagonal.
    spec, labels, mask, num_classes, where
        As in :func:`batch_graph`.

    Examples
    --------
    >>> from geokd.graphs.kernels import gram, similarity_from_gram
    >>> x = torch.rand(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> spec = GraphSpec(k=2, task="inter", power=2)
    >>> labels = torch.tensor([0, 0, 1, 1, 2, 2])
    >>> mine = graph_from_similarity(similarity_from_gram(gram(x)), spec=spec, labels=labels)
    >>> bool(torch.equal(mine.adjacency, batch_graph(x, spec=spec, labels=labels).adjacency))
    True
    """
    if not isinstance(spec, GraphSpec):
        raise ValueError(f"expected spec to be a GraphSpec, got {type(spec).__name__}")
    check_square(sim, where=where)
    check_finite_graph(sim, where=where)
    b = sim.shape[0]
    tmask = _task_mask_checked(spec, labels, mask, b, num_classes=num_classes, like=sim, where=where)
    return _graph_from_similarity(sim, spec=spec, tmask=tmask, mask=mask, where=where)


def _graph_from_similarity(sim: torch.Tensor, *, spec: GraphSpec, tmask, mask, where,
                           checked: bool = True) -> BatchGraph:
    """Steps 2-6 of :func:`_batch_graph` on checked inputs (``tmask``: the class mask or ``None``)."""
    graph = _normalize(sim, mode=spec.normalization, where=where, checked=checked)
    if tmask is not None:
        graph = graph * tmask
    if mask is None and spec.k is not None:
        mask = _knn_mask(graph, k=spec.k)
    if mask is not None:
        mask = mask.to(device=graph.device, dtype=graph.dtype)
    if spec.renormalize:
        masked = sim if tmask is None else sim * tmask
        if mask is not None:
            masked = masked * mask
        graph = _normalize(masked, mode=spec.normalization, where=where, checked=checked)
    elif mask is not None:
        graph = graph * mask
    if spec.power > 1:
        graph = graph_power(graph, power=spec.power)
        if checked and not bool(torch.isfinite(graph).all()):
            raise ValueError(f"{where + ': ' if where else ''}the power {spec.power} of graph {spec.name!r} "
                             f"overflows {graph.dtype}: its entries are too large (an unnormalized or "
                             "dot-product graph?)")
    return BatchGraph(graph, mask)


def graph_pair(student_x: torch.Tensor, teacher_x: torch.Tensor, *, spec: GraphSpec = _PAPER,
               labels: torch.Tensor | None = None, num_classes: int | None = None,
               where: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher graphs of one layer, the student masked by the teacher's k-NN.

    The teacher's graph is computed without gradient. Widths and spatial sizes may differ;
    the batch size may not.

    Returns
    -------
    (A_s, A_t) : tuple of torch.Tensor
        ``(B, B)`` each.

    Examples
    --------
    >>> torch.manual_seed(0) is not None
    True
    >>> s, t = torch.rand(8, 3, 4, 4, requires_grad=True), torch.rand(8, 6, 2, 2)
    >>> a_s, a_t = graph_pair(s, t, spec=GraphSpec(k=2))
    >>> a_s.requires_grad, a_t.requires_grad
    (True, False)
    >>> bool(((a_s != 0) <= (a_t != 0)).all())  # the student only keeps the teacher's edges
    True
    """
    if not isinstance(spec, GraphSpec):
        raise ValueError(f"expected spec to be a GraphSpec, got {type(spec).__name__}")
    tag = where or "layer"
    s_flat = check_activations(student_x, where=f"{tag} (student)")
    t_flat = check_activations(teacher_x, where=f"{tag} (teacher)")
    with full_precision(s_flat):
        a_s, a_t = _graph_pair(s_flat, t_flat, spec=spec, labels=labels, num_classes=num_classes, where=tag)
        return (_fit(a_s, s_flat, spec, f"{tag} (student)"), _fit(a_t, t_flat, spec, f"{tag} (teacher)"))


def _graph_pair(s_flat: torch.Tensor, t_flat: torch.Tensor, *, spec: GraphSpec, labels, num_classes,
                where: str, checked: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`graph_pair` of validated, flattened rows, in the working precision (float32
    for half precision): the GKD loss sums squares of these without casting down.
    ``checked`` as in :func:`_batch_graph`."""
    check_pair_batch(s_flat, t_flat, where=where)
    with torch.no_grad():
        teacher = _batch_graph(working(t_flat.detach()), spec=spec, labels=labels, mask=None,
                               num_classes=num_classes, where=f"{where} (teacher)", checked=checked)
    student = _batch_graph(working(s_flat), spec=spec, labels=labels, mask=teacher.knn_mask,
                           num_classes=num_classes, where=f"{where} (student)", checked=checked)
    return student.adjacency, teacher.adjacency
