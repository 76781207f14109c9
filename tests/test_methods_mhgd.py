"""MHGD: singular-vector embeddings, 8-head attention graphs, teacher fit, student KL.

The trainer-level two-stage recipe (fit on a real digits teacher, then frozen while the
student trains) is tested in tests/test_losses_training.py."""

import numpy as np
import pytest
import torch
from scipy.special import rel_entr, softmax

from geokd.methods.mhgd import MHGD, AttentionGraphs, MHGDLoss, singular_embedding
from geokd.models.outputs import ModelOutputs


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _features(seed, n=12):
    g = torch.Generator().manual_seed(seed)
    return [torch.relu(torch.randn(n, 8, 4, 4, generator=g)), torch.relu(torch.randn(n, 16, 2, 2, generator=g)),
            torch.relu(torch.randn(n, 32, generator=g))]


def test_graphs_are_per_head_inner_products_of_sender_and_receiver():
    torch.manual_seed(0)
    att = AttentionGraphs(6, 4, heads=8).eval()
    g = torch.Generator().manual_seed(1)
    cur, prev = torch.randn(5, 6, generator=g), torch.randn(5, 4, generator=g)
    graphs = att(cur, prev)
    assert graphs.shape == (8, 5, 5)
    s = att.sender(cur).detach().numpy().reshape(5, 8, att.dim)
    r = att.receiver(prev).detach().numpy().reshape(5, 8, att.dim)
    for h in range(8):
        np.testing.assert_allclose(graphs[h].detach().numpy(), s[:, h] @ r[:, h].T, rtol=1e-5, atol=1e-5)


def test_graphs_are_permutation_equivariant():
    torch.manual_seed(0)
    att = AttentionGraphs(6, 4).eval()
    g = torch.Generator().manual_seed(2)
    cur, prev = torch.randn(7, 6, generator=g), torch.randn(7, 4, generator=g)
    perm = torch.randperm(7, generator=g)
    torch.testing.assert_close(att(cur[perm], prev[perm]), att(cur, prev)[:, perm][:, :, perm])


def test_student_embedding_is_sign_aligned_and_scale_free():
    t = _features(0)[0]
    v = singular_embedding(t)
    torch.testing.assert_close(singular_embedding(-3.0 * t, reference=v), v, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(singular_embedding(-3.0 * t, reference=v, candidates=4), v, atol=1e-5, rtol=1e-5)


def test_student_embedding_picks_the_candidate_closest_to_the_teacher():
    # Oracle by numpy: of the top-4 right-singular vectors, the one of largest |cos| with
    # the reference, signed to agree with it.
    g = torch.Generator().manual_seed(4)
    s = torch.relu(torch.randn(6, 8, 3, 3, generator=g)).double()
    ref = torch.nn.functional.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=1)
    got = singular_embedding(s, reference=ref, candidates=4).numpy()
    for b in range(6):
        _, _, vt = np.linalg.svd(s[b].reshape(8, 9).T.numpy(), full_matrices=False)
        cos = vt[:4] @ ref[b].numpy()
        j = int(np.argmax(np.abs(cos)))
        np.testing.assert_allclose(got[b], np.sign(cos[j]) * vt[j], atol=1e-8)
    with pytest.raises(ValueError, match="candidates"):
        singular_embedding(s, reference=ref, candidates=0)


def test_distillation_matches_a_scipy_kl_of_the_centred_tanh_graphs():
    torch.manual_seed(0)
    mhgd = MHGD(channels=(8, 16, 32))
    t, s = _features(0), _features(1)
    mhgd.fit_teacher([t], epochs=1)
    got = float(mhgd.distillation_loss(s, t))
    mhgd.eval()
    vt = [singular_embedding(f) for f in t]
    vs = [singular_embedding(f, reference=r, candidates=4) for f, r in zip(s, vt)]
    want = 0.0
    with torch.no_grad():
        for i, att in enumerate(mhgd.attention, start=1):
            gt, gs = att(vt[i], vt[i - 1]).numpy(), att(vs[i], vs[i - 1]).numpy()
            m = gt.mean(-1, keepdims=True)
            want += rel_entr(softmax(np.tanh(gs - m), axis=-1), softmax(np.tanh(gt - m), axis=-1)).sum()
    assert got == pytest.approx(want, rel=1e-4)


def test_loss_is_invariant_to_scaling_the_student_maps_and_zero_on_the_teacher():
    torch.manual_seed(0)
    mhgd = MHGD(channels=(8, 16, 32))
    t, s = _features(0), _features(1)
    mhgd.fit_teacher([t], epochs=1)
    a = float(mhgd.distillation_loss(s, t))
    b = float(mhgd.distillation_loss([2.5 * f for f in s], t))
    assert a == pytest.approx(b, rel=1e-4) and a > 0
    assert float(mhgd.distillation_loss(t, t)) < 1e-6


def test_teacher_fit_learns_to_predict_the_next_layer():
    torch.manual_seed(0)
    mhgd = MHGD(channels=(8, 16, 32))
    batches = [_features(seed) for seed in range(3)]
    history = mhgd.fit_teacher(batches, epochs=20, lr=0.05)
    assert history[-1] < 0.7 * history[0]


class _CountingTaps:
    """Teacher taps over fixed feature lists: batch ``x`` (an int) picks one."""

    def __init__(self, batches):
        self.batches, self.calls = batches, 0

    def __call__(self, x):
        self.calls += 1
        return ModelOutputs(torch.zeros(12, 3), self.batches[x])


def test_term_fit_hook_reads_the_teacher_taps_every_epoch_then_freezes_the_attention():
    torch.manual_seed(0)
    term = MHGDLoss(channels=(8, 16, 32), fit_epochs=3)
    taps = _CountingTaps([_features(seed) for seed in range(2)])
    start = {k: v.clone() for k, v in term.state_dict().items()}
    history = term.fit_teacher(taps, [(0, None), (1, None)], epochs=term.fit_epochs)
    assert len(history) == 3 and taps.calls == 6  # 3 epochs x 2 batches
    assert int(term.mhgd.fitted_epochs) == 3
    assert not term.mhgd.attention.training and not any(p.requires_grad for p in term.parameters())
    changed = [k for k, v in term.state_dict().items() if not torch.equal(v, start[k])]
    assert any("sender" in k for k in changed)  # the attention itself was trained


def test_term_value_is_the_distillation_alone_and_reaches_only_the_student():
    torch.manual_seed(0)
    term = MHGDLoss(channels=(8, 16, 32), fit_epochs=1)
    t = _features(0)
    term.fit_teacher(_CountingTaps([t]), [(0, None)], epochs=1)
    s = [f.clone().requires_grad_() for f in _features(1)]
    term.train()  # even in training mode (the trainer keeps it in eval mode): no fit loss is added
    value = term(ModelOutputs(torch.zeros(12, 3), s), ModelOutputs(torch.zeros(12, 3), t))
    assert float(value.detach()) == pytest.approx(float(term.mhgd.distillation_loss(s, t).detach()), rel=1e-6)
    value.backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in s)
    assert all(p.grad is None for p in term.parameters())


def test_an_unfitted_attention_is_refused():
    term = MHGDLoss(channels=(8, 16, 32))
    t = _features(0)
    with pytest.raises(ValueError, match="MHGD: the teacher-side network is not fitted; call fit_teacher"):
        term(ModelOutputs(torch.zeros(12, 3), t), ModelOutputs(torch.zeros(12, 3), t))


def test_paper_defaults_and_bad_fit_parameters():
    term = MHGDLoss(channels=(8, 16))
    assert (term.fit_epochs, term.fit_lr, term.clip_to_task_gradient) == (40, 0.1, True)  # as released
    assert term.mhgd.student_candidates == 4
    assert term.student_taps is None and term.teacher_taps is None
    for kwargs, match in [({"fit_epochs": 0}, "fit_epochs"), ({"fit_epochs": 2.5}, "fit_epochs"),
                          ({"fit_lr": 0}, "fit_lr"), ({"fit_lr": float("nan")}, "fit_lr"),
                          ({"student_taps": "layer1"}, "student_taps")]:
        with pytest.raises(ValueError, match=match):
            MHGDLoss(channels=(8, 16), **kwargs)
    with pytest.raises(ValueError, match="epochs to be an integer >= 1"):
        MHGD(channels=(8, 16)).fit_teacher([_features(0)[:2]], epochs=0)


def test_bad_inputs_are_named():
    mhgd = MHGD(channels=(8, 16, 32))
    t = _features(0)
    mhgd.fit_teacher([t], epochs=1)
    with pytest.raises(ValueError, match=r"student layer 2: expected \(B, 32, H, W\) or \(B, 32\)"):
        mhgd.distillation_loss([t[0], t[1], torch.zeros(12, 31)], t)
    with pytest.raises(ValueError, match="at least 2 sensing points"):
        MHGD(channels=(8,))
    with pytest.raises(ValueError, match="heads"):
        MHGD(channels=(8, 16), heads=0)
    with pytest.raises(ValueError, match="NaN"):
        singular_embedding(torch.full((2, 3, 2, 2), float("nan")))
    with pytest.raises(ValueError, match="MHGD: needs the teacher"):
        MHGDLoss(channels=(8, 16, 32))(ModelOutputs(torch.zeros(12, 3), t), None)
    with pytest.raises(ValueError, match="expected at least one batch"):
        MHGD(channels=(8, 16, 32)).fit_teacher([], epochs=1)
