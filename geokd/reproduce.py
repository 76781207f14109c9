"""Run a study: plan its runs, train what is missing, tabulate the results.

Layout under the output root (default ``runs/``)::

    <out>/<study>/teacher/seed<t>/        the teacher (unless the study names one)
    <out>/<study>/<method>/seed<k>/       one student run per method and seed
    <out>/<study>/table.md, table.csv     the study's table

A study with ``[[pairs]]`` (a benchmark table, :mod:`geokd.studies`) is its pairs' studies
side by side, with the teachers they share trained once::

    <out>/<study>/teachers/<teacher>/seed<t>/     a teacher, shared by its pairs
    <out>/<study>/<pair>/<method>/seed<k>/        the pair's student runs
    <out>/<study>/<pair>/table.md, table.csv      the pair's table
    <out>/<study>/table.md, table.csv             every pair and method in one table, beside
                                                  the published accuracies the study quotes

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

Under ``torchrun`` (``WORLD_SIZE > 1``) every process runs the same plan and each run
trains data-parallel (:func:`geokd.train.train`); only rank 0 holds the study's lock and
writes its tables, so the output root must be one folder every process sees (a shared
file system across nodes).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
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

__all__ = ["PlannedRun", "StudyTable", "BenchmarkTable", "plan_study", "run_study", "tabulate_study", "write_table",
           "estimate_study_seconds", "inference_seconds_per_image", "graph_distances", "process_rank"]


def _notes_lines(notes: str) -> list[str]:
    """A table's free-text notes as Markdown lines (none when empty)."""
    return ["", notes] if notes else []


def _made_with_lines(command: str) -> list[str]:
    """The command that made a table, as its closing Markdown line (none when unknown)."""
    return ["", f"Made with: `{command}`"] if command else []


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
    pair: str | None = None  # the pair of a [[pairs]] study this run belongs to


#: Config entries that say where and how fast a run went, not what it computed: a run
#: whose config differs from the study only in these is still the study's run.
_LOCAL_KEYS = {("teacher",), ("data", "root"), ("data", "download"), ("data", "workers"), ("run", "threads"),
               ("run", "channels_last")}


def process_rank() -> int:
    """This process's rank under ``torchrun`` (0 otherwise)."""
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


@functools.lru_cache(maxsize=1)
def _default_config() -> dict:
    return json.loads(json.dumps(config_to_dict(TrainConfig())))


def _comparable(table: dict, prefix: tuple = ()) -> dict:
    return {key: _comparable(value, prefix + (key,)) if isinstance(value, dict) else value
            for key, value in table.items() if prefix + (key,) not in _LOCAL_KEYS}


def _key(key) -> str:
    return f"[{key}]" if isinstance(key, int) else str(key)


def _differences(saved: dict, expected: dict, prefix: str = "", defaults: dict | None = None) -> list[str]:
    """Dotted paths of the study's config whose values differ on disk.

    Only the study's own entries are compared: the saved config is the resolved one
    (the trainer adds what it derived, e.g. the number of classes from the dataset). A
    setting missing on disk that the study leaves at its default is no difference: the
    run was made before that setting existed, and computed the same.
    """
    out = []
    defaults = defaults if isinstance(defaults, dict) else {}
    for key in sorted(expected):
        a, b = saved.get(key, "<missing>"), expected[key]
        if key not in saved and key in defaults and defaults[key] == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{_key(key)}.", defaults.get(key))
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
        diff = _differences(run.read_json(run.config_path), _comparable(expected), defaults=_default_config())
        if diff:
            return "changed", diff
    return status, []


def plan_study(study: Study, *, out: str | Path = "runs") -> list[PlannedRun]:
    """Every run the study needs, teacher first, with its status.

    For a study with pairs: every pair's runs in order, each shared teacher listed once
    (before the first pair that needs it); :attr:`PlannedRun.pair` names the pair.
    """
    if study.pairs:
        runs, seen = [], set()
        for pair in study.pairs:
            for run in plan_study(pair, out=out):
                if run.run_dir not in seen:
                    seen.add(run.run_dir)
                    runs.append(run)
        return runs
    root = Path(out) / study.name
    runs = []
    teacher = study.teacher_path
    if teacher is None:
        t_root = Path(out) / study.teacher_dir if study.teacher_dir else root / "teacher"
        t_dir = t_root / f"seed{study.teacher_seed}"
        config = study.teacher_config()
        status, diff = _status(t_dir, _expected_config(config, None, {}))
        runs.append(PlannedRun("teacher", study.teacher_seed, t_dir, config, status, differences=diff,
                               pair=study.pair))
        teacher = str(t_dir)
    for method in study.methods:
        for seed in study.seeds:
            run_dir = root / method.name / f"seed{seed}"
            config = study.student_config(method.name, seed=seed, teacher=teacher)
            status, diff = _status(run_dir, _expected_config(config, method.system, method.params))
            runs.append(PlannedRun(method.name, seed, run_dir, config, status, method.system, method.params, diff,
                                   pair=study.pair))
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
    # Under torchrun only rank 0 holds it (the other ranks are the same study's processes).
    @functools.wraps(run)
    def locked(study, *, out="runs", **options):
        if process_rank() != 0:
            return run(study, out=out, **options)
        with directory_lock(Path(out) / study.name, kind="study directory"):
            return run(study, out=out, **options)
    return locked


@_holding_study_lock
def run_study(study: Study, *, out: str | Path = "runs", device: str | torch.device = "cpu", jobs: int = 1,
              on_run_start: Callable[[PlannedRun, int, int], None] | None = None,
              on_epoch_end: Callable[[PlannedRun, dict], None] | None = None,
              on_run_end: Callable[[PlannedRun], None] | None = None,
              on_table_written: Callable[["StudyTable"], None] | None = None,
              progress: bool | None = None, command: str = "") -> "StudyTable | BenchmarkTable | None":
    """Train the missing runs (resuming partial ones), then tabulate and write the table.

    ``jobs > 1`` trains that many students at once in worker processes (after the
    teacher), which is how a small study uses several CPU cores; per-epoch callbacks
    are then not called (``on_run_end`` is). ``on_table_written(table)`` runs last,
    still holding the study directory's lock, for whatever else writes into it (the
    CLI's analysis and figures).

    A study with pairs runs its pairs one after the other (``on_table_written`` once per
    pair) and returns their :class:`BenchmarkTable`, also written to ``<out>/<study>/``.
    Under ``torchrun`` every rank trains (``jobs`` must be 1) and only rank 0 tabulates:
    the other ranks return ``None``.
    """
    if jobs < 1:
        raise ValueError(f"jobs: expected at least 1 worker, got {jobs}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and jobs != 1:
        raise ValueError(f"jobs: under torchrun ({world} processes) each run already uses every process; "
                         f"expected jobs=1, got {jobs}")
    if study.pairs:
        tables = [run_study(pair, out=out, device=device, jobs=jobs, on_run_start=on_run_start,
                            on_epoch_end=on_epoch_end, on_run_end=on_run_end, on_table_written=on_table_written,
                            progress=progress, command=command) for pair in study.pairs]
        if process_rank() != 0:
            return None
        bench = BenchmarkTable.from_tables(study, tables, command=command)
        bench.write(Path(out) / study.name)
        return bench
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
    if process_rank() != 0:
        return None  # rank 0 tabulates; the runs are on disk
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
def graph_distances(student: nn.Module, teacher: nn.Module, batches, *, device: str | torch.device = "cpu",
                    student_points=None, teacher_points=None) -> list[float]:
    """Per sensing point, the GKD loss (full cosine graph, p = 1) between the two networks,
    averaged over the (full) batches: the teacher–student graph distance of the paper.
    ``student_points`` / ``teacher_points`` name the taps (default: each network's
    ``sensing_points``)."""
    from geokd.losses.gkd import gkd_loss
    from geokd.models.taps import FeatureTaps

    student.eval()
    teacher.eval()
    # The points the run distilled: the config's when it names them (networks from outside
    # geokd's registry declare none), else the networks' own.
    s_taps = FeatureTaps(student, list(student_points or student.sensing_points))
    t_taps = FeatureTaps(teacher, list(teacher_points or teacher.sensing_points))
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
        lines += _notes_lines(self.notes)
        if self.recipes:
            lines += ["", "Objectives (CE = cross-entropy; term weights as configured):", ""]
            lines += [f"- {line}" for line in self.recipes]
        if self.extra:
            lines += ["", *self.extra]
        return "\n".join(lines + _made_with_lines(self.command)) + "\n"

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


@dataclass
class BenchmarkTable:
    """A study with pairs in one table: per pair and method, the test accuracy (100 − error,
    median ± sd over seeds) beside the published accuracy the study quotes."""

    study: str
    description: str
    pairs: list[str]
    methods: list[str]
    tables: dict[str, StudyTable]  # pair -> its table
    published: dict[str, dict]  # pair -> {"teacher" | method: accuracy %}
    skipped: dict[str, tuple[str, ...]]  # pair -> methods it leaves out
    notes: str = ""
    command: str = ""

    @classmethod
    def from_tables(cls, study: Study, tables: list[StudyTable], *, command: str = "") -> "BenchmarkTable":
        by_name = {t.study: t for t in tables}
        pairs = [p for p in study.pairs if p.name in by_name]
        return cls(study=study.name, description=study.description, pairs=[p.pair for p in pairs],
                   methods=[m.name for m in study.methods], tables={p.pair: by_name[p.name] for p in pairs},
                   published={p.pair: dict(p.published) for p in pairs},
                   skipped={p.pair: p.skipped for p in pairs}, notes=study.notes, command=command)

    def cell(self, pair: str, method: str) -> tuple[float | None, float | None, int]:
        """``(median accuracy, sd, runs)`` of ``method`` on ``pair`` (``None`` where it has none)."""
        table = self.tables[pair]
        if method == "teacher":
            return (None if table.teacher_error is None else 100.0 - table.teacher_error), None, 1
        for row in table.rows:
            if row.method == method:
                return 100.0 - row.median_error, (None if math.isnan(row.sd_error) else row.sd_error), row.runs
        return None, None, 0

    def markdown(self) -> str:
        lines = [f"## {self.study}: {self.description}", "",
                 "Test accuracy % of each student: last epoch, median ± sd over seeds; in parentheses the "
                 "published accuracy the study quotes (– where it quotes none). n/a: the method does not "
                 "apply to the pair.", "",
                 "| method | " + " | ".join(p.replace("-", " → ", 1) for p in self.pairs) + " |",
                 "|---|" + "---|" * len(self.pairs)]
        for method in ["teacher", *self.methods]:
            cells = []
            for pair in self.pairs:
                if method in self.skipped[pair]:
                    cells.append("n/a")
                    continue
                acc, sd, runs = self.cell(pair, method)
                ours = "–" if acc is None else f"{acc:.2f}" + (f" ± {sd:.2f}" if sd is not None else "")
                ref = self.published[pair].get(method)
                cells.append(ours + (f" ({ref:.2f})" if ref is not None else " (–)"))
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines += ["", "Each pair's full table (errors, train time, graph distances, parameters, speed): "
                  "<pair>/table.md."]
        return "\n".join(lines + _notes_lines(self.notes) + _made_with_lines(self.command)) + "\n"

    def csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["pair", "method", "runs", "median_test_accuracy", "sd_test_accuracy", "published_accuracy"])
        for pair in self.pairs:
            for method in ["teacher", *self.methods]:
                if method in self.skipped[pair]:
                    continue
                acc, sd, runs = self.cell(pair, method)
                ref = self.published[pair].get(method)
                writer.writerow([pair, method, runs, "" if acc is None else f"{acc:.4f}",
                                 "" if sd is None else f"{sd:.4f}", "" if ref is None else f"{ref:.2f}"])
        return buffer.getvalue()

    def write(self, folder: str | Path) -> tuple[Path, Path]:
        """``table.md`` and ``table.csv`` into ``folder`` (the study's folder)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        md, cs = folder / "table.md", folder / "table.csv"
        md.write_text(self.markdown())
        cs.write_text(self.csv())
        return md, cs


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
    batches = _test_batches(data, batch_size=data.batch_size, drop_last=True, device=device)
    if teacher_error is None:
        from geokd.train import evaluate

        teacher_error = evaluate(teacher, _test_batches(data, batch_size=data.eval_batch_size, drop_last=False,
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
            s_points, t_points = _points(p.config, student, teacher)
            distances.append(graph_distances(student, teacher, batches, device=device, student_points=s_points,
                                             teacher_points=t_points) if s_points and t_points else [])
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
        teacher_train_seconds=teacher_seconds, sensing_points=_points(finished[-1].config, student, teacher)[0],
        rows=rows,
        command=command, notes=study.notes,
        recipes=[f"{m.name}: {m.recipe()}" for m in study.methods if any(r.method == m.name for r in rows)],
        extra=extra[:-1] if extra else [],
    )


def _points(config: TrainConfig, student: nn.Module, teacher: nn.Module) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The sensing points a run compared: its config's, else the networks' own (or none)."""
    return (tuple(config.model.sensing_points or getattr(student, "sensing_points", ())),
            tuple(config.teacher_sensing_points or getattr(teacher, "sensing_points", ())))


def _test_batches(data, *, batch_size: int, drop_last: bool, device):
    """The test split of a run's ``data`` config in batches, as the trainer reads it."""
    if data.stream:
        from geokd.data.stream import StreamingImageFolder, folder_of

        return StreamingImageFolder(folder_of(data.name), split="test", image_size=data.image_size,
                                    batch_size=batch_size, shuffle=False, mean=data.mean, std=data.std,
                                    drop_last=drop_last, workers=data.workers, device=device)
    from geokd.data import BatchLoader, load_dataset

    stats = {} if data.mean is None else {"mean": data.mean, "std": data.std}
    test_set = load_dataset(data.name, split="test", root=data.root, download=data.download,
                            image_size=data.image_size, **stats)
    return BatchLoader(test_set, batch_size=batch_size, shuffle=False, augment=False, device=device,
                       drop_last=drop_last)


def write_table(table: StudyTable, folder: str | Path) -> tuple[Path, Path]:
    """``table.md`` and ``table.csv`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    md, cs = folder / "table.md", folder / "table.csv"
    md.write_text(table.markdown())
    cs.write_text(table.csv())
    return md, cs


# ---------------------------------------------------------------------------- estimate

#: Named datasets for the time estimate: (input shape, training inputs, classes).
_DATA_FACTS = {"cifar10": ((3, 32, 32), 50000, 10), "cifar100": ((3, 32, 32), 50000, 100),
               "digits": ((1, 8, 8), 1257, 10), "mnist": ((1, 28, 28), 60000, 10),
               "fashion-mnist": ((1, 28, 28), 60000, 10)}


def _data_facts(data, study: Study, train_size: int | None) -> tuple[tuple, int, int | None, list[str]]:
    """``(input shape, training inputs, classes or None, notes)`` of a run's data, without
    reading any image: a named dataset's registered facts, an image folder's file count."""
    notes: list[str] = []
    if data.name in _DATA_FACTS:
        shape, n, classes = _DATA_FACTS[data.name]
    elif data.name.startswith("imagefolder:"):
        from geokd.data.imagefolder import _image_folder, _split_folder, first_image_side
        from geokd.errors import DatasetNotFoundError

        folder = data.name[len("imagefolder:"):]
        n = classes = side = None
        try:
            split, _ = _split_folder(folder, "train")
            dataset = _image_folder(split, data.name)
            n, classes = len(dataset.targets), len(dataset.classes)
            side = data.image_size or first_image_side(folder)
        except (DatasetNotFoundError, ValueError, OSError) as exc:
            notes.append(f"cannot read {data.name} here ({exc})")
        side = side or data.image_size
        if side is None:
            raise ConfigError(f"time estimate: the image size of {data.name} is unknown here; set data.image_size")
        shape = (3, side, side)
        if n is None:
            n = train_size or study.train_size
            if n is None:
                raise ConfigError(f"time estimate: cannot count the training images of {data.name}; "
                                  "set [study].train_size (e.g. 1281167 for ImageNet-1k) to estimate without them")
            notes.append(f"assumed {n:,} training images ([study].train_size)")
    else:
        shape, n, classes = (3, 32, 32), train_size or study.train_size or 50000, None
        notes.append(f"{data.name}: input shape and size unknown before it is built; timed 3x32x32 inputs, {n:,} of them")
    return shape, (train_size or n), classes, notes


def _timing_net(name: str, params: dict, classes: int | None, device):
    from geokd.models import build_model
    from geokd.models.specs import is_network_spec, parse_network_spec

    params = dict(params)
    fixed = is_network_spec(name) and "num_classes" in parse_network_spec(name).kwargs
    if not fixed:
        params.setdefault("num_classes", classes or (1000 if is_network_spec(name) else 100))
    return build_model(name, **params).to(device)


def _timing_teacher(study: Study, classes, device, notes: list[str]):
    """The network whose forward a student step includes (weights do not matter for timing)."""
    from geokd.models.specs import is_network_spec

    path = study.teacher_path
    if path is None:
        t = study.teacher_config().model
        return _timing_net(t.name, t.params, classes, device)
    if is_network_spec(path):
        return _timing_net(path.split("@", 1)[0], {}, classes, device)
    if Path(path).exists():
        from geokd.train import load_teacher

        return load_teacher(path, device=device)
    notes.append(f"teacher {path} not found here: student steps timed without its forward")
    return None


def _seconds_per_step(model: nn.Module, teacher: nn.Module | None, *, batch: int, shape: tuple, classes: int,
                      steps: int, device: torch.device, channels_last: bool) -> float:
    import torch.nn.functional as F

    model = model.to(device).train()
    if teacher is not None:
        teacher = teacher.to(device).eval()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(batch, *shape, device=device)
    if channels_last:  # time the layout the run will train in
        model.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        if teacher is not None:
            with torch.no_grad():
                teacher(x)
        out = model(x)
        logits = out[0] if isinstance(out, tuple) else out
        loss = F.cross_entropy(logits, torch.randint(0, logits.shape[1], (batch,), device=device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first step warms up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def estimate_study_seconds(study: Study, *, out: str | Path = "runs", device: str | torch.device = "cpu",
                           steps: int = 3, train_size: int | None = None, max_batch: int | None = None,
                           world_size: int | None = None, pairs=None) -> dict:
    """Extrapolate the time of the missing runs from a few timed steps on random inputs.

    Measured, then scaled: per network, the median time of ``steps`` training steps (after
    one warm-up) on this ``device`` — the teacher's with cross-entropy, a student's with
    its teacher's forward added (distillation terms are not included) — times the
    steps per epoch and the epochs of every missing run. Needs no data: the input shape and
    training-set size come from the dataset's registered facts, an image folder's file
    list, or ``[study].train_size`` (``train_size`` overrides them all).

    Under ``torchrun`` (or with ``world_size``) a step processes ``batch / world_size``
    inputs on each device: the estimate is then per device, for the whole data-parallel
    job. ``max_batch`` times smaller batches (scaled linearly: on a machine that cannot
    hold the real one, a rough figure). ``pairs`` (names) limits a study with pairs to
    those.

    Returns
    -------
    dict
        ``missing_runs``, ``total_seconds``, ``seconds_per_step`` (``{"teacher", "student"}``
        as timed), ``batch`` (per device), ``timed_batch``, ``notes`` (what was assumed); for a
        study with pairs, ``pairs``: the same per pair, each shared teacher counted once.
    """
    device = torch.device(device)
    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    cache: dict = {}
    if study.pairs:
        counted: set = set()
        per_pair, total, missing, notes = {}, 0.0, 0, []
        chosen = study.pairs if pairs is None else [study.pair_study(name) for name in pairs]
        for pair in chosen:
            planned = [p for p in plan_study(pair, out=out) if p.status != "finished" and p.run_dir not in counted]
            counted.update(p.run_dir for p in planned)
            est = _estimate(pair, planned, device=device, steps=steps, train_size=train_size, max_batch=max_batch,
                            world=world, cache=cache)
            per_pair[pair.pair] = est
            total += est["total_seconds"]
            missing += est["missing_runs"]
            notes += [n for n in est["notes"] if n not in notes]
        return {"missing_runs": missing, "total_seconds": total, "pairs": per_pair, "notes": notes,
                "world_size": world}
    planned = [p for p in plan_study(study, out=out) if p.status != "finished"]
    return _estimate(study, planned, device=device, steps=steps, train_size=train_size, max_batch=max_batch,
                     world=world, cache=cache)


def _estimate(study: Study, planned: list[PlannedRun], *, device, steps, train_size, max_batch, world,
              cache: dict) -> dict:
    if not planned:
        return {"missing_runs": 0, "total_seconds": 0.0, "seconds_per_step": {}, "notes": [], "world_size": world}
    data = planned[-1].config.data
    shape, n_train, classes, notes = _data_facts(data, study, train_size)
    batch = max(1, data.batch_size // world)
    timed = batch if max_batch is None else max(1, min(batch, max_batch))
    if timed != batch:
        notes.append(f"timed at batch {timed} per device and scaled to {batch}")
    per_step: dict[str, float] = {}
    total = 0.0
    for p in planned:
        key = "teacher" if p.method == "teacher" else "student"
        if key not in per_step:
            model = p.config.model
            cache_key = (key, model.name, json.dumps(model.params, sort_keys=True), timed, shape, classes,
                         None if key == "teacher" else str(study.teacher_path or study.teacher_config().model))
            if cache_key not in cache:
                net = _timing_net(model.name, model.params, classes, device)
                teacher = _timing_teacher(study, classes, device, notes) if key == "student" else None
                cache[cache_key] = _seconds_per_step(
                    net, teacher, batch=timed, shape=shape, classes=classes, steps=steps, device=device,
                    channels_last=resolve_channels_last(p.config.run, device)) * batch / timed
                del net, teacher
            per_step[key] = cache[cache_key]
        n = n_train if p.config.data.fraction is None else max(1, int(n_train * p.config.data.fraction))
        steps_per_epoch = math.ceil(n / p.config.data.batch_size)
        total += per_step[key] * steps_per_epoch * p.config.schedule.epochs
    return {"missing_runs": len(planned), "seconds_per_step": per_step, "total_seconds": total,
            "batch": batch, "timed_batch": timed, "notes": notes, "world_size": world}
