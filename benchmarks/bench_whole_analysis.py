"""The whole analysis of the GKD paper's 21 released networks on the full CIFAR-10 test set.

Every metric (test error and output agreement; per sensing point smoothness, k-NN votes and
their agreements, aligned distance, λ and heat-trace distances, cross-graph variation) for the
teacher WRN-28-1 and its 10 GKD and 10 RKD-D students WRN-28-0.5, on all 10,000 test images
as nodes: what ``geokd analyze --config analysis/released_full_test.toml`` runs. The teacher's
activations and graphs are computed once. The target is 600 s on 2 cores.

Baselines, measured in the same run:

- the budget itself (600 s);
- the floor of the work: the networks' forward passes over the test set (timed here for the
  teacher and one student, the others are the same architecture) plus the Gram products of
  the three layers at the matmul peak measured here (``N²·d`` multiply-adds per layer, half
  of them by symmetry). ``ratio_to_floor`` says how much of the run is anything else.

Run: ``python -m benchmarks.bench_whole_analysis [--students N] [--per-class P]`` (prints a
table, writes results/bench_whole_analysis.json; ``--students 1 --per-class 100`` is a
one-minute smoke test whose numbers say nothing about the target).
"""

from __future__ import annotations

import argparse
import glob
import os
import time

import numpy as np
import torch

from benchmarks._common import format_table, peak_memory, write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGET_SECONDS = 600.0
# The released networks' training normalization (REFERENCE §3).
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def released_dir() -> str:
    """The released networks' folder: :func:`geokd.checkpoints.released.released_dir` ($GEOKD_RELEASED_DIR)."""
    from geokd.checkpoints.released import released_dir as geokd_released_dir

    return str(geokd_released_dir())


def matmul_peak_gflops() -> float:
    """float32 GEMM rate of this machine now (a 4096² product, best of 3), GFLOP/s."""
    a = np.random.default_rng(0).random((4096, 4096), dtype=np.float32)
    a @ a
    best = min(_timed(lambda: a @ a) for _ in range(3))
    return 2 * 4096 ** 3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=None, help="first N students only (default: all 20)")
    parser.add_argument("--per-class", type=int, default=0, help="node set per class (default 0: the whole test set)")
    args = parser.parse_args(argv)

    from geokd.analysis.collect import collect_activations
    from geokd.analysis.nodes import balanced_node_set, whole_set
    from geokd.analysis.pipeline import Network, analyze_networks
    from geokd.analysis.sources import network_from_path
    from geokd.checkpoints import load_any
    from geokd.data import load_dataset

    folder = released_dir()
    teacher_path = os.path.join(folder, "WideResNet28-1_0.pth")
    student_paths = sorted(glob.glob(os.path.join(folder, "GKD_*.pth"))) + sorted(glob.glob(os.path.join(folder, "RKD_*.pth")))
    if not os.path.isfile(teacher_path) or len(student_paths) != 20:
        raise SystemExit(f"expected the released teacher and 20 students in {folder}, found "
                         f"{int(os.path.isfile(teacher_path))} teacher and {len(student_paths)} students")
    student_paths = student_paths[:args.students] if args.students else student_paths
    data = load_dataset("cifar10", split="test")
    labels = data.labels.numpy()
    nodes = whole_set(labels) if args.per_class == 0 else balanced_node_set(labels, per_class=args.per_class, seed=0)

    teacher = network_from_path(teacher_path, method="teacher")
    students = [network_from_path(p) for p in student_paths]
    finished: list[tuple[str, float]] = []
    start = [0.0]

    def on_network(net: Network, rows) -> None:
        finished.append((net.name, time.perf_counter() - start[0]))
        print(f"  {net.name}: done at {finished[-1][1]:.0f} s", flush=True)

    def run():
        start[0] = time.perf_counter()
        return analyze_networks(teacher, students, data.images, labels, node_indices=nodes, mean=MEAN, std=STD,
                                k=10, num_eigenvectors=10, node_set="bench", on_network=on_network)

    print(f"analysis of 1 teacher + {len(students)} students on {nodes.size} nodes", flush=True)
    measured = peak_memory(run)
    total = measured["seconds"]
    result = measured["result"]

    # The floor, measured now: forwards of the teacher and of one student (same architecture
    # for all 20), and the layers' Gram products at this machine's GEMM rate.
    forward = {}
    dims = {}
    for role, path in (("teacher", teacher_path), ("student", student_paths[0])):
        model = load_any(path, device="cpu")
        began = time.perf_counter()
        acts = collect_activations(model, data.images, node_indices=nodes[:2], mean=MEAN, std=STD, progress=False)
        forward[role] = time.perf_counter() - began
        dims[role] = [v.shape[1] for v in acts.features.values()]
    peak = matmul_peak_gflops()
    n = nodes.size
    gram = {role: sum(n * n * d for d in dims[role]) / (peak * 1e9) for role in dims}  # N²·d/2 MACs = N²·d flops
    floor = forward["teacher"] + gram["teacher"] + len(students) * (forward["student"] + gram["student"])

    rows = [{"item": f"whole analysis, 1 + {len(students)} networks, {n} nodes", "seconds": total,
             "budget_s": BUDGET_SECONDS, "ratio_to_budget": total / BUDGET_SECONDS,
             "floor_s": floor, "ratio_to_floor": total / floor,
             "peak_rss_mb": measured["peak_rss_delta_mb"]}]
    print(format_table(rows, list(rows[0])))
    breakdown = [{"part": "forwards (teacher + students)", "seconds": forward["teacher"] + len(students) * forward["student"]},
                 {"part": f"Gram products at {peak:.0f} GFLOP/s", "seconds": gram["teacher"] + len(students) * gram["student"]},
                 {"part": "everything else", "seconds": total - floor}]
    print(format_table(breakdown, ["part", "seconds"]))
    payload = {"total_seconds": total, "budget_seconds": BUDGET_SECONDS, "nodes": int(n),
               "students": len(students), "rows_written": len(result.rows), "peak_rss_delta_mb": measured["peak_rss_delta_mb"],
               "floor_seconds": floor, "forward_seconds": forward, "gram_seconds_at_peak": gram,
               "matmul_peak_gflops": peak, "per_network_done_at": finished, "breakdown": breakdown,
               "metrics": sorted({r["metric"] for r in result.rows}), "threads": torch.get_num_threads(),
               "load_average": os.getloadavg()}
    print(write_json("bench_whole_analysis" if args.students is None and args.per_class == 0
                     else "bench_whole_analysis_quick", payload))
    return payload


if __name__ == "__main__":
    main()
