"""Run every benchmark, one process each, and print one final table of the targets.

Each benchmark runs as ``python -m benchmarks.<name>`` in its own process (fresh
allocator and thread pools, so one cannot skew the next) and writes its JSON under
``benchmarks/results/``; this script then reads those files and prints, per item,
geokd's number, the baseline's, the ratio, the target and whether it is met. The
summary is written to ``benchmarks/results/run_all.json``.

Run: ``python -m benchmarks.run_all [--quick] [--only NAME ...] [--skip NAME ...]``
(``--quick`` runs small smoke-test sizes: its numbers say nothing about the targets).
Measure on an otherwise idle machine: the load average is recorded with each result.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._common import RESULTS_DIR, format_table, write_json

ROOT = Path(__file__).resolve().parent.parent

#: name -> (full-run arguments, quick arguments or None to skip it in --quick)
BENCHMARKS: dict[str, tuple[list[str], list[str] | None]] = {
    "bench_matmul_peak": ([], ["--quick"]),
    "bench_distill_step": ([], ["--quick"]),
    "bench_gkd_loss": (["--step"], ["--repeat", "2"]),
    "bench_graph_kernels": ([], ["--quick"]),
    "bench_input_pipeline": ([], ["--repeats", "1"]),
    "bench_throughput": ([], ["--quick"]),
    "bench_training_step": ([], ["--epochs", "2"]),
    "bench_knn_scaling": ([], ["--quick"]),
    "bench_knn_graph": ([], ["--n", "2000", "--d", "1024", "--pygsp-n", "300"]),
    "bench_analysis": ([], None),
    "bench_whole_analysis": ([], ["--students", "1", "--per-class", "100"]),
    "bench_graph_variants": ([], ["--quick"]),
    "bench_analysis_scale": ([], ["--sizes", "2000", "4000"]),
}


def _load(name: str, quick: bool) -> dict | None:
    for candidate in ((f"{name}_quick", name) if quick else (name,)):
        path = Path(RESULTS_DIR) / f"{candidate}.json"
        if path.is_file():
            return json.loads(path.read_text())
    return None


def _row(item: str, geokd, baseline, ratio, target: str, met) -> dict:
    return {"item": item, "geokd": geokd, "baseline": baseline, "ratio": ratio, "target": target,
            "status": "n/a" if met is None else ("met" if met else "MISSED")}


def summarize(quick: bool) -> list[dict]:
    """One row per issue target, from whatever result files exist."""
    rows = []
    peak = _load("bench_matmul_peak", quick)
    if peak:
        rows.append(_row("matmul peak (float32 GEMM)", f"{peak['peak_gflops']:.1f} GFLOP/s",
                         f"torch {peak['torch_gflops']:.1f} / numpy {peak['numpy_gflops'] or 0:.1f}", "", "yardstick",
                         None))
    step = _load("bench_distill_step", quick)
    if step:
        base = next(r for r in step["rows"] if r["case"] == "ce+teacher")
        for r in step["rows"]:
            if r.get("control"):
                rows.append(_row("T1 noise floor: the baseline step vs itself (A/A)", f"{r['ms_per_step']:.0f} ms",
                                 f"{base['ms_per_step']:.0f} ms", f"{r['ratio_vs_ce+teacher']:.3f}x "
                                 f"({r['ratio_90%']})", "context", None))
            elif "target" in r:
                ratio = r["ratio_vs_ce+teacher"]
                rows.append(_row(f"T1 step overhead, {r['case']}", f"{r['ms_per_step']:.0f} ms",
                                 f"{base['ms_per_step']:.0f} ms (no term)", f"{ratio:.3f}x", "<= 1.05x", ratio <= 1.05))
    pipe = _load("bench_input_pipeline", quick)
    if pipe:
        rows.append(_row("T2 input pipeline, CIFAR-10 epoch", f"{pipe['geokd_seconds_per_epoch']:.2f} s",
                         f"{pipe['torchvision_seconds_per_epoch']:.2f} s (torchvision, 2 workers)",
                         f"{pipe['speedup']:.1f}x", ">= 5x", pipe["speedup"] >= 5))
    thr = _load("bench_throughput", quick)
    if thr:
        plain = next(r for r in thr["rows"] if r["system"].startswith("plain"))
        # bfloat16 AMP rows are context: other numerics than the float32 baseline.
        counted = [r for r in thr["rows"]
                   if not r["system"].startswith("plain") and not str(r.get("target", "")).startswith("context")]
        best = max(counted, key=lambda r: r["images_per_s"])
        rows.append(_row(f"T3 training throughput ({best['system']})", f"{best['images_per_s']:.0f} img/s "
                         f"({100 * best['fraction_of_peak']:.0f}% of peak)",
                         f"{plain['images_per_s']:.0f} img/s ({100 * plain['fraction_of_peak']:.0f}% of peak)",
                         f"{best['ratio_vs_plain']:.2f}x", ">= 1.3x", best["ratio_vs_plain"] >= 1.3))
    knn = _load("bench_knn_scaling", quick)
    if knn:
        ex, sk, ap = knn["main"][:3]
        n = knn["n"]
        rows.append(_row(f"T4 k-NN exact N={n} d={knn['d']} memory", f"{ex['peak_rss_mb']:.0f} MB RSS "
                         f"(+{ex['peak_rss_delta_mb']:.0f})", f"sklearn +{sk['peak_rss_delta_mb']:.0f} MB", "",
                         "< 2048 MB", ex["peak_rss_mb"] < 2048))
        rows.append(_row(f"T4 k-NN exact vs sklearn brute (N={n})", f"{ex['seconds']:.1f} s "
                         f"({100 * ex['gemm_fraction_of_peak']:.0f}% of peak)",
                         f"{sk['seconds']:.1f} s ({100 * sk['gemm_fraction_of_peak']:.0f}% of peak)",
                         f"{ex['ratio_sklearn/this']:.2f}x", ">= 1x", ex["ratio_sklearn/this"] >= 1))
        pg, ours = knn["pygsp"]
        rows.append(_row(f"T4 k-NN exact vs PyGSP NNGraph (N={ours['n']})", f"{ours['seconds']:.2f} s",
                         f"{pg['seconds']:.1f} s", f"{ours['speedup_vs_pygsp']:.1f}x", ">= 3x",
                         ours["speedup_vs_pygsp"] >= 3))
        rows.append(_row(f"T4 k-NN approximate vs sklearn (N={n})", f"{ap['seconds']:.1f} s",
                         f"{sk['seconds']:.1f} s", f"{ap['ratio_sklearn/this']:.2f}x", ">= 3x",
                         ap["ratio_sklearn/this"] >= 3))
        rows.append(_row("T4 k-NN approximate recall (default settings)", f"{knn['approx_neighbour_recall']:.4f}",
                         "exact (sklearn) neighbours", "", ">= 0.99", knn["approx_neighbour_recall"] >= 0.99))
    analysis = _load("bench_analysis", quick)
    if analysis:
        for r in analysis.get("results", []):
            rows.append(_row(f"T5 analysis: {r['case']}", f"{r['geokd_s']:.3f} s",
                             f"{r['baseline_s']:.3f} s ({r['baseline']})", f"{r['speedup']:.1f}x", "context", None))
    whole = _load("bench_whole_analysis", quick)
    if whole:
        total = whole["total_seconds"]
        rows.append(_row(f"T5 whole analysis (1 + {whole['students']} networks x 3 points, {whole['nodes']} nodes)",
                         f"{total:.0f} s, {whole['peak_rss_delta_mb']:.0f} MB",
                         f"floor {whole['floor_seconds']:.0f} s (forwards + Grams at peak)",
                         f"{total / whole['floor_seconds']:.2f}x floor", "< 600 s",
                         total < 600 and whole["students"] == 20 and whole["nodes"] == 10_000))
    variants = _load("bench_graph_variants", quick)
    if variants:
        worst = max(variants["summary"], key=lambda r: r["ratio_vs_first"])
        rows.append(_row(f"T6 extra graph variant at {variants['nodes']} nodes (worst: {worst['variant']})",
                         f"{worst['network_seconds']:.3f} s", f"first variant {variants['first_seconds']:.3f} s "
                         "(Gram + graph)", f"{worst['ratio_vs_first']:.2f}x", "<= 0.25x",
                         worst["ratio_vs_first"] <= 0.25))
    scale = _load("bench_analysis_scale", quick)
    if scale:
        largest = scale["runs"][-1]
        rows.append(_row(f"T7 whole-split analysis, {largest['n']} nodes, teacher + 2 students",
                         f"{largest['seconds']:.0f} s, {largest['peak_bytes'] / 2 ** 30:.2f} GB",
                         f"in-memory exact at {scale['runs'][0]['n']}: "
                         f"{scale['baseline_in_memory_exact']['peak_bytes'] / 2 ** 30:.2f} GB",
                         f"memory ~ N^{scale.get('memory_exponent', float('nan')):.2f}", "< 4 GB peak",
                         largest["peak_bytes"] < 4 * 2 ** 30))
        worst = max(r["network_seconds"][2] / (r["network_seconds"][0] + r["network_seconds"][1])
                    for r in scale["runs"])
        rows.append(_row("T7 an additional student vs the first network", f"{worst:.2f}x", "teacher + 1st student",
                         f"{worst:.2f}", "<= 0.60", worst <= 0.60))
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="run all geokd benchmarks and print the table of targets")
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes (numbers do not test the targets)")
    parser.add_argument("--only", nargs="*", default=None, help="benchmark names to run (default: all)")
    parser.add_argument("--skip", nargs="*", default=(), help="benchmark names not to run")
    parser.add_argument("--summary-only", action="store_true", help="run nothing; summarize existing results")
    args = parser.parse_args(argv)
    unknown = [n for n in (args.only or []) + list(args.skip) if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}")

    runs = []
    if not args.summary_only:
        for name, (full, quick) in BENCHMARKS.items():
            if (args.only is not None and name not in args.only) or name in args.skip:
                continue
            if not (ROOT / "benchmarks" / f"{name}.py").is_file():
                runs.append({"benchmark": name, "status": "missing", "seconds": 0.0})
                continue
            if args.quick and quick is None:
                runs.append({"benchmark": name, "status": "skipped in --quick", "seconds": 0.0})
                continue
            command = [sys.executable, "-m", f"benchmarks.{name}", *(quick if args.quick else full)]
            print(f"\n=== {' '.join(command[1:])} (load average {os.getloadavg()[0]:.2f})", flush=True)
            start = time.perf_counter()
            code = subprocess.call(command, cwd=ROOT, env={**os.environ, "CI": os.environ.get("CI", "1")})
            runs.append({"benchmark": name, "status": "ok" if code == 0 else f"exit {code}",
                         "seconds": time.perf_counter() - start})

    rows = summarize(args.quick)
    if runs:
        print("\nbenchmark processes:")
        print(format_table(runs, ["benchmark", "status", "seconds"]))
    print("\ntargets (geokd vs baseline measured in the same run):")
    print(format_table(rows, ["item", "geokd", "baseline", "ratio", "target", "status"]))
    if args.quick:
        print("(--quick: smoke-test sizes; these numbers do not test the targets)")
    payload = {"quick": args.quick, "runs": runs, "summary": rows, "load_average": os.getloadavg()}
    print(f"wrote {write_json('run_all_quick' if args.quick else 'run_all', payload)}")
    return payload


if __name__ == "__main__":
    main()
