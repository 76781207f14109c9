"""Crashes lose at most one epoch: SIGKILL a real training process, resume, compare weights.

A child process trains a tiny CNN on a quarter of digits with ``geokd.train.train``.
It is killed (SIGKILL, no cleanup possible) either from inside the checkpoint write —
after half of the new state's bytes reached the temporary file — or by the parent at
random moments. After every kill the state on disk must load (checksum verified) and be
a whole epoch; ``resume=True`` then finishes the run with weights bit-identical to an
uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from geokd.train import RunDir
from geokd.train.state import read_state
from tests._fault_helpers import count_case, flush_counts

pytestmark = pytest.mark.slow

CONFIG = {
    "data": {"name": "digits", "batch_size": 64, "eval_batch_size": 600, "fraction": 0.25},
    "model": {"name": "small_cnn", "params": {"in_channels": 1, "widths": [4, 8, 8]}},
    "optim": {"lr": 0.05},
    "schedule": {"epochs": 3, "milestones": [2], "gamma": 0.1},
}

CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    import geokd.train.state as state_module
    from geokd.train import config_from_dict, train

    run_dir, resume = sys.argv[1], sys.argv[2] == "resume"
    kill_at = int(os.environ.get("RELIABILITY_KILL_IN_STATE_WRITE", "0"))
    if kill_at:
        calls = {"n": 0}
        real_write = state_module.atomic_write_bytes

        def dying_write(path, data):
            calls["n"] += 1
            if calls["n"] == kill_at:
                # Half of the new state reaches the temporary file, then the power goes out.
                tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
                with open(tmp, "wb") as fh:
                    fh.write(data[: len(data) // 2])
                    fh.flush()
                    os.fsync(fh.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            return real_write(path, data)

        state_module.atomic_write_bytes = dying_write
    train(config_from_dict(json.loads(os.environ["RELIABILITY_CONFIG"])), run_dir=run_dir, resume=resume)
    """
)


@pytest.fixture(scope="module", autouse=True)
def _record_counts(request):
    yield
    flush_counts(request.config)


def _env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", "RELIABILITY_CONFIG": json.dumps(CONFIG), **extra}


def _run(run_dir, *, resume=False, **env):
    return subprocess.run([sys.executable, "-c", CHILD, str(run_dir), "resume" if resume else "fresh"],
                          env=_env(**env), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("crash-ref") / "run"
    t0 = time.monotonic()
    done = _run(run_dir)
    assert done.returncode == 0, done.stderr
    return read_state(RunDir(run_dir).state_path)["model"], time.monotonic() - t0


def _assert_consistent_after_kill(run_dir):
    """What a kill may leave: a whole, checksum-valid state of some epoch, metrics up to it."""
    run = RunDir(run_dir)
    epochs = [m["epoch"] for m in run.read_metrics()]
    assert epochs == list(range(1, len(epochs) + 1))
    if run.state_path.is_file():
        state = read_state(run.state_path)  # raises on a half-written file
        # Metrics may be one epoch ahead (appended just before the state write): resume trims them.
        assert state["epoch"] in (len(epochs), len(epochs) - 1)
        return state["epoch"]
    assert len(epochs) <= 1
    return 0


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("kill_at", [1, 3])
def test_sigkill_during_checkpoint_write_then_resume_matches(tmp_path, reference, kill_at):
    ref_weights, _ = reference
    run_dir = tmp_path / "run"
    count_case("crash.sigkill_in_state_write")
    killed = _run(run_dir, RELIABILITY_KILL_IN_STATE_WRITE=str(kill_at))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # The half-written temporary is there, the real state is the previous epoch's, whole.
    assert any(".state.pt.tmp" in p for p in os.listdir(run_dir))
    assert _assert_consistent_after_kill(run_dir) == kill_at - 1
    resumed = _run(run_dir, resume=True)
    assert resumed.returncode == 0, resumed.stderr
    run = RunDir(run_dir)
    assert run.is_finished()
    assert [m["epoch"] for m in run.read_metrics()] == [1, 2, 3]
    _assert_same(read_state(run.state_path)["model"], ref_weights)


def test_sigkill_at_random_moments_then_resume_matches(tmp_path, reference):
    ref_weights, duration = reference
    rng = np.random.default_rng(2026)
    kills = 0
    for trial in range(3):  # a loaded box may finish a run before the first kill lands: retry
        run_dir = tmp_path / f"run{trial}"
        for attempt in range(8):
            child = subprocess.Popen([sys.executable, "-c", CHILD, str(run_dir), "resume"], env=_env(),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if attempt < 3:
                # Somewhere in start-up, an epoch, an evaluation or a write: wherever it lands.
                time.sleep(float(rng.uniform(0.1, 0.6)) * duration)
                if child.poll() is None:
                    child.send_signal(signal.SIGKILL)
                    kills += 1
                    count_case("crash.sigkill_random")
            _, err = child.communicate(timeout=600)
            if child.returncode == 0:
                break
            assert child.returncode == -signal.SIGKILL, err
            _assert_consistent_after_kill(run_dir)
        run = RunDir(run_dir)
        assert run.is_finished()
        assert [m["epoch"] for m in run.read_metrics()] == [1, 2, 3]
        _assert_same(read_state(run.state_path)["model"], ref_weights)
        if kills:
            break
    assert kills >= 1
