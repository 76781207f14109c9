"""Each distillation method trains a student on the embedded default data (scikit-learn digits).

A teacher (SmallCNN) is trained once for the module; each method then distils it into a
student for a few epochs through the real trainer. "Trains" means: the method's own term
falls, the cross-entropy falls, and test accuracy is far above chance (10 classes).
IEP and MHGD also run their teacher-fitting stage first: on this real teacher, the fit
must lower their fit loss, and the fitted network must stay frozen while the student trains.
"""

from __future__ import annotations

import copy

import pytest
import torch

from geokd.train import config_from_dict, train
from geokd.train.build import build_parts
from geokd.train.distributed import DistributedContext
from geokd.train.loop import fit
from geokd.train.runs import RunDir
from geokd.train.state import read_state

pytestmark = pytest.mark.slow

TEACHER_WIDTHS = [16, 32, 64]
THIN = [8, 16, 32]
PRE_RELU = ["stage1.relu:input", "stage2.relu:input", "stage3.relu:input"]
STAGES = ["stage1", "stage2", "stage3"]


def _config(**overrides):
    base = {
        "data": {"name": "digits", "batch_size": 64, "augment": False},
        "model": {"name": "small_cnn", "params": {"in_channels": 1, "widths": THIN}},
        "optim": {"lr": 0.05},
        "schedule": {"epochs": 4, "milestones": [3]},
        "run": {"seed": 0},
    }
    base.update(overrides)
    return config_from_dict(base)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    cfg = _config(model={"name": "small_cnn", "params": {"in_channels": 1, "widths": TEACHER_WIDTHS}},
                  schedule={"epochs": 6, "milestones": [5]})
    run_dir = tmp_path_factory.mktemp("teacher") / "run"
    result = train(cfg, run_dir=run_dir, progress=False)
    assert result.final_test_error < 15.0
    return run_dir


def _distil(teacher_run, tmp_path, terms, *, widths=THIN, epochs=4):
    """The public trainer alone: it builds FitNet's regressor / AB's connectors itself (setup)."""
    cfg = _config(teacher=str(teacher_run), terms=terms,
                  model={"name": "small_cnn", "params": {"in_channels": 1, "widths": widths}},
                  schedule={"epochs": epochs, "milestones": [epochs - 1]})
    return train(cfg, run_dir=tmp_path / "run", progress=False)


METHODS = {
    "kd": ([{"loss": "kd", "weight": 0.9, "params": {"temperature": 4.0}}], THIN),
    "fitnet": ([{"loss": "fitnet", "weight": 0.05, "params": {"init_epochs": 1}}], THIN),
    "attention": ([{"loss": "attention", "weight": 0.01, "params": {"student_taps": STAGES, "teacher_taps": STAGES}}], THIN),
    "activation_boundary": ([{"loss": "activation_boundary", "weight": 0.003,
                              "params": {"init_epochs": 1, "student_taps": PRE_RELU, "teacher_taps": PRE_RELU}}], THIN),
    "fsp": ([{"loss": "fsp", "weight": 0.1, "params": {"init_epochs": 1}}], TEACHER_WIDTHS),
    "kdsvd": ([{"loss": "kdsvd", "weight": 1.0}], TEACHER_WIDTHS),
    "kd+gkd": ([{"loss": "kd", "weight": 1.0}, {"loss": "gkd", "weight": 25.0}], THIN),
}
for _name in ("iep", "mhgd"):  # teacher-fitted: a short fitting stage on the stage outputs, then frozen
    METHODS[_name] = ([{"loss": _name, "weight": 1.0, "params": {"channels": TEACHER_WIDTHS, "fit_epochs": 2,
                                                              "student_taps": STAGES, "teacher_taps": STAGES}}],
                      TEACHER_WIDTHS)


@pytest.mark.parametrize("method", list(METHODS))
def test_method_trains_on_digits(method, teacher_run, tmp_path):
    terms, widths = METHODS[method]
    result = _distil(teacher_run, tmp_path, terms, widths=widths)
    m = result.metrics
    assert len(m) == 4
    for name in m[0]["train_terms"]:
        assert m[-1]["train_terms"][name] < m[0]["train_terms"][name], (name, [r["train_terms"] for r in m])
    ce = [r["train_cross_entropy"] for r in m if r["train_cross_entropy"] is not None]
    assert ce[-1] < ce[0] or len(ce) < 2
    assert result.final_test_error < 40.0, [r["test_error"] for r in m]  # chance: 90 % error
    init = max(t.get("params", {}).get("init_epochs", 0) for t in terms)
    if init:
        # the initialization stage trains the term alone: no cross-entropy is recorded
        assert all(r["train_cross_entropy"] is None for r in m[:init])


@pytest.mark.parametrize("method", ["iep", "mhgd"])
def test_fitting_stage_lowers_the_fit_loss_on_the_teacher_and_the_network_stays_frozen(method, teacher_run, tmp_path):
    terms, widths = METHODS[method]
    terms = [{**terms[0], "params": {**terms[0]["params"], "fit_epochs": 3}}]
    cfg = _config(teacher=str(teacher_run), terms=terms,
                  model={"name": "small_cnn", "params": {"in_channels": 1, "widths": widths}},
                  schedule={"epochs": 2, "milestones": [1]})
    parts, resolved = build_parts(cfg, device=torch.device("cpu"), ctx=DistributedContext())
    term = parts.terms[0].module
    # Held-out teacher features (the first test batch), read through the term's own taps.
    x, _ = next(iter(parts.test_batches))
    with torch.no_grad():
        feats = parts.term_taps[method][1](x[:128]).features

    def fit_loss(core):
        core.eval()
        with torch.no_grad():
            return float(core.teacher_fit_loss(feats) if method == "mhgd" else core.teacher_fit_loss(feats, update_pca=False))

    before = fit_loss(copy.deepcopy(term.core))  # (IEP: its IPCA fitted on these very inputs)
    snapshots = []
    result = fit(parts, resolved, run_dir=tmp_path / "run", progress=False,
                 on_epoch_end=lambda record: snapshots.append({k: v.clone() for k, v in term.state_dict().items()}))
    after = fit_loss(term.core)
    assert after < 0.9 * before, (before, after)
    log = result.metrics[0]["teacher_fit"][method]
    assert log["epochs"] == 3 and len(log["loss"]) == 3 and log["loss"][-1] < log["loss"][0], log
    # While the student trained (2 epochs): no gradient, no update, eval mode (BN statistics kept).
    assert not term.training and all(not p.requires_grad and p.grad is None for p in term.parameters())
    final = term.state_dict()
    for snapshot in snapshots:
        assert all(torch.equal(v, final[k]) for k, v in snapshot.items())
    saved = read_state(RunDir(tmp_path / "run").state_path)["terms"][0]
    assert all(torch.equal(saved[k], v) for k, v in final.items()) and int(saved[f"{method}.fitted_epochs"]) == 3
