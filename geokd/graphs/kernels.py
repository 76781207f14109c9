"""Similarity kernels: from a batch of activations to a dense zero-diagonal graph.

Zero-row policy: an all-zero row has cosine similarity 0 with every row (it is left
at zero instead of being divided by its zero norm), so graphs stay finite.

Precision policy (see :mod:`geokd.graphs._numerics`): float16/bfloat16 rows are
multiplied in float32 and the graph cast back; when squared norms over- or underflow
(|x| beyond ~1e19 or below ~1e-19 in float32) the scale-free kernels (cosine, and the
gaussian with its default width) are recomputed on rows divided by a power of two,
and a ``"dot"`` graph that does not fit the dtype is refused with ``ValueError``.
"""

from __future__ import annotations

import torch

from geokd.graphs._numerics import (
    describe_peak, fit_dtype, full_precision, pow2_scale, squared_norms_in_range, working,
)
from geokd.graphs._validation import check_activations, check_finite_graph, check_square

KERNELS = ("cosine", "gaussian", "dot")


def _zero_diagonal(a: torch.Tensor) -> torch.Tensor:
    # Out of place: an in-place write would break autograd for the tensors it came from.
    eye = torch.eye(a.shape[0], dtype=torch.bool, device=a.device)
    return a.masked_fill(eye, 0.0)


class _Gram(torch.autograd.Function):
    """``X X^T`` with a one-matmul backward ``(dG + dG^T) X``.

    Autograd would treat ``X`` and ``X^T`` as two operands and run two ``(B, B) x (B, F)``
    matmuls; for wide conv layers (F = 16,384) those dominate the GKD loss.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        gram = x @ x.T
        # BLAS does not promise a bitwise-symmetric X X^T; averaging makes it exact.
        return 0.5 * (gram + gram.T)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return (grad + grad.T) @ x


def gram(x: torch.Tensor) -> torch.Tensor:
    """Exactly symmetric ``X X^T`` of a ``(N, F)`` tensor (differentiable, cheap backward).

    Examples
    --------
    >>> gram(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    tensor([[ 5., 11.],
            [11., 25.]])
    """
    return _Gram.apply(x)


def _safe_sqrt(v: torch.Tensor) -> torch.Tensor:
    # The double where keeps sqrt's infinite slope at 0 out of the backward pass.
    positive = v > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, v, torch.ones_like(v))), torch.zeros_like(v))


def _distances_from_gram(g: torch.Tensor) -> torch.Tensor:
    sq_norms = torch.diagonal(g)
    squared = (sq_norms.unsqueeze(1) + sq_norms.unsqueeze(0) - 2 * g).clamp_min(0.0)
    eye = torch.eye(g.shape[0], dtype=torch.bool, device=g.device)
    return _safe_sqrt(squared.masked_fill(eye, 0.0))


def _gram_in_range(flat: torch.Tensor, *, per_row: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(G, s)``: the Gram matrix of ``flat``, or of ``flat / s`` if the squared norms
    over/underflowed (``s`` a power of two per row, or one for the batch; ``None`` when
    ``flat`` was used as is). Only the (B, B) diagonal is inspected: no extra pass over
    ``flat`` unless it is out of range."""
    g = gram(flat)
    if squared_norms_in_range(torch.diagonal(g), each=per_row):
        return g, None
    scale = pow2_scale(flat, dim=1 if per_row else None)
    return gram(flat / scale), scale


def _safe_rsqrt(v: torch.Tensor) -> torch.Tensor:
    # 1/sqrt(v) for v > 0, else 0, in one kernel (cheaper than 1/sqrt on the training path).
    positive = v > 0
    return torch.where(positive, torch.where(positive, v, torch.ones_like(v)).rsqrt(), torch.zeros_like(v))


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between the rows of a ``(N, F)`` tensor, safe to differentiate.

    Uses the Gram expansion ``|a|^2 + |b|^2 - 2<a, b>`` (memory O(N^2), not O(N^2 F), which
    matters for wide conv layers), clamped at 0 with an exactly zero diagonal; the gradient
    of a zero distance (the diagonal, or duplicate rows) is 0 rather than NaN. Computed
    in ``x``'s dtype (callers upcast half precision: see :mod:`geokd.graphs._numerics`).

    Examples
    --------
    >>> pairwise_distances(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
    tensor([[0., 5.],
            [5., 0.]])
    """
    return _distances_from_gram(gram(x))


def normalized_distances(flat: torch.Tensor) -> torch.Tensor:
    """Pairwise distances divided by their mean over pairs ``i != j`` (scale-free).

    Half precision is computed in float32 (and returned so); rows whose squared norms
    over/underflow are rescaled first, which the ratio does not see. If every row is
    identical (mean 0) the result is 0 instead of 0/0.

    Examples
    --------
    >>> normalized_distances(torch.tensor([[0.0], [1.0], [3.0]]))
    tensor([[0.0000, 0.5000, 1.5000],
            [0.5000, 0.0000, 1.0000],
            [1.5000, 1.0000, 0.0000]])
    """
    return _normalized_distances(flat)[0]


def _normalized_distances(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(normalized distances, squared row norms used)``; a NaN/Inf row makes the norms
    non-finite while the distances stay finite (the safe square root maps NaN to 0), so
    callers that skipped the finiteness check look at the norms."""
    with full_precision(flat):
        g, _ = _gram_in_range(working(flat), per_row=False)
        dist = _distances_from_gram(g)
        mu = mean_offdiagonal(dist)
        safe_mu = torch.where(mu > 0, mu, torch.ones_like(mu))
        return torch.where(mu > 0, dist / safe_mu, torch.zeros_like(dist)), torch.diagonal(g)


def mean_offdiagonal(a: torch.Tensor) -> torch.Tensor:
    """Mean of the ``N(N-1)`` off-diagonal entries of a square tensor."""
    n = a.shape[0]
    return (a.sum() - torch.diagonal(a).sum()) / (n * (n - 1))


def similarity(x: torch.Tensor, *, kernel: str = "cosine", sigma: float | None = None,
               clamp_negative: bool = False, where: str | None = None) -> torch.Tensor:
    """Dense similarity graph of a batch of activations, with a zero diagonal.

    Each input ``x[i]`` is flattened channel-major (C·H·W) to a row.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, ...)`` activations, ``B >= 2``, finite.
    kernel : {"cosine", "gaussian", "dot"}
        ``"cosine"`` (the GKD paper): ``<z_i, z_j>`` of L2-normalized rows (a zero row has
        similarity 0 with everything). ``"gaussian"``: ``exp(-d_ij^2 / (2 sigma^2))`` on
        Euclidean distances. ``"dot"``: the plain inner product ``<x_i, x_j>``.
    sigma : float, optional
        Gaussian width; default: the mean Euclidean distance over pairs ``i != j`` of the
        batch (differentiable). If every input is identical, all off-diagonal weights are 1.
    clamp_negative : bool
        Replace negative similarities by 0 (not the paper's default, which keeps them).
    where : str, optional
        Prefix for error messages (e.g. the layer name).

    Returns
    -------
    torch.Tensor
        ``(B, B)`` symmetric graph, zero diagonal, same dtype and device as ``x``.

    Examples
    --------
    >>> x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    >>> similarity(x)
    tensor([[0., 1., 0.],
            [1., 0., 0.],
            [0., 0., 0.]])
    >>> similarity(x, kernel="dot")
    tensor([[0., 2., 0.],
            [2., 0., 0.],
            [0., 0., 0.]])
    """
    if kernel not in KERNELS:
        raise ValueError(f"expected kernel in {KERNELS}, got {kernel!r}")
    if sigma is not None and kernel != "gaussian":
        raise ValueError(f"sigma is the width of the gaussian kernel; got sigma={sigma!r} with kernel={kernel!r}")
    flat = check_activations(x, where=where)
    with full_precision(flat):
        a = _similarity(working(flat), kernel=kernel, sigma=sigma, clamp_negative=clamp_negative, where=where)
        return fit_dtype(a, flat.dtype, what=f"{kernel} similarities", where=where, inputs=flat)


def _check_sigma(sigma) -> None:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (sigma > 0) or sigma == float("inf"):
        raise ValueError(f"expected a positive finite gaussian sigma, got {sigma!r}")


def _similarity(flat: torch.Tensor, *, kernel: str, sigma: float | None, clamp_negative: bool,
                where: str | None = None, checked: bool = True) -> torch.Tensor:
    """:func:`similarity` of already validated, flattened rows, in their dtype.

    Callers pass float32/float64 (``working``) rows and cast back with :func:`fit_dtype`;
    cosine and gaussian values are in [-1, 1]. ``checked=False`` skips the overflow
    check of a ``"dot"`` graph (for callers that check their final result).
    """
    scale = None
    if kernel == "cosine":
        # Cosines from the Gram matrix: normalizing on the (B, B) side avoids dividing (and
        # back-propagating through) the wide (B, F) activations. A zero row gets 1/|x| = 0.
        # Cosines are scale-free per row, so out-of-range rows are rescaled, not refused.
        g, _ = _gram_in_range(flat, per_row=True)
    elif kernel == "dot":
        g = gram(flat)
        if checked and not bool(torch.isfinite(g).all()):
            raise ValueError(f"{where + ': ' if where else ''}dot similarities overflow {flat.dtype}: the "
                             f"activations are too large ({describe_peak(flat)}); rescale them or use the "
                             "cosine kernel")
    else:
        if sigma is not None:
            _check_sigma(sigma)
        # exp(-d^2 / 2 sigma^2) with the mean distance as sigma is scale-free: one global
        # power-of-two scale s keeps the distances in range (an explicit sigma becomes sigma/s).
        g, scale = _gram_in_range(flat, per_row=False)
    return _similarity_from_gram(g, kernel=kernel, sigma=sigma, clamp_negative=clamp_negative, scale=scale)


def _similarity_from_gram(g: torch.Tensor, *, kernel: str, sigma: float | None, clamp_negative: bool,
                          scale: torch.Tensor | None = None) -> torch.Tensor:
    """The similarity graph of rows whose Gram matrix is ``g`` (of the rows divided by
    ``scale``, a power of two, when given): the second half of :func:`_similarity`."""
    if kernel == "cosine":
        inv_norm = _safe_rsqrt(torch.diagonal(g))
        a = g * (inv_norm.unsqueeze(1) * inv_norm.unsqueeze(0))
    elif kernel == "dot":
        a = g
    else:
        dist = _distances_from_gram(g)
        if sigma is None:
            width = mean_offdiagonal(dist)
        else:
            width = torch.as_tensor(float(sigma), dtype=g.dtype, device=g.device)
            if scale is not None:
                width = width / scale
        safe_width = torch.where(width > 0, width, torch.ones_like(width))
        # (d / sigma)^2 rather than d^2 / sigma^2: sigma^2 underflows long before sigma.
        exponent = torch.where(width > 0, 0.5 * (dist / safe_width).square(), torch.zeros_like(dist))
        a = torch.exp(-exponent)
    if clamp_negative:
        a = a.clamp_min(0.0)
    return _zero_diagonal(a)


def similarity_from_gram(g: torch.Tensor, *, kernel: str = "cosine", sigma: float | None = None,
                         clamp_negative: bool = False, where: str | None = None) -> torch.Tensor:
    """:func:`similarity` of rows given by their Gram matrix ``G = X X^T`` (one product, many graphs).

    The same operations as :func:`similarity` after its Gram product, so a caller that
    needs several graph variants of one layer multiplies the (wide) rows once. The cosine
    reads the squared norms off the diagonal, the gaussian the distances
    ``sqrt(G_ii + G_jj - 2 G_ij)``.

    Parameters
    ----------
    g : torch.Tensor
        ``(N, N)`` symmetric Gram matrix (float32 or float64), finite.
    kernel, sigma, clamp_negative, where
        As in :func:`similarity`.

    Examples
    --------
    >>> x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    >>> bool(torch.equal(similarity_from_gram(gram(x)), similarity(x)))
    True
    """
    if kernel not in KERNELS:
        raise ValueError(f"expected kernel in {KERNELS}, got {kernel!r}")
    if sigma is not None and kernel != "gaussian":
        raise ValueError(f"sigma is the width of the gaussian kernel; got sigma={sigma!r} with kernel={kernel!r}")
    if sigma is not None:
        _check_sigma(sigma)
    check_square(g, where=where)
    check_finite_graph(g, where=where)
    return _similarity_from_gram(g, kernel=kernel, sigma=sigma, clamp_negative=clamp_negative)
