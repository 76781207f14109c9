"""Input checks shared by the distillation losses.

Every check raises ``ValueError`` naming the loss, the layer and what was expected and
what came, so that a wrong tap or a diverged network fails loudly instead of yielding NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def layer_name(index: int, names: Sequence[str] | None) -> str:
    """``"layer 2 ('layer3')"`` when tap names are known, ``"layer 2"`` otherwise."""
    if names is not None and 0 <= index < len(names):
        return f"layer {index} ({names[index]!r})"
    return f"layer {index}"


def describe_layers(indices: Sequence[int], names: Sequence[str] | None) -> list[str]:
    """Error-message labels of the chosen sensing points, in the model's numbering."""
    return [layer_name(i, names) for i in indices]


def check_outputs(loss: str, student, teacher, labels=None) -> int:
    """Check that student and teacher outputs describe the same batch; return its size."""
    for role, out in (("student", student), ("teacher", teacher)):
        if not hasattr(out, "logits") or not hasattr(out, "features"):
            raise ValueError(
                f"{loss}: expected the {role} as ModelOutputs(logits, features), got {type(out).__name__}"
            )
    batch = student.logits.shape[0] if student.logits is not None else None
    other = teacher.logits.shape[0] if teacher.logits is not None else None
    if batch is not None and other is not None and batch != other:
        raise ValueError(f"{loss}: student batch has {batch} inputs but teacher batch has {other}")
    if labels is not None and batch is not None and labels.shape[0] != batch:
        raise ValueError(f"{loss}: expected {batch} labels (the batch size), got {labels.shape[0]}")
    return batch


def check_logits(loss: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
    """Logits must be finite ``(B, C)`` tensors of the same shape."""
    for role, z in (("student", student), ("teacher", teacher)):
        if z.ndim != 2:
            raise ValueError(f"{loss}: expected {role} logits of shape (B, num_classes), got {tuple(z.shape)}")
        check_finite(loss, f"{role} logits", z)
    if student.shape != teacher.shape:
        raise ValueError(
            f"{loss}: student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ in shape"
        )


def check_finite(loss: str, what: str, x: torch.Tensor) -> None:
    """Refuse NaN or infinite values: they would silently poison the loss."""
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{loss}: {what} contains {bad} non-finite value(s) (NaN or inf)")


def select_features(
    loss: str,
    student: Sequence[torch.Tensor],
    teacher: Sequence[torch.Tensor],
    layers: Sequence[int] | None,
    *,
    spatial_only: bool,
) -> list[int]:
    """Indices of the sensing points a loss compares, after checking both sides.

    ``layers=None`` means every sensing point (or, with ``spatial_only``, every one whose
    features are ``(B, C, H, W)`` maps: pooled vectors carry no spatial attention).
    """
    if len(student) != len(teacher):
        raise ValueError(
            f"{loss}: expected as many student as teacher sensing points, "
            f"got {len(student)} student and {len(teacher)} teacher feature tensors"
        )
    if len(student) == 0:
        raise ValueError(f"{loss}: expected at least one sensing point, got no features")
    if layers is None:
        chosen = [i for i, f in enumerate(student) if not spatial_only or f.ndim == 4]
        if not chosen:
            shapes = [tuple(f.shape) for f in student]
            raise ValueError(f"{loss}: expected at least one (B, C, H, W) feature map, got shapes {shapes}")
        return chosen
    chosen = []
    for i in layers:
        if not -len(student) <= i < len(student):
            raise ValueError(f"{loss}: layer index {i} is out of range for {len(student)} sensing points")
        chosen.append(i % len(student))
    return chosen


def check_feature_pair(
    loss: str,
    where: str,
    s: torch.Tensor,
    t: torch.Tensor,
    *,
    min_ndim: int = 2,
    spatial: bool = False,
) -> None:
    """Check one student/teacher feature pair: same batch, finite, enough dimensions."""
    for role, x in (("student", s), ("teacher", t)):
        if spatial and x.ndim != 4:
            raise ValueError(f"{loss}: {where}: expected a (B, C, H, W) {role} feature map, got {tuple(x.shape)}")
        if x.ndim < min_ndim:
            raise ValueError(f"{loss}: {where}: expected a {role} tensor of shape (B, ...), got {tuple(x.shape)}")
        check_finite(loss, f"{where}: {role} features", x)
    if s.shape[0] != t.shape[0]:
        raise ValueError(f"{loss}: {where}: student batch has {s.shape[0]} inputs, teacher batch has {t.shape[0]}")


def as_maps(x: torch.Tensor) -> torch.Tensor:
    """View ``(B, C)`` vectors as ``(B, C, 1, 1)`` maps; leave ``(B, C, H, W)`` as is."""
    if x.ndim == 2:
        return x[:, :, None, None]
    if x.ndim == 4:
        return x
    raise ValueError(f"expected (B, C) or (B, C, H, W) features, got {tuple(x.shape)}")


def pool_to(x: torch.Tensor, size: tuple[int, int], *, mode: str) -> torch.Tensor:
    """Adaptive pooling of a ``(B, C, H, W)`` map to ``size`` (``mode`` 'avg' or 'max')."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "avg":
        return F.adaptive_avg_pool2d(x, size)
    if mode == "max":
        return F.adaptive_max_pool2d(x, size)
    raise ValueError(f"expected pool mode 'avg' or 'max', got {mode!r}")


def parameter_dtype(x: torch.Tensor) -> torch.dtype:
    """dtype for parameters built to fit ``x``: float64 stays, anything else (bf16/fp16 under autocast) is float32."""
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def check_positive(name: str, value, *, allow_zero: bool = False) -> float:
    """Validate a positive (or non-negative) finite hyper-parameter."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected {name} to be a number, got {value!r}") from None
    ok = v >= 0 if allow_zero else v > 0
    if not ok or v != v or v in (float("inf"), float("-inf")):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"expected {name} {bound} and finite, got {value!r}")
    return v


def check_init_epochs(value) -> int:
    """``init_epochs`` is a non-negative integer number of epochs."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected init_epochs to be an integer >= 0, got {value!r}")
    return value


def check_taps(name: str, value) -> tuple[str, ...] | None:
    """Optional tuple of module names (``"layer1"``, ``"layer2.0.relu:input"``)."""
    if value is None:
        return None
    if isinstance(value, str) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"expected {name} to be a sequence of module names, got {value!r}")
    return tuple(value)


class DistillationTerm(torch.nn.Module):
    """Base of the registered terms: the attributes the trainer reads, with defaults.

    Attributes
    ----------
    init_epochs : int
        During the first ``init_epochs`` epochs the student trains with this term alone
        (no cross-entropy): the FitNet hint, AB and FSP initialization stages.
    init_only : bool
        The term is dropped once the initialization stage is over (the classic FitNet,
        AB and FSP recipes); otherwise it stays, weighted, beside the cross-entropy.
    clip_to_task_gradient : bool
        The trainer clips this term's gradient to the task gradient's norm (KD-SVD).
    needs_teacher : bool
        The term compares with a teacher's outputs.
    uses_features : bool
        The term reads the sensing points' features (``False``: logits only, e.g. ``"kd"``),
        so a network without sensing points is an error only for terms that use them.
    student_taps, teacher_taps : tuple[str, ...] or None
        Module names overriding the models' sensing points (``"name:input"`` taps a
        module's input, e.g. a pre-ReLU response).
    """

    init_epochs: int = 0
    init_only: bool = False
    clip_to_task_gradient: bool = False
    needs_teacher: bool = True
    uses_features: bool = True
    student_taps: tuple[str, ...] | None = None
    teacher_taps: tuple[str, ...] | None = None

    def _set_stage_attributes(self, *, init_epochs=0, init_only=False, student_taps=None, teacher_taps=None) -> None:
        self.init_epochs = check_init_epochs(init_epochs)
        if not isinstance(init_only, bool):
            raise ValueError(f"expected init_only to be True or False, got {init_only!r}")
        if init_only and self.init_epochs == 0:
            raise ValueError("init_only=True needs init_epochs > 0, otherwise the term is never used")
        self.init_only = init_only
        self.student_taps = check_taps("student_taps", student_taps)
        self.teacher_taps = check_taps("teacher_taps", teacher_taps)
