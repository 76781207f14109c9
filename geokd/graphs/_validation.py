"""Input checks shared by the graph builders and the losses.

Every check raises ``ValueError`` whose message starts with ``where`` (e.g.
``"layer 2 (student)"``) so that a failure deep inside a loss still names the layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from geokd.graphs._numerics import HALF


def _prefix(where: str | None) -> str:
    return f"{where}: " if where else ""


def check_activations(x, *, where: str | None = None, min_batch: int = 2, finite: bool = True) -> torch.Tensor:
    """A floating ``(B, ...)`` tensor with ``B >= min_batch`` and only finite values.

    Returns the tensor flattened to ``(B, features)`` in the order its features lie in
    memory: C·H·W for a channels-first map, H·W·C for a channels-last one. Either way
    the result is a view, not a copy. Every caller only takes inner products and
    distances of whole rows, which do not depend on the order of the features.
    ``finite=False`` leaves out the pass over the values (for callers whose result turns
    non-finite on a NaN/Inf input and who then check again with ``finite=True``).

    Examples
    --------
    >>> x = torch.rand(4, 3, 2, 2).to(memory_format=torch.channels_last)
    >>> flat = check_activations(x)
    >>> flat.shape, flat.data_ptr() == x.data_ptr()
    (torch.Size([4, 12]), True)
    """
    p = _prefix(where)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{p}expected a torch.Tensor of activations (B, ...), got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"{p}expected activations of shape (B, ...) with at least 2 dimensions, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{p}expected floating-point activations, got dtype {x.dtype}")
    if x.shape[0] < min_batch:
        raise ValueError(f"{p}expected a batch of at least {min_batch} inputs, got {x.shape[0]}")
    flat = _rows_in_memory_order(x)
    if flat.shape[1] == 0:
        raise ValueError(f"{p}expected at least one feature per input, got shape {tuple(x.shape)}")
    if not finite:
        return flat
    # One reduction pass: any NaN/Inf makes the sum non-finite (isfinite().all() costs
    # several passes, noticeable next to the GKD loss itself). A non-finite sum of finite
    # values (overflow) is rechecked elementwise.
    with torch.no_grad():
        # float32 accumulation for half precision: a float16 sum overflows at 65504 and
        # would send every ordinary batch down the slow elementwise path.
        total = flat.sum(dtype=torch.float32) if flat.dtype in HALF else flat.sum()
        if not bool(torch.isfinite(total)):
            finite_rows = torch.isfinite(flat).all(dim=1)
            if not bool(finite_rows.all()):
                bad = int((~finite_rows).sum())
                raise ValueError(f"{p}expected finite activations, got NaN/Inf in {bad} of {flat.shape[0]} inputs")
    return flat


def _rows_in_memory_order(x: torch.Tensor) -> torch.Tensor:
    # A logical (C·H·W) reshape of a channels-last map copies it, and in the trainer (whose
    # CPU default is channels-last) that copy and its backward cost a GKD step as much as
    # the loss itself, with fresh pages on every step.
    if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        x = x.permute(0, 2, 3, 1)
    return x.reshape(x.shape[0], -1)


def check_square(a, *, where: str | None = None) -> None:
    """A floating ``(N, N)`` tensor."""
    p = _prefix(where)
    if not isinstance(a, torch.Tensor):
        raise ValueError(f"{p}expected a torch.Tensor adjacency (N, N), got {type(a).__name__}")
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{p}expected a square adjacency (N, N), got shape {tuple(a.shape)}")
    if not a.is_floating_point():
        raise ValueError(f"{p}expected a floating-point adjacency, got dtype {a.dtype}")


def check_finite_graph(a: torch.Tensor, *, where: str | None = None) -> None:
    """Only finite entries in a graph (a NaN degree or k-NN score would spread silently)."""
    with torch.no_grad():
        finite = torch.isfinite(a)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise ValueError(f"{_prefix(where)}expected a finite adjacency, got NaN/Inf in {bad} of {a.numel()} entries")


def check_k(k, batch_size: int, *, where: str | None = None) -> None:
    """``k`` neighbours among ``batch_size - 1`` others: ``1 <= k < batch_size``."""
    p = _prefix(where)
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"{p}expected k to be an int (or None for no k-NN mask), got {k!r}")
    if k < 1:
        raise ValueError(f"{p}expected k >= 1, got {k}")
    if k >= batch_size:
        raise ValueError(
            f"{p}expected k < batch size ({batch_size}) since a node has {batch_size - 1} possible "
            f"neighbours, got k={k}; use k=None for the full graph"
        )


def check_labels(labels, batch_size: int, *, num_classes: int | None = None,
                 device: torch.device | None = None, where: str | None = None) -> torch.Tensor:
    """Integer class labels of shape ``(batch_size,)`` in ``[0, num_classes)``."""
    p = _prefix(where)
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"{p}expected labels as an integer torch.Tensor of shape ({batch_size},), got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"{p}expected integer class labels, got dtype {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] != batch_size:
        raise ValueError(f"{p}expected labels of shape ({batch_size},) (one per input), got shape {tuple(labels.shape)}")
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"{p}expected labels >= 0, got minimum {int(labels.min())}")
    if num_classes is not None and labels.numel() and int(labels.max()) >= num_classes:
        raise ValueError(f"{p}expected labels < num_classes={num_classes}, got maximum {int(labels.max())}")
    if device is not None and labels.device != device:
        labels = labels.to(device)
    return labels


def as_layer_list(feats, *, role: str) -> list[torch.Tensor]:
    """A list of per-layer tensors; a single tensor counts as one layer."""
    if isinstance(feats, torch.Tensor):
        return [feats]
    if isinstance(feats, (str, bytes)) or not isinstance(feats, Sequence):
        raise ValueError(f"expected {role} features as a list of per-layer tensors, got {type(feats).__name__}")
    if len(feats) == 0:
        raise ValueError(f"expected at least one {role} layer, got an empty list")
    return list(feats)


def check_layer_pair(student: list, teacher: list) -> None:
    """Same number of layers on both sides."""
    if len(student) != len(teacher):
        raise ValueError(
            f"expected the same number of student and teacher layers, got {len(student)} student "
            f"and {len(teacher)} teacher layers"
        )


def check_pair_batch(s: torch.Tensor, t: torch.Tensor, *, where: str) -> None:
    """Student and teacher activations of one layer share batch size and device."""
    if s.shape[0] != t.shape[0]:
        raise ValueError(f"{where}: expected student and teacher batches of the same size, got {s.shape[0]} (student) and {t.shape[0]} (teacher)")
    if s.device != t.device:
        raise ValueError(f"{where}: expected student and teacher on the same device, got {s.device} and {t.device}")
