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
                    "resumed), then write table.md and table.csv into <out>/<study>/. Under torchrun "
                    "(torchrun --nnodes N --nproc-per-node G -m geokd reproduce STUDY --device cuda) every "
                    "run trains data-parallel over all processes; <out> must be visible to all of them.",
        epilog=f"shipped studies: {shipped}; or a path such as analysis/cifar10_paper.toml, "
               "analysis/cifar100_crd.toml (see analysis/README.md)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("study", nargs="?", default=None, help="study name or TOML file (default: digits)")
    parser.add_argument("--out", default="runs", help="output root (default: runs)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda… (default: cpu)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="students trained at once on CPU (default: the number of cores, at most 2; "
                             "1 on CUDA and under torchrun)")
    parser.add_argument("--pair", action="append", default=[], metavar="NAME",
                        help="a study with [[pairs]]: run only this pair (repeatable; e.g. one pair per GPU)")
    parser.add_argument("--plan", action="store_true", help="only list the runs and their status")
    parser.add_argument("--estimate", action="store_true",
                        help="only print the time estimate of the missing runs (timed steps on this --device)")
    parser.add_argument("--yes", action="store_true", help="do not wait after printing the time estimate")
    parser.add_argument("--estimate-batch", type=int, default=None, metavar="N",
                        help="time the estimate's steps at N inputs and scale linearly (a machine that cannot "
                             "hold the study's batch)")
    parser.add_argument("--no-figures", dest="figures", action="store_false",
                        help="skip the closing analysis (per-layer GSP metrics of every student vs the teacher "
                             "on the whole test split) and its figures in <out>/<study>/figures")
    parser.set_defaults(handler=run)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


def print_estimate(study, est: dict, *, device: str) -> None:
    """The estimate's lines: per pair (a study with pairs) and in total, per device."""
    world = est.get("world_size", 1)
    where = f"{device}" + (f", per device of {world} data-parallel processes" if world > 1 else "")
    if "pairs" in est:
        for name, part in est["pairs"].items():
            if part["missing_runs"]:
                steps = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in part["seconds_per_step"].items())
                print(f"  {name:<28} {part['missing_runs']:>3} runs  {_hours(part['total_seconds']):>9}  "
                      f"(step: {steps})")
    else:
        steps = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in est.get("seconds_per_step", {}).items())
        if steps:
            print(f"  one training step at batch {est.get('batch')}: {steps}")
    n = max(1, est["missing_runs"])
    print(f"estimated time for the {est['missing_runs']} missing runs on {where}: {_hours(est['total_seconds'])} "
          f"({est['total_seconds'] / n / 3600:.2f} h per run; an estimate from timed steps on random inputs, "
          "distillation terms and evaluation not included)", flush=True)
    for note in est.get("notes", []):
        print(f"  note: {note}")


def run(args) -> int:
    from geokd.reproduce import BenchmarkTable, estimate_study_seconds, plan_study, process_rank
    from geokd.studies import DEFAULT_STUDY, load_study

    study = load_study(args.study or DEFAULT_STUDY)
    main = process_rank() == 0
    say = print if main else (lambda *a, **k: None)
    if args.pair and not study.pairs:
        from geokd.errors import ConfigError

        raise ConfigError(f"--pair: study {study.name!r} has no [[pairs]]; run it without --pair")
    parts = [study.pair_study(p) for p in args.pair] if args.pair else list(study.pairs) or [study]
    planned = [run for part in parts for run in plan_study(part, out=args.out)]
    seen: set = set()
    planned = [p for p in planned if not (p.run_dir in seen or seen.add(p.run_dir))]
    missing = [p for p in planned if p.status != "finished"]
    say(f"study {study.name}: {study.description}" + (f" ({len(parts)} of {len(study.pairs)} pairs)"
                                                      if study.pairs else ""))
    say(f"{len(planned)} runs, {len(planned) - len(missing)} finished, {len(missing)} to train -> {args.out}/{study.name}")
    if args.plan:
        for p in planned:
            pair = f"{p.pair or '':<26} " if study.pairs else ""
            say(f"  {p.status:<9} {pair}{p.method:<16} seed {p.seed:<3} {p.run_dir}")
        return 0
    if (study.estimate or args.estimate) and missing and main:
        est = estimate_study_seconds(study, out=args.out, device=args.device, max_batch=args.estimate_batch,
                                     pairs=args.pair or None)
        print_estimate(study, est, device=args.device)
    if args.estimate:
        return 0
    plain = not sys.stderr.isatty() or bool(os.environ.get("CI"))

    def start(run, i, n):
        say(f"[{i}/{n}] {(run.pair + ' ') if run.pair else ''}{run.method} seed {run.seed}"
            f"{' (resuming)' if run.status == 'partial' else ''}", flush=True)

    def epoch(run, record):
        if plain and "test_error" in record and (record["epoch"] % 5 == 0
                                                 or record["epoch"] == run.config.schedule.epochs):
            say(f"    epoch {record['epoch']}: test error {record['test_error']:.2f}%  {record.get('seconds', 0):.1f}s",
                flush=True)

    def done(run):
        say(f"    done: {run.method} seed {run.seed}", flush=True)

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    jobs = args.jobs or (1 if args.device.startswith("cuda") or distributed
                         else max(1, min(2, os.cpu_count() or 1)))
    command = " ".join(["geokd reproduce"] + [shlex.quote(a) for a in (args.study,) if a]
                       + [f"--pair {shlex.quote(p)}" for p in args.pair]
                       + ([f"--out {shlex.quote(args.out)}"] if args.out != "runs" else []))
    t0 = time.perf_counter()
    tables = []
    for part in parts:
        tables.append(_reproduce(part, args, jobs=jobs, command=command, t0=t0, callbacks=(start, epoch, done)))
    if study.pairs and main:
        if args.pair:
            print(f"\nthe summary table {args.out}/{study.name}/table.md is written by a run of all pairs "
                  f"(geokd reproduce {shlex.quote(args.study or study.name)} reuses the finished ones)")
        else:
            bench = BenchmarkTable.from_tables(study, tables, command=command)
            bench.write(os.path.join(args.out, study.name))
            print()
            print(bench.markdown())
            print(f"written: {os.path.join(args.out, study.name, 'table.md')} and table.csv")
    return 0


def _reproduce(study, args, *, jobs: int, command: str, t0: float, callbacks):
    """One single-pair study: train, tabulate, print, analyse (rank 0 only)."""
    from geokd.reproduce import plan_study, run_study

    start, epoch, done = callbacks
    planned = plan_study(study, out=args.out)

    def finish(table):
        # Runs inside run_study, under the study directory's lock: the analysis and the
        # figures go into that directory too.
        print()
        print(table.markdown())
        print(f"written: {os.path.join(args.out, study.name, 'table.md')} and table.csv "
              f"({time.perf_counter() - t0:.0f} s, {jobs} job{'s' if jobs > 1 else ''})")
        data = planned[-1].config.data
        if args.figures and data.stream:
            print("figures skipped: the closing analysis reads the whole test split into memory, which a streamed "
                  "folder does not fit; run geokd analyze on a class-balanced subset (--per-class N) instead")
        elif args.figures:
            _analyze_and_draw(planned, study_dir=os.path.join(args.out, study.name), dataset=data.name,
                              teacher=study.teacher_path, device=args.device)

    return run_study(study, out=args.out, device=args.device, jobs=jobs, on_run_start=start, on_epoch_end=epoch,
                     on_run_end=done if jobs > 1 else None, on_table_written=finish, command=command)


def _analyze_and_draw(planned, *, study_dir: str, dataset: str, device: str, teacher: str | None = None) -> None:
    """The study's closing figures: the same two steps a user runs by hand, so that the
    figures can be redrawn (or the analysis rerun with other options) from the saved runs:
    geokd analyze <students> --teacher <teacher run> --per-class 0, then geokd figures."""
    from geokd.cli import analyze, build_parser, figures

    teacher = next((str(p.run_dir) for p in planned if p.method == "teacher"), teacher)
    students = [str(p.run_dir) for p in planned if p.method != "teacher"]
    out = os.path.join(study_dir, "analysis")
    # Parsed by the real parser, so every option of ``geokd analyze`` (today's and any added
    # later) takes its command-line default instead of a hand-kept copy of the list.
    args = build_parser().parse_args(["analyze", *students, "--teacher", teacher, "--dataset", dataset,
                                      "--split", "test", "--per-class", "0", "--device", device,
                                      "--batch-size", "500", "--out", out])
    analyze.run(args)
    figures.run(build_parser().parse_args(["figures", out, "--out", os.path.join(study_dir, "figures")]))
