"""Batch graphs: hand-computed 4-node values, PyGSP oracles, properties, bad input."""

import math

import numpy as np
import pygsp
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geokd.errors import ConfigError
from geokd.graphs import (GraphSpec, batch_graph, degrees, graph_pair, graph_power, knn_mask, laplacian,
                          normalize, similarity, task_mask)

# The 4-node example: x0=(1,0), x1=(0,1), x2=(1,1), x3=(2,0), labels 0,1,0,1.
# Cosines: c01=0, c02=r, c03=1, c12=r, c13=0, c23=r with r = 1/sqrt(2).
X4 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]], dtype=torch.float64)
Y4 = torch.tensor([0, 1, 0, 1])
R = 1 / math.sqrt(2)
A4 = np.array([[0, 0, R, 1], [0, 0, R, 0], [R, R, 0, R], [1, 0, R, 0]])
D4 = np.array([1 + R, R, 3 * R, 1 + R])  # row sums of A4, by hand


def sym_entry(i, j):
    return A4[i, j] / math.sqrt(D4[i] * D4[j])


SYM4 = np.array([[sym_entry(i, j) for j in range(4)] for i in range(4)])
# Values of the symmetric graph written out: S02 = r / sqrt(3r(1+r)) ~ 0.3716, S03 = 1/(1+r) ~ 0.5858,
# S12 = 1/sqrt(3) ~ 0.5774, S23 = S02. So with k=1: row0 -> 3, row1 -> 2, row2 -> 1, row3 -> 0.
KNN1 = np.zeros((4, 4))
for i, j in [(0, 3), (1, 2)]:
    KNN1[i, j] = KNN1[j, i] = 1


def as_np(t):
    return t.detach().cpu().numpy()


def test_hand_values_of_the_sym_graph():
    assert SYM4[0, 2] == pytest.approx(0.3716, abs=1e-4)
    assert SYM4[0, 3] == pytest.approx(1 / (1 + R))
    assert SYM4[1, 2] == pytest.approx(1 / math.sqrt(3))
    np.testing.assert_allclose(as_np(similarity(X4)), A4, atol=1e-12)
    np.testing.assert_allclose(as_np(batch_graph(X4).adjacency), SYM4, atol=1e-12)


def test_hand_values_rw_and_none():
    np.testing.assert_allclose(as_np(batch_graph(X4, spec=GraphSpec(normalization="rw")).adjacency),
                               A4 / D4[:, None], atol=1e-12)
    np.testing.assert_allclose(as_np(batch_graph(X4, spec=GraphSpec(normalization="none")).adjacency),
                               A4, atol=1e-12)


def test_hand_values_dot_and_gaussian_kernels():
    dot = np.array([[0, 0, 1, 2], [0, 0, 1, 0], [1, 1, 0, 2], [2, 0, 2, 0]], dtype=float)
    np.testing.assert_allclose(as_np(similarity(X4, kernel="dot")), dot, atol=1e-12)
    # distances: d01=sqrt2, d02=1, d03=1, d12=1, d13=sqrt5, d23=sqrt2
    d = np.array([[0, 2 ** .5, 1, 1], [2 ** .5, 0, 1, 5 ** .5], [1, 1, 0, 2 ** .5], [1, 5 ** .5, 2 ** .5, 0]])
    sigma = (2 * 2 ** .5 + 3 + 5 ** .5) / 6
    expected = np.exp(-d ** 2 / (2 * sigma ** 2)) - np.eye(4)
    np.testing.assert_allclose(as_np(similarity(X4, kernel="gaussian")), expected, atol=1e-12)
    np.testing.assert_allclose(as_np(similarity(X4, kernel="gaussian", sigma=1.0)),
                               np.exp(-d ** 2 / 2) - np.eye(4), atol=1e-12)


def test_hand_values_knn_power_and_renormalize():
    g = batch_graph(X4, spec=GraphSpec(k=1))
    np.testing.assert_array_equal(as_np(g.knn_mask), KNN1)
    np.testing.assert_allclose(as_np(g.adjacency), SYM4 * KNN1, atol=1e-12)  # degrees of the full graph kept
    a, b = SYM4[0, 3], SYM4[1, 2]
    p2 = batch_graph(X4, spec=GraphSpec(k=1, power=2)).adjacency
    np.testing.assert_allclose(as_np(p2), np.diag([a * a, b * b, b * b, a * a]), atol=1e-12)
    # Renormalized: the masked graph has edges 0-3 (weight 1) and 1-2 (weight r), each node of
    # degree equal to its single edge, so both edges normalize to exactly 1.
    renorm = batch_graph(X4, spec=GraphSpec(k=1, renormalize=True)).adjacency
    np.testing.assert_allclose(as_np(renorm), KNN1, atol=1e-12)
    p3 = batch_graph(X4, spec=GraphSpec(k=1, power=3)).adjacency
    np.testing.assert_allclose(as_np(p3), SYM4 * KNN1 * np.array([[a * a, 0, 0, a * a], [0, b * b, b * b, 0]] * 2)[[0, 1, 1, 0]], atol=1e-12)


def test_hand_values_task_masks():
    intra = np.array([[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]], dtype=float)
    np.testing.assert_array_equal(as_np(task_mask(Y4, task="intra")), intra)
    np.testing.assert_array_equal(as_np(task_mask(Y4, task="inter")), 1 - intra)
    assert task_mask(Y4, task="all") is None
    got = batch_graph(X4, spec=GraphSpec(task="intra"), labels=Y4).adjacency
    np.testing.assert_allclose(as_np(got), SYM4 * intra, atol=1e-12)
    got = batch_graph(X4, spec=GraphSpec(task="inter", k=1), labels=Y4)
    np.testing.assert_array_equal(as_np(got.knn_mask), KNN1)  # same top-1 as the unmasked graph here
    np.testing.assert_allclose(as_np(got.adjacency), SYM4 * (1 - intra) * KNN1, atol=1e-12)
    # renormalize after the inter mask: A ⊙ M has degrees d0 = 1, d1 = r, d2 = 2r, d3 = 1 + r
    m = A4 * (1 - intra)
    dm = m.sum(1)
    np.testing.assert_allclose(dm, [1, R, 2 * R, 1 + R])
    got = batch_graph(X4, spec=GraphSpec(task="inter", renormalize=True), labels=Y4).adjacency
    np.testing.assert_allclose(as_np(got), m / np.sqrt(np.outer(dm, dm)), atol=1e-12)


def test_clamp_negative_and_degree_policy():
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    a = similarity(x)
    assert a[0, 1] == -1.0  # the paper keeps negative cosines
    assert similarity(x, clamp_negative=True)[0, 1] == 0.0
    # degrees: d0 = -1, d1 = -1, d2 = 0 -> every D^-1/2 is 0: a finite, all-zero graph
    g = batch_graph(x).adjacency
    assert torch.isfinite(g).all() and (g == 0).all()
    x2 = torch.tensor([[1.0, 0.0], [-1.0, 0.1], [1.0, 1.0]], dtype=torch.float64)
    d = similarity(x2).sum(1)
    assert (d < 0).any() and (d > 0).any()
    g = batch_graph(x2).adjacency
    bad = d <= 0
    assert (g[bad] == 0).all() and (g[:, bad] == 0).all() and torch.isfinite(g).all()


def test_zero_rows_give_finite_graphs_and_gradients():
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 0.0], [0.5, 0.1, 1.0], [0.0, 0.0, 0.0]], requires_grad=True)
    for spec in [GraphSpec(), GraphSpec(normalization="rw"), GraphSpec(kernel="gaussian"), GraphSpec(k=2)]:
        g = batch_graph(x, spec=spec).adjacency
        assert torch.isfinite(g).all(), spec.name
        if spec.kernel == "cosine":
            assert (g[0] == 0).all() and (g[:, 3] == 0).all()
        g.sum().backward()
        assert torch.isfinite(x.grad).all(), spec.name
        x.grad = None
    identical = torch.ones(3, 4, requires_grad=True)
    g = similarity(identical, kernel="gaussian")  # sigma would be 0: all weights 1
    np.testing.assert_allclose(as_np(g), 1 - np.eye(3))
    g.sum().backward()
    assert torch.isfinite(identical.grad).all()


def test_rows_are_flattened_channel_major():
    x = torch.rand(5, 3, 2, 2, dtype=torch.float64)
    flat = x.reshape(5, -1)
    np.testing.assert_allclose(as_np(similarity(x.to(memory_format=torch.channels_last))), as_np(similarity(flat)))
    manual = np.stack([np.concatenate([as_np(x[i, c]).ravel() for c in range(3)]) for i in range(5)])
    z = manual / np.linalg.norm(manual, axis=1, keepdims=True)
    np.testing.assert_allclose(as_np(similarity(x)), z @ z.T - np.eye(5), atol=1e-12)


# ---- oracles: PyGSP ---------------------------------------------------------------------

def random_weights(rng, n, density=0.4, isolated=1):
    w = rng.random((n, n)) * (rng.random((n, n)) < density)
    w = np.triu(w, 1)
    w = w + w.T
    w[:isolated, :] = 0
    w[:, :isolated] = 0
    return w


@pytest.mark.parametrize("seed", range(3))
def test_laplacians_and_degrees_match_pygsp(seed):
    rng = np.random.default_rng(seed)
    w = random_weights(rng, 12)
    g = pygsp.graphs.Graph(w)
    np.testing.assert_allclose(degrees(w), g.dw)
    for kind in ("combinatorial", "normalized"):
        g.compute_laplacian(kind)
        dense = laplacian(w, kind=kind)
        sparse = laplacian(sp.csr_matrix(w), kind=kind)
        assert sp.issparse(sparse) and isinstance(dense, np.ndarray)
        np.testing.assert_allclose(dense, g.L.toarray(), atol=1e-12)
        np.testing.assert_allclose(sparse.toarray(), g.L.toarray(), atol=1e-12)
        x = rng.standard_normal((12, 3))
        assert np.trace(x.T @ dense @ x) == pytest.approx(np.trace(g.dirichlet_energy(x)), rel=1e-10)
    # torch input is accepted and converted to float64
    np.testing.assert_allclose(laplacian(torch.tensor(w, dtype=torch.float32)), laplacian(w.astype(np.float32)))


@pytest.mark.parametrize("seed", range(3))
def test_sym_normalization_matches_pygsp_normalized_laplacian(seed):
    rng = np.random.default_rng(seed)
    w = random_weights(rng, 10, isolated=2)
    g = pygsp.graphs.Graph(w)
    g.compute_laplacian("normalized")
    ours = as_np(normalize(torch.tensor(w), mode="sym"))
    connected = g.dw > 0
    expected = np.diag(connected.astype(float)) - g.L.toarray()
    np.testing.assert_allclose(ours, expected, atol=1e-12)
    rw = as_np(normalize(torch.tensor(w), mode="rw"))
    np.testing.assert_allclose(rw.sum(1), connected.astype(float), atol=1e-12)


def test_laplacian_rejects_bad_input():
    with pytest.raises(ValueError, match="square"):
        laplacian(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="finite"):
        laplacian(np.array([[0, np.nan], [np.nan, 0]]))
    with pytest.raises(ValueError, match="kind"):
        laplacian(np.zeros((2, 2)), kind="random_walk")


# ---- properties ---------------------------------------------------------------------------

SPECS = [GraphSpec(), GraphSpec(k=3), GraphSpec(task="inter", k=2, power=2), GraphSpec(task="intra"),
         GraphSpec(kernel="gaussian", normalization="rw"), GraphSpec(kernel="dot", normalization="none", power=3),
         GraphSpec(k=4, renormalize=True, task="inter"), GraphSpec(clamp_negative=True, k=2)]


def data(seed, b, shape, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, *shape, generator=g, dtype=dtype), torch.randint(0, 3, (b,), generator=g)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), b=st.integers(6, 12), spec_index=st.integers(0, len(SPECS) - 1))
def test_symmetric_and_permutation_equivariant(seed, b, spec_index):
    spec = SPECS[spec_index]
    x, y = data(seed, b, (2, 3))
    if spec.k is not None:
        # Post-ReLU-like features: with negative cosines a node of degree <= 0 has an all-zero
        # normalized row, and top-k among its tied zeros is arbitrary (not equivariant).
        x = x.abs()
    g = batch_graph(x, spec=spec, labels=y)
    a = g.adjacency
    assert torch.isfinite(a).all()
    if spec.normalization != "rw" and spec.power == 1:
        assert torch.equal(a, a.T)
    elif spec.normalization != "rw":  # BLAS products are symmetric up to rounding
        torch.testing.assert_close(a, a.T, rtol=1e-12, atol=1e-12)
    assert (torch.diagonal(a) == 0).all() or spec.power > 1
    perm = torch.randperm(b, generator=torch.Generator().manual_seed(seed + 1))
    gp = batch_graph(x[perm], spec=spec, labels=y[perm])
    torch.testing.assert_close(gp.adjacency, a[perm][:, perm], rtol=1e-9, atol=1e-12)
    if g.knn_mask is not None and spec.task == "all":  # a task mask makes ties among its zeros
        assert torch.equal(gp.knn_mask, g.knn_mask[perm][:, perm])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), b=st.integers(3, 10), log_scale=st.floats(-6, 6))
def test_cosine_graph_invariant_to_row_rescaling(seed, b, log_scale):
    x, _ = data(seed, b, (5,))
    scales = torch.exp(torch.rand(b, 1, dtype=torch.float64) * 2 + log_scale)
    torch.testing.assert_close(similarity(x * scales), similarity(x), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(batch_graph(x * scales, spec=GraphSpec(k=2)).adjacency,
                               batch_graph(x, spec=GraphSpec(k=2)).adjacency, rtol=1e-9, atol=1e-12)


def test_knn_mask_rows_have_at_least_k_neighbours_and_union_semantics():
    g = torch.Generator().manual_seed(0)
    a = similarity(torch.rand(20, 7, generator=g))
    for k in (1, 3, 19):
        m = knn_mask(a, k=k)
        assert torch.equal(m, m.T) and (torch.diagonal(m) == 0).all()
        assert (m.sum(1) >= k).all()
        top = torch.topk(a.masked_fill(torch.eye(20, dtype=torch.bool), -1e9), k, dim=1).indices
        directed = torch.zeros(20, 20).scatter_(1, top, 1.0)
        assert torch.equal(m, ((directed + directed.T) > 0).float())
    assert torch.equal(knn_mask(a, k=19), 1 - torch.eye(20))


def test_graph_power_is_repeated_product():
    a = torch.rand(5, 5, dtype=torch.float64)
    torch.testing.assert_close(graph_power(a, power=3), a @ a @ a)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="power"):
            graph_power(a, power=bad)


def test_graph_pair_masks_student_with_teacher_knn_and_no_teacher_gradient():
    g = torch.Generator().manual_seed(1)
    t = torch.rand(10, 8, 2, 2, generator=g, requires_grad=True)
    s = torch.rand(10, 3, 4, 4, generator=g, requires_grad=True)
    spec = GraphSpec(k=2)
    a_s, a_t = graph_pair(s, t, spec=spec)
    t_graph = batch_graph(t.detach(), spec=spec)
    torch.testing.assert_close(a_t, t_graph.adjacency)
    expected_student = batch_graph(s.detach(), spec=GraphSpec()).adjacency * t_graph.knn_mask
    torch.testing.assert_close(a_s.detach(), expected_student)
    own = batch_graph(s.detach(), spec=spec).knn_mask
    assert not torch.equal(own, t_graph.knn_mask)  # the point: the student's own k-NN differs
    assert not a_t.requires_grad and a_s.requires_grad


def test_device_and_dtype_follow_the_input():
    x = torch.rand(6, 4, dtype=torch.float32, device="cpu")
    out = batch_graph(x, spec=GraphSpec(k=2, task="inter"), labels=torch.tensor([0, 1, 0, 1, 2, 2]))
    assert out.adjacency.dtype == torch.float32 and out.adjacency.device == x.device
    assert out.knn_mask.dtype == torch.float32


# ---- bad input ----------------------------------------------------------------------------

def test_bad_activations_are_clear_errors():
    with pytest.raises(ValueError, match=r"layer 2: expected finite activations, got NaN/Inf in 1 of 4"):
        batch_graph(torch.tensor([[1.0, float("nan")], [1, 2], [3, 4], [5, 6]]), where="layer 2")
    with pytest.raises(ValueError, match="expected finite"):
        similarity(torch.tensor([[1.0, float("inf")], [1, 2]]))
    with pytest.raises(ValueError, match="at least 2 inputs, got 1"):
        batch_graph(torch.rand(1, 5))
    with pytest.raises(ValueError, match="floating-point"):
        batch_graph(torch.ones(3, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(B, \.\.\.\)"):
        batch_graph(torch.rand(5))
    with pytest.raises(ValueError, match="kernel"):
        similarity(torch.rand(3, 2), kernel="l2")
    with pytest.raises(ValueError, match="sigma"):
        similarity(torch.rand(3, 2), kernel="cosine", sigma=1.0)
    with pytest.raises(ValueError, match="sigma"):
        similarity(torch.rand(3, 2), kernel="gaussian", sigma=-1.0)
    with pytest.raises(ValueError, match="normalization mode"):
        normalize(torch.rand(3, 3), mode="lap")
    with pytest.raises(ValueError, match="square"):
        normalize(torch.rand(3, 2))


def test_bad_k_and_labels_are_clear_errors():
    x = torch.rand(4, 3)
    with pytest.raises(ValueError, match=r"k < batch size \(4\).*got k=4; use k=None"):
        batch_graph(x, spec=GraphSpec(k=4))
    with pytest.raises(ValueError, match="k >= 1"):
        knn_mask(similarity(x), k=0)
    with pytest.raises(ValueError, match="needs class labels"):
        batch_graph(x, spec=GraphSpec(task="inter"))
    with pytest.raises(ValueError, match=r"labels of shape \(4,\).*got shape \(3,\)"):
        batch_graph(x, spec=GraphSpec(task="inter"), labels=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"labels of shape \(4,\).*got shape \(4, 1\)"):
        batch_graph(x, spec=GraphSpec(task="intra"), labels=torch.zeros(4, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="integer class labels"):
        batch_graph(x, spec=GraphSpec(task="intra"), labels=torch.zeros(4))
    with pytest.raises(ValueError, match="labels >= 0, got minimum -1"):
        batch_graph(x, spec=GraphSpec(task="intra"), labels=torch.tensor([0, -1, 1, 1]))
    with pytest.raises(ValueError, match="labels < num_classes=2, got maximum 5"):
        batch_graph(x, spec=GraphSpec(task="intra"), labels=torch.tensor([0, 5, 1, 1]), num_classes=2)
    with pytest.raises(ValueError, match=r"k-NN mask of shape \(4, 4\)"):
        batch_graph(x, mask=torch.ones(3, 3))
    with pytest.raises(ValueError, match="task"):
        task_mask(torch.tensor([0, 1]), task="between")


def test_graph_pair_rejects_mismatched_batches():
    with pytest.raises(ValueError, match=r"layer 3: expected student and teacher batches of the same size, got 4 \(student\) and 5"):
        graph_pair(torch.rand(4, 2), torch.rand(5, 2), where="layer 3")
    with pytest.raises(ValueError, match=r"layer 0 \(teacher\): expected finite"):
        graph_pair(torch.rand(4, 2), torch.full((4, 2), float("nan")), where="layer 0")
    with pytest.raises(ValueError, match="GraphSpec"):
        batch_graph(torch.rand(4, 2), spec={"k": 2})
