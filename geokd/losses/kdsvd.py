r"""KD-SVD: distill the relations between dominant singular vectors of consecutive layers.

Lee, Kim and Song, "Self-supervised Knowledge Distillation Using Singular Value
Decomposition" (ECCV 2018). Each ``(B, C, H, W)`` map is read as a ``(HW × C)`` matrix per
input and compressed to its top right-singular vectors: :math:`K = 1` for the teacher,
:math:`K + 3 = 4` for the student. Each teacher vector is matched to the student vector
with the largest :math:`|\cos|`, whose sign is flipped to agree (singular vectors are only
defined up to sign). Both are scaled by the teacher's L2-normalized top singular values.
Between consecutive layers :math:`\ell-1, \ell` the term compares the RBF relations

.. math:: R_{k,c,c'} = \exp\!\big(-(v^{\ell}_{k,c} - v^{\ell-1}_{k,c'})^2 / 8\big),
   \qquad L = \sum_\ell \mathrm{mean}_b \sum_{k,c,c'} (R^S - R^T)^2 .

The released TensorFlow code also sums over the batch: multiply the weight by the batch
size to match its scale. Student and teacher need equal channel counts at each compared
layer (the relation matrices are ``C_ℓ × C_{ℓ-1}``). Singular vectors are signed so that
their largest-magnitude entry is positive (the reference leaves the sign to the SVD
routine, which makes the value depend on the backend).

The method trains the task and this term together with the distillation gradient of each
parameter clipped to the norm of that parameter's task gradient: the term declares
``clip_to_task_gradient = True`` and the trainer applies :func:`clip_to_task_gradient`.

Precision: there is no half-precision SVD on the CPU, so float16/bfloat16 maps are
decomposed in float32 (the term is float32). Each map is divided by a power of two
before the SVD (exact; singular vectors and the normalized singular values the term
uses do not depend on scale), which keeps maps near the dtype's limits finite.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from geokd.graphs._numerics import full_precision, pow2_scale, working
from geokd.losses._util import (
    DistillationTerm,
    as_maps,
    check_feature_pair,
    check_outputs,
    describe_layers,
    select_features,
)
from geokd.losses.registry import register_loss


def top_singular_vectors(features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` singular values and right-singular vectors of each ``(HW × C)`` map.

    Parameters
    ----------
    features : torch.Tensor
        ``(B, C, H, W)`` maps, or ``(B, C)`` vectors (one row: a single singular vector).
    k : int
        How many to keep (capped at ``min(HW, C)``).

    Returns
    -------
    (sigma, v) : torch.Tensor
        ``sigma`` ``(B, k)`` in decreasing order, ``v`` ``(B, k, C)`` unit rows, each
        signed so that its entry of largest magnitude is positive; float32 for
        float16/bfloat16 maps.

    Examples
    --------
    >>> x = torch.zeros(1, 2, 1, 3)   # HW=3, C=2
    >>> x[0, 0] = torch.tensor([3.0, 0.0, 0.0]); x[0, 1] = torch.tensor([0.0, 1.0, 0.0])
    >>> s, v = top_singular_vectors(x, 2)
    >>> s, v
    (tensor([[3., 1.]]), tensor([[[1., 0.],
             [0., 1.]]]))
    """
    sigma, v, scale = _scaled_top_singular_vectors(features, k)
    return sigma * scale.reshape(-1, 1), v


def _scaled_top_singular_vectors(features: torch.Tensor, k: int):
    """``(sigma / s, v, s)`` with ``s`` the power of two that brings each map to max 1..2."""
    with full_precision(features):
        maps = working(as_maps(features))
        scale = pow2_scale(maps, dim=(1, 2, 3))
        m = (maps / scale).flatten(2).transpose(1, 2)  # (B, HW, C)
        if m.requires_grad:
            # SVD's backward divides by gaps between singular values; like the reference
            # code, a degenerate spectrum must not turn the whole update into NaN.
            m.register_hook(_zero_nonfinite)
        _, sigma, vh = torch.linalg.svd(m, full_matrices=False)
        k = min(k, sigma.shape[1])
        return sigma[:, :k], _fix_signs(vh[:, :k, :]), scale.reshape(-1)


def _zero_nonfinite(grad: torch.Tensor | None) -> torch.Tensor | None:
    return None if grad is None else torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


def _fix_signs(v: torch.Tensor) -> torch.Tensor:
    # A singular vector's sign is arbitrary and differs between SVD backends (CPU, CUDA,
    # NumPy). The relations between layers depend on it, so fix it: the entry of largest
    # magnitude is made positive, which makes the loss a function of the features alone.
    idx = v.abs().argmax(dim=2, keepdim=True)
    sign = torch.where(torch.gather(v, 2, idx) >= 0, 1.0, -1.0).to(v.dtype)
    return v * sign


def align_to_teacher(student_v: torch.Tensor, teacher_v: torch.Tensor) -> torch.Tensor:
    """For each teacher vector, the student vector with the largest ``|cos|``, sign-matched.

    Parameters
    ----------
    student_v : torch.Tensor
        ``(B, K_S, C)`` unit rows.
    teacher_v : torch.Tensor
        ``(B, K_T, C)`` unit rows.

    Returns
    -------
    torch.Tensor
        ``(B, K_T, C)``: row ``k`` is ``sign(cos)·student_v[argmax_j |cos(teacher_k, student_j)|]``.

    Examples
    --------
    >>> s = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    >>> t = torch.tensor([[[0.0, -1.0]]])
    >>> align_to_teacher(s, t)
    tensor([[[-0., -1.]]])
    """
    cos = torch.bmm(teacher_v, student_v.transpose(1, 2))  # (B, K_T, K_S)
    best = cos.abs().argmax(dim=2)  # (B, K_T)
    picked = torch.gather(student_v, 1, best[..., None].expand(-1, -1, student_v.shape[2]))
    sign = torch.where(torch.gather(cos, 2, best[..., None]) >= 0, 1.0, -1.0).to(student_v.dtype)
    return picked * sign


def rbf_relations(current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    r"""``exp(-(current[k, c] - previous[k, c'])² / 8)``: shape ``(B, K, C_ℓ, C_{ℓ-1})``."""
    return torch.exp(-(current[:, :, :, None] - previous[:, :, None, :]).pow(2) / 8.0)


def kdsvd_loss(
    student_feats: Sequence[torch.Tensor],
    teacher_feats: Sequence[torch.Tensor],
    *,
    teacher_k: int = 1,
    student_k: int = 4,
    labels: Sequence[str] | None = None,
) -> torch.Tensor:
    r"""KD-SVD term over consecutive pairs of compared layers (see the module docstring).

    Examples
    --------
    >>> torch.manual_seed(0) and None
    >>> x = [torch.rand(3, 4, 5, 5), torch.rand(3, 6, 3, 3)]
    >>> float(kdsvd_loss(x, x))   # a student equal to its teacher
    0.0
    """
    for name, k in (("teacher_k", teacher_k), ("student_k", student_k)):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"kdsvd: expected {name} to be a positive integer, got {k!r}")
    if student_k < teacher_k:
        raise ValueError(f"kdsvd: expected student_k >= teacher_k, got {student_k} < {teacher_k}")
    if len(student_feats) != len(teacher_feats):
        raise ValueError(
            f"kdsvd: expected as many student as teacher maps, got {len(student_feats)} and {len(teacher_feats)}"
        )
    if len(student_feats) < 2:
        raise ValueError(f"kdsvd: expected at least 2 layers (KD-SVD relates consecutive layers), got {len(student_feats)}")
    labels = labels if labels is not None else [f"layer {i}" for i in range(len(student_feats))]
    total = None
    prev_s = prev_t = None
    for where, s, t in zip(labels, student_feats, teacher_feats):
        check_feature_pair("kdsvd", where, s, t)
        if s.ndim not in (2, 4) or t.ndim not in (2, 4):
            raise ValueError(
                f"kdsvd: {where}: expected (B, C) or (B, C, H, W) features, got {tuple(s.shape)} and {tuple(t.shape)}"
            )
        if s.shape[1] != t.shape[1]:
            raise ValueError(
                f"kdsvd: {where}: student has {s.shape[1]} channels but teacher has {t.shape[1]}; the singular "
                "vectors are compared coordinate by coordinate, so channel counts must match"
            )
        with torch.no_grad():
            # The singular values only enter normalized: their scale is irrelevant.
            sigma_t, v_t, _ = _scaled_top_singular_vectors(t.detach(), teacher_k)
            weight = F.normalize(sigma_t, dim=1)[:, :, None]
        _, v_s, _ = _scaled_top_singular_vectors(s, max(student_k, v_t.shape[1]))
        v_s = align_to_teacher(v_s, v_t) * weight
        v_t = v_t * weight
        if prev_s is not None:
            r_s = rbf_relations(v_s, prev_s)
            r_t = rbf_relations(v_t, prev_t)
            term = (r_s - r_t).pow(2).sum() / s.shape[0]
            total = term if total is None else total + term
        prev_s, prev_t = v_s, v_t
    return total


def clip_to_task_gradient(
    task_grads: Sequence[torch.Tensor | None],
    distillation_grads: Sequence[torch.Tensor | None],
    *,
    scale: float = 1.0,
) -> list[torch.Tensor | None]:
    r"""Combine per-parameter gradients as KD-SVD does: :math:`g_{task} + \mathrm{clip}(g_{dist}, \|g_{task}\|)`.

    Each parameter's distillation gradient is rescaled, if longer, to ``scale`` times the
    norm of that parameter's task gradient (cross-entropy only, without weight decay), so
    distillation can steer but never dominate the task. A parameter without a task
    gradient keeps no distillation gradient either. The reference code warms ``scale`` up
    as ``1 / (1 + exp(-epoch))``.

    Examples
    --------
    >>> g = clip_to_task_gradient([torch.tensor([3.0, 4.0])], [torch.tensor([0.0, 10.0])])
    >>> g[0]
    tensor([3., 9.])
    """
    if len(task_grads) != len(distillation_grads):
        raise ValueError(
            f"clip_to_task_gradient: expected one distillation gradient per task gradient, "
            f"got {len(distillation_grads)} and {len(task_grads)}"
        )
    if not scale >= 0 or math.isinf(scale):
        raise ValueError(f"clip_to_task_gradient: expected a finite scale >= 0, got {scale!r}")
    combined: list[torch.Tensor | None] = []
    for g_task, g_dist in zip(task_grads, distillation_grads):
        if g_task is None or g_dist is None:
            combined.append(g_task)
            continue
        bound = scale * torch.linalg.vector_norm(g_task)
        norm = torch.linalg.vector_norm(g_dist)
        factor = torch.where(norm > bound, bound / norm.clamp_min(torch.finfo(norm.dtype).tiny), torch.ones_like(norm))
        combined.append(g_task + g_dist * factor)
    return combined


@register_loss("kdsvd")
class KDSVD(DistillationTerm):
    r"""Registered ``"kdsvd"`` term (KD-SVD, Lee et al. 2018); declares ``clip_to_task_gradient``.

    Parameters
    ----------
    layers : sequence of int, optional
        Sensing points whose consecutive pairs are related (default all of them).
    teacher_k, student_k : int
        Singular vectors kept for the teacher (1) and the student (4).
    student_taps, teacher_taps : sequence of str, optional
        Module names overriding the models' sensing points.

    Examples
    --------
    >>> from geokd.models.outputs import ModelOutputs
    >>> out = ModelOutputs(torch.zeros(2, 5), [torch.rand(2, 3, 4, 4), torch.rand(2, 3)])
    >>> loss = KDSVD()
    >>> loss.clip_to_task_gradient, float(loss(out, out, None))
    (True, 0.0)
    """

    clip_to_task_gradient = True

    def __init__(
        self,
        *,
        layers: Sequence[int] | None = None,
        teacher_k: int = 1,
        student_k: int = 4,
        student_taps=None,
        teacher_taps=None,
    ):
        super().__init__()
        for name, k in (("teacher_k", teacher_k), ("student_k", student_k)):
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ValueError(f"kdsvd: expected {name} to be a positive integer, got {k!r}")
        if student_k < teacher_k:
            raise ValueError(f"kdsvd: expected student_k >= teacher_k, got {student_k} < {teacher_k}")
        self.teacher_k, self.student_k = teacher_k, student_k
        self.layers = None if layers is None else tuple(int(i) for i in layers)
        self._set_stage_attributes(student_taps=student_taps, teacher_taps=teacher_taps)

    def forward(self, student, teacher, labels=None) -> torch.Tensor:
        check_outputs("kdsvd", student, teacher, labels)
        chosen = select_features("kdsvd", student.features, teacher.features, self.layers, spatial_only=False)
        return kdsvd_loss(
            [student.features[i] for i in chosen],
            [teacher.features[i] for i in chosen],
            teacher_k=self.teacher_k,
            student_k=self.student_k,
            labels=describe_layers(chosen, self.student_taps),
        )

    def extra_repr(self) -> str:
        return f"layers={self.layers}, teacher_k={self.teacher_k}, student_k={self.student_k}"


__all__ = ["KDSVD", "align_to_teacher", "clip_to_task_gradient", "kdsvd_loss", "rbf_relations", "top_singular_vectors"]
