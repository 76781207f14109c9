"""Following an analysis: stage lines with elapsed time and time left, and the final per-stage breakdown."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from geokd.analysis.progress import ProgressReporter, format_seconds, remaining_estimate
from tests.test_analysis_pipeline import saved_small_cnns


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def reporter(**kw):
    clock, lines = FakeClock(), []
    return ProgressReporter(write=lines.append, clock=clock, heartbeat=False, **kw), clock, lines


def test_counted_stage_prints_every_tenth_with_the_time_left_at_its_rate():
    r, clock, lines = reporter(num_networks=1)
    with r.stage("teacher", "features", total=50_000, unit="images") as stage:
        for _ in range(100):        # 100 batches of 500 images, 0.6 s each
            clock.now += 0.6
            stage.advance(500)
    progress = [line for line in lines if "%)" in line]
    assert len(progress) == 9        # 10 %, 20 %, ..., 90 %: the last one is the stage's own line
    assert progress[0] == "teacher: features 5,000/50,000 images (10%), 6.0 s elapsed, about 54 s left"
    assert progress[4] == "teacher: features 25,000/50,000 images (50%), 30 s elapsed, about 30 s left"
    assert lines[-1] == "teacher: features 60 s; run 60 s elapsed"
    assert r.timings == {"features": pytest.approx(60.0)}


def test_a_long_uncounted_stage_gets_a_line_every_interval_with_the_first_networks_time_as_estimate():
    r, clock, lines = reporter(num_networks=2, interval=30.0)
    with r.network("teacher"):
        with r.layer("teacher", "layer1"):
            with r.stage("teacher", "k-NN graphs", detail="layer1"):
                clock.now += 29.0
                r.tick()                                  # 29 s of silence: nothing yet
                assert lines == []
                clock.now += 1.0
                r.tick()
                assert lines == ["teacher layer1: k-NN graphs running, 30 s elapsed"]
                clock.now += 50.0                         # the teacher's took 80 s
    assert lines[-2] == "teacher layer1: k-NN graphs 1 min 20 s; run 1 min 20 s elapsed"
    assert lines[-1] == "[1/2] teacher done in 1 min 20 s; run 1 min 20 s elapsed, about 1 min 20 s left"
    lines.clear()
    with r.network("student"):
        with r.stage("student", "k-NN graphs", detail="layer1"):
            clock.now += 30.0
            r.tick()
            # The student's estimate is the teacher's time for the same stage and layer.
            assert lines == ["student layer1: k-NN graphs running, 30 s elapsed, about 50 s left"]
            # ... and the run's: one network left of mean 80 s, 30 s of it done.
            assert r.run_remaining() == pytest.approx(50.0)
            clock.now += 10.0
    assert r.timings == {"k-NN graphs": pytest.approx(120.0)}
    assert r.network_seconds == [pytest.approx(80.0), pytest.approx(40.0)]


def test_layer_line_sums_each_stage_and_the_breakdown_lists_them_in_order():
    r, clock, lines = reporter(num_networks=1)
    with r.layer("t", "pool", index=2, count=3):
        for stage, seconds in (("k-NN graphs", 2.0), ("consistency", 0.5), ("spectra", 7.0), ("consistency", 0.5)):
            with r.stage("t", stage, detail="pool"):
                clock.now += seconds
    assert lines == ["t pool (3/3): k-NN graphs 2.0 s, consistency 1.0 s, spectra 7.0 s; run 10 s elapsed"]
    assert r.summary_line(total=12.0) == ("time per stage (all networks): k-NN graphs 2.0 s, spectra 7.0 s, "
                                         "consistency 1.0 s; other 2.0 s; total 12 s")


def test_helpers_and_bad_settings():
    assert remaining_estimate(done=3, total=4, elapsed=6.0) == pytest.approx(2.0)
    assert remaining_estimate(done=0, total=4, elapsed=6.0) is None
    assert format_seconds(-1) == "0.0 s"
    with pytest.raises(ValueError, match=r"expected a positive progress interval in seconds, got 0"):
        ProgressReporter(interval=0)
    with pytest.raises(ValueError, match=r"expected a progress fraction in \(0, 1\], got 2"):
        ProgressReporter(fraction=2)


def test_heartbeat_thread_starts_and_stops():
    lines = []
    r = ProgressReporter(write=lines.append, interval=0.05)
    with r.stage("t", "k-NN graphs", detail="layer1"):
        deadline = time.monotonic() + 5
        while not lines and time.monotonic() < deadline:
            time.sleep(0.02)
    r.close()
    assert lines and lines[0].startswith("t layer1: k-NN graphs running, ")


@pytest.fixture(scope="module")
def small_checkpoints(tmp_path_factory):

    folder = tmp_path_factory.mktemp("nets")
    paths = saved_small_cnns(folder, (("teacher", 0), ("gkd_0", 1)))
    return paths


STAGE_LINE = re.compile(r"^(\S+) (\S+) \((\d)/3\): (.+); run ([\d.]+ s|\d+ min \d+ s) elapsed(, about .+ left)?$")


def test_cli_not_on_a_terminal_prints_stage_lines_and_the_breakdown(tmp_path, small_checkpoints):
    out = tmp_path / "analysis"
    env = {key: value for key, value in os.environ.items() if key != "CI"}   # not a terminal is enough
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "geokd", "analyze", small_checkpoints["gkd_0"],
                           "--teacher", small_checkpoints["teacher"], "--dataset", "digits", "--per-class", "20",
                           "--k", "5", "--output-on", "nodes", "--batch-size", "20", "--out", str(out),
                           "--cache-dir", str(tmp_path / "cache")],
                          capture_output=True, text=True, timeout=600, env=env)
    wall = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    err = done.stderr.splitlines()
    # The forward pass of each network: a line with its progress and time left, then its time.
    for net in ("teacher", "gkd_0"):
        assert any(re.match(rf"^{net}: features [\d,]+/200 images \(\d+%\), .+ elapsed, about .+ left$", line)
                   for line in err), done.stderr
        assert any(re.match(rf"^{net}: features [\d.]+ s; run .+ elapsed$", line) for line in err), done.stderr
        layer_lines = [m for m in map(STAGE_LINE.match, err) if m and m.group(1) == net]
        assert [m.group(2) for m in layer_lines] == ["stage1", "stage2", "pool"], done.stderr
        for m in layer_lines:
            assert {"k-NN graphs", "spectra", "consistency"} <= {p.rsplit(" ", 2)[0] for p in m.group(4).split(", ")}
    assert "[1/2] teacher done in " in done.stderr and "[2/2] gkd_0 done in " in done.stderr
    assert re.search(r"\[1/2\] teacher done in .+; run .+ elapsed, about .+ left", done.stderr)
    assert "\r" not in done.stderr                   # no progress bar in a log
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("time per stage (all networks): loading ")
    for stage in ("features", "k-NN graphs", "spectra", "consistency"):
        assert f"{stage} " in last
    stage_seconds = json.loads((out / "analysis.json").read_text())["stage_seconds"]
    assert {"features", "k-NN graphs", "spectra", "consistency", "smoothness", "distances"} <= set(stage_seconds)
    assert all(seconds >= 0 for seconds in stage_seconds.values())
    assert sum(stage_seconds.values()) <= wall


def test_time_left_counts_the_current_networks_stages_not_done_at_the_first_networks_times():
    r, clock, lines = reporter(num_networks=3)
    with r.network("teacher"):
        for stage, seconds in (("features", 10.0), ("k-NN graphs", 20.0), ("spectra", 30.0)):
            with r.stage("teacher", stage):
                clock.now += seconds
    with r.network("s1"):
        with r.stage("s1", "features"):
            clock.now += 12.0
        with r.stage("s1", "k-NN graphs"):
            clock.now += 5.0
            # k-NN graphs: 20 - 5 s; spectra: 30 s; one network not started: 60 s.
            assert r.run_remaining() == pytest.approx(15.0 + 30.0 + 60.0)
    assert lines[-1].startswith("[2/3] s1 done in 17 s; run 1 min 17 s elapsed, about ")


def test_terminal_mode_draws_bars_and_prints_only_network_lines_and_messages(capsys):
    r, clock, lines = reporter(num_networks=1, bars=True)
    with r.network("t"):
        with r.stage("t", "features", total=10, unit="images") as stage:
            for _ in range(10):
                clock.now += 1.0
                stage.advance(1)
        with r.layer("t", "pool"):
            with r.stage("t", "spectra", detail="pool"):
                clock.now += 3.0
        r.message("t: cached")
    assert lines == ["t: cached", "[1/1] t done in 13 s; run 13 s elapsed"]
    assert "t features" in capsys.readouterr().err      # the tqdm bar
    assert r.timings == {"features": pytest.approx(10.0), "spectra": pytest.approx(3.0)}


def test_a_network_marked_untypical_is_left_out_of_the_estimates():
    r, clock, lines = reporter(num_networks=3)
    with r.network("teacher") as timer:
        with r.stage("teacher", "teacher cache"):
            clock.now += 3.0
        timer.typical = False                         # read from the cache
    assert lines[-1] == "[1/3] teacher done in 3.0 s; run 3.0 s elapsed"
    with r.network("s1"):
        with r.stage("s1", "features"):
            clock.now += 12.0
            assert r.run_remaining() is None
    assert lines[-1] == "[2/3] s1 done in 12 s; run 15 s elapsed, about 12 s left"


def test_a_failing_network_prints_no_done_line_and_keeps_its_stage_time():
    r, clock, lines = reporter(num_networks=2)
    with pytest.raises(ValueError, match="boom"):
        with r.network("teacher"):
            with r.stage("teacher", "features", total=10):
                clock.now += 4.0
                raise ValueError("boom")
    assert lines == [] and r.network_seconds == [] and r.run_remaining() is None
    assert r.timings == {"features": pytest.approx(4.0)}
