"""The student's side of one GKD layer term as a single autograd node.

``Σ_ij (A_T - N(C(X)) ∘ M)_ij^2`` for the cosine graph ``C`` of the student's rows, its
normalization ``N`` (sym / rw / none) by the degrees of the full graph and a constant
mask ``M`` (the teacher's k-NN mask times the task mask), with a hand-written backward.

Why: autograd over the generic graph builders records ~40 small ``(B, B)`` operations per
layer, each with its own backward node; on a CPU training step their dispatch cost about
a fifth of the GKD term (whose floor is its Gram products). The forward here runs the
same operations in the same order as :mod:`geokd.graphs`, so the loss value is bitwise
the generic one; only the gradient's rounding differs (the tests compare it with the
generic path's autograd in float64).

Only for the paper's family of graphs: cosine kernel, no clamping, no renormalization,
power 1, float32/float64 rows. Everything else, and every batch whose squared norms are
out of float range, takes the generic path.

Examples
--------
>>> g = torch.Generator().manual_seed(0)
>>> x = torch.rand(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
>>> target = torch.zeros(6, 6, dtype=torch.float64)
>>> loss, sq_norms = student_term(x, target, None, normalization="sym")
>>> torch.autograd.gradcheck(lambda v: student_term(v, target, None, normalization="sym")[0], (x,))
True
"""

from __future__ import annotations

import torch

from geokd.graphs.kernels import _safe_rsqrt
from geokd.graphs.normalize import _safe_inverse_power
from geokd.graphs.spec import GraphSpec

FUSED_DTYPES = (torch.float32, torch.float64)


def supports(spec: GraphSpec, dtype: torch.dtype) -> bool:
    """Whether :func:`student_term` computes ``spec``'s graph for rows of ``dtype``."""
    return (spec.kernel == "cosine" and not spec.clamp_negative and not spec.renormalize and spec.power == 1
            and dtype in FUSED_DTYPES)


class _StudentTerm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, target, mask, normalization):
        gram = x @ x.T
        gram = 0.5 * (gram + gram.T)  # exactly symmetric, as geokd.graphs.kernels.gram
        sq_norms = torch.diagonal(gram).clone()
        inv_norm = _safe_rsqrt(sq_norms)
        cosine = gram * (inv_norm.unsqueeze(1) * inv_norm.unsqueeze(0))
        cosine.fill_diagonal_(0.0)
        factor = None
        if normalization == "sym":
            factor = _safe_inverse_power(cosine.sum(dim=1), -0.5)
            graph = cosine * (factor.unsqueeze(1) * factor.unsqueeze(0))
        elif normalization == "rw":
            factor = _safe_inverse_power(cosine.sum(dim=1), -1.0)
            graph = factor.unsqueeze(1) * cosine
        else:
            graph = cosine
        if mask is not None:
            graph = graph * mask
        residual = target - graph
        ctx.normalization = normalization
        ctx.save_for_backward(x, gram, inv_norm, cosine, factor, residual, mask)
        ctx.mark_non_differentiable(sq_norms)
        return residual.pow(2).sum(), sq_norms

    @staticmethod
    def backward(ctx, grad_loss, _grad_sq_norms):
        x, gram, inv_norm, cosine, factor, residual, mask = ctx.saved_tensors
        d_graph = residual * (-2.0 * grad_loss)
        if mask is not None:
            d_graph = d_graph * mask
        # Through the normalization: graph = f(deg) ∘ cosine with deg = cosine 1.
        if ctx.normalization == "sym":
            d_cosine = d_graph * (factor.unsqueeze(1) * factor.unsqueeze(0))
            weighted = d_graph * cosine
            d_factor = weighted @ factor + weighted.T @ factor
            d_cosine += (-0.5 * d_factor * factor.pow(3)).unsqueeze(1)
        elif ctx.normalization == "rw":
            d_cosine = factor.unsqueeze(1) * d_graph
            d_factor = (d_graph * cosine).sum(dim=1)
            d_cosine += (-d_factor * factor.pow(2)).unsqueeze(1)
        else:
            d_cosine = d_graph.clone()
        d_cosine.fill_diagonal_(0.0)
        # Through the cosine: cosine = gram ∘ (r r^T) with r = diag(gram)^-1/2.
        d_gram = d_cosine * (inv_norm.unsqueeze(1) * inv_norm.unsqueeze(0))
        weighted = d_cosine * gram
        d_inv_norm = weighted @ inv_norm + weighted.T @ inv_norm
        d_gram.diagonal().add_(-0.5 * d_inv_norm * inv_norm.pow(3))
        # Through gram = X X^T: one (B, B) x (B, F) product.
        return (d_gram + d_gram.T) @ x, None, None, None


def student_term(x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, *,
                 normalization: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Σ (target - N(cos(x)) ∘ mask)^2, squared row norms)`` of flat ``(B, F)`` rows.

    The squared norms (no gradient) let the caller check their range, as the generic
    builders do, before trusting the result. ``target`` and ``mask`` are constants.
    """
    return _StudentTerm.apply(x, target.detach(), None if mask is None else mask.detach(), normalization)
