"""Relational knowledge distillation (RKD, Park et al., CVPR 2019).

Two flavours of the distance term:

* :func:`rkd_distance_loss` with the defaults is RKD-D **as the GKD paper ran it** (from
  the released code): per sensing point, Euclidean distances of the raw flattened
  features, off-diagonal pairs only, each side divided by its own mean off-diagonal
  distance, Huber (smooth-L1, δ = 1) averaged over the off-diagonal pairs, then averaged
  over the sensing points.
* ``include_diagonal=True`` averages the Huber term over all ``B^2`` entries (the zero
  diagonal included), as Park et al.'s released code does; :class:`RKDLoss` uses it.

Degenerate policy: if every input of a layer is identical (mean distance 0), its
normalized distances are 0 instead of 0/0.

Precision: both terms are scale-free, so half-precision features are compared in float32
(the loss is float32) and features whose squares over- or underflow are divided by a
power of two first (exact); the result is finite for every finite input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from geokd.graphs._validation import as_layer_list, check_activations, check_layer_pair, check_pair_batch
from geokd.graphs._numerics import full_precision, pow2_scale, working
from geokd.graphs.kernels import _normalized_distances
from geokd.losses import _native_terms
from geokd.losses.registry import register_loss
from geokd.models.outputs import ModelOutputs

__all__ = ["RKDAngleLoss", "RKDDistanceLoss", "RKDLoss", "rkd_angle_loss", "rkd_distance_loss"]


def _angles(flat: torch.Tensor) -> torch.Tensor:
    # angles[j, i, k] = <e_ij, e_kj>, e_ij the unit vector from t_j to t_i; a zero
    # difference (i = j or duplicates) normalizes to the zero vector, so its angles are 0.
    with full_precision(flat):
        work = working(flat)
        # Angles ignore scale: one power of two (exact, a pass over (B, D), small next to the
        # (B, B, D) differences) keeps the differences and their squares in range.
        work = work / pow2_scale(work)
        diff = work.unsqueeze(0) - work.unsqueeze(1)
        unit = F.normalize(diff, p=2.0, dim=2)
        return torch.bmm(unit, unit.transpose(1, 2))


def _layer_pairs(student_feats, teacher_feats, *, finite: bool = True):
    student = as_layer_list(student_feats, role="student")
    teacher = as_layer_list(teacher_feats, role="teacher")
    check_layer_pair(student, teacher)
    for index, (s, t) in enumerate(zip(student, teacher)):
        where = f"layer {index}"
        s_flat = check_activations(s, where=f"{where} (student)", finite=finite)
        t_flat = check_activations(t, where=f"{where} (teacher)", finite=finite)
        check_pair_batch(s_flat, t_flat, where=where)
        yield s_flat, t_flat.detach()


def rkd_distance_loss(student_feats: Sequence[torch.Tensor] | torch.Tensor,
                      teacher_feats: Sequence[torch.Tensor] | torch.Tensor, *,
                      include_diagonal: bool = False) -> torch.Tensor:
    """RKD distance loss, averaged over sensing points (without λ).

    Parameters
    ----------
    student_feats, teacher_feats : list of torch.Tensor
        One ``(B, ...)`` tensor per sensing point (a single tensor is one layer); widths
        may differ, batch sizes may not.
    include_diagonal : bool
        ``False`` (GKD's released RKD-D): mean over the ``B(B-1)`` off-diagonal pairs.
        ``True`` (Park et al.'s code): mean over all ``B^2`` entries.

    Examples
    --------
    >>> x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    >>> float(rkd_distance_loss(x, 2 * x))  # distances are compared after dividing by their mean
    0.0
    >>> y = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
    >>> round(float(rkd_distance_loss(y, x)), 6)
    0.0675
    """
    if not isinstance(include_diagonal, bool):
        raise ValueError(f"expected include_diagonal to be a bool, got {include_diagonal!r}")
    # A first pass without the finiteness pass over the activations (about a quarter of the
    # term's time on a training step): a NaN/Inf input makes its squared norms or the loss
    # non-finite, and the checked pass then says which layer.
    loss, finite_inputs = _distance_loss(student_feats, teacher_feats, include_diagonal=include_diagonal,
                                         finite=False)
    if not bool(finite_inputs & torch.isfinite(loss)):
        loss, _ = _distance_loss(student_feats, teacher_feats, include_diagonal=include_diagonal, finite=True)
    return loss


def _distance_loss(student_feats, teacher_feats, *, include_diagonal: bool, finite: bool):
    """``(loss, whether every squared row norm was finite)`` (a tensor: no device sync here).

    The distances themselves hide a NaN input (the safe square root maps it to 0), the
    squared norms do not."""
    terms, norms_finite = [], []
    for s_flat, t_flat in _layer_pairs(student_feats, teacher_feats, finite=finite):
        # On a CPU, geokd's compiled kernels take the whole layer (None: out of their range).
        term = _native_terms.rkd_term(s_flat, t_flat, include_diagonal=include_diagonal)
        if term is not None:  # they checked that every squared norm is finite
            terms.append(term)
            continue
        with torch.no_grad():
            psi_t, t_sq = _normalized_distances(t_flat)
        psi_s, s_sq = _normalized_distances(s_flat)
        norms_finite.append(torch.isfinite(t_sq.sum() + s_sq.detach().sum()))
        b = s_flat.shape[0]
        # Both diagonals are exactly 0 (a point's distance to itself), so their Huber terms
        # are 0: the off-diagonal mean is the full sum over B(B-1), without the boolean
        # selection (a nonzero pass, a gather and its scatter in the backward).
        total = F.smooth_l1_loss(psi_s, psi_t, beta=1.0, reduction="sum")
        terms.append(total / (b * b if include_diagonal else b * (b - 1)))
    finite_norms = torch.stack(norms_finite).all() if norms_finite else torch.tensor(True)
    return torch.stack(terms).mean(), finite_norms


def rkd_angle_loss(student_feats: Sequence[torch.Tensor] | torch.Tensor,
                   teacher_feats: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """RKD angle loss (Park et al.), averaged over sensing points (without λ).

    ``ψ_A(t_i, t_j, t_k) = <e_ij, e_kj>`` with ``e_ij = (t_i - t_j)/|t_i - t_j|``; Huber
    (δ = 1) averaged over all ``B^3`` ordered triplets as in the authors' code (degenerate
    triplets, ``i = j`` or ``k = j``, give 0 on both sides). Memory is ``O(B^2 F + B^3)``:
    meant for pooled / embedding features.

    Examples
    --------
    >>> x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
    >>> float(rkd_angle_loss(3 * x @ rot + 1, x)) < 1e-12  # angles ignore rotation, scale, shift
    True
    """
    terms = []
    for s_flat, t_flat in _layer_pairs(student_feats, teacher_feats):
        with torch.no_grad():
            psi_t = _angles(t_flat)
        terms.append(F.smooth_l1_loss(_angles(s_flat), psi_t, beta=1.0))
    return torch.stack(terms).mean()


def _check_weight(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
        raise ValueError(f"expected {name} to be a finite number >= 0, got {value!r}")
    return float(value)


def _select(features, layer: int, role: str) -> torch.Tensor:
    n = len(features)
    if not -n <= layer < n:
        raise ValueError(f"layer index {layer} out of range for {n} {role} sensing points")
    return features[layer]


@register_loss("rkd_distance")
class RKDDistanceLoss(nn.Module):
    """RKD-D as the GKD paper ran it: per sensing point, averaged (registered ``"rkd_distance"``).

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> t = ModelOutputs(torch.zeros(8, 10), [torch.rand(8, 4, 2, 2, generator=g), torch.rand(8, 6, generator=g)])
    >>> s = ModelOutputs(torch.zeros(8, 10), [torch.rand(8, 2, 2, 2, generator=g), torch.rand(8, 3, generator=g)])
    >>> bool(RKDDistanceLoss()(s, t, None) > 0)
    True
    """

    def __init__(self, *, layers: Sequence[int] | None = None) -> None:
        super().__init__()
        self.layers = None if layers is None else tuple(int(i) for i in layers)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, labels=None) -> torch.Tensor:
        s, t = list(student.features), list(teacher.features)
        check_layer_pair(s, t)
        if self.layers is not None:
            s = [_select(s, i, "student") for i in self.layers]
            t = [_select(t, i, "teacher") for i in self.layers]
        return rkd_distance_loss(s, t)


@register_loss("rkd_angle")
class RKDAngleLoss(nn.Module):
    """RKD angle term on one sensing point (default: the last, pooled one)."""

    def __init__(self, *, layer: int = -1) -> None:
        super().__init__()
        self.layer = int(layer)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, labels=None) -> torch.Tensor:
        return rkd_angle_loss(_select(student.features, self.layer, "student"),
                              _select(teacher.features, self.layer, "teacher"))


@register_loss("rkd")
class RKDLoss(nn.Module):
    """Park et al.'s RKD: ``distance_weight * RKD-D + angle_weight * RKD-A`` on one point.

    Defaults are the classification setting: the last (penultimate, pooled) sensing point,
    weights 25 and 50; the distance term averages over all ``B^2`` entries as Park's code.
    The caller's λ multiplies the whole (use λ = 1 to get Park's loss).

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> t = ModelOutputs(torch.zeros(8, 10), [torch.rand(8, 16, generator=g)])
    >>> s = ModelOutputs(torch.zeros(8, 10), [torch.rand(8, 8, generator=g)])
    >>> rkd = RKDLoss()
    >>> expected = 25 * rkd_distance_loss(s.features, t.features, include_diagonal=True) \\
    ...     + 50 * rkd_angle_loss(s.features, t.features)
    >>> bool(torch.isclose(rkd(s, t, None), expected))
    True
    """

    def __init__(self, *, distance_weight: float = 25.0, angle_weight: float = 50.0, layer: int = -1) -> None:
        super().__init__()
        self.distance_weight = _check_weight("distance_weight", distance_weight)
        self.angle_weight = _check_weight("angle_weight", angle_weight)
        self.layer = int(layer)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, labels=None) -> torch.Tensor:
        s = _select(student.features, self.layer, "student")
        t = _select(teacher.features, self.layer, "teacher")
        return (self.distance_weight * rkd_distance_loss(s, t, include_diagonal=True)
                + self.angle_weight * rkd_angle_loss(s, t))
