"""Working precision and range guards shared by the graph kernels and the losses.

Half precision: float16 overflows at 65504, so the squared norm of a row of activations
of magnitude ~100 is already infinite, and its epsilon (``1e-12`` in ``F.normalize``)
rounds to 0; bfloat16 keeps 8 bits of mantissa. Norms, products and sums of squares of
half-precision tensors are therefore computed in float32 (:func:`working`), with autocast
switched off around them (:func:`full_precision`: autocast would cast the matmuls back
down). float32 and float64 tensors are used as they are: no copy on the training path.

Range: products of float32 values above ~1e19 (or below ~1e-19) over- or underflow even
when every input is finite. Scale-free quantities (cosines, angles, normalized
distances, attention maps, singular vectors) are recomputed on inputs divided by a power
of two (:func:`pow2_scale`), which is exact; the others raise ``ValueError``.

Examples
--------
>>> x = torch.tensor([[3e38, -3e37], [6.0, 1.5], [0.0, 0.0]])
>>> x / pow2_scale(x, dim=1)
tensor([[ 1.7632, -0.1763],
        [ 1.5000,  0.3750],
        [ 0.0000,  0.0000]])
>>> working(torch.ones(2, dtype=torch.float16)).dtype
torch.float32
"""

from __future__ import annotations

import contextlib

import torch

HALF = (torch.float16, torch.bfloat16)


def working(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 if it is float16/bfloat16 (differentiable), else ``x`` itself."""
    return x.float() if x.dtype in HALF else x


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype :func:`working` computes in for tensors of ``dtype``."""
    return torch.float32 if dtype in HALF else dtype


def full_precision(x: torch.Tensor):
    """A context without autocast on ``x``'s device (a no-op context when autocast is off)."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.autocast(device_type=device, enabled=False)
    return contextlib.nullcontext()


def pow2_scale(x: torch.Tensor, *, dim=None) -> torch.Tensor:
    """A detached power of two ``s`` with ``max|x| / s`` in ``[1, 2)`` (per ``dim`` slice).

    ``dim`` is an int or a tuple of ints (reduced, kept as size-1 dims) or ``None`` (one
    scalar). All-zero slices get ``s = 1/2``. Dividing by ``s`` is exact (no rounding),
    and the scale carries no gradient, which is exact too for a scale-free quantity
    ``f(x) = f(x / s)``.
    """
    with torch.no_grad():
        if dim is None:
            peak = x.abs().amax()
        else:
            peak = x.abs().amax(dim=dim, keepdim=True)
        _, exponent = torch.frexp(peak)
        # 2^(e-1) rather than 2^e: 2^e would overflow for values near the dtype's maximum.
        return torch.ldexp(torch.ones_like(peak), exponent - 1)


def squared_norms_in_range(sq: torch.Tensor, *, each: bool = True) -> bool:
    """Whether squared row norms lost nothing to over- or underflow (two tiny reductions).

    Their sum must stay below ``max / 4``, so that no squared distance
    ``|a|^2 + |b|^2 + 2|a||b|`` overflows; with ``each`` the smallest must be above
    ``tiny`` (an all-zero row lands here too: it costs a harmless recomputation), without
    it only their sum (for a global rescaling, which cannot lift one small row among
    large ones).
    """
    if sq.numel() == 0:
        return True
    info = torch.finfo(sq.dtype)
    sq = sq.detach()
    total = float(sq.sum())
    if not total <= info.max / 4:  # also NaN/inf
        return False
    return (float(sq.amin()) if each else total) > info.tiny


def describe_peak(*tensors: torch.Tensor) -> str:
    """``"max |x| = 3e+38"`` over finite tensors, for error messages."""
    peak = max((float(t.detach().abs().max()) for t in tensors if t.numel()), default=0.0)
    return f"max |x| = {peak:.3g}"


def fit_dtype(a: torch.Tensor, dtype: torch.dtype, *, what: str, where: str | None,
              inputs: torch.Tensor | None = None,
              hint: str = "the activations are too large; rescale them or use the cosine kernel") -> torch.Tensor:
    """``a`` (computed in the working precision) cast back to ``dtype``.

    ``ValueError`` if a value does not fit ``dtype`` (e.g. dot products of float16
    activations above 65504). No check, and no copy, when ``a`` already has ``dtype``:
    the working-precision code checks its own range.
    """
    if a.dtype == dtype:
        return a
    out = a.to(dtype)
    if not bool(torch.isfinite(out).all()):
        peak = f" ({describe_peak(inputs)})" if inputs is not None else ""
        raise ValueError(f"{where + ': ' if where else ''}{what} overflow {dtype}{peak}: {hint}")
    return out
