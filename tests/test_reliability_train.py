"""Trainer faults in-process: disk errors, NaN/Inf losses, bad configs, a locked run.

Every run is a real ``geokd.train.train`` on a quarter of scikit-learn's digits with a
tiny CNN (a few seconds). Faults are injected at the file-system boundary the trainer
really uses (``open``/``os.replace``/``os.fsync`` inside ``geokd.train.state``) or by a
test-only loss registered for the duration of one test.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from geokd.errors import ConfigError
from geokd.losses import registry
from geokd.train import NonFiniteLossError, RunDir, RunLockedError, config_from_dict, load_config_text, train
from geokd.train import state as state_module
from geokd.train.state import read_state
from tests._fault_helpers import count_case, flush_counts


@pytest.fixture(scope="module", autouse=True)
def _record_counts(request):
    yield
    flush_counts(request.config)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # One intra-op thread for every run here (the reference included): results are then
    # bit-reproducible, and the shared 2-core box is not oversubscribed.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


BASE = {
    "data": {"name": "digits", "batch_size": 64, "eval_batch_size": 600, "fraction": 0.25},
    "model": {"name": "small_cnn", "params": {"in_channels": 1, "widths": [4, 8, 8]}},
    "optim": {"lr": 0.05},
    "schedule": {"epochs": 3, "milestones": [2], "gamma": 0.1},
}


def make_config(**sections):
    table = json.loads(json.dumps(BASE))
    for key, value in sections.items():
        if isinstance(value, dict):
            table.setdefault(key, {}).update(value)
        else:
            table[key] = value
    return config_from_dict(table)


def final_weights(run_dir):
    return read_state(RunDir(run_dir).state_path)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, _one_thread):
    """The uninterrupted run every fault run must end up equal to."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    train(make_config(), run_dir=run_dir)
    return run_dir


# --------------------------------------------------------------------------- disk errors

def _fail_on_write(n_ok: int, err: int):
    """An ``open`` for geokd.train.state whose writes fail (after half the bytes) from call n_ok+1."""
    calls = {"n": 0}
    real_open = open

    class Dying:
        def __init__(self, handle):
            self._h = handle

        def write(self, data):
            self._h.write(data[: len(data) // 2])
            raise OSError(err, os.strerror(err))

        def __getattr__(self, name):
            return getattr(self._h, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._h.close()

    def fake_open(path, mode="r", *args, **kw):
        handle = real_open(path, mode, *args, **kw)
        if "w" in mode:
            calls["n"] += 1
            if calls["n"] > n_ok:
                return Dying(handle)
        return handle

    return fake_open


@pytest.mark.slow
@pytest.mark.parametrize(("where", "err"), [("write", errno.ENOSPC), ("fsync", errno.EIO), ("replace", errno.ENOSPC)])
def test_disk_error_stops_run_keeps_previous_state_then_resume_matches(tmp_path, monkeypatch, reference_run,
                                                                       err, where):
    run_dir = tmp_path / "run"
    real_fsync, real_replace = os.fsync, os.replace

    def install_fault(record):
        # After epoch 1's state is safely on disk, the disk "fills up" / fails.
        if record["epoch"] != 1:
            return
        if where == "write":
            monkeypatch.setattr(state_module, "open", _fail_on_write(0, err), raising=False)
        elif where == "fsync":
            def bad_fsync(fd):
                raise OSError(err, os.strerror(err))
            monkeypatch.setattr(state_module.os, "fsync", bad_fsync)
        else:
            def bad_replace(src, dst):
                raise OSError(err, os.strerror(err))
            monkeypatch.setattr(state_module.os, "replace", bad_replace)

    count_case("train.disk_error")
    with pytest.raises(OSError) as info:
        train(make_config(), run_dir=run_dir, on_epoch_end=install_fault)
    monkeypatch.setattr(state_module.os, "fsync", real_fsync)
    monkeypatch.setattr(state_module.os, "replace", real_replace)
    monkeypatch.delattr(state_module, "open", raising=False)
    assert info.value.errno == err
    assert os.strerror(err) in str(info.value)
    run = RunDir(run_dir)
    # (meta.json may still say "running": with the disk failing, it cannot be rewritten either.)
    # The previous state is intact, loadable, and is epoch 1's.
    assert read_state(run.state_path)["epoch"] == 1
    # After the disk is fixed, resuming loses nothing: same weights as never failing.
    train(make_config(), run_dir=run_dir, resume=True)
    assert_same_weights(final_weights(run_dir), final_weights(reference_run))
    assert [m["epoch"] for m in run.read_metrics()] == [1, 2, 3]


@pytest.mark.slow
def test_disk_error_in_final_model_save_is_reported_and_resume_finishes(tmp_path, monkeypatch, reference_run):
    from geokd.checkpoints import store

    run_dir = tmp_path / "run"

    def bad_replace(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store.os, "replace", bad_replace)
    count_case("train.disk_error")
    with pytest.raises(OSError, match="No space left"):
        train(make_config(), run_dir=run_dir)
    monkeypatch.undo()
    run = RunDir(run_dir)
    assert not run.is_finished()
    assert not [p for p in os.listdir(run_dir) if p.endswith(".tmp")]  # no half-written model left
    train(make_config(), run_dir=run_dir, resume=True)
    assert run.is_finished()
    assert_same_weights(final_weights(run_dir), final_weights(reference_run))


# --------------------------------------------------------------------------- numerical faults

class NaNAtStep(torch.nn.Module):
    """Test-only term: 0 (with a gradient path) except NaN/Inf at training call ``at_call``."""

    needs_teacher = False

    def __init__(self, *, at_call: int = 5, value: str = "nan"):
        super().__init__()
        self.at_call, self.value, self.calls = at_call, value, 0

    def forward(self, student, teacher, labels):
        zero = 0.0 * student.logits.sum()
        if not self.training:
            return zero
        self.calls += 1
        return zero + float(self.value) if self.calls == self.at_call else zero


@pytest.fixture()
def nan_loss(monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "reliability_nan", NaNAtStep)
    return "reliability_nan"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_nonfinite_term_stops_naming_step_and_term_keeping_last_checkpoint(tmp_path, nan_loss, value):
    run_dir = tmp_path / "run"
    # 314 training inputs / 64 = 5 steps per epoch: call 8 is epoch 2, step 3.
    cfg = make_config(terms=[{"loss": nan_loss, "weight": 0.5, "params": {"at_call": 8, "value": value}}])
    count_case("train.nonfinite_loss")
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg, run_dir=run_dir)
    msg = str(info.value)
    assert "epoch 2, step 3" in msg and nan_loss in msg, msg
    assert isinstance(info.value, ValueError)
    run = RunDir(run_dir)
    assert read_state(run.state_path)["epoch"] == 1
    assert run.read_meta()["status"] == "failed"
    assert [m["epoch"] for m in run.read_metrics()] == [1]


def test_skip_option_skips_and_counts_the_bad_step(tmp_path, nan_loss):
    cfg = make_config(terms=[{"loss": nan_loss, "weight": 0.5, "params": {"at_call": 8}}],
                      run={"skip_nonfinite_steps": True})
    count_case("train.nonfinite_loss")
    result = train(cfg, run_dir=tmp_path / "run")
    assert [m["skipped_steps"] for m in result.metrics] == [0, 1, 0]
    for key, value in final_weights(tmp_path / "run").items():
        assert bool(torch.isfinite(value.float()).all()), key


# --------------------------------------------------------------------------- bad configs

BAD_CONFIGS = {
    # unknown keys, with a "did you mean"
    "unknown_section_key": ({"optim": {"momentun": 0.9}}, "did you mean 'momentum'"),
    "unknown_top_key": ({"schedul": {"epochs": 3}}, "did you mean 'schedule'"),
    "unknown_term_key": ({"terms": [{"loss": "gkd", "wieght": 1.0}]}, "did you mean 'weight'"),
    # wrong types
    "lr_string": ({"optim": {"lr": "fast"}}, "optim.lr: expected a number"),
    "epochs_float": ({"schedule": {"epochs": 2.5}}, "schedule.epochs: expected an integer"),
    "bool_as_int": ({"data": {"batch_size": True}}, "data.batch_size: expected an integer"),
    "milestones_scalar": ({"schedule": {"milestones": 3}}, "schedule.milestones: expected a list"),
    "section_not_table": ({"optim": 0.1}, "optim: expected a table"),
    # impossible values
    "k_ge_batch": ({"data": {"batch_size": 32}, "terms": [{"loss": "gkd", "params": {"k": 32}}]},
                   "fewer neighbours than the batch size 32"),
    "k_zero": ({"terms": [{"loss": "gkd", "params": {"k": 0}}]}, "expected a positive integer"),
    "negative_lambda": ({"terms": [{"loss": "gkd", "weight": -1.0}]}, "non-negative weight"),
    "nan_lambda": ({"terms": [{"loss": "gkd", "weight": float("nan")}]}, "non-negative weight"),
    "power_zero": ({"terms": [{"loss": "gkd", "params": {"power": 0}}]}, "p >= 1"),
    "power_float": ({"terms": [{"loss": "gkd", "params": {"power": 1.5}}]}, "p >= 1"),
    "negative_lr": ({"optim": {"lr": -0.1}}, "positive learning rate"),
    "batch_one": ({"data": {"batch_size": 1}}, "at least 2"),
    "fraction_zero": ({"data": {"fraction": 0.0}}, "(0, 1]"),
    "milestones_unsorted": ({"schedule": {"milestones": [5, 2]}}, "increasing"),
    "gamma_zero": ({"schedule": {"gamma": 0.0}}, "(0, 1]"),
    "unknown_optimizer": ({"optim": {"name": "sdg"}}, "did you mean 'sgd'"),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_bad_config_is_rejected_by_validation(name):
    table, expected = BAD_CONFIGS[name]
    count_case("config.rejected")
    with pytest.raises(ConfigError) as info:
        config_from_dict(table)
    assert expected in str(info.value), str(info.value)


BAD_AT_BUILD = {
    "missing_sensing_point": ({"model": {"name": "small_cnn", "params": {"in_channels": 1, "widths": [4, 8, 8]},
                                         "sensing_points": ["stage1", "stage9"]}}, "stage9"),
    "unknown_loss": ({"terms": [{"loss": "gdk"}]}, "gkd"),
    "unknown_loss_param": ({"terms": [{"loss": "rkd_distance", "params": {"wieght": 2}}]}, "wieght"),
    "unknown_model": ({"model": {"name": "wnr"}}, "model"),
    "wrong_model_param": ({"model": {"name": "small_cnn", "params": {"in_channels": 1, "depht": 3}}}, "depht"),
    "unknown_dataset": ({"data": {"name": "digitz"}}, "digitz"),
    "missing_teacher": ({"terms": [{"loss": "gkd"}]}, "teacher"),
    "teacher_path_missing": ({"teacher": "/nonexistent/run", "terms": [{"loss": "gkd"}]}, "/nonexistent/run"),
}


@pytest.mark.parametrize("name", sorted(BAD_AT_BUILD))
def test_bad_config_is_rejected_before_any_training(tmp_path, monkeypatch, name):
    overrides, expected = BAD_AT_BUILD[name]
    table = json.loads(json.dumps(BASE))
    for key, value in overrides.items():
        if isinstance(value, dict) and key != "model":
            table.setdefault(key, {}).update(value)
        else:
            table[key] = value
    steps = {"n": 0}
    from geokd.train import loop

    real_step = loop._Stepper.step

    def counting_step(self, *a, **kw):
        steps["n"] += 1
        return real_step(self, *a, **kw)

    monkeypatch.setattr(loop._Stepper, "step", counting_step)
    count_case("config.rejected")
    with pytest.raises(ValueError) as info:
        train(config_from_dict(table), run_dir=tmp_path / "run")
    assert expected in str(info.value), str(info.value)
    assert steps["n"] == 0
    assert not (tmp_path / "run" / "state.pt").exists()


def test_bad_toml_and_overrides_are_rejected():
    count_case("config.rejected")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config_text("[optim\nlr = 0.1")
    count_case("config.rejected")
    with pytest.raises(ConfigError, match="did you mean 'lr'"):
        load_config_text("", overrides=["optim.lrr=0.1"])
    count_case("config.rejected")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config_text("", overrides=["optim.lr"])


# --------------------------------------------------------------------------- concurrency

HOLDER = textwrap.dedent(
    """
    import sys, time, torch
    torch.set_num_threads(1)
    from geokd.train import config_from_dict, train
    import json
    cfg = config_from_dict(json.loads(sys.argv[2]))
    train(cfg, run_dir=sys.argv[1], on_epoch_end=lambda r: time.sleep(0.5))
    """
)


@pytest.mark.slow
def test_second_process_refuses_a_run_that_is_being_written(tmp_path):
    run_dir = tmp_path / "run"
    table = json.loads(json.dumps(BASE))
    table["schedule"] = {"epochs": 6, "milestones": [3], "gamma": 0.1}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir), json.dumps(table)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run = RunDir(run_dir)
        deadline = time.monotonic() + 120
        while not run.read_metrics():
            assert holder.poll() is None, holder.communicate()[1]
            assert time.monotonic() < deadline, "the first process never started training"
            time.sleep(0.1)
        before = (run_dir / "metrics.jsonl").read_bytes()
        for resume in (False, True):
            count_case("concurrency.locked_run")
            with pytest.raises(RunLockedError, match="being written by pid"):
                train(config_from_dict(table), run_dir=run_dir, resume=resume)
        # The refusal wrote nothing: the holder's metrics only ever grow by its own epochs.
        assert (run_dir / "metrics.jsonl").read_bytes().startswith(before)
        _, err = holder.communicate(timeout=300)
        assert holder.returncode == 0, err
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert [m["epoch"] for m in RunDir(run_dir).read_metrics()] == [1, 2, 3, 4, 5, 6]
    assert RunDir(run_dir).is_finished()
