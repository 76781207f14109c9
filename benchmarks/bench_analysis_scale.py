"""Growth of a whole-split analysis: time and peak memory at N = 10k, 25k, 50k, and per student.

``geokd analyze --split train`` of the released WRN-28-1 teacher and two GKD students on the
first N CIFAR-10 training images per class-balanced node set (``--per-class N/10``, ``0`` for
the whole split), each run in its own process under the default memory budget (4 GB), its
wall time and peak resident memory (``VmHWM``, what ``/usr/bin/time -v`` reports as its maximum
resident set) taken by that process itself. From the three sizes, the exponents ``a`` of ``time ~ N^a`` and
``memory ~ N^a`` (least squares in log-log).

Baseline, measured in the same run: today's in-memory analysis before the store (features
held in memory, exact k-NN graphs: ``analyze_networks(..., store_dir=None, knn="exact")``) at
the smallest N, against which the streamed analysis's time and memory are given as ratios.
Also per size: each additional student's time against the first network's (teacher and
first student, what a one-student run costs), from the run's own "done in" lines; the
target is at most 0.60.

Run: ``python -m benchmarks.bench_analysis_scale [--sizes 10000 25000 50000]`` (about 12 min;
``--sizes 2000 4000`` is a two-minute smoke test). Writes results/bench_analysis_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks._common import format_table, write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER = "WideResNet28-1_0.pth"
STUDENTS = [f"GKD_28-1_teaches_28-0.5_0.0_0.0_25.0_1_128_False_False_False_{seed}.pth" for seed in (0, 1)]
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
# The process's own high-water mark (VmHWM): ru_maxrss would carry a forking parent's peak across exec.
_PEAK = "import re; print('PEAK', int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]) * 1024)"


def released_dir() -> str:
    from geokd.checkpoints.released import released_dir as folder

    return str(folder())


def streamed_run(n: int, out: str) -> dict:
    """``geokd analyze`` on ``n`` training nodes in a fresh process: seconds, peak bytes, per-network times."""
    folder = released_dir()
    per_class = 0 if n >= 50_000 else n // 10
    args = ["analyze", "--teacher", os.path.join(folder, TEACHER), *[os.path.join(folder, s) for s in STUDENTS],
            "--split", "train", "--per-class", str(per_class), "--output-on", "nodes", "--no-teacher-cache",
            "--out", out]
    code = f"import sys; from geokd.cli import main; rc = main(sys.argv[1:]); {_PEAK}; sys.exit(rc)"
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"geokd analyze failed on {n} nodes:\n{done.stderr[-3000:]}")
    networks = [_seconds(text) for text in re.findall(r"\] \S+ done in ([^;\n]+)", done.stderr)]
    summary = [line for line in done.stdout.splitlines() if line.startswith("time per stage")]
    return {"n": n, "seconds": seconds, "peak_bytes": int(done.stdout.split("PEAK")[-1].split()[0]),
            "network_seconds": networks, "stages": summary[-1] if summary else "",
            "analysis_seconds": json.load(open(os.path.join(out, "analysis.json")))["seconds"]}


def _seconds(text: str) -> float:
    """``"1 min 5 s"`` or ``"42 s"`` or ``"3.5 s"`` as seconds."""
    total = 0.0
    for value, unit in re.findall(r"([0-9.]+) (h|min|s)", text):
        total += float(value) * {"h": 3600, "min": 60, "s": 1}[unit]
    return total


def in_memory_baseline(n: int) -> dict:
    """The analysis as it was before the store (features in memory, exact k-NN), in a fresh process."""
    code = f"""
import sys, time, numpy as np
from geokd.analysis.nodes import balanced_node_set
from geokd.analysis.pipeline import analyze_networks
from geokd.analysis.sources import network_from_path
from geokd.data import load_dataset
folder = {released_dir()!r}
data = load_dataset("cifar10", split="train")
labels = data.labels.numpy()
nodes = balanced_node_set(labels, per_class={n // 10}, seed=0)
began = time.perf_counter()
analyze_networks(network_from_path(folder + "/" + {TEACHER!r}, method="teacher"),
                 [network_from_path(folder + "/" + s) for s in {STUDENTS!r}],
                 data.images[nodes], labels[nodes], node_indices=np.arange(nodes.size), mean={MEAN!r}, std={STD!r},
                 store_dir=None, knn="exact")
print("SECONDS", time.perf_counter() - began)
{_PEAK}
"""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"in-memory baseline failed:\n{done.stderr[-3000:]}")
    return {"n": n, "seconds": time.perf_counter() - began,
            "peak_bytes": int(done.stdout.split("PEAK")[-1].split()[0])}


def exponent(sizes, values) -> float:
    """Least-squares slope of log(value) on log(N).

    >>> round(exponent([1, 2, 4], [3, 12, 48]), 6)
    2.0
    """
    return float(np.polyfit(np.log(sizes), np.log(values), 1)[0])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 25_000, 50_000])
    args = parser.parse_args(argv)
    sizes = sorted(args.sizes)
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for n in sizes:
            print(f"geokd analyze, teacher + {len(STUDENTS)} students, {n} training nodes ...", flush=True)
            runs.append(streamed_run(n, os.path.join(scratch, f"out{n}")))
    print(f"baseline: in-memory exact analysis on {sizes[0]} nodes ...", flush=True)
    baseline = in_memory_baseline(sizes[0])
    table = []
    for run in runs:
        first = run["network_seconds"][0] + run["network_seconds"][1]   # teacher + first student
        table.append({"nodes": run["n"], "seconds": run["seconds"], "peak_gb": run["peak_bytes"] / 2 ** 30,
                      "second_student/first_network": run["network_seconds"][2] / first})
    table.append({"nodes": f"{sizes[0]} in-memory exact (baseline)", "seconds": baseline["seconds"],
                  "peak_gb": baseline["peak_bytes"] / 2 ** 30, "second_student/first_network": float("nan")})
    print(format_table(table, list(table[0])))
    payload = {"runs": runs, "baseline_in_memory_exact": baseline,
               "ratio_time_streamed/in_memory": runs[0]["seconds"] / baseline["seconds"],
               "ratio_peak_streamed/in_memory": runs[0]["peak_bytes"] / baseline["peak_bytes"],
               "threads": os.cpu_count(), "load_average": os.getloadavg()}
    if len(sizes) >= 2:
        payload["time_exponent"] = exponent(sizes, [r["seconds"] for r in runs])
        payload["memory_exponent"] = exponent(sizes, [r["peak_bytes"] for r in runs])
        print(f"time ~ N^{payload['time_exponent']:.2f}, peak memory ~ N^{payload['memory_exponent']:.2f}; "
              f"at {sizes[0]} nodes the streamed run takes {payload['ratio_time_streamed/in_memory']:.2f}x the time "
              f"and {payload['ratio_peak_streamed/in_memory']:.2f}x the memory of the in-memory baseline")
    print(write_json("bench_analysis_scale" if sizes == [10_000, 25_000, 50_000] else "bench_analysis_scale_quick",
                     payload))
    return payload


if __name__ == "__main__":
    main()
