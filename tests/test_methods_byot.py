"""BYOT self-distillation: wrapper, loss, anytime exits, evaluation, training on digits."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.models import resnet18

from geokd.methods.byot import (
    ExitOutputs,
    SelfDistillationLoss,
    SelfDistillationNetwork,
    evaluate_exits,
    exit_smoothness,
    train_self_distillation,
)


def _tiny_resnet(seed=0):
    from geokd.models import build_model

    torch.manual_seed(seed)
    backbone = build_model("resnet8", num_classes=5)
    return SelfDistillationNetwork(backbone, example_input=torch.zeros(2, 3, 16, 16))


def _reference_loss(logits, feats, labels, *, alpha, t, beta):
    """float64, written from the formula with explicit sums (no torch.nn.functional)."""
    logits = [z.double() for z in logits]
    feats = [f.double() for f in feats]
    onehot = np.eye(logits[0].shape[1])[labels.numpy()]

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    q_teacher = softmax(logits[-1].numpy() / t)
    total = 0.0
    for z, f in zip(logits, feats):
        z = z.numpy()
        ce = -(onehot * np.log(softmax(z))).sum(1).mean()
        q = softmax(z / t)
        kl = (q_teacher * (np.log(q_teacher) - np.log(q))).sum(1).mean()
        hint = ((f.numpy() - feats[-1].numpy()) ** 2).reshape(len(z), -1).sum(1).mean()
        total += (1 - alpha) * ce + alpha * t * t * kl + beta * hint
    return total


def test_loss_matches_float64_reference():
    g = torch.Generator().manual_seed(1)
    logits = [torch.randn(6, 4, generator=g) * 3 for _ in range(3)]
    feats = [torch.randn(6, 5, 2, 2, generator=g) for _ in range(3)]
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    loss = SelfDistillationLoss(alpha=0.3, temperature=2.5, beta=0.01)
    got = float(loss(ExitOutputs(logits, feats), labels))
    want = _reference_loss(logits, feats, labels, alpha=0.3, t=2.5, beta=0.01)
    assert got == pytest.approx(want, rel=1e-5)


def test_loss_is_invariant_to_batch_permutation():
    g = torch.Generator().manual_seed(2)
    logits = [torch.randn(8, 3, generator=g) for _ in range(3)]
    feats = [torch.randn(8, 4, 2, 2, generator=g) for _ in range(3)]
    labels = torch.randint(0, 3, (8,), generator=g)
    perm = torch.randperm(8, generator=g)
    loss = SelfDistillationLoss(beta=0.1)
    a = loss(ExitOutputs(logits, feats), labels)
    b = loss(ExitOutputs([z[perm] for z in logits], [f[perm] for f in feats]), labels[perm])
    assert float(a) == pytest.approx(float(b), rel=1e-6)


def test_deepest_exit_learns_from_labels_only():
    g = torch.Generator().manual_seed(3)
    logits = [torch.randn(5, 4, generator=g).requires_grad_() for _ in range(3)]
    feats = [torch.randn(5, 2, 1, 1, generator=g).requires_grad_() for _ in range(3)]
    labels = torch.tensor([0, 1, 2, 3, 0])
    SelfDistillationLoss(alpha=0.1, beta=1.0)(ExitOutputs(logits, feats), labels).backward()
    deepest = logits[-1].detach().requires_grad_()
    (0.9 * F.cross_entropy(deepest, labels)).backward()
    torch.testing.assert_close(logits[-1].grad, deepest.grad)
    # The deepest map is the hint's target, never pulled towards the shallow ones.
    assert feats[-1].grad is None or torch.count_nonzero(feats[-1].grad) == 0
    assert torch.count_nonzero(feats[0].grad) > 0


def test_wrapper_exits_have_the_deepest_shape_and_anytime_exit_matches():
    net = _tiny_resnet().eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        out = net(x)
        assert [tuple(f.shape) for f in out.features] == [(3, 64, 4, 4)] * 3
        for i in range(3):
            torch.testing.assert_close(net.forward_exit(x, i), out.logits[i])
        torch.testing.assert_close(out.logits[-1], net.backbone(x))


def test_anytime_exit_runs_only_the_sections_it_needs():
    # torchvision's ResNet-18: the paper's four sections.
    torch.manual_seed(0)
    net = SelfDistillationNetwork(resnet18(num_classes=3), example_input=torch.zeros(2, 3, 32, 32)).eval()
    assert net.sections == ("layer1", "layer2", "layer3", "layer4")
    ran = []
    handles = [getattr(net.backbone, n).register_forward_hook(lambda m, i, o, n=n: ran.append(n)) for n in net.sections]
    handles.append(net.backbone.fc.register_forward_hook(lambda m, i, o: ran.append("fc")))
    with torch.no_grad():
        net.forward_exit(torch.randn(2, 3, 32, 32), 1)
    for h in handles:
        h.remove()
    assert ran == ["layer1", "layer2"]


def test_wrapper_works_on_geokd_wrn():
    from geokd.models import build_model

    torch.manual_seed(0)
    wrn = build_model("wrn", depth=10, widen_factor=1, num_classes=7)
    net = SelfDistillationNetwork(wrn, example_input=torch.zeros(2, 3, 32, 32))
    assert net.sections == ("layer1", "layer2", "layer3")
    out = net(torch.randn(2, 3, 32, 32))
    assert [tuple(z.shape) for z in out.logits] == [(2, 7)] * 3


def test_evaluate_exits_accuracy_matches_manual_count_and_times_are_measured():
    net = _tiny_resnet()
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(10, 3, 16, 16, generator=g), torch.randint(0, 5, (10,), generator=g)
    reports = evaluate_exits(net, [(x[:6], y[:6]), (x[6:], y[6:])], repeats=3)
    assert [r.name for r in reports] == ["layer1", "layer2", "layer3", "ensemble"]
    net.eval()
    with torch.no_grad():
        out = net(x)
    for r, z in zip(reports, out.logits):
        assert r.accuracy == pytest.approx(float((z.argmax(1) == y).float().mean()))
    ens = torch.stack([z.softmax(1) for z in out.logits]).mean(0)
    assert reports[-1].accuracy == pytest.approx(float((ens.argmax(1) == y).float().mean()))
    assert all(r.seconds_per_batch > 0 and r.batch_size == 6 for r in reports)
    # The first exit skips layer2 and layer3, the ensemble runs everything.
    assert reports[0].seconds_per_batch < reports[-1].seconds_per_batch


@pytest.mark.parametrize(
    "kwargs, match",
    [({"alpha": 1.5}, "alpha"), ({"temperature": 0}, "temperature"), ({"beta": -1}, "beta")],
)
def test_bad_hyper_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SelfDistillationLoss(**kwargs)


def test_bad_inputs_are_named():
    from geokd.models import build_model

    backbone = build_model("resnet8", num_classes=3)
    with pytest.raises(ValueError, match="not modules"):
        SelfDistillationNetwork(backbone, example_input=torch.zeros(2, 3, 16, 16), sections=("layer1", "nope"))
    with pytest.raises(ValueError, match="at least 2 inputs"):
        SelfDistillationNetwork(backbone, example_input=torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="stages layer1"):
        SelfDistillationNetwork(torch.nn.Sequential(torch.nn.Flatten()), example_input=torch.zeros(2, 3))
    out = ExitOutputs([torch.zeros(2, 3)] * 2, [torch.zeros(2, 1, 1, 1)] * 2)
    with pytest.raises(ValueError, match=r"labels: expected shape \(2,\)"):
        SelfDistillationLoss()(out, torch.zeros(3, dtype=torch.long))
    net = _tiny_resnet()
    with pytest.raises(ValueError, match="exit_index"):
        net.forward_exit(torch.zeros(2, 3, 16, 16), 3)


@pytest.fixture(autouse=True)
def one_thread():
    # Small convolutions train an order of magnitude faster on one thread when the
    # machine's cores are shared (measured: 0.58 s vs 0.04 s per step).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - x.mean()) / x.std()
    return x, torch.tensor(d.target)


@pytest.mark.slow
def test_byot_trains_every_exit_on_digits_and_smoothness_per_exit():
    from geokd.models import build_model

    x, y = _digits()
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    train, test = perm[:1400], perm[1400:]
    torch.manual_seed(0)
    backbone = build_model("resnet8", num_classes=10, in_channels=1)
    net = SelfDistillationNetwork(backbone, example_input=x[:2])
    batches = [(x[train[i : i + 64]], y[train[i : i + 64]]) for i in range(0, len(train), 64)]
    history = train_self_distillation(net, batches, epochs=8, lr=0.05, milestones=(6,))
    assert history[-1] < history[0]
    reports = evaluate_exits(net, (x[test], y[test]))
    accuracies = {r.name: r.accuracy for r in reports}
    assert all(a > 0.85 for a in accuracies.values()), accuracies
    smooth = exit_smoothness(net, x[test], y[test], k=10)
    assert len(smooth) == 3 and all(s >= 0 for s in smooth)
    # Untrained exits mix classes far more than trained ones.
    torch.manual_seed(1)
    fresh = SelfDistillationNetwork(build_model("resnet8", num_classes=10, in_channels=1), example_input=x[:2])
    fresh_smooth = exit_smoothness(fresh, x[test], y[test], k=10)
    assert smooth[-1] < fresh_smooth[-1]


def test_channels_last_training_matches_channels_first():
    """The layout changes only rounding: same losses and weights from the same start."""
    x, y = _digits()
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 256, 64)]
    nets = {}
    for layout in (False, True):
        from geokd.models import build_model

        torch.manual_seed(0)
        net = SelfDistillationNetwork(build_model("resnet8", num_classes=10, in_channels=1), example_input=x[:2])
        nets[layout] = (net, train_self_distillation(net, batches, epochs=1, lr=0.05, channels_last=layout))
    (first, h_first), (last, h_last) = nets[False], nets[True]
    assert h_last == pytest.approx(h_first, rel=1e-4)
    convs = [p for p in last.parameters() if p.dim() == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    for a, b in zip(first.parameters(), last.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4)
