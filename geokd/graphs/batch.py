"""Dense, differentiable graphs of one batch (the GKD latent geometry graphs)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from geokd.graphs._validation import check_activations, check_labels, check_pair_batch
from geokd.graphs._validation import check_k
from geokd.graphs.kernels import _similarity
from geokd.graphs.masks import graph_power, knn_mask, task_mask
from geokd.graphs.normalize import normalize
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
    return _batch_graph(check_activations(x, where=where), spec=spec, labels=labels, mask=mask,
                        num_classes=num_classes, where=where)


def _batch_graph(flat: torch.Tensor, *, spec: GraphSpec, labels, mask, num_classes, where) -> BatchGraph:
    """:func:`batch_graph` of already validated, flattened rows."""
    b = flat.shape[0]
    if spec.k is not None and mask is None:
        check_k(spec.k, b, where=where)
    if mask is not None and (not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (b, b)):
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{where + ': ' if where else ''}expected a k-NN mask of shape ({b}, {b}), got {got}")
    tmask = None
    if spec.task != "all":
        if labels is None:
            raise ValueError(f"{where + ': ' if where else ''}task={spec.task!r} needs class labels, got labels=None")
        labels = check_labels(labels, b, num_classes=num_classes, device=flat.device, where=where)
        tmask = task_mask(labels, task=spec.task, dtype=flat.dtype, where=where)

    sim = _similarity(flat, kernel=spec.kernel, sigma=spec.sigma, clamp_negative=spec.clamp_negative)
    graph = normalize(sim, mode=spec.normalization, where=where)
    if tmask is not None:
        graph = graph * tmask
    if mask is None and spec.k is not None:
        mask = knn_mask(graph, k=spec.k, where=where)
    if mask is not None:
        mask = mask.to(device=graph.device, dtype=graph.dtype)
    if spec.renormalize:
        masked = sim if tmask is None else sim * tmask
        if mask is not None:
            masked = masked * mask
        graph = normalize(masked, mode=spec.normalization, where=where)
    elif mask is not None:
        graph = graph * mask
    return BatchGraph(graph_power(graph, power=spec.power), mask)


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
    check_pair_batch(s_flat, t_flat, where=tag)
    with torch.no_grad():
        teacher = _batch_graph(t_flat.detach(), spec=spec, labels=labels, mask=None, num_classes=num_classes,
                               where=f"{tag} (teacher)")
    student = _batch_graph(s_flat, spec=spec, labels=labels, mask=teacher.knn_mask, num_classes=num_classes,
                           where=f"{tag} (student)")
    return student.adjacency, teacher.adjacency
