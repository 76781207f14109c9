"""The loss registry: every family by name, with clear errors for unknown names."""

import pytest
import torch

from geokd.losses import available_losses, build_loss, get_loss_class
from geokd.methods.iep import IEPLoss
from geokd.methods.mhgd import MHGDLoss
from geokd.models.outputs import ModelOutputs


def test_every_family_of_the_source_documents_is_registered():
    expected = {"gkd", "rkd_distance", "rkd_angle", "rkd", "kd", "fitnet", "attention",
                "activation_boundary", "fsp", "kdsvd", "iep", "mhgd"}
    assert expected <= set(available_losses())
    assert get_loss_class("iep") is IEPLoss and get_loss_class("mhgd") is MHGDLoss


def test_unknown_loss_names_close_matches():
    with pytest.raises(ValueError, match="did you mean 'gkd'"):
        build_loss("gdk")


@pytest.mark.parametrize("name", ["iep", "mhgd"])
def test_graph_systems_as_terms_reach_the_student_only(name):
    torch.manual_seed(0)
    loss = build_loss(name, channels=[4, 4])
    maps = [torch.rand(8, 4, 4, 4, requires_grad=True), torch.rand(8, 4, 2, 2, requires_grad=True)]
    teacher_maps = [torch.rand(8, 4, 4, 4, requires_grad=True), torch.rand(8, 4, 2, 2, requires_grad=True)]
    value = loss(ModelOutputs(torch.zeros(8, 3), maps), ModelOutputs(torch.zeros(8, 3), teacher_maps), None)
    value.backward()
    assert torch.isfinite(value) and value > 0
    assert all(m.grad is not None and m.grad.abs().sum() > 0 for m in maps)
    assert all(m.grad is None for m in teacher_maps)
