"""Two real processes, one output directory: ``geokd analyze --out`` and ``geokd reproduce``.

The first process writes (slowed down so the test can act meanwhile); a second process
started on the same directory must refuse at once with an error naming the directory
and the holder's pid, and leave the first one's files alone. The lock is the run
directories' ``flock`` (:func:`geokd.train.runs.directory_lock`), so it also goes away
when its holder is killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from geokd.train.runs import DirectoryLockedError, RunLockedError, directory_lock
from tests._fault_helpers import count_case, flush_counts
from tests.test_analysis_pipeline import saved_small_cnns

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module", autouse=True)
def _record_counts(request):
    yield
    flush_counts(request.config)


def _wait_for(path: Path, holder: subprocess.Popen, *, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert holder.poll() is None, holder.communicate()[1]
        assert time.monotonic() < deadline, f"the first process never {what}"
        time.sleep(0.1)


def _stop(holder: subprocess.Popen) -> None:
    if holder.poll() is None:
        holder.kill()
        holder.wait()


def test_run_directory_lock_is_the_shared_directory_lock(tmp_path):
    # One mechanism: a run directory's lock is a directory_lock on <run>/lock.
    from geokd.train import RunDir

    run = RunDir(tmp_path / "run")
    with run.lock():
        with pytest.raises(RunLockedError, match=f"run directory {run.path} is being written by pid {os.getpid()}"):
            with directory_lock(run.path, lock_name="lock", kind="run directory", error=RunLockedError):
                pass
    assert issubclass(RunLockedError, DirectoryLockedError)


# --------------------------------------------------------------------------- geokd analyze

ANALYZE_HOLDER = textwrap.dedent(
    """
    import sys, time, torch
    torch.set_num_threads(1)
    import geokd.analysis.tables as tables
    from geokd.cli import main

    write = tables.write_table

    def slow_write(*args, **kwargs):  # each partial table stays alone on disk for a while
        out = write(*args, **kwargs)
        time.sleep(2.0)
        return out

    tables.write_table = slow_write
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):

    folder = tmp_path_factory.mktemp("nets")
    paths = saved_small_cnns(folder, (("teacher", 0), ("gkd_0", 1), ("rkd_1", 2)))
    return paths


def _analyze_args(paths, out):
    return ["analyze", paths["gkd_0"], paths["rkd_1"], "--teacher", paths["teacher"], "--dataset", "digits",
            "--per-class", "10", "--k", "3", "--output-on", "nodes", "--out", str(out)]


def _start_analyze(checkpoints, out) -> subprocess.Popen:
    """A slowed-down ``geokd analyze`` process, returned once it has written a partial table."""
    holder = subprocess.Popen([sys.executable, "-c", ANALYZE_HOLDER, *_analyze_args(checkpoints, out)], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(out / "metrics.csv", holder, what="wrote a partial table")
    except BaseException:
        _stop(holder)
        raise
    return holder


def test_second_analyze_process_refuses_a_directory_being_written(tmp_path, checkpoints):
    out = tmp_path / "analysis"
    holder = _start_analyze(checkpoints, out)
    try:
        before = (out / "metrics.csv").read_bytes()
        count_case("concurrency.locked_analysis")
        second = subprocess.run([sys.executable, "-m", "geokd", *_analyze_args(checkpoints, out)], env=ENV,
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr
        assert f"geokd analyze: error: analysis directory {out} is being written by pid {holder.pid}" in second.stderr
        # The refusal wrote nothing: the holder's table only ever grows by its own rows.
        assert (out / "metrics.csv").read_bytes().startswith(before)
        _, err = holder.communicate(timeout=300)
        assert holder.returncode == 0, err
    finally:
        _stop(holder)
    rows = json.loads((out / "metrics.json").read_text())
    assert {r["network"] for r in rows} == {"teacher", "gkd_0", "rkd_1"}
    assert json.loads((out / "analysis.json").read_text())["students"] == [checkpoints["gkd_0"], checkpoints["rkd_1"]]


def test_lock_of_a_killed_analyze_process_does_not_block_the_next(tmp_path, checkpoints):
    from geokd.cli import analyze, build_parser, main

    out = tmp_path / "analysis"
    holder = _start_analyze(checkpoints, out)
    try:
        # In-process callers (geokd reproduce's closing analysis) get the exception itself.
        count_case("concurrency.locked_analysis")
        args = build_parser().parse_args(_analyze_args(checkpoints, out))
        with pytest.raises(DirectoryLockedError, match=f"being written by pid {holder.pid}"):
            analyze.run(args)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=60)
    finally:
        _stop(holder)
    assert (out / ".lock").exists()  # the file stays, the OS dropped the flock with its holder
    count_case("concurrency.killed_holder")
    assert main(_analyze_args(checkpoints, out)) == 0
    assert json.loads((out / "analysis.json").read_text())["per_class"] == 10


# --------------------------------------------------------------------------- geokd reproduce

STUDY = """
[study]
name = "locktest"
description = "two processes, one study directory"
seeds = [0]

[base.data]
name = "digits"
batch_size = 64
eval_batch_size = 600
fraction = 0.25

[base.run]
threads = 1

[base.schedule]
epochs = 4
milestones = [2]

[teacher.model]
name = "small_cnn"
params = { in_channels = 1, widths = [4, 8, 8] }

[student.model]
name = "small_cnn"
params = { in_channels = 1, widths = [4, 4, 8] }

[[methods]]
name = "baseline"
terms = []
"""

REPRODUCE_HOLDER = textwrap.dedent(
    """
    import sys, time, torch
    torch.set_num_threads(1)
    from geokd.reproduce import run_study
    from geokd.studies import load_study

    study = load_study(sys.argv[1])
    run_study(study, out=sys.argv[2], jobs=1, on_epoch_end=lambda run, record: time.sleep(0.7))
    """
)


def test_second_reproduce_process_refuses_a_study_being_written(tmp_path):
    study_file = tmp_path / "locktest.toml"
    study_file.write_text(STUDY)
    out = tmp_path / "runs"
    study_dir = out / "locktest"
    holder = subprocess.Popen([sys.executable, "-c", REPRODUCE_HOLDER, str(study_file), str(out)], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(study_dir / "teacher" / "seed0" / "metrics.jsonl", holder, what="trained an epoch")
        before = (study_dir / "teacher" / "seed0" / "metrics.jsonl").read_bytes()
        count_case("concurrency.locked_study")
        second = subprocess.run([sys.executable, "-m", "geokd", "reproduce", str(study_file), "--out", str(out),
                                 "--yes", "--no-figures", "--jobs", "1"],
                                env=ENV, capture_output=True, text=True, timeout=300)
        # The CLI's plain one-line error (exit 2), not a traceback.
        assert second.returncode == 2, second.stderr
        assert "Traceback" not in second.stderr, second.stderr
        assert f"study directory {study_dir} is being written by pid {holder.pid}" in second.stderr
        assert (study_dir / "teacher" / "seed0" / "metrics.jsonl").read_bytes().startswith(before)
        _, err = holder.communicate(timeout=600)
        assert holder.returncode == 0, err
    finally:
        _stop(holder)
    # The holder finished its whole study: every run and the table.
    from geokd.train import RunDir

    assert [m["epoch"] for m in RunDir(study_dir / "teacher" / "seed0").read_metrics()] == [1, 2, 3, 4]
    assert RunDir(study_dir / "baseline" / "seed0").is_finished()
    assert "| baseline |" in (study_dir / "table.md").read_text()


def one_epoch_study(tmp_path: Path) -> Path:
    """The lock tests' study, trained for one epoch, as a file under ``tmp_path``."""
    study_file = tmp_path / "locktest.toml"
    study_file.write_text(STUDY.replace("epochs = 4", "epochs = 1").replace("milestones = [2]", "milestones = []"))
    return study_file


def test_what_runs_after_the_table_still_holds_the_study_lock(tmp_path):
    # geokd reproduce writes its analysis and figures into the study directory after the
    # table: that step runs inside run_study (on_table_written), so a second reproduction
    # of the same study is refused until it is done, not only while the runs train.
    from geokd.reproduce import run_study
    from geokd.studies import load_study

    out = tmp_path / "runs"
    seen = []

    def after(table):
        seen.append(table.markdown())
        with pytest.raises(DirectoryLockedError, match="study directory .*locktest is being written by pid"):
            with directory_lock(out / "locktest", kind="study directory"):
                pass

    # The study's run.threads = 1 holds while it trains; torch's thread count is restored after.
    run_study(load_study(one_epoch_study(tmp_path)), out=out, jobs=1, on_table_written=after)
    assert len(seen) == 1 and "| baseline |" in seen[0]
    with directory_lock(out / "locktest", kind="study directory"):  # released on return
        pass
