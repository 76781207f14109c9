"""``BatchNorm2d`` with its own training path for channels-last maps on the CPU.

ATen's CPU batch norm in channels-last layout (what the trainer uses on a CPU, where it
makes the convolutions of narrow networks 2-3x faster) has two flaws: below 16 channels
its backward falls to a slow path, and at every width its one-pass float32 statistics are
~50x less accurate than the channels-first kernel's. That is not harmless: WRN-10-0.5
trained on digits with ATen's channels-last batch norm left the float64 trajectory by 20%
in loss within 40 SGD steps, where channels-first float32 (and this module) stayed within
1e-6.

This module's path runs geokd's compiled kernels (:mod:`geokd.native`, built on first use
with the machine's C compiler): one read of the map gives both statistics, summed in
float64 around a shift per channel; one read and one write give the output; the backward
is one read of the map and its gradient for the two sums and one more for the input's
gradient. Where they cannot be built it falls back to ATen operations (two-pass
statistics, ``x - mean`` kept for the backward), equally accurate and slower. Measured on
this project's 2-core VM (torch 2.14.1, 2 threads, 2026-12-03), one layer at batch 128,
forward + backward (the backward includes accumulating the input's gradient), and the
largest error against float64 of the output and of the weight's gradient (relative), over
these maps with inputs of mean 5, sd 2:

=============  ===================  ===================  ==============  ==============
map            ATen channels-first  ATen channels-last   this module     its fallback
=============  ===================  ===================  ==============  ==============
3 × 32 × 32    1.0 + 0.9 ms         7.2 + 8.3 ms         0.6 + 1.2 ms    2.2 + 2.4 ms
8 × 32 × 32    1.9 + 2.1 ms         2.0 + 12.1 ms        1.0 + 2.3 ms    3.1 + 3.8 ms
16 × 16 × 16   1.2 + 1.2 ms         0.7 + 1.1 ms         0.6 + 1.3 ms    1.8 + 2.3 ms
32 × 8 × 8     0.6 + 0.7 ms         0.4 + 0.7 ms         0.4 + 0.7 ms    1.2 + 1.4 ms
error y / gw   7e-7 / 3e-7          4e-5 / 2e-5          7e-7 / 1e-7     9e-7 / 5e-7
=============  ===================  ===================  ==============  ==============

In a channels-last WRN-28-0.5 training step at batch 128 the kernels made the step 1.30x
faster than the fallback (280 ms against 364 ms, paired rounds), and 1.32x faster than
channels-first (369 ms).

:class:`BatchNorm2d` is a drop-in ``nn.BatchNorm2d`` (same parameters, buffers,
state-dict keys and results). Only in training mode, on a CPU channels-last float32 or
float64 map, does it run :class:`_ChannelsLastBatchNorm`; eval mode, channels-first
maps, other dtypes and other devices are ATen's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from geokd.native import batchnorm_kernels

# Row width, in elements, of the views the per-channel sums and the update run on: a
# narrow (M, C) matrix is summed and scaled as (M / r, r·C), whose rows fill whole vectors.
_WIDE_ROW = 64


def _wide_rows(rows: int, channels: int) -> int:
    """How many (M, C) rows to put side by side: a power of two dividing ``rows``."""
    r = 1
    while 2 * r * channels <= _WIDE_ROW and rows % (2 * r) == 0:
        r *= 2
    return r


def _rows(t: Tensor, r: int) -> Tensor:
    """A channels-last (N, C, H, W) map as its (N·H·W / r, r·C) matrix: always a view
    (``view`` raises where ``reshape`` would silently copy, and writes into an output's
    rows would be lost)."""
    n, c, h, w = t.shape
    return t.permute(0, 2, 3, 1).view(n * h * w // r, r * c)


def _channel_sums(rows: Tensor, c: int) -> Tensor:
    return rows.sum(0).view(-1, c).sum(0)


def _per_channel(v: Tensor, r: int) -> Tensor:
    return v if r == 1 else v.repeat(r)


def _channel_dots(a: Tensor, b: Tensor, c: int) -> Tensor:
    # An elementwise product and ATen's cascade sum, not the C×C product ``a^T b``: how
    # accurate a BLAS product is over M = N·H·W rows depends on its vendor's kernel (MKL on
    # an AMD EPYC summed them in one float32 chain: relative error 2.5e-5 at 8 × 32 × 32,
    # batch 128, against 9e-8 here), and on that CPU the sum was also 1.3-4x faster.
    return _channel_sums(a * b, c)


class _ChannelsLastBatchNorm(torch.autograd.Function):
    """Training-mode batch norm on the (M, C) matrix a channels-last map is in memory.

    With geokd's compiled kernels (:mod:`geokd.native`): one pass for float64 statistics,
    one for the output, two for the backward, the input kept for it. Without them, ATen
    operations: two-pass statistics, and ``x - mean`` kept for the backward instead of ``x``.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum: float, eps: float):
        n, c, h, w = x.shape
        m = n * h * w
        r = _wide_rows(m, c)
        ctx.shape = (n, c, h, w)
        # Kept for the backward: native_disabled() entered between the two must not change paths.
        ctx.kernels = kernels = batchnorm_kernels()
        if kernels is not None:
            out, mean, invstd = kernels.forward(x, rows=m // r, weight=weight, bias=bias, running_mean=running_mean,
                                                running_var=running_var, momentum=momentum, eps=eps)
            ctx.save_for_backward(x, weight, mean, invstd)
            return out
        x_rows = _rows(x, r)
        mean = _channel_sums(x_rows, c) / m
        x_mu = x_rows - _per_channel(mean, r)
        var = _channel_dots(x_mu, x_mu, c) / m
        invstd = torch.rsqrt(var + eps)
        scale = invstd if weight is None else weight * invstd
        shift = torch.zeros_like(mean) if bias is None else bias
        # Written through a view into a tensor of its own: an output that is a view may not
        # be modified in place (an in-place ReLU after the batch norm would be refused).
        out = torch.empty_like(x, memory_format=torch.channels_last)
        torch.addcmul(_per_channel(shift, r), x_mu, _per_channel(scale, r), out=_rows(out, r))
        if running_mean is not None:
            running_mean.lerp_(mean, momentum)
            running_var.lerp_(var * (m / (m - 1)), momentum)  # the unbiased variance, as ATen
        ctx.save_for_backward(x_mu, weight, invstd)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        n, c, h, w = ctx.shape
        m = n * h * w
        r = _wide_rows(m, c)
        dy = grad_out.contiguous(memory_format=torch.channels_last)
        if ctx.kernels is not None:
            x, weight, mean, invstd = ctx.saved_tensors
            dx, grad_weight, grad_bias = ctx.kernels.backward(x, dy, rows=m // r, mean=mean, invstd=invstd,
                                                              weight=weight)
            return dx, grad_weight, grad_bias, None, None, None, None
        x_mu, weight, invstd = ctx.saved_tensors
        dy_rows = _rows(dy, r)
        sum_dy = _channel_sums(dy_rows, c)
        sum_dy_xmu = _channel_dots(dy_rows, x_mu, c)
        scale = invstd if weight is None else weight * invstd
        # dx = scale·(dy - Σdy/M - x̂·Σ(dy·x̂)/M) = a·dy + b·(x - mean) + c, per channel.
        b = -scale * invstd * invstd * sum_dy_xmu / m
        coef = torch.stack((scale, b, -scale * sum_dy / m))
        coef = coef if r == 1 else coef.repeat(1, r)
        dx = torch.empty(ctx.shape, dtype=grad_out.dtype, memory_format=torch.channels_last)
        torch.addcmul(coef[2], dy_rows, coef[0], out=_rows(dx, r)).addcmul_(x_mu, coef[1])
        if weight is None:
            return dx, None, None, None, None, None, None
        return dx, sum_dy_xmu * invstd, sum_dy, None, None, None, None


def _channels_last_training(bn: nn.BatchNorm2d, x: Tensor) -> bool:
    return (bn.training and x.dim() == 4 and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64)
            and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with a fast, accurate training path for channels-last CPU maps.

    Same constructor, parameters, buffers and results as ``nn.BatchNorm2d``; see the
    module docstring for when its own path runs and why.

    Examples
    --------
    >>> import torch
    >>> bn = BatchNorm2d(8)
    >>> x = torch.randn(4, 8, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    >>> y = bn(x)
    >>> y.grad_fn.name()
    '_ChannelsLastBatchNormBackward'
    >>> y.is_contiguous(memory_format=torch.channels_last), int(bn.num_batches_tracked)
    (True, 1)
    >>> bool(torch.allclose(y, nn.BatchNorm2d(8)(x), atol=1e-6))
    True
    """

    def forward(self, x: Tensor) -> Tensor:
        if not _channels_last_training(self, x):
            return super().forward(x)
        # One value per channel (N·H·W = 1), which F.batch_norm refuses, never gets here: such
        # a map is channels-first contiguous too.
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # a cumulative moving average, as nn.BatchNorm2d
                momentum = 1.0 / float(self.num_batches_tracked)
        track = self.track_running_stats and self.running_mean is not None
        return _ChannelsLastBatchNorm.apply(
            x, self.weight, self.bias, self.running_mean if track else None,
            self.running_var if track else None, momentum, self.eps)
