r"""Activation Boundary distillation: make student neurons switch on where the teacher's do.

Heo, Lee, Yun and Choi, "Knowledge Transfer via Distillation of Activation Boundaries
Formed by Hidden Neurons" (AAAI 2019). On *pre-ReLU* responses :math:`T` (teacher) and
:math:`S` (student), through a connector :math:`r` (``1×1`` convolution + batch norm, so
channel counts may differ), with :math:`\rho(x) = 1[x > 0]` and margin :math:`\mu = 1`:

.. math:: L_\ell = \big\| \rho(T) \odot \mathrm{relu}(\mu - r(S))
                 + (1 - \rho(T)) \odot \mathrm{relu}(\mu + r(S)) \big\|_2^2 ,

a squared hinge that pushes each student response above :math:`\mu` where the teacher's
neuron is active and below :math:`-\mu` where it is not. Each :math:`L_\ell` is summed over
its elements and averaged over the batch; layers are weighted :math:`2^{-(L-1-\ell)}`
shallow to deep (``1/4, 1/2, 1`` for three). The authors' code further scales the sum by
``3/1000``: a term weight of ``0.003`` reproduces its scale.

The paper's recipe uses this term alone in an initialization stage, then trains with
the cross-entropy (and KD): ``init_epochs=N, init_only=True``. Pre-ReLU responses come
from taps ending in ``":input"`` on the ReLU modules (``teacher_taps=`` and
``student_taps=``); the models' default sensing points are used otherwise.

The connectors are parameters of this loss: the trainer adds ``loss.parameters()`` to the
optimizer. Pass ``student_channels=`` / ``teacher_channels=`` or call :meth:`setup` once.

Precision: the hinge is summed in float32 for float16/bfloat16 responses (the loss is
float32). If a connector's response is not finite (activations too large for the batch
norm's statistics in their dtype), ``ValueError`` names the layer and the connector's
running statistics are left as they were before the refused batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from geokd.graphs._numerics import describe_peak, full_precision, working
from geokd.losses._util import (
    DistillationTerm,
    check_feature_pair,
    check_outputs,
    check_positive,
    describe_layers,
    parameter_dtype,
    select_features,
)
from geokd.losses.registry import register_loss
from geokd.models.batchnorm import BatchNorm2d


def boundary_hinge(student_response: torch.Tensor, teacher_response: torch.Tensor, *, margin: float = 1.0):
    r"""Squared hinge :math:`\|\rho(T)\,\mathrm{relu}(\mu - S) + (1-\rho(T))\,\mathrm{relu}(\mu + S)\|^2` per input.

    Returns the sum over elements divided by the batch size. The teacher carries no gradient.

    Examples
    --------
    >>> s = torch.tensor([[0.5, -2.0, 0.0]])
    >>> t = torch.tensor([[1.0, 1.0, -1.0]])
    >>> float(boundary_hinge(s, t))  # (1-0.5)^2 + (1+2)^2 + (1+0)^2
    10.25
    """
    mu = check_positive("margin", margin, allow_zero=True)
    if student_response.shape != teacher_response.shape:
        raise ValueError(
            f"activation_boundary: connector output {tuple(student_response.shape)} does not match the "
            f"teacher response {tuple(teacher_response.shape)}"
        )
    with full_precision(student_response):
        s = working(student_response)
        active = (teacher_response.detach() > 0).to(s.dtype)
        hinge = active * torch.relu(mu - s) + (1 - active) * torch.relu(mu + s)
        return hinge.pow(2).sum() / s.shape[0]


def connector(student_channels: int, teacher_channels: int) -> nn.Sequential:
    """The AB connector: ``1×1`` convolution (no bias, He-normal init) then batch norm."""
    conv = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)
    nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(2.0 / teacher_channels))
    bn = BatchNorm2d(teacher_channels)
    return nn.Sequential(conv, bn)


def stage_weights(n_layers: int) -> list[float]:
    """``2^-(L-1-l)``: 1/4, 1/2, 1 for three layers, shallow to deep.

    Examples
    --------
    >>> stage_weights(3)
    [0.25, 0.5, 1.0]
    """
    return [2.0 ** (i - n_layers + 1) for i in range(n_layers)]


@register_loss("activation_boundary")
class ActivationBoundary(DistillationTerm):
    r"""Registered ``"activation_boundary"`` term (AB, Heo et al. 2019).

    Parameters
    ----------
    margin : float
        :math:`\mu` (default 1).
    layers : sequence of int, optional
        Sensing points to compare; default every ``(B, C, H, W)`` one.
    student_channels, teacher_channels : sequence of int, optional
        Channels per compared layer, to build the connectors now; otherwise call
        :meth:`setup` with one forward pass's outputs.
    init_epochs : int
        Length of the initialization stage (this term alone, no cross-entropy).
    init_only : bool
        Drop the term after the initialization stage (the paper's recipe).
    student_taps, teacher_taps : sequence of str, optional
        Pre-ReLU taps, e.g. ``("layer1.3.relu2:input", ...)``, overriding sensing points.

    Examples
    --------
    >>> from geokd.models.outputs import ModelOutputs
    >>> s = ModelOutputs(torch.zeros(2, 3), [torch.randn(2, 4, 5, 5), torch.randn(2, 6)])
    >>> t = ModelOutputs(torch.zeros(2, 3), [torch.randn(2, 8, 5, 5), torch.randn(2, 9)])
    >>> loss = ActivationBoundary.from_outputs(s, t)
    >>> len(loss.connectors), float(loss(s, t, None).detach()) > 0
    (1, True)
    """

    def __init__(
        self,
        *,
        margin: float = 1.0,
        layers: Sequence[int] | None = None,
        student_channels: Sequence[int] | None = None,
        teacher_channels: Sequence[int] | None = None,
        init_epochs: int = 0,
        init_only: bool = False,
        student_taps=None,
        teacher_taps=None,
    ):
        super().__init__()
        self.margin = check_positive("margin", margin, allow_zero=True)
        self.layers = None if layers is None else tuple(int(i) for i in layers)
        self._set_stage_attributes(
            init_epochs=init_epochs, init_only=init_only, student_taps=student_taps, teacher_taps=teacher_taps
        )
        self.connectors: nn.ModuleList | None = None
        if (student_channels is None) != (teacher_channels is None):
            raise ValueError(
                "activation_boundary: give both student_channels and teacher_channels, or neither "
                f"(then call setup); got {student_channels!r} and {teacher_channels!r}"
            )
        if student_channels is not None:
            self.connectors = _build_connectors(list(student_channels), list(teacher_channels))

    @classmethod
    def from_outputs(cls, student, teacher, **params) -> ActivationBoundary:
        """Build the term and its connectors from one forward pass's ``ModelOutputs``."""
        loss = cls(**params)
        loss.setup(student, teacher)
        return loss

    def setup(self, student, teacher) -> None:
        """Create one connector per compared layer (no-op if they already fit).

        Call before building the optimizer; the connectors go to the features' device.
        """
        check_outputs("activation_boundary", student, teacher)
        chosen = select_features("activation_boundary", student.features, teacher.features, self.layers, spatial_only=True)
        s_ch = [student.features[i].shape[1] for i in chosen]
        t_ch = [teacher.features[i].shape[1] for i in chosen]
        if self.connectors is not None and _channels(self.connectors) == (s_ch, t_ch):
            return
        ref = student.features[chosen[0]]
        self.connectors = _build_connectors(s_ch, t_ch).to(device=ref.device, dtype=parameter_dtype(ref))

    def forward(self, student, teacher, labels=None) -> torch.Tensor:
        check_outputs("activation_boundary", student, teacher, labels)
        if self.connectors is None:
            raise ValueError(
                "activation_boundary: the connectors are not built yet: pass student_channels=/teacher_channels= "
                "or call loss.setup(student_outputs, teacher_outputs) before building the optimizer"
            )
        chosen = select_features("activation_boundary", student.features, teacher.features, self.layers, spatial_only=True)
        if len(chosen) != len(self.connectors):
            raise ValueError(
                f"activation_boundary: built {len(self.connectors)} connectors but {len(chosen)} layers are compared; "
                "rebuild with setup()"
            )
        labels_of = describe_layers(chosen, self.student_taps)
        total = None
        for where, i, link, w in zip(labels_of, chosen, self.connectors, stage_weights(len(chosen))):
            s, t = student.features[i], teacher.features[i]
            check_feature_pair("activation_boundary", where, s, t, spatial=True)
            if s.shape[2:] != t.shape[2:]:
                raise ValueError(
                    f"activation_boundary: {where}: student response is {tuple(s.shape[2:])} but teacher response "
                    f"is {tuple(t.shape[2:])}; AB compares neurons position by position, so spatial sizes must match"
                )
            if s.shape[1] != link[0].in_channels or t.shape[1] != link[0].out_channels:
                raise ValueError(
                    f"activation_boundary: {where}: connector maps {link[0].in_channels} -> {link[0].out_channels} "
                    f"channels but the student has {s.shape[1]} and the teacher {t.shape[1]}"
                )
            saved = _running_stats(link)
            term = boundary_hinge(link(s), t, margin=self.margin)
            if not bool(torch.isfinite(term)):
                _restore_running_stats(link, saved)
                raise ValueError(
                    f"activation_boundary: {where}: the connector's response is not finite in {s.dtype}: the "
                    f"student activations are too large ({describe_peak(s)}); rescale the features"
                )
            total = w * term if total is None else total + w * term
        return total

    def extra_repr(self) -> str:
        return f"margin={self.margin}, layers={self.layers}, init_epochs={self.init_epochs}, init_only={self.init_only}"


def _running_stats(link: nn.Sequential) -> list[torch.Tensor] | None:
    # Copies of the batch norm's running statistics (C values each), so a refused batch
    # does not leave NaN statistics behind.
    bn = link[1]
    if not (bn.training and bn.track_running_stats and bn.running_mean is not None):
        return None
    return [bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()]


def _restore_running_stats(link: nn.Sequential, saved: list[torch.Tensor] | None) -> None:
    if saved is not None:
        bn = link[1]
        with torch.no_grad():
            for buffer, value in zip((bn.running_mean, bn.running_var, bn.num_batches_tracked), saved):
                buffer.copy_(value)


def _build_connectors(student_channels: list[int], teacher_channels: list[int]) -> nn.ModuleList:
    if len(student_channels) != len(teacher_channels) or not student_channels:
        raise ValueError(
            "activation_boundary: expected one student and one teacher channel count per compared layer, "
            f"got {student_channels} and {teacher_channels}"
        )
    for c in student_channels + teacher_channels:
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ValueError(f"activation_boundary: expected positive integer channel counts, got {c!r}")
    return nn.ModuleList(connector(s, t) for s, t in zip(student_channels, teacher_channels))


def _channels(connectors: nn.ModuleList) -> tuple[list[int], list[int]]:
    return [c[0].in_channels for c in connectors], [c[0].out_channels for c in connectors]


__all__ = ["ActivationBoundary", "boundary_hinge", "connector", "stage_weights"]
