"""Whole systems (BYOT, DML, selective KD) as study rows, and the digits-methods study."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from geokd.errors import ConfigError
from geokd.reproduce import plan_study, run_study
from geokd.studies import load_study
from geokd.train import RunDir
from tests.test_reproduce import TINY_BASE

# The tiny study of test_reproduce (digits, 2 seeds, 2 epochs, WRN-10-1 -> WRN-10-0.5) with system rows.
SYSTEMS_STUDY = TINY_BASE.replace('name = "tiny"\n', 'name = "tiny-systems"\n'
                                  'notes = "The system rows train the same student."\n', 1)

ROWS = """
[[methods]]
name = "byot"
system = "byot"
params = { alpha = 0.2 }

[[methods]]
name = "dml"
system = "dml"

[[methods]]
name = "selective"
system = "selective"
ce_weight = 0.1
terms = [{ loss = "kd", weight = 0.9 }]
"""


def _study(tmp_path, methods: str, name: str = "study.toml"):
    path = tmp_path / name
    path.write_text(SYSTEMS_STUDY + methods)
    return load_study(str(path))


# ------------------------------------------------------------------------ validation

@pytest.mark.parametrize("row, message", [
    ('system = "byott"', "did you mean 'byot'"),
    ('system = "mutual"', "known: byot, dml, selective"),
    ('system = "byot"\nparams = { temprature = 2.0 }', "no parameter 'temprature'; did you mean 'temperature'"),
    ('system = "byot"\nparams = { alpha = "high" }', "params.alpha: expected float"),
    ('system = "dml"\nterms = [{ loss = "gkd", weight = 25.0 }]', "expected no terms, got 1"),
    ('system = "byot"\nce_weight = 0.5', "weights its own cross-entropy"),
    ('params = { k = 10 }\nterms = []', "params belong to a system row"),
    ('system = "selective"\nparams = { k = 10.5 }', "params.k: expected int"),
])
def test_a_bad_system_row_is_rejected_at_load_time_naming_the_row(tmp_path, row, message):
    with pytest.raises(ConfigError, match="methods\\[0\\] \\(x\\)") as info:
        _study(tmp_path, f'[[methods]]\nname = "x"\n{row}\n')
    assert message in str(info.value)


def test_system_rows_plan_like_other_runs_with_the_teacher_only_where_they_use_it(tmp_path):
    study = _study(tmp_path, ROWS)
    planned = {(p.method, p.seed): p for p in plan_study(study, out=tmp_path / "runs")}
    assert len(planned) == 1 + 3 * 2 and all(p.status == "missing" for p in planned.values())
    byot = planned[("byot", 1)]
    assert byot.system == "byot" and byot.params == {"alpha": 0.2, "temperature": 3.0, "beta": 1e-6}
    assert byot.config.teacher is None and byot.config.run.seed == 1 and not byot.config.terms
    assert planned[("dml", 0)].config.teacher is None
    selective = planned[("selective", 0)]
    assert selective.config.teacher == str(tmp_path / "runs" / "tiny-systems" / "teacher" / "seed0")
    assert selective.config.ce_weight == 0.1 and selective.config.terms[0].loss == "kd"
    assert study.method("selective").recipe() == ("system selective (k=10, label_trust=0.2, layer=pool): "
                                                  "0.1·CE + 0.9·kd")


def test_every_run_of_the_digits_methods_study_builds_with_the_same_student(tmp_path):
    """Every row's config builds through the real trainer's builder (terms, taps, dry run,
    shape-dependent setup) against a teacher of the study's architecture, and each term
    gives a finite value on a training batch; the system rows name registered systems."""
    from geokd.checkpoints import save_checkpoint
    from geokd.models import build_model, model_config
    from geokd.train.build import build_parts
    from geokd.train.distributed import DistributedContext
    from geokd.train.loop import _Stepper

    study = load_study("digits-methods")
    names = [m.name for m in study.methods]
    for wanted in ("baseline", "kd", "gkd", "kd+gkd", "rkd-d", "rkd-a", "rkd", "fitnet", "attention",
                   "activation-boundary", "fsp", "kdsvd", "iep", "mhgd", "dml", "byot", "selective-kd"):
        assert wanted in names
    t_cfg = study.teacher_config()
    torch.manual_seed(0)
    teacher = build_model(t_cfg.model.name, **t_cfg.model.params, num_classes=10)
    path = tmp_path / "teacher.pt"
    save_checkpoint(path, teacher, model_config=model_config(teacher))
    students = set()
    for method in study.methods:
        config = study.student_config(method.name, seed=study.seeds[-1], teacher=str(path))
        students.add(json.dumps(config.model.params, sort_keys=True))
        if method.system is not None:
            assert method.system in ("byot", "dml", "selective")
            continue
        parts, resolved = build_parts(config, device=torch.device("cpu"), ctx=DistributedContext())
        stepper = _Stepper(parts, resolved, DistributedContext(), torch.device("cpu"), [], None, None)
        x, y = next(iter(parts.train_batches))
        for term in parts.terms:
            if term.fit_epochs:  # IEP, MHGD: a one-batch fitting stage stands in for the real one
                term.module.fit_teacher(parts.teacher_taps_for(term), [(x, y)], epochs=1, device=torch.device("cpu"))
        seen = set()
        for epoch in sorted({0, max([t.init_epochs for t in parts.terms] or [0])}):  # both stages of staged rows
            ce, values, active, _ = stepper.losses(x, y, epoch=epoch)
            assert all(bool(torch.isfinite(v)) for v in values), (method.name, epoch)
            seen |= {t.name for t in active}
        assert len(seen) == len(method.terms), method.name
    assert len(students) == 1  # one student architecture for every row: a fair table


# ----------------------------------------------------------------------- training

@pytest.mark.slow
def test_system_rows_train_tabulate_over_seeds_and_are_reused(tmp_path):
    study = _study(tmp_path, ROWS)
    out = tmp_path / "runs"
    epochs_seen = []
    table = run_study(study, out=out, jobs=1,
                      on_epoch_end=lambda run, record: epochs_seen.append((run.method, "test_error" in record)))
    root = out / "tiny-systems"
    rows = {r.method: r for r in table.rows}
    assert list(rows) == ["byot", "dml", "selective"]
    assert ("dml", True) in epochs_seen and all(ok for m, ok in epochs_seen if m != "byot")
    metas = {m: [RunDir(root / m / f"seed{s}").read_meta() for s in (0, 1)] for m in rows}
    for method, row in rows.items():
        errors = [meta["final_test_error"] for meta in metas[method]]
        assert row.runs == 2 and row.errors == errors
        assert row.median_error == pytest.approx(statistics.median(errors))
        assert row.sd_error == pytest.approx(statistics.stdev(errors))
        assert max(errors) < 50.0  # far above the 10 % of chance after 2 epochs
        for seed, meta in enumerate(metas[method]):
            run = RunDir(root / method / f"seed{seed}")
            config = run.read_json(run.config_path)
            assert config["system"] == study.method(method).system and config["run"]["seed"] == seed
            assert config["run"]["channels_last"] is True  # the layout each system trained in on a CPU
            assert meta["seed"] == seed and meta["environment"]["torch"] == torch.__version__
            assert run.is_finished() and len(run.read_metrics()) == 2

    # BYOT: the row is the deepest exit, which is the saved plain student.
    byot = metas["byot"][0]["system_results"]
    assert byot["sections"] == ["layer1", "layer2", "layer3"]
    assert metas["byot"][0]["final_test_error"] == byot["exits"]["layer3"]["test_error"]
    losses = [r["train_loss"] for r in RunDir(root / "byot" / "seed0").read_metrics()]
    assert losses[-1] < losses[0]
    from geokd.checkpoints import load_checkpoint
    from geokd.data import BatchLoader, load_dataset
    from geokd.train import evaluate

    student, _ = load_checkpoint(root / "byot" / "seed0" / "model.pt")
    test = BatchLoader(load_dataset("digits", split="test"), batch_size=540, shuffle=False)
    assert evaluate(student, test) == pytest.approx(byot["exits"]["layer3"]["test_error"])
    md = (root / "table.md").read_text()
    for label in ("| layer1 |", "| layer2 |", "| layer3 (deepest) |", "| ensemble"):
        assert label in md
    assert "The system rows train the same student." in md and "- byot: system byot (alpha=0.2" in md

    # DML: the row is student 1, its peer's error in the note.
    dml = metas["dml"]
    assert [m["final_test_error"] for m in dml] == [
        RunDir(root / "dml" / f"seed{s}").read_metrics()[-1]["test_error_1"] for s in (0, 1)]
    assert f"student 2: {statistics.median(m['system_results']['peer_test_error'] for m in dml):.2f}" in rows["dml"].note

    # Selective KD: trained on the kept inputs only, the count in the note.
    n_train = 1257  # the digits training split
    selection = json.loads((root / "selective" / "seed0" / "selection.json").read_text())
    assert selection["kept"] + selection["dropped"] == n_train == selection["total"]
    assert len(selection["kept_indices"]) == selection["kept"] and selection["dropped"] > 0
    assert f"trained on {selection['kept']} of {n_train}" in rows["selective"].note

    # A second call trains nothing and gives the same table.
    started = []
    again = run_study(study, out=out, on_run_start=lambda run, i, n: started.append(run))
    assert started == [] and [r.errors for r in again.rows] == [r.errors for r in table.rows]

    # An interrupted BYOT run (it keeps no resumable state) restarts; its leftovers are kept aside.
    run = RunDir(root / "byot" / "seed1")
    run.model_path.unlink()
    run.update_meta(status="running")
    assert [(p.method, p.seed) for p in plan_study(study, out=out) if p.status != "finished"] == [("byot", 1)]
    run_study(study, out=out, on_run_start=lambda run, i, n: started.append((run.method, run.seed)))
    assert started == [("byot", 1)] and run.is_finished()
    assert (root / "byot" / "seed1.interrupted-1" / "metrics.jsonl").is_file()
