"""``geokd analyze``: per-layer GSP metrics of students against their teacher.

The output directory is locked (``--out DIR/.lock``, :func:`geokd.train.runs.directory_lock`)
from before the networks are loaded until ``analysis.json`` is written: a second
process writing the same directory refuses at once, naming the directory and the
holder's pid, instead of interleaving its partial tables with the first one's.

Across processes (``torchrun --nproc-per-node G -m geokd analyze ...``, or ``geokd analyze
--launcher torchrun --nproc-per-node G ...``, which starts that itself): the students are
split over the ranks (:mod:`geokd.analysis.distributed_analysis`); rank 0 alone locks and
writes ``--out``, once every rank's results have arrived (no partial tables).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import torch

from geokd.cli.data import add_dataset_options

def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="per-layer graph metrics (smoothness, consistency, distances) of networks vs a teacher",
        description="Compute, per sensing point, label smoothness, k-NN consistency with the teacher and "
                    "teacher-student graph distances, on a fixed class-balanced node set; write tidy "
                    "tables (metrics.csv, metrics.json, a graph column naming each metric's graph) and "
                    "heat-map graphs to --out. With --graphs, every graph metric again under each graph "
                    "variant, and variants.csv: whether the ranking of the student methods depends on the graph.",
    )
    parser.add_argument("networks", nargs="*", metavar="NETWORK",
                        help="students: run directories or checkpoint files (globs allowed), or network specs "
                             "such as 'torchvision:mobilenet_v2?num_classes=10@student.pt' or "
                             "'package.module:factory?width=2@weights.pt'")
    parser.add_argument("--config", help="a study TOML file (e.g. analysis/released_checkpoints.toml); "
                                         "command-line options override it")
    parser.add_argument("--teacher", help="the teacher: run directory, checkpoint or network spec")
    parser.add_argument("--dataset", help="dataset name (cifar10 (default), cifar100, digits, mnist, "
                                          "fashion-mnist), imagefolder:PATH or MODULE:CALLABLE[?k=v&...]")
    parser.add_argument("--split", help="split to evaluate on (default test)")
    parser.add_argument("--per-class", type=int, help="node-set size per class (default 100; 0 = whole split)")
    parser.add_argument("--node-seed", type=int, help="seed of the node set (default 0)")
    parser.add_argument("--output-on", choices=("all", "nodes"),
                        help="measure the output agreement and test error on the whole split (default) "
                             "or on the node set only (one forward pass over the nodes: much faster)")
    parser.add_argument("--k", type=int, help="neighbours of the cosine k-NN graphs (default 10)")
    parser.add_argument("--layers", nargs="+",
                        help="the teacher's sensing points, module names (default: a geokd model's own; "
                             "`geokd layers NETWORK` lists them)")
    parser.add_argument("--graphs", nargs="+", metavar="NAME",
                        help="also measure every layer under these graph variants (GraphSpec names: "
                             "cos-sym-full-all-p1, cos-sym-k10-inter-p1, cos-sym-full-all-p2, cos-sym-k16-intra-p2, "
                             "gauss-/rw- forms...), each built as the GKD loss builds it; writes variants.csv "
                             "(rankings of the student methods and Kendall's tau vs the first variant)")
    parser.add_argument("--student-layers", nargs="+",
                        help="the students' sensing points when their names differ from the teacher's "
                             "(another architecture); compared with --layers by position")
    add_dataset_options(parser)
    parser.add_argument("--data-root", default=None, help="dataset cache folder (default: ~/.cache/geokd)")
    parser.add_argument("--linear-probe", action="store_true", default=None,
                        help="also run a cross-validated linear probe per block (slower)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--out", required=True, help="output directory (locked while it is written)")
    parser.add_argument("--cache-dir", default=None,
                        help="where the teacher's work (graphs, spectra, rows) is kept for the next analyses "
                             "against the same teacher and node set (default: $GEOKD_ANALYSIS_CACHE, else "
                             "$GEOKD_CACHE/analysis, else ~/.cache/geokd/analysis)")
    parser.add_argument("--no-teacher-cache", action="store_true",
                        help="compute the teacher's work again and do not store it")
    parser.add_argument("--memory-budget", default="4GB", type=_size,
                        help="peak resident memory the analysis may use, e.g. 4GB (default), 500MB: features are "
                             "written to an on-disk store in --out and every metric is computed from blocks of it")
    parser.add_argument("--store-dtype", choices=("float32", "float16"), default="float32",
                        help="precision of the stored features (float16 halves the disk and the reads; default float32)")
    parser.add_argument("--knn", choices=("auto", "exact", "approximate"), default="auto",
                        help="k-NN graphs: exact, approximate (candidates from a principal projection, re-ranked "
                             "exactly) or auto (default: approximate above 20,000 nodes)")
    parser.add_argument("--progress-interval", type=float, default=30.0,
                        help="when stderr is not a terminal: the longest silence inside a stage, in seconds "
                             "(default 30)")
    parser.add_argument("--launcher", choices=("torchrun",),
                        help="run this command again under torchrun on --nproc-per-node processes of this "
                             "machine (the students split over them); as `torchrun --nproc-per-node G -m geokd "
                             "analyze ...`, which also works directly (several machines: --nnodes ...)")
    parser.add_argument("--nproc-per-node", type=int, metavar="G",
                        help="with --launcher torchrun: the number of processes (e.g. one per GPU)")
    parser.set_defaults(handler=_command, analyze_parser=parser)


def _size(text) -> int:
    """``--memory-budget``'s value in bytes; a bad size is a usage error that says what is expected."""
    from geokd.analysis.memory_budget import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _command(args) -> int:
    """The command line's handler: a locked output directory is a plain error (exit 2), a
    failed rank of a torchrun job too (exit 1); ``--launcher torchrun`` starts torchrun."""
    from geokd.analysis.distributed_analysis import RankFailedError
    from geokd.train.runs import DirectoryLockedError

    if args.launcher or args.nproc_per_node is not None:
        return _launch(args)
    try:
        return run(args, across_ranks=True)
    except DirectoryLockedError as exc:
        print(f"geokd analyze: error: {exc}", file=sys.stderr)
        return 2
    except RankFailedError as exc:
        print(f"geokd analyze: error: {exc}", file=sys.stderr, flush=True)
        return 1


def _launch(args) -> int:
    """``--launcher torchrun``: this command again under torchrun; its exit code."""
    from geokd.analysis.distributed_analysis import torchrun_command, under_torchrun

    if args.launcher != "torchrun" or args.nproc_per_node is None:
        raise ValueError(f"expected --launcher torchrun and --nproc-per-node G together, got --launcher "
                         f"{args.launcher} and --nproc-per-node {args.nproc_per_node}")
    if under_torchrun():
        raise ValueError(f"expected --launcher outside torchrun, got it inside a job of WORLD_SIZE="
                         f"{os.environ['WORLD_SIZE']} (drop --launcher and --nproc-per-node)")
    command = torchrun_command(["analyze", *_arguments(args.analyze_parser, args,
                                                      drop={"launcher", "nproc_per_node"})],
                               nproc_per_node=args.nproc_per_node, python=sys.executable)
    code = subprocess.run(command).returncode
    return code if code >= 0 else 128 - code   # killed by a signal: the shell's convention


def _arguments(parser, args, *, drop) -> list[str]:
    """The command line (after ``analyze``) that parses to ``args``, without the options in ``drop``.

    Rebuilt from the parsed values rather than cut out of ``sys.argv``: ``main(argv)`` may be
    called with a list, and argparse accepts abbreviations (``--nproc 2``) a cut would miss.
    """
    positional, options = [], []
    for action in parser._actions:
        if action.dest in drop or action.dest == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        value = getattr(args, action.dest, action.default)
        if not action.option_strings:
            positional += [str(v) for v in value] if isinstance(value, list) else [str(value)]
        elif value != action.default:
            flag = max(action.option_strings, key=len)
            if action.nargs == 0:   # store_true / store_false
                options.append(flag)
            elif isinstance(value, (list, tuple)):
                options += [flag, *map(str, value)]
            else:
                options.append(f"{flag}={value}")   # "=": a value may start with "-"
    return positional + options


def _settings(args):
    from geokd.analysis.sources import expand_networks
    from geokd.analysis.study import Study, load_study

    study = load_study(args.config) if args.config else Study()
    overrides = {"teacher": args.teacher, "dataset": args.dataset, "split": args.split,
                 "per_class": args.per_class, "node_seed": args.node_seed, "output_on": args.output_on, "k": args.k,
                 "layers": args.layers, "student_layers": args.student_layers, "mean": args.mean, "std": args.std, "image_size": args.image_size,
                 "linear_probe": args.linear_probe, "variants": getattr(args, "graphs", None)}
    for key, value in overrides.items():
        if value is not None:
            setattr(study, key, value)
    if study.variants:   # a wrong name fails here, before the output directory is locked
        from geokd.graphs.spec_names import parse_graph_names

        parse_graph_names(study.variants, where="--graphs")
    students = expand_networks(args.networks or study.students)
    if not study.teacher:
        raise ValueError("expected a teacher (--teacher or [networks] teacher in --config), got none")
    if not students:
        raise ValueError("expected at least one student (RUN_OR_CKPT or [networks] students in --config), got none")
    return study, students


def run(args, *, across_ranks: bool = False) -> int:
    """Analyze as the command line says; raises ``DirectoryLockedError`` if ``args.out`` is
    being written by another process (callers such as ``geokd reproduce`` must not go on).

    ``across_ranks``: under torchrun (``WORLD_SIZE > 1``) split the students over the ranks,
    rank 0 alone locking and writing ``args.out``. Off by default: ``geokd reproduce`` calls
    this on rank 0 alone, the other ranks are not there to take their share.
    """
    from geokd.analysis.distributed_analysis import joined_ranks, under_torchrun
    from geokd.train.runs import directory_lock

    study, student_paths = _settings(args)
    if not (across_ranks and under_torchrun()):
        with directory_lock(args.out, kind="analysis directory"):
            return _analyze(args, study, student_paths)
    with joined_ranks(device=args.device) as ranks:
        if not ranks.is_main:
            return _analyze(args, study, student_paths, ranks=ranks)
        with directory_lock(args.out, kind="analysis directory"):
            return _analyze(args, study, student_paths, ranks=ranks)


def _analyze(args, study, student_paths, *, ranks=None) -> int:
    from geokd.analysis.nodes import balanced_node_set, whole_set
    from geokd.analysis.pipeline import analyze_networks
    from geokd.analysis.saved import write_heatmaps
    from geokd.analysis.sources import network_from_path
    from geokd.analysis.tables import write_table
    from geokd.data import load_dataset

    teacher = network_from_path(study.teacher, method="teacher")
    students = [network_from_path(p) for p in student_paths]
    if (study.mean is None) != (study.std is None):
        raise ValueError(f"expected mean and std together, got mean={study.mean} std={study.std}")
    data = load_dataset(study.dataset, split=study.split, root=args.data_root, image_size=study.image_size,
                        mean=None if study.mean is None else tuple(study.mean),
                        std=None if study.std is None else tuple(study.std))
    labels = data.labels.numpy()
    if study.per_class > 0:
        nodes = balanced_node_set(labels, per_class=study.per_class, seed=study.node_seed)
        node_set = f"{study.dataset}-{study.split}-{study.per_class}perclass-seed{study.node_seed}"
    else:
        nodes = whole_set(labels)
        node_set = f"{study.dataset}-{study.split}-all"
    if study.output_on == "nodes":
        node_set += "+output-on-nodes"
    images, chosen = data.images, nodes
    if study.output_on == "nodes":
        images, labels, nodes = images[torch.as_tensor(nodes)], labels[nodes], np.arange(nodes.size)
    mean, std = list(data.mean), list(data.std)
    if ranks is None or ranks.is_main:
        where = "" if ranks is None else f" on {ranks.world_size} processes"
        print(f"analyzing {len(students)} student{'' if len(students) == 1 else 's'} against {teacher.name} on {nodes.size} nodes "
              f"({node_set}), output agreement on {len(labels)} inputs{where}", file=sys.stderr)
    start = time.perf_counter()

    def report(net, rows_so_far):
        # Partial results survive an interrupted run; the final write replaces them.
        write_table(rows_so_far, os.path.join(args.out, "metrics"))

    from geokd.analysis.progress import ProgressReporter
    from geokd.analysis.teacher_cache import default_cache_dir
    from geokd.data.fetch import progress_enabled

    # On a terminal, bars (as the forward passes always had); elsewhere (a log file, a
    # scheduler, a notebook) a line per stage and network with the time left.
    # Across ranks: lines named by rank, no bars (several processes share the terminal).
    prefix = "" if ranks is None else f"[rank {ranks.rank}/{ranks.world_size}] "
    progress = ProgressReporter(write=lambda line: print(prefix + line, file=sys.stderr, flush=True),
                                bars=ranks is None and progress_enabled(None),
                                num_networks=1 + len(students) if ranks is None else None,
                                interval=args.progress_interval)
    cache_dir = None if args.no_teacher_cache else (args.cache_dir or default_cache_dir())
    # The features' scratch store (each network's removed once it is measured), one per rank.
    store_root = os.path.join(args.out, "activations")
    store_dir = store_root if ranks is None else os.path.join(store_root, f"rank{ranks.rank}")
    memory_budget = args.memory_budget
    options = dict(node_indices=nodes, mean=mean, std=std, layers=study.layers, student_layers=study.student_layers,
                   k=study.k, num_eigenvectors=study.num_eigenvectors, linear_probe=study.linear_probe,
                   device=args.device if ranks is None else ranks.device, batch_size=args.batch_size,
                   node_set=node_set, graphs=study.variants, progress=progress, cache_dir=cache_dir,
                   memory_budget=memory_budget, store_dtype=args.store_dtype, knn=args.knn,
                   store_dir=store_dir)
    try:
        if ranks is None:
            result, gathered = analyze_networks(teacher, students, images, labels, on_network=report, **options), None
        else:
            from geokd.analysis.distributed_analysis import analyze_across_ranks

            gathered = analyze_across_ranks(teacher, students, images, labels, ranks=ranks, **options)
            if gathered is None:
                return 0   # rank 0 writes --out
            result = gathered.result
            progress.timings = dict(result.timings)   # the summary line's: every rank's, summed
    finally:
        progress.close()
        shutil.rmtree(store_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(store_root)   # the last rank to finish removes the emptied folder
    if study.variants:
        from geokd.analysis.rankings import VARIANT_COLUMNS, variant_rankings
        from geokd.analysis.tables import write_csv

        variants_path = write_csv(variant_rankings(result.rows, variants=study.variants),
                                  os.path.join(args.out, "variants.csv"), columns=VARIANT_COLUMNS)
    write_heatmaps(os.path.join(args.out, "heatmaps.npz"), result.heatmaps, result.heatmap_labels)
    settings = {"teacher": study.teacher, "students": student_paths, "dataset": study.dataset,
                "split": study.split, "image_size": study.image_size, "mean": list(mean), "std": list(std),
                "node_set": node_set,
                "per_class": study.per_class, "node_seed": study.node_seed, "output_on": study.output_on,
                "k": study.k,
                "num_eigenvectors": study.num_eigenvectors, "layers": study.layers,
                "student_layers": study.student_layers, "variants": list(study.variants),
                "node_indices": chosen.tolist(), "seconds": round(time.perf_counter() - start, 1),
                "stage_seconds": {stage: round(seconds, 3) for stage, seconds in result.timings.items()},
                "memory_budget": memory_budget, "store_dtype": args.store_dtype, "knn": args.knn,
                "teacher_cached": result.teacher_cached, "world_size": 1 if gathered is None else gathered.world_size}
    if gathered is not None:
        settings["stage_seconds_per_rank"] = [{stage: round(seconds, 3) for stage, seconds in timings.items()}
                                              for timings in gathered.rank_timings]
    with open(os.path.join(args.out, "analysis.json"), "w") as handle:
        json.dump(settings, handle, indent=1)
    # The tables last: across ranks they are the mark of a finished analysis, so a job
    # stopped while rank 0 writes must not leave them without analysis.json and heatmaps.npz.
    csv_path, json_path = write_table(result.rows, os.path.join(args.out, "metrics"))
    print(f"wrote {len(result.rows)} rows to {csv_path} and {json_path} in {settings['seconds']} s")
    if study.variants:
        print(f"wrote the rankings under {len(study.variants)} graph variants to {variants_path}")
    print(progress.summary_line(total=time.perf_counter() - start))
    return 0
