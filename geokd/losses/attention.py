r"""Attention Transfer: match where, spatially, each network's activations concentrate.

Zagoruyko and Komodakis, "Paying More Attention to Attention" (ICLR 2017). For a
``(C, H, W)`` map :math:`A` the activation-based attention is the unit vector

.. math:: q(A) = \frac{\mathrm{vec}(\tfrac1C\sum_c |A_c|^p)}{\|\mathrm{vec}(\tfrac1C\sum_c |A_c|^p)\|_2},
   \qquad p = 2,

and the term is :math:`\beta \sum_{\ell} \mathrm{mean}\big((q(A_S^\ell) - q(A_T^\ell))^2\big)`,
the mean taken over the batch and the :math:`H W` positions, :math:`\beta = 1000`.
(The authors' released code writes :math:`\tfrac\beta2\sum_\ell` with ``beta=1e3``; pass
``beta=500`` to reproduce its scale exactly.) Channel counts may differ between student
and teacher; spatial sizes must agree, or, with ``resize="pool"``, the larger map is
average-pooled to the smaller (as in the CRD reference implementations).

Sensing points: the paper compares every stage's output map (for a WRN the outputs of
``layer1``, ``layer2`` and ``layer3``, the last one before pooling). A WRN's default sensing
points end with the pooled ``(B, C)`` vector, which has no spatial attention: tap the stage
outputs (``student_taps`` / ``teacher_taps``) or choose the maps with ``layers``; a pooled
vector among the compared points is an error, never silently dropped.

Precision: :math:`q` is scale-free per map, so half-precision maps are handled in float32
(the term is float32) and a map whose powers over- or underflow is divided by a power of
two first (exact): the term is finite for every finite input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from geokd.graphs._numerics import full_precision, pow2_scale, squared_norms_in_range, working
from geokd.losses._util import (
    DistillationTerm,
    check_feature_pair,
    check_outputs,
    check_positive,
    describe_layers,
    layer_name,
    pool_to,
    select_features,
)
from geokd.losses.registry import register_loss

_RESIZE_MODES = ("error", "pool")


def attention_map(features: torch.Tensor, *, p: float = 2.0) -> torch.Tensor:
    r"""The normalized attention vector :math:`q` of each map in a batch.

    Parameters
    ----------
    features : torch.Tensor
        ``(B, C, H, W)`` activations.
    p : float
        Exponent of :math:`|A_c|^p` (2 in the paper's main experiments).

    Returns
    -------
    torch.Tensor
        ``(B, H·W)`` rows of unit L2 norm (an all-zero map gives a zero row), float32 for
        float16/bfloat16 maps.

    Examples
    --------
    >>> q = attention_map(torch.ones(1, 3, 2, 2))
    >>> q
    tensor([[0.5000, 0.5000, 0.5000, 0.5000]])
    """
    if features.ndim != 4:
        raise ValueError(f"attention_map: expected (B, C, H, W) features, got {tuple(features.shape)}")
    check_positive("p", p)
    with full_precision(features):
        work = working(features)
        energy = _energy(work, p)
        sq = energy.square().sum(dim=1)
        # |A|^p over/underflows for large p or |A| (float32: |A| > 1e19 for p = 2); the map
        # is scale-free, so such inputs are divided by a power of two and redone. An
        # all-zero map also lands here (harmless: it stays zero).
        if not squared_norms_in_range(sq):
            energy = _energy(work / pow2_scale(work, dim=(1, 2, 3)), p)
            sq = energy.square().sum(dim=1)
        positive = sq > 0
        inv_norm = torch.where(positive, torch.where(positive, sq, torch.ones_like(sq)).rsqrt(), torch.zeros_like(sq))
        return energy * inv_norm.unsqueeze(1)


def _energy(maps: torch.Tensor, p: float) -> torch.Tensor:
    return maps.abs().pow(p).mean(dim=1).flatten(1)


def attention_transfer_loss(
    student_feats: Sequence[torch.Tensor],
    teacher_feats: Sequence[torch.Tensor],
    *,
    beta: float = 1000.0,
    p: float = 2.0,
    resize: str = "error",
    labels: Sequence[str] | None = None,
) -> torch.Tensor:
    r"""AT term :math:`\beta\sum_\ell \mathrm{mean}((q_S^\ell - q_T^\ell)^2)` over paired maps.

    Parameters
    ----------
    student_feats, teacher_feats : sequence of torch.Tensor
        Paired ``(B, C, H, W)`` maps (channels may differ). The teacher's carry no gradient.
    beta : float
        Weight :math:`\beta` inside the term (1000 in the paper).
    p : float
        Attention exponent.
    resize : {"error", "pool"}
        What to do when a pair's spatial sizes differ: raise, or average-pool the larger
        map to the smaller one's size before computing attention.
    labels : sequence of str, optional
        How error messages name each pair (default ``"layer i"``).

    Examples
    --------
    >>> x = torch.rand(2, 4, 3, 3)
    >>> float(attention_transfer_loss([x], [3.0 * x])) < 1e-9  # invariant to scaling a map
    True
    """
    beta = check_positive("beta", beta, allow_zero=True)
    if resize not in _RESIZE_MODES:
        raise ValueError(f"attention: expected resize in {_RESIZE_MODES}, got {resize!r}")
    if len(student_feats) != len(teacher_feats) or not student_feats:
        raise ValueError(
            f"attention: expected the same positive number of student and teacher maps, "
            f"got {len(student_feats)} and {len(teacher_feats)}"
        )
    total = None
    for i, (s, t) in enumerate(zip(student_feats, teacher_feats)):
        where = labels[i] if labels is not None else f"layer {i}"
        check_feature_pair("attention", where, s, t, spatial=True)
        t = t.detach()
        if s.shape[-2:] != t.shape[-2:]:
            if resize == "error":
                raise ValueError(
                    f"attention: {where}: student map is {tuple(s.shape[-2:])} but teacher map is "
                    f"{tuple(t.shape[-2:])}; AT compares positions, so spatial sizes must match "
                    f"(pass resize='pool' to average-pool the larger one)"
                )
            size = (min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1]))
            s, t = pool_to(s, size, mode="avg"), pool_to(t, size, mode="avg")
        diff = attention_map(s, p=p) - attention_map(t, p=p)
        term = diff.pow(2).mean()
        total = term if total is None else total + term
    return beta * total


@register_loss("attention")
class AttentionTransfer(DistillationTerm):
    r"""Registered ``"attention"`` term (Attention Transfer, Zagoruyko & Komodakis 2017).

    Parameters
    ----------
    beta : float
        :math:`\beta` (default 1000).
    p : float
        Attention exponent (default 2).
    layers : sequence of int, optional
        Which sensing points to compare (default: all of them). Each must be a
        ``(B, C, H, W)`` map: a pooled ``(B, C)`` vector has no spatial attention and is
        refused with a ``ValueError`` naming it.
    resize : {"error", "pool"}
        Spatial-size mismatch policy (see :func:`attention_transfer_loss`).
    student_taps, teacher_taps : sequence of str, optional
        Module names overriding the models' sensing points, e.g. the outputs of the
        three WRN groups ``("layer1", "layer2", "layer3")`` as in the paper.

    Examples
    --------
    >>> from geokd.models.outputs import ModelOutputs
    >>> x = torch.rand(2, 4, 8, 8)
    >>> s = ModelOutputs(torch.zeros(2, 3), [x, torch.rand(2, 5)])
    >>> t = ModelOutputs(torch.zeros(2, 3), [2 * x, torch.rand(2, 7)])
    >>> float(AttentionTransfer(layers=[0])(s, t, None)) < 1e-9  # the maps alone
    True
    >>> AttentionTransfer()(s, t, None)
    Traceback (most recent call last):
    ...
    ValueError: attention: layer 1 is a pooled (B, C) vector of shape (2, 5), with no spatial attention; tap the stage outputs before pooling (student_taps / teacher_taps, e.g. ['layer1', 'layer2', 'layer3'] for a WRN) or choose the maps with layers=[0]
    """

    def __init__(
        self,
        *,
        beta: float = 1000.0,
        p: float = 2.0,
        layers: Sequence[int] | None = None,
        resize: str = "error",
        student_taps: Sequence[str] | None = None,
        teacher_taps: Sequence[str] | None = None,
    ):
        super().__init__()
        self.beta = check_positive("beta", beta, allow_zero=True)
        self.p = check_positive("p", p)
        if resize not in _RESIZE_MODES:
            raise ValueError(f"attention: expected resize in {_RESIZE_MODES}, got {resize!r}")
        self.resize = resize
        self.layers = None if layers is None else tuple(int(i) for i in layers)
        self._set_stage_attributes(student_taps=student_taps, teacher_taps=teacher_taps)

    def forward(self, student, teacher, labels=None) -> torch.Tensor:
        check_outputs("attention", student, teacher, labels)
        chosen = select_features("attention", student.features, teacher.features, self.layers, spatial_only=False)
        if self.layers is None:
            self._refuse_pooled(student.features, chosen)
        return attention_transfer_loss(
            [student.features[i] for i in chosen],
            [teacher.features[i] for i in chosen],
            beta=self.beta,
            p=self.p,
            resize=self.resize,
            labels=describe_layers(chosen, self.student_taps),
        )

    def _refuse_pooled(self, features, chosen) -> None:
        # Dropping a pooled point silently would distil fewer stages than configured (the
        # WRN's third sensing point is the pooled vector): say what to tap instead.
        maps = [i for i in chosen if features[i].ndim == 4]
        for i in chosen:
            if features[i].ndim == 2:
                hint = f" or choose the maps with layers={maps}" if maps else ""
                raise ValueError(
                    f"attention: {layer_name(i, self.student_taps)} is a pooled (B, C) vector of shape "
                    f"{tuple(features[i].shape)}, with no spatial attention; tap the stage outputs before pooling "
                    f"(student_taps / teacher_taps, e.g. ['layer1', 'layer2', 'layer3'] for a WRN){hint}"
                )

    def extra_repr(self) -> str:
        return f"beta={self.beta}, p={self.p}, layers={self.layers}, resize={self.resize!r}"


__all__ = ["AttentionTransfer", "attention_map", "attention_transfer_loss"]
