"""geokd's compiled graph kernels against ATen's products (MKL on x86), on the paper's shapes.

The GKD / RKD-D terms of a training step are bound by three products per sensing point:
the teacher's and the student's Gram ``X X^T`` (forward) and the student's gradient
``λ S X`` (backward). This times each of geokd's kernels (``geokd/native/graphs.c``)
against the ATen call the ATen path makes, on batch-128 rows of the WRN-28-1 / WRN-28-0.5
layer1 and layer2 widths (16,384 / 8,192 / 4,096 features), interleaved round-robin, each
sample the median of ``--calls`` calls, twice: on one tensor (in cache) and cycling through
``--cold`` tensors (from memory, as in a training step, where the features were written
long before). Both sides get the same inputs; the kernels' results are checked against
float64 first. The fraction of the GEMM peak (``bench_matmul_peak``, same run) counts the
multiply-adds each call really does (the symmetric Gram does half of a general product's).

Run: ``python -m benchmarks.bench_graph_kernels [--quick] [--threads 2] [--rounds 7]``
(prints a table, writes ``benchmarks/results/bench_graph_kernels.json``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks._common import format_table, write_json
from benchmarks.bench_matmul_peak import measure_matmul_peak
from geokd.native import graph_kernels, native_status

WIDTHS = (16384, 8192, 4096)


def _median_call_ms(fn, tensors, calls: int) -> float:
    times = []
    for i in range(calls):
        x = tensors[i % len(tensors)]
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="geokd's Gram and scaled-product kernels vs ATen's products")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20, help="calls per sample")
    parser.add_argument("--cold", type=int, default=24, help="distinct inputs cycled through for the cold case")
    parser.add_argument("--quick", action="store_true", help="smoke test: widths / 8, 2 rounds")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    kernels = graph_kernels()
    if kernels is None:
        raise SystemExit(f"geokd's graph kernels are unavailable here: {native_status()['reason']}")
    widths = tuple(w // 8 for w in WIDTHS) if args.quick else WIDTHS
    rounds, calls = (2, 5) if args.quick else (args.rounds, args.calls)
    b = args.batch
    peak = measure_matmul_peak(size=512 if args.quick else 2048, repeat=3 if args.quick else 5,
                               threads=args.threads)["peak_gflops"]

    g = torch.Generator().manual_seed(0)
    s = torch.randn(b, b, generator=g)
    s = s + s.T
    alpha = 25.0
    cases = []  # (item, width, geokd's call, ATen's call, multiply-adds x 2 per geokd call)
    for width in widths:
        cases.append(("Gram X X^T", width, kernels.gram, lambda x: x @ x.T, b * (b + 1) * width))
        cases.append(("gradient alpha S X", width, lambda x: kernels.scaled_product(s, x, alpha=alpha),
                      lambda x: (s.to(x.dtype) * alpha) @ x, 2 * b * b * width))
    inputs = {w: [torch.randn(b, w, generator=g) for _ in range(1 if args.quick else args.cold)] for w in widths}

    for item, width, ours, aten, _ in cases:  # the kernels against float64 before any timing
        x = inputs[width][0]
        want = aten(x.double())
        got = ours(x).double()
        if not torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max())):
            raise SystemExit(f"{item} at {width} features: the kernel's result differs from float64")

    samples = {}
    for r in range(rounds):
        for item, width, ours, aten, _ in cases:
            for memory, tensors in (("in cache", inputs[width][:1]), ("from memory", inputs[width])):
                for who, fn in (("geokd", ours), ("aten", aten)):
                    samples.setdefault((item, width, memory, who), []).append(_median_call_ms(fn, tensors, calls))
    rows = []
    for item, width, _, _, flop in cases:
        for memory in ("in cache", "from memory"):
            mine = statistics.median(samples[item, width, memory, "geokd"])
            theirs = statistics.median(samples[item, width, memory, "aten"])
            rows.append({"product": item, "shape": f"{b} x {width}", "inputs": memory, "geokd_ms": mine,
                         "aten_ms": theirs, "speedup": theirs / mine,
                         "geokd_%peak": 100 * flop / (mine * 1e-3) / (peak * 1e9)})
    print(f"graph kernels vs ATen (torch {torch.__version__}, {torch.get_num_threads()} threads); "
          f"median over {rounds} rounds of per-sample medians of {calls} calls; GEMM peak {peak:.1f} GFLOP/s")
    print(format_table(rows, ["product", "shape", "inputs", "geokd_ms", "aten_ms", "speedup", "geokd_%peak"]))
    result = {"quick": args.quick, "threads": torch.get_num_threads(), "peak_gflops": peak, "rows": rows}
    path = write_json("bench_graph_kernels_quick" if args.quick else "bench_graph_kernels", result)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
