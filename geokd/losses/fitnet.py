r"""FitNet hints: regress a middle teacher layer from a middle student layer.

Romero et al., "FitNets: Hints for Thin Deep Nets" (ICLR 2015). With :math:`u_T` the
teacher's hint layer, :math:`v_S` the student's guided layer and :math:`r` a trainable
convolutional regressor,

.. math:: L_{HT} = \tfrac12 \| u_T - r(v_S) \|_2^2 ,

summed over the hint's elements and averaged over the batch. As in the paper, :math:`r`
is a convolution without padding whose kernel is :math:`k = n_S - n_T + 1` per spatial
axis, so that a larger student map lands exactly on the teacher's size (``1×1`` when the
sizes agree); pooled ``(B, C)`` hints use a linear regressor. The regressor is a
parameter of this loss: the trainer adds ``loss.parameters()`` to the optimizer.

The classic recipe trains the hint stage first (this term alone), then the student
with Hinton KD: configure ``init_epochs=N, init_only=True`` beside a ``"kd"`` term.
With ``init_epochs=0`` the hint is simply kept beside the cross-entropy all along.

The regressor's shape depends on the networks: pass ``student_channels=`` and
``teacher_channels=`` (and ``kernel_size=``), or build the term without them and call
:meth:`FitNet.setup` once with one forward pass's outputs (the trainer does so before
creating the optimizer), or use :meth:`FitNet.from_outputs`.

Precision: the squared error is summed in float32 for float16/bfloat16 features (the
loss is float32). The hint loss is not scale-free: if it still overflows (float32
activations beyond ~1e19, or a regressor output beyond the dtype), ``ValueError`` names
the layer.
"""

from __future__ import annotations

import torch
from torch import nn

from geokd.graphs._numerics import describe_peak, full_precision, working
from geokd.losses._util import (
    DistillationTerm,
    check_feature_pair,
    check_outputs,
    layer_name,
    parameter_dtype,
)
from geokd.losses.registry import register_loss


def fitnet_loss(regressed: torch.Tensor, hint: torch.Tensor, *, where: str = "hint layer") -> torch.Tensor:
    r""":math:`\tfrac12\|u_T - r(v_S)\|^2`, summed per input and averaged over the batch.

    ``ValueError`` (naming ``where``) if the loss is not finite: the activations or the
    regressor's output are too large for their dtype.

    Examples
    --------
    >>> float(fitnet_loss(torch.zeros(2, 3), torch.ones(2, 3)))  # ½·3 per input
    1.5
    """
    if regressed.shape != hint.shape:
        raise ValueError(
            f"fitnet: regressed student features {tuple(regressed.shape)} do not match "
            f"the teacher hint {tuple(hint.shape)}"
        )
    with full_precision(regressed):
        loss = 0.5 * (working(hint.detach()) - working(regressed)).pow(2).sum() / hint.shape[0]
    if not bool(torch.isfinite(loss)):
        raise ValueError(
            f"fitnet: {where}: the hint loss overflows {loss.dtype}: the activations are too large "
            f"(regressed student {describe_peak(regressed)}, teacher hint {describe_peak(hint)}); "
            "FitNet is not scale-free, rescale the features"
        )
    return loss


@register_loss("fitnet")
class FitNet(DistillationTerm):
    r"""Registered ``"fitnet"`` term: :math:`\tfrac12\|u_T - r(v_S)\|^2` with a trainable regressor.

    Parameters
    ----------
    student_channels, teacher_channels : int, optional
        Channels of the guided and hint layers; give both to build the regressor now,
        or neither and call :meth:`setup`.
    kernel_size : int or (int, int)
        Regressor kernel when built from channels (default 1); :meth:`setup` infers it
        from the spatial sizes as :math:`n_S - n_T + 1`.
    hint_layer : int, optional
        Index of the sensing point used as hint and guided layer; default the middle
        one, ``len(features) // 2`` (``"layer2"`` of a WRN's three points).
    init_epochs : int
        Length of the hint stage (this term alone, no cross-entropy).
    init_only : bool
        Drop the term after the hint stage (the classic two-stage recipe).
    student_taps, teacher_taps : sequence of str, optional
        Module names overriding the models' sensing points.

    Examples
    --------
    >>> from geokd.models.outputs import ModelOutputs
    >>> s = ModelOutputs(torch.zeros(2, 3), [torch.rand(2, 4, 6, 6)])
    >>> t = ModelOutputs(torch.zeros(2, 3), [torch.rand(2, 8, 4, 4)])
    >>> loss = FitNet.from_outputs(s, t)
    >>> loss.regressor
    Conv2d(4, 8, kernel_size=(3, 3), stride=(1, 1))
    >>> loss(s, t, None).shape
    torch.Size([])
    """

    def __init__(
        self,
        *,
        student_channels: int | None = None,
        teacher_channels: int | None = None,
        kernel_size: int | tuple[int, int] = 1,
        hint_layer: int | None = None,
        init_epochs: int = 0,
        init_only: bool = False,
        student_taps=None,
        teacher_taps=None,
    ):
        super().__init__()
        self._set_stage_attributes(
            init_epochs=init_epochs, init_only=init_only, student_taps=student_taps, teacher_taps=teacher_taps
        )
        if hint_layer is not None and (isinstance(hint_layer, bool) or not isinstance(hint_layer, int)):
            raise ValueError(f"fitnet: expected hint_layer to be an integer index, got {hint_layer!r}")
        self.hint_layer = hint_layer
        self.regressor: nn.Module | None = None
        if (student_channels is None) != (teacher_channels is None):
            raise ValueError(
                "fitnet: give both student_channels and teacher_channels, or neither (then call setup); "
                f"got student_channels={student_channels!r}, teacher_channels={teacher_channels!r}"
            )
        if student_channels is not None:
            self.regressor = _conv_regressor(student_channels, teacher_channels, kernel_size)

    @classmethod
    def from_outputs(cls, student, teacher, **params) -> FitNet:
        """Build the term and its regressor from one forward pass's ``ModelOutputs``."""
        loss = cls(**params)
        loss.setup(student, teacher)
        return loss

    def setup(self, student, teacher) -> None:
        """Create the regressor to fit the hint pair of these outputs (no-op if it fits already).

        Called by the trainer with one batch's outputs *before* it builds the optimizer,
        so that the regressor's parameters are optimized. The regressor is placed on the
        features' device and dtype.
        """
        check_outputs("fitnet", student, teacher)
        index, s, t = self._hint_pair(student, teacher)
        regressor = _regressor_for(s, t, where=layer_name(index, self.student_taps))
        if self.regressor is not None and _same_shape(self.regressor, regressor):
            return
        self.regressor = regressor.to(device=s.device, dtype=parameter_dtype(s))

    def forward(self, student, teacher, labels=None) -> torch.Tensor:
        check_outputs("fitnet", student, teacher, labels)
        if self.regressor is None:
            raise ValueError(
                "fitnet: the regressor is not built yet: pass student_channels=/teacher_channels= "
                "or call loss.setup(student_outputs, teacher_outputs) before building the optimizer"
            )
        index, s, t = self._hint_pair(student, teacher)
        if s.ndim == 2 and isinstance(self.regressor, nn.Conv2d):
            # A pooled hint with an explicitly built 1x1 regressor: a 1x1 map.
            regressed = self.regressor(s[:, :, None, None]).flatten(1)
        else:
            regressed = self.regressor(s)
        if regressed.shape[1:] != t.shape[1:]:
            raise ValueError(
                f"fitnet: {layer_name(index, self.student_taps)}: the regressor maps the student's "
                f"{tuple(s.shape[1:])} to {tuple(regressed.shape[1:])} but the teacher hint is "
                f"{tuple(t.shape[1:])}; rebuild it with setup()"
            )
        return fitnet_loss(regressed, t, where=layer_name(index, self.student_taps))

    def _hint_pair(self, student, teacher):
        n_s, n_t = len(student.features), len(teacher.features)
        if n_s != n_t or n_s == 0:
            raise ValueError(
                f"fitnet: expected the same positive number of student and teacher sensing points, got {n_s} and {n_t}"
            )
        index = n_s // 2 if self.hint_layer is None else self.hint_layer
        if not -n_s <= index < n_s:
            raise ValueError(f"fitnet: hint_layer {index} is out of range for {n_s} sensing points")
        index %= n_s
        s, t = student.features[index], teacher.features[index]
        check_feature_pair("fitnet", layer_name(index, self.student_taps), s, t)
        if s.ndim not in (2, 4) or s.ndim != t.ndim:
            raise ValueError(
                f"fitnet: {layer_name(index, self.student_taps)}: expected student and teacher features both "
                f"(B, C) or both (B, C, H, W), got {tuple(s.shape)} and {tuple(t.shape)}"
            )
        return index, s, t

    def extra_repr(self) -> str:
        return f"hint_layer={self.hint_layer}, init_epochs={self.init_epochs}, init_only={self.init_only}"


def _conv_regressor(student_channels, teacher_channels, kernel_size) -> nn.Module:
    for name, c in (("student_channels", student_channels), ("teacher_channels", teacher_channels)):
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ValueError(f"fitnet: expected {name} to be a positive integer, got {c!r}")
    return nn.Conv2d(student_channels, teacher_channels, kernel_size)


def _regressor_for(s: torch.Tensor, t: torch.Tensor, *, where: str) -> nn.Module:
    if s.ndim == 2:
        return nn.Linear(s.shape[1], t.shape[1])
    kernel = (s.shape[2] - t.shape[2] + 1, s.shape[3] - t.shape[3] + 1)
    if min(kernel) < 1:
        raise ValueError(
            f"fitnet: {where}: the student map {tuple(s.shape[2:])} is smaller than the teacher hint "
            f"{tuple(t.shape[2:])}; a FitNet regressor (valid convolution) needs a student map at least "
            f"as large: pick a shallower student layer (hint_layer / student_taps)"
        )
    return nn.Conv2d(s.shape[1], t.shape[1], kernel)


def _same_shape(a: nn.Module, b: nn.Module) -> bool:
    return type(a) is type(b) and [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]


__all__ = ["FitNet", "fitnet_loss"]
