"""Each distillation method trains a student on the embedded default data (scikit-learn digits).

A teacher (SmallCNN) is trained once for the module; each method then distils it into a
student for a few epochs through the real trainer. "Trains" means: the method's own term
falls, the cross-entropy falls, and test accuracy is far above chance (10 classes).
"""

from __future__ import annotations

import pytest

from geokd.train import config_from_dict, train

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
