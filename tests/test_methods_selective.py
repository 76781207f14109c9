"""Selective KD: min-cut on the teacher's k-NN graph drops the inputs it embeds poorly."""

import itertools

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.csgraph import maximum_flow

from geokd.methods.selective import cut_class, select_well_embedded


def _random_graph(n, seed, density=0.5, integer=False):
    rng = np.random.default_rng(seed)
    w = rng.random((n, n)) * (rng.random((n, n)) < density)
    if integer:
        w = np.round(w * 20)
    w = np.triu(w, 1)
    return w + w.T


def _brute_force(w, labels, cls, trust):
    """Every s/t assignment of the nodes; returns the min value and the intersection of the
    sink sides of all minimum cuts (the smallest sink side)."""
    n = len(labels)
    d = w.sum(1)
    best, sides = np.inf, []
    for bits in itertools.product([0, 1], repeat=n):  # 1 = sink side
        t = np.array(bits, dtype=bool)
        value = w[np.ix_(~t, t)].sum()
        value += sum(trust * d[i] for i in range(n) if labels[i] == cls and t[i])
        value += sum(trust * d[i] for i in range(n) if labels[i] != cls and not t[i])
        if value < best - 1e-9:
            best, sides = value, [t]
        elif abs(value - best) <= 1e-9:
            sides.append(t)
    return best, np.logical_and.reduce(sides)


@pytest.mark.parametrize("seed", range(6))
def test_cut_matches_brute_force_enumeration(seed):
    w = _random_graph(8, seed)
    labels = np.random.default_rng(seed).integers(0, 3, 8)
    for cls in range(3):
        side, value = cut_class(w, labels, cls, label_trust=0.3)
        want_value, want_side = _brute_force(w, labels, cls, 0.3)
        assert value == pytest.approx(want_value, abs=1e-9)
        assert side.tolist() == want_side.tolist()


def test_cut_value_matches_scipy_maximum_flow():
    n = 60
    w = _random_graph(n, 7, density=0.15, integer=True)
    labels = np.random.default_rng(7).integers(0, 4, n)
    trust = 0.5
    d = w.sum(1)
    # Integer network for scipy: nodes 0..n-1, source n, sink n+1; trust·d is an integer
    # multiple of 0.5, so scale everything by 2.
    cap = np.zeros((n + 2, n + 2))
    cap[:n, :n] = 2 * w
    own = labels == 2
    cap[n, :n][own] = 2 * trust * d[own]
    cap[:n, n + 1][~own] = 2 * trust * d[~own]
    flow = maximum_flow(sp.csr_matrix(cap.astype(np.int32)), n, n + 1)
    _, value = cut_class(w, labels, 2, label_trust=trust)
    assert value == pytest.approx(flow.flow_value / 2)


def _anchored_node_graph(disagree_fraction):
    """Node 0 (label 0) tied to two heavy cliques: its own class and class 1."""
    m = 6
    n = 1 + 2 * m
    w = np.zeros((n, n))
    own, other = range(1, 1 + m), range(1 + m, n)
    for group in (own, other):
        for i, j in itertools.combinations(group, 2):
            w[i, j] = w[j, i] = 10.0
    for j in own:
        w[0, j] = w[j, 0] = (1 - disagree_fraction) / m
    for j in other:
        w[0, j] = w[j, 0] = disagree_fraction / m
    labels = np.array([0] + [0] * m + [1] * m)
    return w, labels


@pytest.mark.parametrize("trust", [0.1, 0.2, 0.5])
def test_single_node_is_dropped_exactly_above_the_documented_fraction(trust):
    threshold = (1 + trust) / 2
    for fraction, dropped in [(threshold - 0.02, False), (threshold + 0.02, True)]:
        w, labels = _anchored_node_graph(fraction)
        sel = select_well_embedded(None, labels, graph=sp.csr_matrix(w), label_trust=trust)
        assert (0 in sel.dropped.tolist()) is dropped, (trust, fraction)
        assert sel.dropped.tolist() in ([], [0])


def _planted(seed=0):
    rng = np.random.default_rng(seed)
    centers = np.eye(4) * 4 + 1
    x = np.concatenate([c + rng.normal(scale=0.4, size=(25, 4)) for c in centers])
    labels = np.repeat(np.arange(4), 25)
    wrong = np.array([2, 30, 31, 77])
    labels[wrong] = [3, 0, 2, 1]
    return x, labels, wrong


def test_planted_mislabels_are_exactly_the_dropped_inputs():
    x, labels, wrong = _planted()
    sel = select_well_embedded(x, labels, k=6)
    assert sel.dropped.tolist() == sorted(wrong.tolist())
    assert sorted(sel.kept.tolist() + sel.dropped.tolist()) == list(range(100))
    report = sel.report()
    assert report["dropped"] == 4 and report["kept"] == 96
    assert sum(report["dropped_per_class"].values()) == 4


def test_a_group_vouching_for_itself_is_cut_where_a_vote_inside_it_would_keep_it():
    # Three inputs labelled 1 sit inside class 0: among themselves they agree, but the
    # group as a whole is tied far more to class 0 than to its label.
    w = np.zeros((13, 13))
    group, own = [0, 1, 2], list(range(3, 13))
    for i, j in itertools.combinations(own, 2):
        w[i, j] = w[j, i] = 1.0
    for i, j in itertools.combinations(group, 2):
        w[i, j] = w[j, i] = 1.0
    for i in group:
        for j in own[:3]:
            w[i, j] = w[j, i] = 1.0
    labels = np.array([1, 1, 1] + [0] * 10)
    # per-node: 2 of 5 edges agree (40 % disagree... 60 %), with trust 0.3 a lone-node rule
    # (disagree > 65 %) keeps each of them; the cut removes the group (cost 3·0.3·5 < 9).
    sel = select_well_embedded(None, labels, graph=sp.csr_matrix(w), label_trust=0.3)
    assert sel.dropped.tolist() == [0, 1, 2]


def test_selection_is_invariant_to_scaling_and_equivariant_to_permutation():
    x, labels, _ = _planted(1)
    base = select_well_embedded(x, labels, k=6)
    assert select_well_embedded(3.5 * x, labels, k=6).dropped.tolist() == base.dropped.tolist()
    perm = np.random.default_rng(2).permutation(len(labels))
    moved = select_well_embedded(x[perm], labels[perm], k=6)
    assert sorted(perm[moved.dropped].tolist()) == base.dropped.tolist()


def test_bad_inputs_are_named():
    w = _random_graph(5, 0)
    with pytest.raises(ValueError, match="label_trust"):
        cut_class(w, [0, 1, 0, 1, 0], 0, label_trust=0)
    with pytest.raises(ValueError, match="non-negative"):
        cut_class(-w, [0, 1, 0, 1, 0], 0)
    asym = w.copy()
    asym[0, 1] += 1
    with pytest.raises(ValueError, match="symmetric"):
        cut_class(asym, [0, 1, 0, 1, 0], 0)
    with pytest.raises(ValueError, match=r"labels: expected shape \(5,\)"):
        cut_class(w, [0, 1], 0)
    with pytest.raises(ValueError, match="k: expected"):
        select_well_embedded(np.eye(4), [0, 1, 0, 1], k=4)


@pytest.mark.slow
def test_digits_with_corrupted_labels_drops_mostly_the_corrupted():
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(0)
    labels = d.target.copy()
    corrupt = rng.choice(len(labels), size=90, replace=False)
    labels[corrupt] = (labels[corrupt] + rng.integers(1, 10, size=90)) % 10
    sel = select_well_embedded(d.data, labels, k=10)
    dropped = set(sel.dropped.tolist())
    hit = len(dropped & set(corrupt.tolist()))
    recall = hit / len(corrupt)
    clean_dropped = (len(dropped) - hit) / (len(labels) - len(corrupt))
    # Nearly every corrupted label goes; a few clean inputs next to them go too.
    assert recall > 0.9 and clean_dropped < 0.03, (recall, clean_dropped, len(dropped))
