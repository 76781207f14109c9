"""GKD and RKD-D layer terms through geokd's compiled graph kernels (CPU, float32/float64).

Per layer, the work is two Gram products (teacher, student), the ``(B, B)`` arithmetic of
the term, and one ``(B, B) x (B, F)`` product for the student's gradient. The kernels in
``geokd/native/graphs.c`` compute a symmetric Gram in about half the multiply-adds of a
general product, and the whole ``(B, B)`` part (forward and backward) in one call, where
autograd over ATen operations would run ~40 small operations per layer and their backward
nodes. The result is the generic path's up to rounding (the ``(B, B)`` part runs in
float64); the tests compare both.

Every function returns ``None`` where the kernels do not apply (not on a CPU, another
dtype, a graph variant they do not cover, the library unavailable or disabled, squared
norms out of range), and the caller then takes its generic path, which also owns the
error messages.

Examples
--------
>>> g = torch.Generator().manual_seed(0)
>>> s = torch.rand(8, 40, generator=g, dtype=torch.float64, requires_grad=True)
>>> t = torch.rand(8, 60, generator=g, dtype=torch.float64)
>>> term = rkd_term(s, t, include_diagonal=False)
>>> term is None or torch.autograd.gradcheck(lambda v: rkd_term(v, t, include_diagonal=False), (s,))
True
"""

from __future__ import annotations

import torch

from geokd.graphs.kernels import gram
from geokd.graphs.spec import GraphSpec
from geokd.native import graph_kernels
from geokd.native._bind import KERNEL_DTYPES
from geokd.native.graphs import MAX_GRAM_ROWS

__all__ = ["gkd_term", "kernels_for", "rkd_term", "supports_gkd"]

#: Below this many features, ATen's product for the student's gradient is faster than the
#: kernel's (which then runs on one thread). The Gram kernel is used at every width: in a
#: training step it took the pooled layers' (128 x 64 and x 32) in 0.06 and 0.05 ms,
#: against 0.13 and 0.07 ms for ATen's product and its symmetrization.
MIN_KERNEL_FEATURES = 512


def supports_gkd(spec: GraphSpec) -> bool:
    """Whether the kernels compute ``spec``'s graph: the paper's family (cosine kernel, no
    clamping, no renormalization, power 1), any normalization, task and k."""
    return spec.kernel == "cosine" and not spec.clamp_negative and not spec.renormalize and spec.power == 1


def kernels_for(s_flat: torch.Tensor, t_flat: torch.Tensor):
    """The graph kernels if they take these rows (on a CPU, float32/float64, one dtype for
    both), else ``None``."""
    if s_flat.device.type != "cpu" or s_flat.dtype not in KERNEL_DTYPES or t_flat.dtype != s_flat.dtype:
        return None
    return graph_kernels()


def _gram(kernels, x: torch.Tensor) -> torch.Tensor:
    """Exactly symmetric ``X X^T`` of detached rows, by the kernel up to its batch limit."""
    if x.shape[0] > MAX_GRAM_ROWS:
        return gram(x)
    return kernels.gram(x if x.stride(1) == 1 else x.contiguous())


class _LayerTerm(torch.autograd.Function):
    """A layer term computed by the kernels: its value, and ``dL/dX = S X`` for the
    student's rows ``X`` (``S = dL/dG + (dL/dG)^T`` from the kernel)."""

    @staticmethod
    def forward(ctx, x, s, value: float):
        ctx.save_for_backward(x, s)
        return torch.tensor(value, dtype=x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, s = ctx.saved_tensors
        kernels = graph_kernels()
        if (kernels is None or torch.is_grad_enabled() or x.shape[1] < MIN_KERNEL_FEATURES
                or x.shape[0] > MAX_GRAM_ROWS):
            # create_graph=True needs a differentiable product; few features or a batch
            # beyond the kernels' limit, ATen's is as fast.
            return (s * grad) @ x, None, None
        # The kernel folds the scaling by grad into its packing of S, and on the WRN
        # layer1/layer2 shapes it ran 1.2-1.3x MKL's product (benchmarks/bench_graph_kernels:
        # 1.45 vs 1.82 ms at 128 x 8,192 on the 2-core AMD EPYC VM).
        rows = x if x.stride(1) == 1 else x.contiguous()
        return kernels.scaled_product(s, rows, alpha=float(grad)), None, None


def gkd_term(s_flat: torch.Tensor, t_flat: torch.Tensor, *, spec: GraphSpec,
             labels: torch.Tensor | None) -> torch.Tensor | None:
    """``Σ_ij (A_T - A_S)_ij^2`` of one layer's flat ``(B, F)`` rows (student
    differentiable), or ``None`` where the kernels do not apply. ``labels`` must already
    be validated when ``spec.task != "all"``."""
    kernels = kernels_for(s_flat, t_flat)
    if kernels is None or not supports_gkd(spec):
        return None
    with torch.no_grad():
        gram_t, gram_s = _gram(kernels, t_flat.detach()), _gram(kernels, s_flat.detach())
    if spec.task != "all":
        labels = labels.to(device="cpu", dtype=torch.int64)
    out = kernels.gkd_layer(gram_t, gram_s, normalization=spec.normalization, labels=labels, task=spec.task,
                            k=spec.k)
    return None if out is None else _LayerTerm.apply(s_flat, out[1], out[0])


def rkd_term(s_flat: torch.Tensor, t_flat: torch.Tensor, *, include_diagonal: bool) -> torch.Tensor | None:
    """The RKD-D term of one layer's flat ``(B, F)`` rows (the Huber loss of the normalized
    distances, averaged), or ``None`` where the kernels do not apply."""
    kernels = kernels_for(s_flat, t_flat)
    if kernels is None:
        return None
    with torch.no_grad():
        gram_t, gram_s = _gram(kernels, t_flat.detach()), _gram(kernels, s_flat.detach())
    out = kernels.rkd_layer(gram_t, gram_s, include_diagonal=include_diagonal)
    return None if out is None else _LayerTerm.apply(s_flat, out[1], out[0])
