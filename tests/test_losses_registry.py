"""The loss registry: every family by name, with clear errors for unknown names, and the
attributes the trainer reads (geokd.train.loop.Term) on every registered term."""

import pytest
import torch

from geokd.losses import available_losses, build_loss, get_loss_class
from geokd.methods.iep import IEPLoss
from geokd.methods.mhgd import MHGDLoss
from geokd.models.outputs import ModelOutputs
from geokd.train import Term

# Constructor arguments a term cannot do without (its shape comes from the networks).
_REQUIRED = {"iep": {"channels": [4, 4]}, "mhgd": {"channels": [4, 4]}}
# The teacher-fitted terms and their stage length (the released experiments': IEP 20, MHGD 40).
_FITTED = {"iep": 20, "mhgd": 40}


def test_every_family_of_the_source_documents_is_registered():
    expected = {"gkd", "rkd_distance", "rkd_angle", "rkd", "kd", "fitnet", "attention",
                "activation_boundary", "fsp", "kdsvd", "iep", "mhgd"}
    assert expected <= set(available_losses())
    assert get_loss_class("iep") is IEPLoss and get_loss_class("mhgd") is MHGDLoss


def test_unknown_loss_names_close_matches():
    with pytest.raises(ValueError, match="did you mean 'gkd'"):
        build_loss("gdk")


# geokd's own terms (other tests may register test-only losses in the same session).
_OURS = sorted(n for n in available_losses() if get_loss_class(n).__module__.startswith("geokd."))


@pytest.mark.parametrize("name", _OURS)
def test_every_registered_term_has_the_attributes_the_trainer_reads(name):
    loss = build_loss(name, **_REQUIRED.get(name, {}))
    term = Term(name, 1.0, loss)
    assert isinstance(term.init_epochs, int) and term.init_epochs >= 0
    assert isinstance(getattr(loss, "init_only", False), bool)
    assert isinstance(term.clip_to_task_gradient, bool) and isinstance(term.needs_teacher, bool)
    for taps in (getattr(loss, "student_taps", None), getattr(loss, "teacher_taps", None)):
        assert taps is None or (isinstance(taps, tuple) and all(isinstance(t, str) for t in taps))
    # A teacher-fitting stage is declared by fit_epochs > 0 and a fit_teacher hook; the others have none.
    assert term.fit_epochs == _FITTED.get(name, 0)
    if term.fit_epochs:
        assert callable(loss.fit_teacher) and loss.fit_lr > 0


@pytest.mark.parametrize("name", ["iep", "mhgd"])
def test_graph_systems_as_terms_reach_the_student_only(name):
    torch.manual_seed(0)
    loss = build_loss(name, channels=[4, 4], fit_epochs=2)
    maps = [torch.rand(8, 4, 4, 4, requires_grad=True), torch.rand(8, 4, 2, 2, requires_grad=True)]
    teacher_maps = [torch.rand(8, 4, 4, 4, requires_grad=True), torch.rand(8, 4, 2, 2, requires_grad=True)]
    teacher = ModelOutputs(torch.zeros(8, 3), teacher_maps)
    history = loss.fit_teacher(lambda x: teacher, [(None, None)], epochs=loss.fit_epochs)
    assert len(history) == 2 and all(m.grad is None for m in teacher_maps)  # the fit reads the teacher only
    value = loss(ModelOutputs(torch.zeros(8, 3), maps), teacher, None)
    value.backward()
    assert torch.isfinite(value) and value > 0
    assert all(m.grad is not None and m.grad.abs().sum() > 0 for m in maps)
    assert all(m.grad is None for m in teacher_maps)
    assert all(p.grad is None for p in loss.parameters())


@pytest.mark.parametrize("name", ["iep", "mhgd"])
def test_fitted_state_round_trips_through_the_state_dict(name):
    # What makes a resumed run bit-exact: the saved term state alone reproduces the term.
    torch.manual_seed(0)
    term = build_loss(name, channels=[4, 8], fit_epochs=2)
    g = torch.Generator().manual_seed(1)
    s, t = ([torch.rand(8, 4, 4, 4, generator=g), torch.rand(8, 8, 2, 2, generator=g)] for _ in range(2))
    out_s, out_t = ModelOutputs(torch.zeros(8, 3), s), ModelOutputs(torch.zeros(8, 3), t)
    term.fit_teacher(lambda x: out_t if x else out_s, [(0, None), (1, None)], epochs=2)
    torch.manual_seed(9)  # another initialization, replaced by the loaded state
    fresh = build_loss(name, channels=[4, 8])
    fresh.load_state_dict(term.state_dict())
    fresh.eval()
    assert torch.equal(fresh(out_s, out_t), term(out_s, out_t))
