"""``geokd reproduce [STUDY]``: train what a study misses, then write its table."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time


def register(subparsers) -> None:
    from geokd.studies import DEFAULT_STUDY, available_studies

    shipped = ", ".join(f"{n} (default)" if n == DEFAULT_STUDY else n
                        for n in sorted(available_studies(), key=lambda n: (n != DEFAULT_STUDY, n)))
    parser = subparsers.add_parser(
        "reproduce", help="run a study (default: the embedded digits study) and write its table",
        description="Train the runs a study still misses (finished runs are reused, interrupted ones "
                    "resumed), then write table.md and table.csv into <out>/<study>/.",
        epilog=f"shipped studies: {shipped}; or a path such as analysis/cifar10_paper.toml "
               "(see analysis/README.md)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("study", nargs="?", default=None, help="study name or TOML file (default: digits)")
    parser.add_argument("--out", default="runs", help="output root (default: runs)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda… (default: cpu)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="students trained at once on CPU (default: the number of cores, at most 2; 1 on CUDA)")
    parser.add_argument("--plan", action="store_true", help="only list the runs and their status")
    parser.add_argument("--yes", action="store_true", help="do not wait after printing the time estimate")
    parser.add_argument("--no-figures", dest="figures", action="store_false",
                        help="skip the closing analysis (per-layer GSP metrics of every student vs the teacher "
                             "on the whole test split) and its figures in <out>/<study>/figures")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from geokd.reproduce import estimate_study_seconds, plan_study, run_study
    from geokd.studies import DEFAULT_STUDY, load_study

    study = load_study(args.study or DEFAULT_STUDY)
    planned = plan_study(study, out=args.out)
    missing = [p for p in planned if p.status != "finished"]
    print(f"study {study.name}: {study.description}")
    print(f"{len(planned)} runs, {len(planned) - len(missing)} finished, {len(missing)} to train -> {args.out}/{study.name}")
    if args.plan:
        for p in planned:
            print(f"  {p.status:<9} {p.method:<16} seed {p.seed:<3} {p.run_dir}")
        return 0
    if study.estimate and missing:
        est = estimate_study_seconds(study, out=args.out, device=args.device)
        hours = est["total_seconds"] / 3600
        print(f"estimated time for the {est['missing_runs']} missing runs on {args.device}: "
              f"{hours:.1f} h ({est['total_seconds'] / max(1, est['missing_runs']) / 60:.1f} min per run)", flush=True)
    plain = not sys.stderr.isatty() or bool(os.environ.get("CI"))

    def start(run, i, n):
        print(f"[{i}/{n}] {run.method} seed {run.seed}{' (resuming)' if run.status == 'partial' else ''}", flush=True)

    def epoch(run, record):
        if plain and "test_error" in record and (record["epoch"] % 5 == 0
                                                 or record["epoch"] == run.config.schedule.epochs):
            print(f"    epoch {record['epoch']}: test error {record['test_error']:.2f}%  {record.get('seconds', 0):.1f}s",
                  flush=True)

    def done(run):
        print(f"    done: {run.method} seed {run.seed}", flush=True)

    jobs = args.jobs or (1 if args.device.startswith("cuda") else max(1, min(2, os.cpu_count() or 1)))
    command = " ".join(["geokd reproduce"] + [shlex.quote(a) for a in (args.study,) if a]
                       + ([f"--out {shlex.quote(args.out)}"] if args.out != "runs" else []))
    t0 = time.perf_counter()

    def finish(table):
        # Runs inside run_study, under the study directory's lock: the analysis and the
        # figures go into that directory too.
        print()
        print(table.markdown())
        print(f"written: {os.path.join(args.out, study.name, 'table.md')} and table.csv "
              f"({time.perf_counter() - t0:.0f} s, {jobs} job{'s' if jobs > 1 else ''})")
        if args.figures:
            _analyze_and_draw(planned, study_dir=os.path.join(args.out, study.name),
                              dataset=study.teacher_config().data.name, device=args.device)

    run_study(study, out=args.out, device=args.device, jobs=jobs, on_run_start=start, on_epoch_end=epoch,
              on_run_end=done if jobs > 1 else None, on_table_written=finish, command=command)
    return 0


def _analyze_and_draw(planned, *, study_dir: str, dataset: str, device: str) -> None:
    """The study's closing figures: the same two steps a user runs by hand, so that the
    figures can be redrawn (or the analysis rerun with other options) from the saved runs:
    geokd analyze <students> --teacher <teacher run> --per-class 0, then geokd figures."""
    from geokd.cli import analyze, build_parser, figures

    teacher = next(str(p.run_dir) for p in planned if p.method == "teacher")
    students = [str(p.run_dir) for p in planned if p.method != "teacher"]
    out = os.path.join(study_dir, "analysis")
    # Parsed by the real parser, so every option of ``geokd analyze`` (today's and any added
    # later) takes its command-line default instead of a hand-kept copy of the list.
    args = build_parser().parse_args(["analyze", *students, "--teacher", teacher, "--dataset", dataset,
                                      "--split", "test", "--per-class", "0", "--device", device,
                                      "--batch-size", "500", "--out", out])
    analyze.run(args)
    figures.run(build_parser().parse_args(["figures", out, "--out", os.path.join(study_dir, "figures")]))
