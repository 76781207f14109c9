"""geokd's BatchNorm2d: nn.BatchNorm2d's results, its own path on channels-last CPU maps.

Oracles: ``nn.BatchNorm2d`` in float64 (forward, gradients, running statistics), a float64
reference for the float32 accuracy, and ``torch.autograd.gradcheck``. Every test runs
twice: with geokd's compiled kernels (which must be available on the CI machine: it has
a C compiler and torch on GNU OpenMP) and with the ATen fallback.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geokd.models import build_model
from geokd.models.batchnorm import _WIDE_ROW, BatchNorm2d, _ChannelsLastBatchNorm
from geokd.native import native_disabled, native_status

CL = torch.channels_last


@pytest.fixture(autouse=True, params=["native", "aten"])
def kernels(request):
    if request.param == "aten":
        with native_disabled():
            yield request.param
    else:
        assert native_status() == {"batchnorm": True, "graphs": True, "reason": None}
        yield request.param


def channels_last(shape, *, dtype=torch.float64, offset=0.0, scale=1.0, generator=None):
    x = torch.randn(*shape, dtype=dtype, generator=generator) * scale + offset
    return x.contiguous(memory_format=CL)


def path_of(y: torch.Tensor) -> str:
    return y.grad_fn.name()


# Narrow maps in wide views (rows of r·C = 64), odd widths, and maps wider than one view row.
WIDTHS = [2, 3, 8, 15, 16, 33, _WIDE_ROW + 1]


@pytest.mark.parametrize("channels, affine, track, momentum",
                         list(itertools.product(WIDTHS, [True, False], [True, False], [0.1, None])))
def test_matches_nn_batchnorm_in_float64(channels, affine, track, momentum):
    g = torch.Generator().manual_seed(channels)
    ours = BatchNorm2d(channels, affine=affine, track_running_stats=track, momentum=momentum).double()
    if affine:
        with torch.no_grad():
            ours.weight.uniform_(0.5, 2.0, generator=g)
            ours.bias.uniform_(-1.0, 1.0, generator=g)
    theirs = nn.BatchNorm2d(channels, affine=affine, track_running_stats=track, momentum=momentum).double()
    theirs.load_state_dict(ours.state_dict())
    for _ in range(3):  # running statistics and the cumulative average (momentum None) over steps
        x = channels_last((6, channels, 5, 7), offset=4.0, scale=3.0, generator=g).requires_grad_()
        dy = torch.randn(6, channels, 5, 7, dtype=torch.float64, generator=g)
        y_ours, y_theirs = ours(x), theirs(x)
        assert path_of(y_ours) == "_ChannelsLastBatchNormBackward"
        assert y_ours.is_contiguous(memory_format=CL)
        torch.testing.assert_close(y_ours, y_theirs, rtol=0, atol=1e-12)
        wanted = [x, *ours.parameters()]
        grads_ours = torch.autograd.grad(y_ours, wanted, dy)
        grads_theirs = torch.autograd.grad(y_theirs, [x, *theirs.parameters()], dy)
        for a, b in zip(grads_ours, grads_theirs):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=0, atol=1e-12, msg=key)


@pytest.mark.parametrize("channels", [3, 8, 33])
def test_an_in_place_relu_after_it_gets_the_gradient_of_nn_batchnorm(channels):
    # conv → bn → ReLU(inplace=True) is the usual block (torchvision's ResNets, BYOT's heads):
    # the output must be a tensor of its own, not a view autograd refuses to modify.
    g = torch.Generator().manual_seed(channels)
    ours, theirs = BatchNorm2d(channels).double(), nn.BatchNorm2d(channels).double()
    x = channels_last((4, channels, 5, 6), generator=g).requires_grad_()
    dy = torch.randn(4, channels, 5, 6, dtype=torch.float64, generator=g)
    y_ours = F.relu(ours(x), inplace=True)
    y_theirs = F.relu(theirs(x))
    assert y_ours._base is None
    torch.testing.assert_close(y_ours, y_theirs, rtol=0, atol=1e-12)
    for a, b in zip(torch.autograd.grad(y_ours, [x, *ours.parameters()], dy),
                    torch.autograd.grad(y_theirs, [x, *theirs.parameters()], dy)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_map_split_over_threads_matches_nn_batchnorm(threads):
    # 16 × 8 × 32 × 32 is 2,048 rows of the wide view: enough for the kernels to use 2 threads.
    g = torch.Generator().manual_seed(threads)
    ours, theirs = BatchNorm2d(8).double(), nn.BatchNorm2d(8).double()
    x = channels_last((16, 8, 32, 32), offset=3.0, generator=g).requires_grad_()
    dy = torch.randn(16, 8, 32, 32, dtype=torch.float64, generator=g)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y = ours(x)
        grads = torch.autograd.grad(y, [x, *ours.parameters()], dy)
    finally:
        torch.set_num_threads(before)
    y_theirs = theirs(x)
    torch.testing.assert_close(y, y_theirs, rtol=0, atol=1e-12)
    for a, b in zip(grads, torch.autograd.grad(y_theirs, [x, *theirs.parameters()], dy)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
    torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=0, atol=1e-12)


def test_the_backward_takes_the_path_of_its_forward():
    # A forward with the kernels and a backward inside native_disabled() (or the reverse).
    ours, theirs = BatchNorm2d(8).double(), nn.BatchNorm2d(8).double()
    x = channels_last((4, 8, 5, 5)).requires_grad_()
    y = ours(x)
    with native_disabled():
        grads = torch.autograd.grad(y, [x, *ours.parameters()], torch.ones_like(y))
    for a, b in zip(grads, torch.autograd.grad(theirs(x), [x, *theirs.parameters()], torch.ones_like(y))):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_gradcheck_of_the_channels_last_path():
    x = channels_last((3, 4, 3, 3)).requires_grad_()
    weight = (torch.rand(4, dtype=torch.float64) + 0.5).requires_grad_()
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: _ChannelsLastBatchNorm.apply(x, w, b, None, None, 0.1, 1e-5), (x, weight, bias))


@pytest.mark.parametrize("offset", [0.0, 5.0, 20.0])
@pytest.mark.parametrize("channels", [8, 32])
def test_float32_is_as_accurate_as_the_channels_first_kernel(offset, channels):
    """Two-pass statistics and cascade sums: ATen's channels-last kernels lose ~2 digits
    of the weight's gradient at mean 5, sd 2; this path stays within a few times the
    channels-first kernel's error."""
    g = torch.Generator().manual_seed(channels)
    x64 = torch.randn(64, channels, 16, 16, dtype=torch.float64, generator=g) * 2 + offset
    dy64 = torch.randn_like(x64) + 0.3
    reference = nn.BatchNorm2d(channels).double()
    x_ref = x64.clone().requires_grad_()
    y_ref = reference(x_ref)
    g_ref = torch.autograd.grad(y_ref, [x_ref, reference.weight, reference.bias], dy64)

    def relative_errors(module, memory_format):
        x = x64.float().contiguous(memory_format=memory_format).requires_grad_()
        y = module(x)
        grads = torch.autograd.grad(y, [x, module.weight, module.bias], dy64.float())
        pairs = [(y, y_ref), *zip(grads, g_ref)]
        return [float((a.detach().double() - b.detach()).abs().max() / b.detach().abs().max()) for a, b in pairs]

    ours = relative_errors(BatchNorm2d(channels), CL)
    channels_first = relative_errors(nn.BatchNorm2d(channels), torch.contiguous_format)
    for mine, aten in zip(ours, channels_first):
        assert mine <= 4 * aten + 1e-6, (ours, channels_first)


@pytest.mark.parametrize("case", ["channels_first", "eval", "bfloat16"])
def test_everything_else_is_aten_batch_norm(case):
    channels = 8
    bn = BatchNorm2d(channels)
    x = torch.randn(4, channels, 6, 6)
    x = x if case == "channels_first" else x.contiguous(memory_format=CL)
    if case == "eval":
        bn.running_mean.fill_(0.5)
        bn.running_var.fill_(2.0)
        bn.eval()
    if case == "bfloat16":
        bn, x = bn.bfloat16(), x.bfloat16()
    y = bn(x.requires_grad_())
    assert path_of(y) == "NativeBatchNormBackward0"
    reference = nn.BatchNorm2d(channels).to(x.dtype)
    reference.load_state_dict(bn.state_dict())
    reference.train(bn.training)
    torch.testing.assert_close(y, reference(x))


def test_gradient_of_any_layout_and_state_dict_of_nn_batchnorm():
    bn = BatchNorm2d(8).double()
    x = channels_last((4, 8, 6, 6)).requires_grad_()
    dy = torch.randn(4, 8, 6, 6, dtype=torch.float64)  # channels-first gradient into a channels-last map
    reference = nn.BatchNorm2d(8).double()
    torch.testing.assert_close(torch.autograd.grad(bn(x), x, dy)[0],
                               torch.autograd.grad(reference(x), x, dy)[0], rtol=0, atol=1e-12)
    assert list(bn.state_dict()) == list(reference.state_dict())
    assert isinstance(bn, nn.BatchNorm2d)


def test_a_channels_last_training_step_of_wrn_equals_the_channels_first_one():
    """Every batch norm of WRN-16-0.5 (8, 16 and 32 channels) takes the channels-last
    path; in float64 one SGD step from the same weights gives the same weights, running
    statistics and loss."""
    torch.manual_seed(0)
    first = build_model("wrn", depth=16, widen_factor=0.5).double()
    last = build_model("wrn", depth=16, widen_factor=0.5).double()
    last.load_state_dict(first.state_dict())
    last.to(memory_format=CL)
    x = torch.randn(16, 3, 32, 32, dtype=torch.float64)
    y = torch.randint(0, 10, (16,))
    paths = []
    for module in last.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.register_forward_hook(lambda m, i, o: paths.append(path_of(o)))
    losses = []
    for net, inputs in ((first, x), (last, x.contiguous(memory_format=CL))):
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        loss = F.cross_entropy(net(inputs), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert paths == ["_ChannelsLastBatchNormBackward"] * sum(isinstance(m, nn.BatchNorm2d) for m in last.modules())
    assert losses[0] == pytest.approx(losses[1], rel=1e-12)
    for (name, a), b in zip(first.state_dict().items(), last.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=name)
