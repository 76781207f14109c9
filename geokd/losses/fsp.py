r"""FSP: match the "flow of solution procedure" between consecutive layers.

Yim, Joo, Bae and Kim, "A Gift from Knowledge Distillation: Fast Optimization, Network
Minimization and Transfer Learning" (CVPR 2017). For two maps :math:`F^1` (``h×w×C₁``)
and :math:`F^2` (``h×w×C₂``) of equal spatial size, the FSP matrix is

.. math:: G(F^1, F^2) = \frac{(F^1)^\top F^2}{h\,w} \in \mathbb{R}^{C_1\times C_2},

and the term is :math:`\sum_{\ell} \|G_T^{\ell} - G_S^{\ell}\|_F^2` over consecutive pairs
of sensing points, averaged over the batch (the paper's equal pair weights). When the two
maps of a pair differ in size the larger is pooled to the smaller (``pool="max"``, the
``2×2`` max-pooling of the TensorFlow reference implementation for a halving; ``"avg"``
also offered); pooled ``(B, C)`` vectors count as ``1×1`` maps. Student and teacher must
have the same channel counts at every compared layer (the FSP matrices are compared
entry by entry). The reference implementation halves the squared norm and scales by
``1e-3``: a term weight of ``5e-4`` reproduces its scale. The paper trains with this term
alone first (``init_epochs=N, init_only=True``), then on the task.

Precision: the FSP matrices and the term are computed in float32 for float16/bfloat16
maps (a float16 product of activations of a few hundred overflows). FSP is not
scale-free: if a layer pair's term still overflows (float32 activations beyond ~1e19),
``ValueError`` names the pair.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from geokd.graphs._numerics import describe_peak, full_precision, working
from geokd.losses._util import (
    DistillationTerm,
    as_maps,
    check_feature_pair,
    check_outputs,
    describe_layers,
    pool_to,
    select_features,
)
from geokd.losses.registry import register_loss

_POOL_MODES = ("max", "avg")


def fsp_matrix(first: torch.Tensor, second: torch.Tensor, *, pool: str = "max") -> torch.Tensor:
    r"""Batch of FSP matrices :math:`G = (F^1)^\top F^2 / (h w)`, shape ``(B, C₁, C₂)``.

    Parameters
    ----------
    first, second : torch.Tensor
        ``(B, C, H, W)`` maps (or ``(B, C)`` vectors, taken as ``1×1`` maps); the larger
        is pooled to the smaller's spatial size.
    pool : {"max", "avg"}
        Pooling used to equalize sizes.

    Returns
    -------
    torch.Tensor
        ``(B, C₁, C₂)``, float32 for float16/bfloat16 maps.

    Examples
    --------
    >>> f = torch.ones(1, 2, 3, 3)
    >>> fsp_matrix(f, 2 * f)
    tensor([[[2., 2.],
             [2., 2.]]])
    """
    if pool not in _POOL_MODES:
        raise ValueError(f"fsp: expected pool in {_POOL_MODES}, got {pool!r}")
    a, b = as_maps(first), as_maps(second)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"fsp: the two maps hold {a.shape[0]} and {b.shape[0]} inputs")
    size = (min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3]))
    with full_precision(a):
        a, b = working(pool_to(a, size, mode=pool)), working(pool_to(b, size, mode=pool))
        hw = size[0] * size[1]
        return torch.bmm(a.flatten(2), b.flatten(2).transpose(1, 2)) / hw


def fsp_loss(
    student_feats: Sequence[torch.Tensor],
    teacher_feats: Sequence[torch.Tensor],
    *,
    pool: str = "max",
    labels: Sequence[str] | None = None,
) -> torch.Tensor:
    r""":math:`\sum_\ell \mathrm{mean}_b \|G_T^\ell - G_S^\ell\|_F^2` over consecutive layer pairs.

    Examples
    --------
    >>> x = [torch.rand(2, 3, 4, 4), torch.rand(2, 5, 2, 2)]
    >>> float(fsp_loss(x, x))
    0.0
    """
    if len(student_feats) != len(teacher_feats):
        raise ValueError(
            f"fsp: expected as many student as teacher maps, got {len(student_feats)} and {len(teacher_feats)}"
        )
    if len(student_feats) < 2:
        raise ValueError(f"fsp: expected at least 2 layers (FSP relates consecutive layers), got {len(student_feats)}")
    labels = labels if labels is not None else [f"layer {i}" for i in range(len(student_feats))]
    for where, s, t in zip(labels, student_feats, teacher_feats):
        check_feature_pair("fsp", where, s, t)
        if s.ndim not in (2, 4) or t.ndim not in (2, 4):
            raise ValueError(
                f"fsp: {where}: expected (B, C) or (B, C, H, W) features, got {tuple(s.shape)} and {tuple(t.shape)}"
            )
        if s.shape[1] != t.shape[1]:
            raise ValueError(
                f"fsp: {where}: student has {s.shape[1]} channels but teacher has {t.shape[1]}; "
                "FSP matrices are compared entry by entry, so channel counts must match"
            )
    total = None
    for i in range(len(student_feats) - 1):
        g_s = fsp_matrix(student_feats[i], student_feats[i + 1], pool=pool)
        with torch.no_grad():
            g_t = fsp_matrix(teacher_feats[i].detach(), teacher_feats[i + 1].detach(), pool=pool)
        term = (g_t - g_s).pow(2).sum(dim=(1, 2)).mean()
        if not bool(torch.isfinite(term)):
            pair = (student_feats[i], student_feats[i + 1], teacher_feats[i], teacher_feats[i + 1])
            raise ValueError(
                f"fsp: {labels[i]} -> {labels[i + 1]}: the FSP term overflows {term.dtype}: the activations "
                f"are too large ({describe_peak(*pair)}); FSP is not scale-free, rescale the features"
            )
        total = term if total is None else total + term
    return total


@register_loss("fsp")
class FSP(DistillationTerm):
    r"""Registered ``"fsp"`` term (Yim et al. 2017).

    Parameters
    ----------
    layers : sequence of int, optional
        Sensing points whose consecutive pairs are compared (default all of them).
    pool : {"max", "avg"}
        How a pair's larger map is brought to the smaller size.
    init_epochs : int
        Length of the FSP initialization stage (this term alone, no cross-entropy).
    init_only : bool
        Drop the term after the initialization stage (the paper's recipe).
    student_taps, teacher_taps : sequence of str, optional
        Module names overriding the models' sensing points.

    Examples
    --------
    >>> from geokd.models.outputs import ModelOutputs
    >>> feats = [torch.rand(2, 3, 4, 4), torch.rand(2, 3, 2, 2)]
    >>> out = ModelOutputs(torch.zeros(2, 5), feats)
    >>> float(FSP(init_epochs=2, init_only=True)(out, out, None))
    0.0
    """

    def __init__(
        self,
        *,
        layers: Sequence[int] | None = None,
        pool: str = "max",
        init_epochs: int = 0,
        init_only: bool = False,
        student_taps=None,
        teacher_taps=None,
    ):
        super().__init__()
        if pool not in _POOL_MODES:
            raise ValueError(f"fsp: expected pool in {_POOL_MODES}, got {pool!r}")
        self.pool = pool
        self.layers = None if layers is None else tuple(int(i) for i in layers)
        self._set_stage_attributes(
            init_epochs=init_epochs, init_only=init_only, student_taps=student_taps, teacher_taps=teacher_taps
        )

    def forward(self, student, teacher, labels=None) -> torch.Tensor:
        check_outputs("fsp", student, teacher, labels)
        chosen = select_features("fsp", student.features, teacher.features, self.layers, spatial_only=False)
        return fsp_loss(
            [student.features[i] for i in chosen],
            [teacher.features[i] for i in chosen],
            pool=self.pool,
            labels=describe_layers(chosen, self.student_taps),
        )

    def extra_repr(self) -> str:
        return f"layers={self.layers}, pool={self.pool!r}, init_epochs={self.init_epochs}, init_only={self.init_only}"


__all__ = ["FSP", "fsp_loss", "fsp_matrix"]
