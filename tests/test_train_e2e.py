"""``geokd.train.train`` and ``geokd train`` on real digits with geokd's models, data and losses."""

from __future__ import annotations

import json

import pytest
import torch

from geokd.cli import main
from geokd.errors import ConfigError
from geokd.train import RunDir, config_from_dict, train

# Each test trains (a 2-epoch teacher is shared): real training, so marked slow.
pytestmark = pytest.mark.slow

TEACHER = {
    "data": {"name": "digits", "batch_size": 64, "eval_batch_size": 540},
    "model": {"name": "wrn", "params": {"depth": 10, "widen_factor": 1.0, "in_channels": 1}},
    "schedule": {"epochs": 2, "milestones": [1]},
    "run": {"threads": 1},
}


def student(teacher_dir, terms, **extra):
    table = json.loads(json.dumps(TEACHER))
    table["model"]["params"]["widen_factor"] = 0.5
    table["teacher"] = str(teacher_dir)
    table["terms"] = terms
    table.update(extra)
    return config_from_dict(table)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "run"
    train(config_from_dict(TEACHER), run_dir=path, progress=False)
    return path


def test_teacher_run_from_config(teacher_dir):
    run = RunDir(teacher_dir)
    assert run.is_finished()
    config = json.loads(run.config_path.read_text())
    assert config["model"]["params"]["num_classes"] == 10  # inferred from the data and recorded
    from geokd.checkpoints import load_checkpoint

    model, info = load_checkpoint(run.model_path)
    assert info["model_config"]["widen_factor"] == 1.0
    assert run.read_metrics()[-1]["test_error"] < 50.0


def test_student_with_registry_losses_and_seed_determinism(teacher_dir, tmp_path):
    terms = [{"loss": "gkd", "weight": 25.0, "params": {"k": 8, "task": "inter"}},
             {"loss": "rkd_distance", "weight": 25.0}]
    a = train(student(teacher_dir, terms), run_dir=tmp_path / "a", progress=False)
    b = train(student(teacher_dir, terms), run_dir=tmp_path / "b", progress=False)
    assert set(a.metrics[0]["train_terms"]) == {"gkd", "rkd_distance"}
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), key


@pytest.mark.parametrize(
    "terms, extra, message",
    [
        ([{"loss": "gkdd", "weight": 1.0}], {}, r"terms\[0\] \(gkdd\): unknown loss 'gkdd'; did you mean 'gkd'"),
        ([{"loss": "gkd", "weight": 1.0, "params": {"powr": 2}}], {}, r"unknown parameter 'powr'; did you mean 'power'"),
        ([{"loss": "gkd", "weight": 1.0}], {"model": {"name": "wrn", "sensing_points": ["layer1", "layer9"],
                                                     "params": {"depth": 10, "widen_factor": 0.5, "in_channels": 1}}},
         r"student sensing point 'layer9' does not exist in WideResNet"),
        ([{"loss": "gkd", "weight": 1.0}], {"model": {"name": "wrn", "params": {"depth": 10, "widen_factor": 0.5}}},
         r"student network \(wrn\) cannot read digits inputs of shape \(2, 1, 8, 8\)"),
    ],
)
def test_bad_runs_fail_before_training(teacher_dir, tmp_path, terms, extra, message):
    with pytest.raises(ConfigError, match=message):
        train(student(teacher_dir, terms, **extra), run_dir=tmp_path / "r", progress=False)
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_terms_without_teacher_are_refused(tmp_path):
    table = json.loads(json.dumps(TEACHER))
    table["terms"] = [{"loss": "gkd", "weight": 25.0}]
    with pytest.raises(ConfigError, match="need a teacher"):
        train(config_from_dict(table), run_dir=tmp_path / "r", progress=False)


def test_cli_train_with_overrides_prints_plain_epoch_lines_and_resumes(teacher_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CI", "1")
    cfg = tmp_path / "s.toml"
    cfg.write_text(
        '[data]\nname = "digits"\nbatch_size = 64\neval_batch_size = 540\n'
        '[model]\nname = "wrn"\nparams = { depth = 10, widen_factor = 0.5, in_channels = 1 }\n'
        '[schedule]\nepochs = 1\nmilestones = []\n[run]\nthreads = 1\n'
    )
    run_dir = tmp_path / "run"
    args = ["train", str(cfg), "--run-dir", str(run_dir), "--teacher", str(teacher_dir),
            "--set", 'terms=[{loss = "gkd", weight = 25.0, params = { power = 2 }}]', "--set", "optim.lr=0.05"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "epoch   1" in out and "gkd=" in out and "test error" in out and "finished:" in out
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["optim"]["lr"] == 0.05 and saved["terms"][0]["params"] == {"power": 2}
    # Again without --resume: refused; with --resume and more epochs: continues from epoch 1.
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    run = RunDir(run_dir)
    run.model_path.unlink()
    run.update_meta(status="running")
    assert main(args + ["--resume", "--set", "schedule.epochs=2"]) == 0
    assert [m["epoch"] for m in run.read_metrics()] == [1, 2]
    assert run.read_meta()["resumed_at_epoch"] == [1]


def test_channels_last_is_the_cpu_default_and_changes_only_rounding(teacher_dir, tmp_path):
    """WRN-10-0.5's 8-channel stage trains through geokd's channels-last batch norm; the
    run records the layout it used; channels-first gives the same run up to rounding."""
    terms = [{"loss": "gkd", "weight": 25.0}]
    # A small learning rate: at lr 0.1 SGD amplifies float32 rounding into percents within
    # an epoch (a float32 channels-first run itself leaves the float64 one by 2% in loss in
    # 20 steps), which would test the chaos, not the layout.
    optim = {"lr": 0.005}
    default = train(student(teacher_dir, terms, optim=optim), run_dir=tmp_path / "default", progress=False)
    first = train(student(teacher_dir, terms, optim=optim, run={"threads": 1, "channels_last": False}),
                  run_dir=tmp_path / "first", progress=False)
    saved = {name: json.loads(RunDir(tmp_path / name).config_path.read_text())["run"]["channels_last"]
             for name in ("default", "first")}
    assert saved == {"default": True, "first": False}
    assert default.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    # (The exact check is the float64 WRN step in test_models_batchnorm.py.)
    for a, b in zip(default.metrics, first.metrics):
        assert a["train_cross_entropy"] == pytest.approx(b["train_cross_entropy"], rel=1e-4)
        assert a["train_terms"]["gkd"] == pytest.approx(b["train_terms"]["gkd"], rel=1e-4)
