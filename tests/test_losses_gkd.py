"""GKD loss: a loop-based float64 reference, hand values, invariances, gradients, errors."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geokd.graphs import GraphSpec
from geokd.losses import GKDLoss, available_losses, build_loss, gkd_loss
from geokd.models.outputs import ModelOutputs


def reference_graph(x, *, labels=None, task="all", k=None, power=1, knn_from=None):
    """REFERENCE §1 step by step with Python loops, float64. Returns (graph, knn mask)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    n = len(x)
    a = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                ni, nj = math.sqrt(x[i] @ x[i]), math.sqrt(x[j] @ x[j])
                a[i, j] = 0.0 if ni == 0 or nj == 0 else (x[i] @ x[j]) / (ni * nj)
    deg = [sum(a[i]) for i in range(n)]
    g = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if deg[i] > 0 and deg[j] > 0:
                g[i, j] = a[i, j] / math.sqrt(deg[i] * deg[j])
    if task != "all":
        for i in range(n):
            for j in range(n):
                same = labels[i] == labels[j]
                if (task == "intra") != same:
                    g[i, j] = 0.0
    mask = None
    if knn_from is not None:
        mask = knn_from
    elif k is not None:
        mask = np.zeros((n, n))
        for i in range(n):
            others = sorted((j for j in range(n) if j != i), key=lambda j: -g[i, j])
            for j in others[:k]:
                mask[i, j] = mask[j, i] = 1.0
    if mask is not None:
        g = g * mask
    out = g
    for _ in range(power - 1):
        out = out @ g
    return out, mask


def reference_loss(student, teacher, *, labels=None, task="all", k=None, power=1):
    terms = []
    for s, t in zip(student, teacher):
        gt, mask = reference_graph(t, labels=labels, task=task, k=k, power=power)
        gs, _ = reference_graph(s, labels=labels, task=task, power=power, knn_from=mask)
        terms.append(((gt - gs) ** 2).sum())
    return sum(terms) / len(terms)


def relu_batch(gen, b, *shape):
    # Positive like post-ReLU features but without exact zeros: sparse ReLU rows with disjoint
    # supports have cosine exactly 0, and top-k among such ties is arbitrary.
    return torch.randn(b, *shape, generator=gen, dtype=torch.float64).abs()


@pytest.mark.parametrize("task, k, power", [("all", None, 1), ("all", 5, 1), ("inter", None, 2),
                                            ("intra", None, 1), ("inter", 3, 1), ("all", 4, 3)])
def test_matches_loop_reference(task, k, power):
    gen = torch.Generator().manual_seed(7)
    b = 12
    teacher = [relu_batch(gen, b, 6, 3, 3), relu_batch(gen, b, 12, 2, 2), relu_batch(gen, b, 16)]
    student = [relu_batch(gen, b, 3, 3, 3), relu_batch(gen, b, 6, 2, 2), relu_batch(gen, b, 8)]
    labels = torch.randint(0, 3, (b,), generator=gen)
    got = gkd_loss(student, teacher, labels, k=k, power=power, task=task)
    expected = reference_loss([s.numpy() for s in student], [t.numpy() for t in teacher],
                              labels=labels.tolist(), task=task, k=k, power=power)
    assert float(got) == pytest.approx(expected, rel=1e-10)
    # float32 stays close to the float64 reference
    got32 = gkd_loss([s.float() for s in student], [t.float() for t in teacher], labels, k=k, power=power, task=task)
    assert float(got32) == pytest.approx(expected, rel=1e-4)


def test_hand_value_against_an_empty_student_graph():
    # Teacher: the 4-node example of test_graphs (S02 = S23 = r/sqrt(3r(1+r)), S03 = 1/(1+r),
    # S12 = 1/sqrt(3)). Student: 4 orthogonal rows -> all cosines 0 -> degrees 0 -> graph 0.
    r = 1 / math.sqrt(2)
    s02, s03, s12 = r / math.sqrt(3 * r * (1 + r)), 1 / (1 + r), 1 / math.sqrt(3)
    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]], dtype=torch.float64)
    student = torch.eye(4, dtype=torch.float64)
    assert float(gkd_loss([student], [teacher])) == pytest.approx(2 * (2 * s02 ** 2 + s03 ** 2 + s12 ** 2))
    assert float(gkd_loss([student], [teacher], k=1)) == pytest.approx(2 * (s03 ** 2 + s12 ** 2))
    assert float(gkd_loss([student], [teacher], k=1, power=2)) == pytest.approx(2 * (s03 ** 4 + s12 ** 4))
    labels = torch.tensor([0, 1, 0, 1])
    assert float(gkd_loss([student], [teacher], labels, task="intra")) == pytest.approx(2 * s02 ** 2)  # S13 = 0
    assert float(gkd_loss([student], [teacher], labels, task="inter")) == pytest.approx(2 * (s02 ** 2 + s03 ** 2 + s12 ** 2))
    # Averaged over layers, not summed: a second identical-graph layer halves it.
    assert float(gkd_loss([student, teacher], [teacher, teacher], k=1)) == pytest.approx((s03 ** 2 + s12 ** 2))


def random_orthogonal(gen, n):
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), b=st.integers(5, 16), width=st.integers(2, 10), extra=st.integers(0, 6),
       k_frac=st.sampled_from([None, 0.3, 0.7]), task=st.sampled_from(["all", "intra", "inter"]),
       power=st.integers(1, 3))
def test_zero_when_student_is_an_orthogonal_transform_of_the_teacher(seed, b, width, extra, k_frac, task, power):
    gen = torch.Generator().manual_seed(seed)
    teacher = relu_batch(gen, b, width)
    padded = torch.cat([teacher, torch.zeros(b, extra, dtype=torch.float64)], dim=1)  # a wider student
    student = padded @ random_orthogonal(gen, width + extra)
    labels = torch.randint(0, 3, (b,), generator=gen)
    k = None if k_frac is None else max(1, int(k_frac * (b - 1)))
    loss = gkd_loss([student], [teacher], labels, k=k, task=task, power=power)
    assert float(loss) < 1e-20
    # ...and clearly non-zero for an unrelated student
    other = relu_batch(gen, b, width + extra)
    assert float(gkd_loss([other], [teacher], labels, task=task, power=power)) > 1e-8


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), b=st.integers(5, 14), k=st.sampled_from([None, 2, 4]),
       task=st.sampled_from(["all", "inter"]))
def test_loss_is_invariant_to_batch_permutation(seed, b, k, task):
    gen = torch.Generator().manual_seed(seed)
    teacher = [relu_batch(gen, b, 4, 2, 2), relu_batch(gen, b, 9)]
    student = [relu_batch(gen, b, 2, 2, 2), relu_batch(gen, b, 5)]
    labels = torch.randint(0, 4, (b,), generator=gen)
    perm = torch.randperm(b, generator=gen)
    base = gkd_loss(student, teacher, labels, k=k, task=task)
    permuted = gkd_loss([s[perm] for s in student], [t[perm] for t in teacher], labels[perm], k=k, task=task)
    assert float(permuted) == pytest.approx(float(base), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("name", ["gkd", "rkd_distance", "rkd_angle"])
def test_loss_and_gradient_do_not_depend_on_the_memory_layout(name):
    """Channels-last maps (the trainer's CPU default) are read in memory order, without a
    copy: the loss and the student's gradient are those of the channels-first maps."""
    from geokd.losses import rkd_angle_loss, rkd_distance_loss
    loss_fn = {"gkd": lambda s, t: gkd_loss(s, t, k=3), "rkd_distance": rkd_distance_loss,
               "rkd_angle": rkd_angle_loss}[name]
    gen = torch.Generator().manual_seed(5)
    teacher = [relu_batch(gen, 9, 6, 4, 4).double(), relu_batch(gen, 9, 8, 2, 2).double()]
    student = [relu_batch(gen, 9, 3, 4, 4).double(), relu_batch(gen, 9, 5, 2, 2).double()]
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        s = [x.detach().clone(memory_format=layout).requires_grad_() for x in student]
        loss = loss_fn(s, [x.to(memory_format=layout) for x in teacher])
        loss.backward()
        results.append((float(loss.detach()), [x.grad.contiguous() for x in s]))
    (first, first_grads), (last, last_grads) = results
    assert last == pytest.approx(first, rel=1e-12) and first > 0
    for a, b in zip(first_grads, last_grads):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-14)


def test_gradients_reach_the_student_only():
    gen = torch.Generator().manual_seed(3)
    teacher = [relu_batch(gen, 10, 4, 3, 3).requires_grad_(), relu_batch(gen, 10, 8).requires_grad_()]
    student = [relu_batch(gen, 10, 2, 3, 3).requires_grad_(), relu_batch(gen, 10, 4).requires_grad_()]
    loss = gkd_loss(student, teacher, k=3)
    loss.backward()
    assert all(t.grad is None for t in teacher)
    assert all(s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0 for s in student)


def test_gradient_is_correct_by_finite_differences():
    gen = torch.Generator().manual_seed(4)
    teacher = relu_batch(gen, 6, 5) + 0.1
    student = (relu_batch(gen, 6, 3) + 0.1).requires_grad_()
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    for kw in ({}, {"k": 2}, {"task": "inter", "power": 2}):
        assert torch.autograd.gradcheck(lambda s: gkd_loss([s], [teacher], labels, **kw), (student,))


def test_spec_argument_and_module_and_registry():
    gen = torch.Generator().manual_seed(5)
    t = [relu_batch(gen, 8, 4, 2, 2).float(), relu_batch(gen, 8, 6).float()]
    s = [relu_batch(gen, 8, 2, 2, 2).float(), relu_batch(gen, 8, 3).float()]
    labels = torch.arange(8) % 3
    spec = GraphSpec(k=3, task="inter", power=2)
    direct = gkd_loss(s, t, labels, k=3, task="inter", power=2)
    assert torch.equal(gkd_loss(s, t, labels, spec=spec), direct)
    assert {"gkd", "rkd", "rkd_distance", "rkd_angle"} <= set(available_losses())
    module = build_loss("gkd", k=3, task="inter", power=2)
    assert isinstance(module, GKDLoss) and module.spec == spec
    out_s, out_t = ModelOutputs(torch.zeros(8, 3), s), ModelOutputs(torch.zeros(8, 3), t)
    assert torch.equal(module(out_s, out_t, labels), direct)
    only_last = GKDLoss(layers=[-1])(out_s, out_t, labels)
    assert torch.equal(only_last, gkd_loss(s[-1:], t[-1:]))
    gauss = GraphSpec(kernel="gaussian", normalization="rw")
    assert float(gkd_loss(s, t, spec=gauss)) > 0


def test_bad_input_names_the_layer():
    gen = torch.Generator().manual_seed(6)
    t = [torch.rand(6, 4, generator=gen), torch.rand(6, 3, 2, 2, generator=gen)]
    s = [torch.rand(6, 2, generator=gen), torch.rand(6, 5, generator=gen)]
    with pytest.raises(ValueError, match="same number of student and teacher layers, got 1 student and 2"):
        gkd_loss(s[:1], t)
    nan = s[1].clone()
    nan[2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"layer 1 \(student\): expected finite activations"):
        gkd_loss([s[0], nan], t)
    with pytest.raises(ValueError, match=r"layer 0 \('layer1'\) \(student\): expected a batch of at least 2 inputs, got 1"):
        gkd_loss([s[0][:1]], [t[0][:1]], layer_names=["layer1"])
    with pytest.raises(ValueError, match=r"layer 1: expected student and teacher batches of the same size, got 5"):
        gkd_loss([s[0], s[1][:5]], t)
    with pytest.raises(ValueError, match=r"layer 0 \(teacher\): expected k < batch size \(6\)"):
        gkd_loss(s, t, k=6)
    with pytest.raises(ValueError, match="needs class labels"):
        gkd_loss(s, t, task="inter")
    with pytest.raises(ValueError, match=r"labels of shape \(6,\)"):
        gkd_loss(s, t, torch.zeros(6, 2, dtype=torch.long), task="inter")
    with pytest.raises(ValueError, match="pass either spec"):
        gkd_loss(s, t, k=2, spec=GraphSpec())
    with pytest.raises(ValueError, match="list of per-layer tensors"):
        gkd_loss("features", t)
    module = GKDLoss(task="intra")
    out_s, out_t = ModelOutputs(torch.zeros(6, 10), s), ModelOutputs(torch.zeros(6, 10), t)
    with pytest.raises(ValueError, match="labels < num_classes=10, got maximum 12"):
        module(out_s, out_t, torch.tensor([0, 1, 2, 3, 4, 12]))
    with pytest.raises(ValueError, match="out of range"):
        GKDLoss(layers=[5])(out_s, out_t, None)


def test_zero_and_negative_features_stay_finite():
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(8))
    x[3] = 0
    s = x.clone().requires_grad_()
    loss = gkd_loss([s], [torch.relu(x) + 0.01], k=3)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
