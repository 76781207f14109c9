"""Geometric knowledge distillation (GKD, Lassance et al., ICASSP 2020).

Per sensing point, the student's latent geometry graph should match the teacher's:
``L = (1/|Λ|) Σ_ℓ Σ_ij [(Â_T^ℓ)^p_ij - (Â_S^ℓ)^p_ij]^2`` — a *sum* over the ``B^2`` entries,
averaged over layers (the released reduction). The weight λ belongs to the caller.

Half-precision activations give a float32 loss (graphs and squares are computed in
float32: a float16 sum of ``B^2`` squares overflows easily); a loss that overflows its
dtype (huge entries of an unnormalized or dot-product graph) raises ``ValueError``
naming the layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from geokd.graphs._numerics import full_precision, squared_norms_in_range
from geokd.graphs._validation import (
    as_layer_list, check_activations, check_k, check_labels, check_layer_pair, check_pair_batch,
)
from geokd.graphs.batch import _batch_graph, _graph_pair
from geokd.graphs.masks import task_mask
from geokd.graphs.spec import GraphSpec
from geokd.losses import _gkd_fused, _native_terms
from geokd.losses.registry import register_loss
from geokd.models.outputs import ModelOutputs

__all__ = ["GKDLoss", "gkd_loss"]


def _resolve_spec(spec: GraphSpec | None, k, power, task) -> GraphSpec:
    if spec is None:
        return GraphSpec(k=k, power=power, task=task)
    if not isinstance(spec, GraphSpec):
        raise ValueError(f"expected spec to be a GraphSpec, got {type(spec).__name__}")
    if (k, power, task) != (None, 1, "all"):
        raise ValueError(
            f"pass either spec=GraphSpec(...) or k/power/task, not both; got spec={spec.name!r} "
            f"and k={k!r}, power={power!r}, task={task!r}")
    return spec


def gkd_loss(student_feats: Sequence[torch.Tensor] | torch.Tensor,
             teacher_feats: Sequence[torch.Tensor] | torch.Tensor,
             labels: torch.Tensor | None = None, *, k: int | None = None, power: int = 1,
             task: str = "all", spec: GraphSpec | None = None,
             num_classes: int | None = None, layer_names: Sequence[str] | None = None) -> torch.Tensor:
    """GKD loss between student and teacher sensing points (without λ).

    Parameters
    ----------
    student_feats, teacher_feats : list of torch.Tensor
        One ``(B, ...)`` tensor per sensing point, in the same order; widths and spatial
        sizes may differ between student and teacher, batch sizes may not. A single tensor
        counts as one layer.
    labels : torch.Tensor, optional
        ``(B,)`` integer labels, required for ``task="intra"`` / ``"inter"``.
    k : int, optional
        k-NN mask computed on the teacher's graph (``1 <= k < B``); ``None``: full graph.
    power : int
        Compare ``Â^p`` (p-hop walks), ``p >= 1``.
    task : {"all", "intra", "inter"}
        Class mask.
    spec : GraphSpec, optional
        Any other graph variant (then leave ``k``, ``power``, ``task`` at their defaults).
    num_classes : int, optional
        Labels must be ``< num_classes`` when given.
    layer_names : list of str, optional
        Names used in error messages (default: ``"layer <index>"``).

    Returns
    -------
    torch.Tensor
        Scalar; gradients flow to the student only.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> t = [torch.rand(16, 8, 4, 4, generator=g), torch.rand(16, 32, generator=g)]
    >>> s = [torch.rand(16, 4, 4, 4, generator=g, requires_grad=True), torch.rand(16, 16, generator=g)]
    >>> loss = gkd_loss(s, t, k=4)
    >>> loss.backward()
    >>> loss.item() > 0, s[0].grad.shape
    (True, torch.Size([16, 4, 4, 4]))
    >>> float(gkd_loss(t, t))
    0.0
    """
    spec = _resolve_spec(spec, k, power, task)
    student = as_layer_list(student_feats, role="student")
    teacher = as_layer_list(teacher_feats, role="teacher")
    check_layer_pair(student, teacher)
    if layer_names is not None and len(layer_names) != len(student):
        raise ValueError(f"expected {len(student)} layer names, got {len(layer_names)}")
    if spec.task != "all" and labels is None:
        raise ValueError(f"task={spec.task!r} needs class labels, got labels=None")
    wheres = [f"layer {i}" if layer_names is None else f"layer {i} ({layer_names[i]!r})" for i in range(len(student))]
    # Fast path without intermediate range checks; a single check of the total (one device
    # sync) sends the rare out-of-range batch through the checked path, which rescales
    # what is scale-free and names the layer of what is not.
    total = _total(student, teacher, wheres, spec=spec, labels=labels, num_classes=num_classes, checked=False)
    if not bool(torch.isfinite(total)):
        total = _total(student, teacher, wheres, spec=spec, labels=labels, num_classes=num_classes, checked=True)
    return total / len(student)


def _total(student, teacher, wheres, *, spec, labels, num_classes, checked: bool) -> torch.Tensor:
    total = None
    for where, s, t in zip(wheres, student, teacher):
        # The unchecked pass skips the finiteness pass over the activations: a NaN/Inf
        # makes the total non-finite, and the checked pass then names the layer.
        s_flat = check_activations(s, where=f"{where} (student)", finite=checked)
        t_flat = check_activations(t, where=f"{where} (teacher)", finite=checked)
        with full_precision(s_flat):
            term = None if checked else _fused_term(s_flat, t_flat, spec=spec, labels=labels,
                                                    num_classes=num_classes, where=where)
            if term is None:
                a_s, a_t = _graph_pair(s_flat, t_flat, spec=spec, labels=labels, num_classes=num_classes,
                                       where=where, checked=checked)
                term = (a_t - a_s).pow(2).sum()
        if checked and not bool(torch.isfinite(term)):
            raise ValueError(f"{where}: the GKD term overflows {term.dtype}: the graphs' entries are too large "
                             "(an unnormalized or dot-product graph of huge activations?)")
        total = term if total is None else total + term
    if checked and not bool(torch.isfinite(total)):
        raise ValueError(f"the GKD loss summed over {len(wheres)} layers overflows {total.dtype}")
    return total


def _fused_term(s_flat, t_flat, *, spec, labels, num_classes, where) -> torch.Tensor | None:
    """The layer's term as one autograd node, or ``None`` where that does not apply (other
    graph variants, half precision, squared norms out of range): on a CPU by geokd's
    compiled kernels (:mod:`geokd.losses._native_terms`), else with the student's side
    as one node over ATen operations (:mod:`geokd.losses._gkd_fused`)."""
    if _native_terms.supports_gkd(spec) and _native_terms.kernels_for(s_flat, t_flat) is not None:
        check_pair_batch(s_flat, t_flat, where=where)
        # The kernels take k and labels as they come; the ATen path below has them
        # checked by the graph builders (once: on a GPU each label check is a sync).
        if spec.k is not None:
            check_k(spec.k, s_flat.shape[0], where=f"{where} (teacher)")
        if spec.task != "all":
            labels = check_labels(labels, s_flat.shape[0], num_classes=num_classes, device=s_flat.device,
                                  where=f"{where} (teacher)")
        term = _native_terms.gkd_term(s_flat, t_flat, spec=spec, labels=labels)
        if term is not None:
            return term
    if not _gkd_fused.supports(spec, s_flat.dtype) or t_flat.dtype != s_flat.dtype:
        return None
    check_pair_batch(s_flat, t_flat, where=where)
    with torch.no_grad():
        teacher = _batch_graph(t_flat.detach(), spec=spec, labels=labels, mask=None, num_classes=num_classes,
                               where=f"{where} (teacher)", checked=False)
        mask = teacher.knn_mask
        if spec.task != "all":
            tmask = task_mask(labels.to(s_flat.device), task=spec.task, dtype=s_flat.dtype)
            mask = tmask if mask is None else mask * tmask
    term, sq_norms = _gkd_fused.student_term(s_flat, teacher.adjacency, mask, normalization=spec.normalization)
    # As the generic cosine kernel: squared norms that under- or overflowed would make
    # wrong cosines (not NaN), so such a batch takes the generic path, which rescales.
    return term if squared_norms_in_range(sq_norms, each=True) else None


@register_loss("gkd")
class GKDLoss(nn.Module):
    """GKD as a module: ``loss(student, teacher, labels)`` on :class:`ModelOutputs`.

    Parameters
    ----------
    k, power, task, spec
        As in :func:`gkd_loss`.
    layers : list of int, optional
        Indices of the sensing points to use (default: all of them).

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> feats = [torch.rand(8, 4, 4, 4, generator=g), torch.rand(8, 16, generator=g)]
    >>> teacher = ModelOutputs(torch.zeros(8, 10), feats)
    >>> student = ModelOutputs(torch.zeros(8, 10), [f[:, : f.shape[1] // 2] for f in feats])
    >>> labels = torch.arange(8) % 10
    >>> loss = GKDLoss(task="inter")(student, teacher, labels)
    >>> loss.ndim, bool(loss > 0)
    (0, True)
    """

    def __init__(self, *, k: int | None = None, power: int = 1, task: str = "all",
                 spec: GraphSpec | None = None, layers: Sequence[int] | None = None) -> None:
        super().__init__()
        self.spec = _resolve_spec(spec, k, power, task)
        if layers is not None:
            layers = tuple(layers)
            if not layers or any(isinstance(i, bool) or not isinstance(i, int) for i in layers):
                raise ValueError(f"expected layers as a non-empty list of int indices, got {layers!r}")
        self.layers = layers

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, labels: torch.Tensor | None) -> torch.Tensor:
        s_feats, t_feats = list(student.features), list(teacher.features)
        check_layer_pair(s_feats, t_feats)
        if self.layers is not None:
            n = len(s_feats)
            bad = [i for i in self.layers if not -n <= i < n]
            if bad:
                raise ValueError(f"layer indices {bad} out of range for {n} sensing points")
            s_feats = [s_feats[i] for i in self.layers]
            t_feats = [t_feats[i] for i in self.layers]
        num_classes = None
        if labels is not None and self.spec.task != "all" and student.logits is not None:
            num_classes = int(student.logits.shape[-1])
            labels = check_labels(labels, int(student.logits.shape[0]), num_classes=num_classes,
                                  where="GKD labels")
        return gkd_loss(s_feats, t_feats, labels, spec=self.spec, num_classes=num_classes)

    def extra_repr(self) -> str:
        return f"spec={self.spec.name!r}, layers={self.layers}"
