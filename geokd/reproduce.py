"""Run a study: plan its runs, train what is missing, tabulate the results.

Layout under the output root (default ``runs/``)::

    <out>/<study>/teacher/seed<t>/        the teacher (unless the study names one)
    <out>/<study>/<method>/seed<k>/       one student run per method and seed
    <out>/<study>/table.md, table.csv     the study's table

Finished runs are reused, interrupted ones resumed, so ``geokd reproduce`` can be
stopped and started again. The table reports, per method, the last-epoch test error
(median ± sample standard deviation over seeds, in %), the number of runs, the median
training time per run and the teacher–student graph distance (the GKD loss on the test
set, full cosine graph, p = 1) at each sensing point; and, per network, the parameter
count and inference time per image with the teacher/student speed ratio; then the study's
notes, each row's objective with its weights, and the extra tables of system rows.

A row with ``system = "byot" | "dml" | "selective"`` is run by that system's runner
(:mod:`geokd.methods.systems`) instead of the trainer, into the same layout; its error
is the one the runner reports (BYOT: the deepest exit; DML: the first student) and its
runner adds a note (and, for BYOT, a per-exit table). Systems that keep no resumable
state restart an interrupted run, moving its leftovers to ``seed<k>.interrupted-<n>``.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from geokd.errors import ConfigError
from geokd.studies import Study
from geokd.train import RunDir, TrainConfig, train
from geokd.train.config import config_to_dict, resolve_channels_last
from geokd.train.runs import directory_lock

__all__ = ["PlannedRun", "StudyTable", "plan_study", "run_study", "tabulate_study", "write_table",
           "estimate_study_seconds", "inference_seconds_per_image", "graph_distances"]


@dataclass
class PlannedRun:
    """One run of a study and where it stands on disk."""

    method: str  # "teacher" for the teacher
    seed: int
    run_dir: Path
    config: TrainConfig
    status: str  # "finished", "partial", "missing" or "changed" (made with another config)
    system: str | None = None  # a whole system (geokd.methods.systems) instead of the trainer
    params: dict = field(default_factory=dict)
    differences: list[str] = field(default_factory=list)  # what "changed" means, key by key


#: Config entries that say where and how fast a run went, not what it computed: a run
#: whose config differs from the study only in these is still the study's run.
_LOCAL_KEYS = {("teacher",), ("data", "root"), ("data", "download"), ("run", "threads"), ("run", "channels_last")}


def _comparable(table: dict, prefix: tuple = ()) -> dict:
    return {key: _comparable(value, prefix + (key,)) if isinstance(value, dict) else value
            for key, value in table.items() if prefix + (key,) not in _LOCAL_KEYS}


def _key(key) -> str:
    return f"[{key}]" if isinstance(key, int) else str(key)


def _differences(saved: dict, expected: dict, prefix: str = "") -> list[str]:
    """Dotted paths of the study's config whose values differ on disk.

    Only the study's own entries are compared: the saved config is the resolved one
    (the trainer adds what it derived, e.g. the number of classes from the dataset).
    """
    out = []
    for key in sorted(expected):
        a, b = saved.get(key, "<missing>"), expected[key]
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{_key(key)}.")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            out += _differences(dict(enumerate(a)), dict(enumerate(b)), f"{prefix}{_key(key)}")
        elif a != b:
            out.append(f"{prefix}{_key(key)}: {a!r} on disk, {b!r} in the study")
    return out


def _expected_config(config: TrainConfig, system: str | None, params: dict) -> dict:
    # The JSON round trip makes tuples lists, as in the saved config.json.
    table = json.loads(json.dumps(config_to_dict(config)))
    if system is not None:
        table.update(system=system, params=json.loads(json.dumps(params)))
    return table


def _status(run_dir: Path, expected: dict) -> tuple[str, list[str]]:
    """``(status, differences)``: ``"changed"`` when the run on disk was made with another
    config than the study now asks for (reusing it would tabulate an old objective)."""
    run = RunDir(run_dir)
    if run.is_finished():
        status = "finished"
    elif run.state_path.is_file():
        status = "partial"
    else:
        return "missing", []
    if run.config_path.is_file():
        diff = _differences(run.read_json(run.config_path), _comparable(expected))
        if diff:
            return "changed", diff
    return status, []


def plan_study(study: Study, *, out: str | Path = "runs") -> list[PlannedRun]:
    """Every run the study needs, teacher first, with its status."""
    root = Path(out) / study.name
    runs = []
    teacher = study.teacher_path
    if teacher is None:
        t_dir = root / "teacher" / f"seed{study.teacher_seed}"
        config = study.teacher_config()
        status, diff = _status(t_dir, _expected_config(config, None, {}))
        runs.append(PlannedRun("teacher", study.teacher_seed, t_dir, config, status, differences=diff))
        teacher = str(t_dir)
    for method in study.methods:
        for seed in study.seeds:
            run_dir = root / method.name / f"seed{seed}"
            config = study.student_config(method.name, seed=seed, teacher=teacher)
            status, diff = _status(run_dir, _expected_config(config, method.system, method.params))
            runs.append(PlannedRun(method.name, seed, run_dir, config, status, method.system, method.params, diff))
    return runs


def _refuse_changed(planned: list[PlannedRun]) -> None:
    changed = [p for p in planned if p.status == "changed"]
    if not changed:
        return
    lines = [f"  {p.run_dir}: " + "; ".join(p.differences[:3]) + (" …" if len(p.differences) > 3 else "")
             for p in changed]
    raise ConfigError(
        f"{len(changed)} run(s) on disk were made with another config than the study now asks for; "
        "reusing them would report an old objective, and retraining over them would lose them:\n"
        + "\n".join(lines)
        + "\nmove or delete those run directories (or reproduce into another --out) and run again")


def _execute(config: TrainConfig, run_dir, *, system: str | None, params: dict, device, resume: bool,
             on_epoch_end=None, progress=None) -> None:
    """One run: the trainer for a row of terms, the system's runner for a system row."""
    if system is None:
        train(config, run_dir=run_dir, device=device, resume=resume, on_epoch_end=on_epoch_end, progress=progress)
    else:
        from geokd.methods.systems import run_system

        run_system(system, config, params, run_dir=run_dir, device=device, resume=resume,
                   on_epoch_end=on_epoch_end, progress=progress)


def _train_one(config: TrainConfig, run_dir: str, device: str, resume: bool, system: str | None = None,
               params: dict | None = None) -> None:
    # Top level so a spawned worker process can run it.
    _execute(config, run_dir, system=system, params=params or {}, device=device, resume=resume, progress=False)


def _holding_study_lock(run):
    # <out>/<study>/.lock (geokd.train.runs.directory_lock) is held while the study trains,
    # writes its table and runs the caller's on_table_written (geokd reproduce's analysis
    # and figures): a second process reproducing the same study refuses at once
    # (DirectoryLockedError naming the directory and the holder's pid).
    @functools.wraps(run)
    def locked(study, *, out="runs", **options):
        with directory_lock(Path(out) / study.name, kind="study directory"):
            return run(study, out=out, **options)
    return locked


@_holding_study_lock
def run_study(study: Study, *, out: str | Path = "runs", device: str | torch.device = "cpu", jobs: int = 1,
              on_run_start: Callable[[PlannedRun, int, int], None] | None = None,
              on_epoch_end: Callable[[PlannedRun, dict], None] | None = None,
              on_run_end: Callable[[PlannedRun], None] | None = None,
              on_table_written: Callable[["StudyTable"], None] | None = None,
              progress: bool | None = None, command: str = "") -> "StudyTable":
    """Train the missing runs (resuming partial ones), then tabulate and write the table.

    ``jobs > 1`` trains that many students at once in worker processes (after the
    teacher), which is how a small study uses several CPU cores; per-epoch callbacks
    are then not called (``on_run_end`` is). ``on_table_written(table)`` runs last,
    still holding the study directory's lock, for whatever else writes into it (the
    CLI's analysis and figures).
    """
    if jobs < 1:
        raise ValueError(f"jobs: expected at least 1 worker, got {jobs}")
    planned = plan_study(study, out=out)
    _refuse_changed(planned)
    todo = [p for p in planned if p.status != "finished"]
    first = [p for p in todo if p.method == "teacher"]
    rest = [p for p in todo if p.method != "teacher"]
    counter = iter(range(1, len(todo) + 1))

    def sequential(runs):
        for run in runs:
            if on_run_start is not None:
                on_run_start(run, next(counter), len(todo))
            callback = (lambda record, run=run: on_epoch_end(run, record)) if on_epoch_end is not None else None
            _execute(run.config, run.run_dir, system=run.system, params=run.params, device=device,
                     resume=run.status == "partial", on_epoch_end=callback, progress=progress)
            run.status = "finished"
            if on_run_end is not None:
                on_run_end(run)

    sequential(first)
    if jobs == 1 or len(rest) <= 1:
        sequential(rest)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {}
            for run in rest:
                if on_run_start is not None:
                    on_run_start(run, next(counter), len(todo))
                futures[pool.submit(_train_one, run.config, str(run.run_dir), str(device),
                                    run.status == "partial", run.system, run.params)] = run
            for future in as_completed(futures):
                future.result()  # re-raise a worker's error here
                futures[future].status = "finished"
                if on_run_end is not None:
                    on_run_end(futures[future])
    table = tabulate_study(study, out=out, device=device, command=command)
    write_table(table, Path(out) / study.name)
    if on_table_written is not None:
        on_table_written(table)
    return table


# ------------------------------------------------------------------------- measurements

@torch.no_grad()
def inference_seconds_per_image(model: nn.Module, example: torch.Tensor, *, batch_size: int = 256,
                                repeats: int = 5, device: str | torch.device = "cpu") -> float:
    """Median over ``repeats`` of the eval-mode forward time of a batch, divided by its size."""
    device = torch.device(device)
    model = model.to(device).eval()
    x = example[:1].to(device).expand(batch_size, *example.shape[1:]).contiguous()
    model(x)  # warm-up: allocations, lazy initialisation
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / batch_size


@torch.no_grad()
def graph_distances(student: nn.Module, teacher: nn.Module, batches, *, device: str | torch.device = "cpu") -> list[float]:
    """Per sensing point, the GKD loss (full cosine graph, p = 1) between the two networks,
    averaged over the (full) batches: the teacher–student graph distance of the paper."""
    from geokd.losses.gkd import gkd_loss
    from geokd.models.taps import FeatureTaps

    student.eval()
    teacher.eval()
    s_taps = FeatureTaps(student, list(student.sensing_points))
    t_taps = FeatureTaps(teacher, list(teacher.sensing_points))
    sums, count = None, 0
    for x, _ in batches:
        x = x.to(device)
        s, t = s_taps(x).features, t_taps(x).features
        values = torch.stack([gkd_loss([a], [b]) for a, b in zip(s, t)]).double()
        sums = values if sums is None else sums + values
        count += 1
    if count == 0:
        raise ValueError("graph_distances: expected at least one full batch, got none")
    return (sums / count).tolist()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------- table

@dataclass
class MethodRow:
    method: str
    runs: int
    errors: list[float]
    median_error: float
    sd_error: float
    train_seconds: float
    graph_distance: list[float] = field(default_factory=list)  # median over seeds, per sensing point
    note: str = ""  # what a system row reports (e.g. which of its networks), from its runner


@dataclass
class StudyTable:
    """The study's results, ready to print (:meth:`markdown`) or save (:meth:`csv`)."""

    study: str
    description: str
    teacher_error: float | None
    teacher_params: int
    student_params: int
    teacher_seconds_per_image: float
    student_seconds_per_image: float
    teacher_train_seconds: float | None
    sensing_points: tuple[str, ...]
    rows: list[MethodRow]
    command: str = ""
    notes: str = ""  # the study's own notes (exceptions to the common recipe)
    recipes: list[str] = field(default_factory=list)  # one "method: objective" line per row
    extra: list[str] = field(default_factory=list)  # Markdown lines of the system rows' extra tables

    @property
    def speed_ratio(self) -> float:
        return self.teacher_seconds_per_image / self.student_seconds_per_image

    def markdown(self) -> str:
        points = " / ".join(self.sensing_points)
        noted = any(r.note for r in self.rows)  # the note column only when a system row needs it
        lines = [
            f"## {self.study}: {self.description}", "",
            f"| method | test error % (median ± sd) | runs | train time / run (s) | graph distance to teacher ({points}) |"
            + (" note |" if noted else ""),
            "|---|---|---|---|---|" + ("---|" if noted else ""),
        ]
        if self.teacher_error is not None:
            ts = f"{self.teacher_train_seconds:.1f}" if self.teacher_train_seconds is not None else "–"
            lines.append(f"| teacher | {self.teacher_error:.2f} | 1 | {ts} | 0 |" + (" |" if noted else ""))
        for r in self.rows:
            sd = f"{r.sd_error:.2f}" if not math.isnan(r.sd_error) else "–"
            dist = " / ".join(f"{d:.3g}" for d in r.graph_distance)
            lines.append(f"| {r.method} | {r.median_error:.2f} ± {sd} | {r.runs} | {r.train_seconds:.1f} | {dist} |"
                         + (f" {r.note} |" if noted else ""))
        lines += [
            "",
            "| network | parameters | inference time / image (µs) |",
            "|---|---|---|",
            f"| teacher | {self.teacher_params:,} | {1e6 * self.teacher_seconds_per_image:.1f} |",
            f"| student | {self.student_params:,} | {1e6 * self.student_seconds_per_image:.1f} |",
            "",
            f"Teacher/student: {self.teacher_params / self.student_params:.2f}x the parameters, "
            f"student {self.speed_ratio:.2f}x faster per image. Errors are last-epoch test errors; "
            "sd is the sample standard deviation over seeds.",
        ]
        if self.notes:
            lines += ["", self.notes]
        if self.recipes:
            lines += ["", "Objectives (CE = cross-entropy; term weights as configured):", ""]
            lines += [f"- {line}" for line in self.recipes]
        if self.extra:
            lines += ["", *self.extra]
        if self.command:
            lines += ["", f"Made with: `{self.command}`"]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        header = ["method", "runs", "median_test_error", "sd_test_error", "errors", "train_seconds_per_run",
                  "parameters", "inference_us_per_image"]
        header += [f"graph_distance_{p}" for p in self.sensing_points]
        noted = any(r.note for r in self.rows)
        writer.writerow(header + (["note"] if noted else []))
        if self.teacher_error is not None:
            writer.writerow(["teacher", 1, f"{self.teacher_error:.4f}", "", f"{self.teacher_error:.4f}",
                             f"{self.teacher_train_seconds:.2f}" if self.teacher_train_seconds is not None else "",
                             self.teacher_params, f"{1e6 * self.teacher_seconds_per_image:.3f}"]
                            + ["0"] * len(self.sensing_points) + ([""] if noted else []))
        for r in self.rows:
            writer.writerow([r.method, r.runs, f"{r.median_error:.4f}", "" if math.isnan(r.sd_error) else f"{r.sd_error:.4f}",
                             " ".join(f"{e:.4f}" for e in r.errors), f"{r.train_seconds:.2f}", self.student_params,
                             f"{1e6 * self.student_seconds_per_image:.3f}"] + [f"{d:.6g}" for d in r.graph_distance]
                            + ([r.note] if noted else []))
        return buffer.getvalue()


def tabulate_study(study: Study, *, out: str | Path = "runs", device: str | torch.device = "cpu",
                   command: str = "") -> StudyTable:
    """Read the finished runs of ``study`` and measure what the table needs (with the
    study's ``run.threads``, as its runs were trained)."""
    threads = torch.get_num_threads()
    wanted = study.table.get("base", {}).get("run", {}).get("threads")
    if wanted:
        torch.set_num_threads(wanted)
    try:
        return _tabulate(study, out=out, device=device, command=command)
    finally:
        torch.set_num_threads(threads)


def _tabulate(study: Study, *, out, device, command: str) -> StudyTable:
    from geokd.checkpoints import load_checkpoint
    from geokd.data import BatchLoader, load_dataset
    from geokd.train import load_teacher

    planned = plan_study(study, out=out)
    device = torch.device(device)
    teacher_runs = [p for p in planned if p.method == "teacher"]
    teacher_source = str(teacher_runs[0].run_dir) if teacher_runs else study.teacher_path
    teacher = load_teacher(teacher_source, device=device)
    teacher_error = teacher_seconds = None
    if teacher_runs and RunDir(teacher_runs[0].run_dir).is_finished():
        t_run = RunDir(teacher_runs[0].run_dir)
        teacher_error = t_run.read_metrics()[-1]["test_error"]
        teacher_seconds = t_run.read_meta().get("train_seconds")

    finished = [p for p in planned if p.method != "teacher" and p.status == "finished"]
    if not finished:
        raise ValueError(f"study {study.name!r}: no finished student runs under {Path(out) / study.name}")
    data = finished[0].config.data
    test_set = load_dataset(data.name, split="test", root=data.root, download=data.download,
                            image_size=data.image_size)
    batches = BatchLoader(test_set, batch_size=data.batch_size, shuffle=False, augment=False, device=device,
                          drop_last=True)
    if teacher_error is None:
        from geokd.train import evaluate

        teacher_error = evaluate(teacher, BatchLoader(test_set, batch_size=data.eval_batch_size, shuffle=False,
                                                      device=device), device=device)
    rows, extra = [], []
    student = None
    for method in study.methods:
        runs = [p for p in finished if p.method == method.name]
        if not runs:
            continue
        errors, seconds, distances, results = [], [], [], []
        for p in runs:
            run = RunDir(p.run_dir)
            meta = run.read_meta()
            # A system row's error is the one its runner chose (e.g. BYOT's deepest exit).
            errors.append(meta["final_test_error"] if method.system else run.read_metrics()[-1]["test_error"])
            results.append(meta.get("system_results", {}))
            seconds.append(float(meta.get("train_seconds", float("nan"))))
            student, _ = load_checkpoint(run.model_path, device=device)
            distances.append(graph_distances(student, teacher, batches, device=device))
        note = ""
        if method.system:
            from geokd.methods.systems import get_system

            note, lines = get_system(method.system).describe(method.name, results)
            extra += [*lines, ""] if lines else []
        rows.append(MethodRow(
            method=method.name, runs=len(runs), errors=errors, median_error=statistics.median(errors),
            sd_error=statistics.stdev(errors) if len(errors) > 1 else float("nan"),
            train_seconds=statistics.median(seconds),
            graph_distance=[statistics.median(d[i] for d in distances) for i in range(len(distances[0]))],
            note=note,
        ))
    example = next(iter(batches))[0]
    return StudyTable(
        study=study.name, description=study.description, teacher_error=teacher_error,
        teacher_params=count_parameters(teacher), student_params=count_parameters(student),
        teacher_seconds_per_image=inference_seconds_per_image(teacher, example, device=device),
        student_seconds_per_image=inference_seconds_per_image(student, example, device=device),
        teacher_train_seconds=teacher_seconds, sensing_points=tuple(student.sensing_points), rows=rows,
        command=command, notes=study.notes,
        recipes=[f"{m.name}: {m.recipe()}" for m in study.methods if any(r.method == m.name for r in rows)],
        extra=extra[:-1] if extra else [],
    )


def write_table(table: StudyTable, folder: str | Path) -> tuple[Path, Path]:
    """``table.md`` and ``table.csv`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    md, cs = folder / "table.md", folder / "table.csv"
    md.write_text(table.markdown())
    cs.write_text(table.csv())
    return md, cs


# ---------------------------------------------------------------------------- estimate

def estimate_study_seconds(study: Study, *, out: str | Path = "runs", device: str | torch.device = "cpu",
                           steps: int = 3, train_size: int | None = None) -> dict:
    """Extrapolate the time of the missing runs from a few timed steps on random inputs.

    Needs no data download: the input shape and training-set size come from the dataset's
    registered defaults (``train_size`` overrides). Returns seconds per step for the
    teacher and a distilled student, and the total for the missing runs.
    """
    import torch.nn.functional as F

    from geokd.data import dataset_defaults
    from geokd.models import build_model

    device = torch.device(device)
    planned = [p for p in plan_study(study, out=out) if p.status != "finished"]
    defaults = dataset_defaults(planned[0].config.data.name) if planned else {}
    shapes = {"cifar10": ((3, 32, 32), 50000), "digits": ((1, 8, 8), 1257), "mnist": ((1, 28, 28), 60000),
              "fashion-mnist": ((1, 28, 28), 60000)}
    if not planned:
        return {"missing_runs": 0, "total_seconds": 0.0}
    cfg = planned[0].config
    shape, n_train = shapes.get(cfg.data.name, ((3, 32, 32), 50000))
    n_train = train_size or defaults.get("train_size", n_train)

    def seconds_per_step(config: TrainConfig, with_teacher: bool) -> float:
        params = dict(config.model.params)
        params.setdefault("num_classes", 10)
        model = build_model(config.model.name, **params).to(device).train()
        teacher = None
        if with_teacher and study.teacher_path is None:
            t_cfg = study.teacher_config()
            t_params = dict(t_cfg.model.params)
            t_params.setdefault("num_classes", 10)
            teacher = build_model(t_cfg.model.name, **t_params).to(device).eval()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        b = config.data.batch_size
        x = torch.randn(b, *shape, device=device)
        if resolve_channels_last(config.run, device):  # time the layout the run will train in
            model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (b,), device=device)
        times = []
        for i in range(steps + 1):
            t0 = time.perf_counter()
            if teacher is not None:
                with torch.no_grad():
                    teacher(x)
            out = model(x)
            loss = F.cross_entropy(out[0] if isinstance(out, tuple) else out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:  # the first step warms up
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    total, per_step = 0.0, {}
    for p in planned:
        key = "teacher" if p.method == "teacher" else "student"
        if key not in per_step:
            per_step[key] = seconds_per_step(p.config, with_teacher=(key == "student"))
        n = n_train if p.config.data.fraction is None else max(1, int(n_train * p.config.data.fraction))
        steps_per_epoch = math.ceil(n / p.config.data.batch_size)
        total += per_step[key] * steps_per_epoch * p.config.schedule.epochs
    return {"missing_runs": len(planned), "seconds_per_step": per_step, "total_seconds": total}
