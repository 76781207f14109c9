"""IEP: first principal direction, stereographic map, incremental PCA (vs scikit-learn),
PCA-vs-IPCA switch, MPNN, teacher fit and student loss.

The trainer-level two-stage recipe (fit on a real digits teacher, then frozen while the
student trains) is tested in tests/test_losses_training.py."""

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.decomposition import IncrementalPCA as SkIncrementalPCA

from geokd.methods.iep import (
    IEP,
    GraphMPNN,
    IEPLoss,
    IncrementalPCA,
    cosine_affinity,
    first_singular_pair,
    graph_kl,
    stereographic_map,
    student_direction,
)
from geokd.models.outputs import ModelOutputs


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _anisotropic(n, d, seed):
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
    scales = np.linspace(3.0, 0.1, d)
    return (rng.normal(size=(n, d)) * scales) @ basis.T + rng.normal(size=d)


def _assert_same_up_to_sign(a, b, atol):
    dots = np.abs((a * b).sum(1)) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    np.testing.assert_allclose(dots, 1.0, atol=atol)


def test_cumulative_ipca_matches_sklearn_incremental_pca():
    x = _anisotropic(200, 12, 0)
    ours = IncrementalPCA(12, mean_update="cumulative")
    sk = SkIncrementalPCA(n_components=6)
    for start in range(0, 200, 40):
        ours.update(torch.tensor(x[start : start + 40]))
        sk.partial_fit(x[start : start + 40])
    _assert_same_up_to_sign(ours.components.numpy(), sk.components_, atol=1e-8)
    np.testing.assert_allclose(ours.singular_values.numpy(), sk.singular_values_, rtol=1e-8)
    np.testing.assert_allclose(ours.mean.numpy(), sk.mean_, rtol=1e-10, atol=1e-12)
    z = ours.transform(torch.tensor(x)).numpy()
    np.testing.assert_allclose(np.abs(z), np.abs(sk.transform(x)), atol=1e-7)


def test_ema_ipca_first_batch_is_pca_and_mean_follows_the_ema():
    x = _anisotropic(120, 8, 1)
    ours = IncrementalPCA(8)  # IEP's defaults: EMA mean, rate 0.9, half the components
    ours.update(torch.tensor(x[:60]))
    _assert_same_up_to_sign(ours.components.numpy(), PCA(n_components=4).fit(x[:60]).components_, atol=1e-8)
    ours.update(torch.tensor(x[60:]))
    np.testing.assert_allclose(ours.mean.numpy(), 0.1 * x[:60].mean(0) + 0.9 * x[60:].mean(0), rtol=1e-12)
    assert ours.n_components == 4 and int(ours.n_samples_seen) == 120


def test_ema_merge_matches_a_direct_svd_of_the_stacked_rows():
    # Oracle written differently: numpy SVD of [S·V; X − mean_b; μ − mean_b].
    x = _anisotropic(90, 10, 2)
    ours = IncrementalPCA(10, rate=0.9)
    ours.update(torch.tensor(x[:45]))
    s0, v0, mu0 = (t.numpy().copy() for t in (ours.singular_values, ours.components, ours.mean))
    ours.update(torch.tensor(x[45:]))
    b = x[45:]
    stacked = np.vstack([s0[:, None] * v0, b - b.mean(0), (mu0 - b.mean(0))[None]])
    _, s, vt = np.linalg.svd(stacked, full_matrices=False)
    _assert_same_up_to_sign(ours.components.numpy(), vt[:5], atol=1e-8)
    np.testing.assert_allclose(ours.singular_values.numpy(), s[:5], rtol=1e-10)


def _subspace_distance(a, b):
    qa, _ = np.linalg.qr(a.T)
    qb, _ = np.linalg.qr(b.T)
    return np.linalg.norm(qa @ qa.T - qb @ qb.T)


def test_pca_vs_ipca_switch():
    x = _anisotropic(400, 16, 3)
    full = PCA(n_components=8).fit(x).components_
    batch, inc = IncrementalPCA(16, mode="batch"), IncrementalPCA(16, mode="incremental")
    drift = {"batch": [], "incremental": []}
    previous = {}
    for start in range(0, 400, 20):
        chunk = torch.tensor(x[start : start + 20])
        for name, pca in (("batch", batch), ("incremental", inc)):
            pca.update(chunk)
            if name in previous:
                drift[name].append(_subspace_distance(previous[name], pca.components.numpy()))
            previous[name] = pca.components.numpy().copy()
    # "batch" is the PCA of the last batch alone...
    _assert_same_up_to_sign(batch.components.numpy(), PCA(n_components=8).fit(x[380:]).components_, atol=1e-8)
    # ...so its basis jumps between batches, while the incremental one settles near the
    # whole data's principal subspace.
    assert np.mean(drift["incremental"][-5:]) < 0.5 * np.mean(drift["batch"][-5:])
    assert _subspace_distance(inc.components.numpy(), full) < _subspace_distance(batch.components.numpy(), full)


def test_first_singular_pair_matches_numpy_and_is_non_negative_for_relu_maps():
    g = torch.Generator().manual_seed(0)
    fmap = torch.relu(torch.randn(5, 6, 3, 3, generator=g))
    u, v = first_singular_pair(fmap)
    for b in range(5):
        m = fmap[b].reshape(6, 9).T.double().numpy()
        uu, _, vt = np.linalg.svd(m)
        _assert_same_up_to_sign(v[b : b + 1].double().numpy(), vt[:1], atol=1e-6)
        _assert_same_up_to_sign(u[b : b + 1].double().numpy(), uu[:, :1].T, atol=1e-6)
    assert (v >= -1e-6).all()  # Perron: a non-negative matrix has a non-negative top pair
    torch.testing.assert_close(v.norm(dim=1), torch.ones(5))


def test_student_direction_of_the_teacher_itself_is_the_teachers_direction():
    g = torch.Generator().manual_seed(1)
    fmap = torch.relu(torch.randn(4, 5, 2, 2, generator=g))
    u, v = first_singular_pair(fmap)
    torch.testing.assert_close(student_direction(fmap, u), v, atol=1e-5, rtol=1e-5)


def test_stereographic_map_is_the_projection_from_the_antipode():
    g = torch.Generator().manual_seed(2)
    v = torch.nn.functional.normalize(torch.rand(7, 5, generator=g, dtype=torch.float64), dim=1)
    y = stereographic_map(v)
    c = torch.full((5,), 5 ** -0.5, dtype=torch.float64)
    torch.testing.assert_close(y @ c, torch.zeros(7, dtype=torch.float64), atol=1e-12, rtol=0)
    # −c, v and the image point y + c (on the tangent plane at c) are collinear.
    a, b = v + c, y + 2 * c
    cross = a.unsqueeze(2) * b.unsqueeze(1) - a.unsqueeze(1) * b.unsqueeze(2)
    assert cross.abs().max() < 1e-12
    # Distinct points stay distinct (the map is injective off the pole).
    assert torch.cdist(y, y).fill_diagonal_(1).min() > 0


def test_mpnn_is_permutation_equivariant():
    torch.manual_seed(0)
    mpnn = GraphMPNN(3, 4).eval()
    g = torch.Generator().manual_seed(3)
    cur, prev = torch.randn(6, 4, generator=g), torch.randn(6, 3, generator=g)
    perm = torch.randperm(6, generator=g)
    r, m = mpnn(cur, prev)
    r_p, m_p = mpnn(cur[perm], prev[perm])
    torch.testing.assert_close(r_p, r[perm][:, perm])
    torch.testing.assert_close(m_p, m[perm][:, perm])
    assert m.shape == (6, 6, 8)  # 2 iterations × D


def test_graph_kl_matches_scipy():
    from scipy.special import rel_entr, softmax

    g = torch.Generator().manual_seed(4)
    p, q = torch.randn(5, 5, generator=g), torch.randn(5, 5, generator=g)
    want = rel_entr(softmax(p.numpy(), axis=1), softmax(q.numpy(), axis=1)).sum()
    assert float(graph_kl(p, q)) == pytest.approx(want, rel=1e-5)


def _stage_features(seed, n=16):
    g = torch.Generator().manual_seed(seed)
    return [torch.relu(torch.randn(n, 8, 4, 4, generator=g)), torch.relu(torch.randn(n, 16, 2, 2, generator=g)),
            torch.relu(torch.randn(n, 32, generator=g))]


def test_teacher_fit_lowers_the_mpnn_graph_error():
    torch.manual_seed(0)
    iep = IEP(channels=(8, 16, 32))
    batches = [_stage_features(s) for s in range(4)]
    history = iep.fit_teacher(batches, epochs=15, lr=0.05)
    assert history[-1] < 0.8 * history[0]


def test_student_loss_zero_on_the_teacher_positive_otherwise_and_grads_reach_only_the_student():
    torch.manual_seed(0)
    iep = IEP(channels=(8, 16, 32))
    teacher = _stage_features(0)
    iep.fit_teacher([teacher], epochs=2)
    assert float(iep.distillation_loss(teacher, teacher)) < 1e-4
    iep.zero_grad(set_to_none=True)
    student = [f.clone().requires_grad_() for f in _stage_features(1)]
    loss = iep.distillation_loss(student, teacher)
    assert float(loss.detach()) > 0.1
    loss.backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in student)
    assert all(p.grad is None for p in iep.mpnns.parameters())


def _fixed_taps(batches):
    """Teacher taps over fixed feature lists: batch ``x`` (an int) picks one."""
    return lambda x: ModelOutputs(torch.zeros(16, 3), batches[x])


def test_term_fit_hook_fits_ipca_and_mpnns_on_the_teacher_then_freezes_them():
    torch.manual_seed(0)
    term = IEPLoss(channels=(8, 16, 32), fit_epochs=4)
    assert (term.clip_to_task_gradient, IEPLoss(channels=(8, 16)).fit_epochs, term.fit_lr) == (True, 20, 0.1)
    batches = [_stage_features(seed) for seed in range(3)]
    start = {k: v.clone() for k, v in term.state_dict().items()}
    history = term.fit_teacher(_fixed_taps(batches), [(i, None) for i in range(3)], epochs=term.fit_epochs)
    assert len(history) == 4 and history[-1] < history[0]
    # 4 epochs x 3 batches of 16 inputs went into every layer's IPCA.
    assert all(int(pca.n_samples_seen) == 4 * 3 * 16 for pca in term.iep.pcas)
    assert int(term.iep.fitted_epochs) == 4
    assert not term.iep.mpnns.training and all(p.grad is None and not p.requires_grad for p in term.parameters())
    assert any(not torch.equal(v, start[k]) for k, v in term.state_dict().items() if k.startswith("iep.mpnns"))


def test_term_value_is_the_distillation_alone_its_gradient_the_students_and_the_ipca_stays():
    torch.manual_seed(0)
    term = IEPLoss(channels=(8, 16, 32), fit_epochs=1)
    t = _stage_features(0)
    term.fit_teacher(_fixed_taps([t]), [(0, None)], epochs=1)
    fitted = {k: v.clone() for k, v in term.state_dict().items()}
    term.train()  # even in training mode: no fit loss is added, the IPCA is not updated
    s = [f.clone().requires_grad_() for f in _stage_features(1)]
    value = term(ModelOutputs(torch.zeros(16, 3), s), ModelOutputs(torch.zeros(16, 3), _stage_features(2)), None)
    value.backward()
    s2 = [f.detach().clone().requires_grad_() for f in s]
    term.iep.distillation_loss(s2, _stage_features(2)).backward()
    for a, b in zip(s, s2):
        torch.testing.assert_close(a.grad, b.grad)
    assert all(p.grad is None for p in term.parameters())
    assert all(torch.equal(v, fitted[k]) for k, v in term.state_dict().items())


def test_an_unfitted_mpnn_is_refused_and_fit_parameters_are_checked():
    t = _stage_features(0)
    with pytest.raises(ValueError, match="IEP: the teacher-side network is not fitted; call fit_teacher"):
        IEPLoss(channels=(8, 16, 32))(ModelOutputs(torch.zeros(16, 3), t), ModelOutputs(torch.zeros(16, 3), t))
    for kwargs, match in [({"fit_epochs": 0}, "fit_epochs"), ({"fit_epochs": True}, "fit_epochs"),
                          ({"fit_lr": -1.0}, "fit_lr"), ({"teacher_taps": [""]}, "teacher_taps")]:
        with pytest.raises(ValueError, match=match):
            IEPLoss(channels=(8, 16), **kwargs)
    with pytest.raises(ValueError, match="IEP: needs the teacher"):
        IEPLoss(channels=(8, 16, 32))(ModelOutputs(torch.zeros(16, 3), t), None)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="mode"):
        IncrementalPCA(4, mode="svd")
    with pytest.raises(ValueError, match="rate"):
        IncrementalPCA(4, rate=0)
    pca = IncrementalPCA(8)
    with pytest.raises(ValueError, match="call update"):
        pca.transform(torch.zeros(3, 8))
    with pytest.raises(ValueError, match="at least 4 rows"):
        pca.update(torch.randn(3, 8))
    with pytest.raises(ValueError, match=r"shape \(m, 8\)"):
        pca.update(torch.randn(5, 7))
    with pytest.raises(ValueError, match="all-zero map"):
        first_singular_pair(torch.zeros(2, 3, 2, 2))
    iep = IEP(channels=(8, 16, 32))
    t = _stage_features(0)
    iep.fit_teacher([t], epochs=1)
    with pytest.raises(ValueError, match=r"student layer 1: expected \(B, 16, H, W\)"):
        iep.distillation_loss([t[0], torch.zeros(16, 12, 2, 2), t[2]], t)
    with pytest.raises(ValueError, match="spatial positions"):
        iep.distillation_loss([torch.rand(16, 8, 2, 2), t[1], t[2]], t)
    with pytest.raises(ValueError, match="3 sensing points"):
        iep.distillation_loss(t[:2], t)


def test_non_finite_student_is_refused():
    iep = IEP(channels=(8, 16, 32))
    t = _stage_features(0)
    iep.fit_teacher([t], epochs=1)
    bad = [t[0].clone(), t[1], t[2]]
    bad[0][0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="student layer 0: expected finite"):
        iep.distillation_loss(bad, t)
