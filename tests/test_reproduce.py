"""Studies end to end on real digits: plan, train, reuse, resume, tabulate; and what GKD must show."""

from __future__ import annotations

import csv
import io
import statistics

import pytest
import torch

from geokd.cli import main
from geokd.errors import ConfigError
from geokd.reproduce import graph_distances, inference_seconds_per_image, plan_study, run_study
from geokd.studies import load_study
from geokd.train import RunDir

TINY_BASE = """
[study]
name = "tiny"
description = "tiny digits study for tests"
seeds = [0, 1]

[base.data]
name = "digits"
batch_size = 64
eval_batch_size = 540

[base.run]
threads = 1

[base.schedule]
epochs = 2
milestones = [1]

[teacher.model]
name = "wrn"
params = { depth = 10, widen_factor = 1.0, in_channels = 1 }

[student.model]
name = "wrn"
params = { depth = 10, widen_factor = 0.5, in_channels = 1 }
"""

TINY_STUDY = TINY_BASE + """
[[methods]]
name = "baseline"
terms = []

[[methods]]
name = "gkd-knn8"
terms = [{ loss = "gkd", weight = 25.0, params = { k = 8 } }]
"""


@pytest.fixture
def tiny_study(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_STUDY)
    return load_study(str(path))


@pytest.mark.slow
def test_study_trains_missing_runs_reuses_finished_ones_and_writes_the_table(tmp_path, tiny_study):
    out = tmp_path / "runs"
    assert [p.status for p in plan_study(tiny_study, out=out)] == ["missing"] * 5
    started = []
    finished = []
    table = run_study(tiny_study, out=out, jobs=2, on_run_start=lambda run, i, n: started.append((run.method, run.seed)),
                      on_run_end=lambda run: finished.append((run.method, run.seed)))
    assert sorted(finished) == sorted(started)
    assert started == [("teacher", 0), ("baseline", 0), ("baseline", 1), ("gkd-knn8", 0), ("gkd-knn8", 1)]
    assert [p.status for p in plan_study(tiny_study, out=out)] == ["finished"] * 5
    student_cfg = RunDir(out / "tiny" / "gkd-knn8" / "seed1").read_json(out / "tiny" / "gkd-knn8" / "seed1" / "config.json")
    assert student_cfg["teacher"] == str(out / "tiny" / "teacher" / "seed0")
    assert student_cfg["run"]["seed"] == 1 and student_cfg["terms"][0]["params"] == {"k": 8}

    # The table agrees with the run directories.
    rows = {r.method: r for r in table.rows}
    for method in ("baseline", "gkd-knn8"):
        errors = [RunDir(out / "tiny" / method / f"seed{s}").read_metrics()[-1]["test_error"] for s in (0, 1)]
        assert rows[method].errors == errors and rows[method].runs == 2
        assert rows[method].median_error == pytest.approx(statistics.median(errors))
        assert rows[method].sd_error == pytest.approx(statistics.stdev(errors))
        assert len(rows[method].graph_distance) == 3
    assert table.teacher_params == 78042 or table.teacher_params > 3.5 * table.student_params
    assert table.teacher_params == sum(p.numel() for p in __import__("geokd.models", fromlist=["x"]).build_model(
        "wrn", depth=10, widen_factor=1.0, in_channels=1, num_classes=10).parameters())
    md = (out / "tiny" / "table.md").read_text()
    assert "| teacher |" in md and "| gkd-knn8 |" in md and "faster per image" in md
    parsed = list(csv.DictReader(io.StringIO((out / "tiny" / "table.csv").read_text())))
    assert [r["method"] for r in parsed] == ["teacher", "baseline", "gkd-knn8"]
    assert float(parsed[1]["median_test_error"]) == pytest.approx(rows["baseline"].median_error, abs=1e-4)

    # Second invocation: nothing to train, same errors.
    started.clear()
    again = run_study(tiny_study, out=out, on_run_start=lambda run, i, n: started.append(run))
    assert started == [] and [r.errors for r in again.rows] == [r.errors for r in table.rows]

    # A run that looks interrupted (no final model, status running) is resumed from its state, not restarted.
    run = RunDir(out / "tiny" / "baseline" / "seed1")
    final_weights = torch.load(run.model_path, weights_only=True)["state_dict"]
    run.model_path.unlink()
    run.update_meta(status="running")
    assert [p.status for p in plan_study(tiny_study, out=out)].count("partial") == 1
    run_study(tiny_study, out=out, on_run_start=lambda run, i, n: started.append((run.method, run.seed)))
    assert started == [("baseline", 1)] and run.is_finished()
    assert run.read_meta()["resumed_at_epoch"] == [2]
    resumed = torch.load(run.model_path, weights_only=True)["state_dict"]
    for key in final_weights:
        assert torch.equal(final_weights[key], resumed[key])

    # The study changes a method's objective: its finished runs are not silently reused under
    # the new objective, nor overwritten; the error names each run and the changed entry.
    changed_path = tmp_path / "tiny_changed.toml"
    changed_path.write_text(TINY_STUDY.replace("params = { k = 8 }", "params = { k = 4 }"))
    changed = load_study(str(changed_path))
    statuses = {(p.method, p.seed): p for p in plan_study(changed, out=out)}
    assert statuses[("gkd-knn8", 0)].status == "changed" and statuses[("baseline", 0)].status == "finished"
    assert statuses[("gkd-knn8", 1)].differences == ["terms[0].params.k: 8 on disk, 4 in the study"]
    before = (out / "tiny" / "gkd-knn8" / "seed0" / "model.pt").read_bytes()
    with pytest.raises(ConfigError, match=r"2 run\(s\) on disk were made with another config(.|\n)*gkd-knn8/seed0"):
        run_study(changed, out=out)
    assert (out / "tiny" / "gkd-knn8" / "seed0" / "model.pt").read_bytes() == before


def test_inference_time_is_positive_and_bigger_for_a_bigger_network():
    from geokd.models import build_model

    small = build_model("wrn", depth=10, widen_factor=0.5, in_channels=1)
    big = build_model("wrn", depth=28, widen_factor=2.0, in_channels=1)
    x = torch.randn(4, 1, 8, 8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared machine makes multi-thread timings erratic
    try:
        t_small = inference_seconds_per_image(small, x, batch_size=64, repeats=7)
        t_big = inference_seconds_per_image(big, x, batch_size=64, repeats=7)
    finally:
        torch.set_num_threads(threads)
    assert 0 < t_small < t_big  # about 50x the FLOPs


def test_graph_distance_is_zero_for_the_same_network_and_positive_otherwise():
    from geokd.models import build_model

    torch.manual_seed(0)
    a = build_model("wrn", depth=10, widen_factor=0.5, in_channels=1)
    b = build_model("wrn", depth=10, widen_factor=0.5, in_channels=1)
    batches = [(torch.randn(16, 1, 8, 8), torch.zeros(16, dtype=torch.long)) for _ in range(2)]
    assert graph_distances(a, a, batches) == pytest.approx([0.0, 0.0, 0.0], abs=1e-10)
    assert all(d > 0 for d in graph_distances(a, b, batches))


def test_cli_plan_lists_the_default_study(tmp_path, capsys):
    assert main(["reproduce", "--plan", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "study digits" in text and "22 runs, 0 finished, 22 to train" in text
    assert text.count("missing") == 22


def test_cli_reproduce_prints_the_table_then_writes_the_analysis_and_figures(tmp_path, capsys):
    # The whole command on a tiny study: the table is printed and written, then (still
    # under the study's lock, inside run_study) the closing analysis and its figures.
    from tests.test_reliability_locks import one_epoch_study

    out = tmp_path / "runs"
    assert main(["reproduce", str(one_epoch_study(tmp_path)), "--out", str(out), "--yes", "--jobs", "1"]) == 0
    text = capsys.readouterr().out
    assert "| baseline |" in text and f"written: {out / 'locktest' / 'table.md'}" in text
    study_dir = out / "locktest"
    assert "| baseline |" in (study_dir / "table.md").read_text()
    for name in ("smoothness", "consistency", "distances", "knn_accuracy", "heatmaps"):
        assert (study_dir / "figures" / f"{name}.png").stat().st_size > 0
    assert (study_dir / "figures" / "error_table.md").is_file()


def test_cli_reports_an_unknown_study_clearly(capsys):
    assert main(["reproduce", "digts"]) == 2
    assert "did you mean 'digits'" in capsys.readouterr().err


GKD_VS_BASELINE = """
[study]
name = "digits-gkd-vs-baseline"
extends = "digits"

[[methods]]
name = "baseline"
terms = []

[[methods]]
name = "gkd"
terms = [{ loss = "gkd", weight = 25.0 }]
"""


@pytest.mark.slow
def test_gkd_students_end_closer_to_the_teachers_geometry_at_every_sensing_point(tmp_path):
    """The embedded default's recipe (teacher, student, 3 seeds): the GKD loss on the test set
    between teacher and student is smaller with GKD than without, at each sensing point, median
    over seeds."""
    path = tmp_path / "study.toml"
    path.write_text(GKD_VS_BASELINE)
    study = load_study(str(path))
    assert len(study.seeds) >= 3
    table = run_study(study, out=tmp_path / "runs", jobs=2)
    rows = {r.method: r for r in table.rows}
    assert table.sensing_points == ("layer1", "layer2", "pool")
    for i, point in enumerate(table.sensing_points):
        assert rows["gkd"].graph_distance[i] < rows["baseline"].graph_distance[i], point
    assert table.teacher_error < 5.0  # a real teacher


def test_time_estimate_needs_no_data_and_scales_with_epochs(tmp_path, tiny_study):
    from geokd.reproduce import estimate_study_seconds

    est = estimate_study_seconds(tiny_study, out=tmp_path, steps=2)
    assert est["missing_runs"] == 5 and est["total_seconds"] > 0
    assert set(est["seconds_per_step"]) == {"teacher", "student"}
    # 2 epochs x ceil(1257 / 64) = 40 steps per run: teacher 40 steps, 4 students x 40 steps.
    expected = 40 * est["seconds_per_step"]["teacher"] + 160 * est["seconds_per_step"]["student"]
    assert est["total_seconds"] == pytest.approx(expected)
