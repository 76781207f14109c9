"""The CPU's measured float32 matmul peak: the yardstick for "fraction of peak" elsewhere.

Times a square float32 GEMM (``2048^3`` by default, large enough to be compute-bound) with
torch (MKL on x86 wheels) and with NumPy (OpenBLAS), median of several repeats after a
warm-up, with the torch thread count pinned. The peak used by the other benchmarks is the
faster of the two: both libraries are available to geokd, so the best GEMM the machine
delivers is the honest denominator.

Run: ``python -m benchmarks.bench_matmul_peak [--size 2048] [--threads 2] [--quick]``
(prints a table, writes ``benchmarks/results/bench_matmul_peak.json``).

>>> r = measure_matmul_peak(size=64, repeat=2, threads=1)
>>> r["peak_gflops"] == max(r["torch_gflops"], r["numpy_gflops"]) > 0
True
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from benchmarks._common import format_table, write_json

__all__ = ["gemm_flops", "measure_matmul_peak", "main"]


def gemm_flops(m: int, n: int, k: int) -> float:
    """Floating-point operations of an ``(m, k) @ (k, n)`` product (one multiply + one add each)."""
    return 2.0 * m * n * k


def _median_seconds(fn, *, repeat: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_matmul_peak(*, size: int = 2048, repeat: int = 5, warmup: int = 2, threads: int | None = None,
                        device: str | torch.device = "cpu") -> dict:
    """Median GFLOP/s of a ``size^3`` float32 GEMM through torch and through NumPy.

    Parameters
    ----------
    size : int
        Side of the square matrices.
    repeat, warmup : int
        Timed and untimed calls.
    threads : int, optional
        ``torch.set_num_threads`` for the measurement (restored after); NumPy's OpenBLAS
        uses its own pool (``OPENBLAS_NUM_THREADS``, all cores by default).
    device : str or torch.device
        Where the torch GEMM runs (NumPy always on the CPU; on a GPU only torch counts).

    Returns
    -------
    dict
        ``torch_gflops``, ``numpy_gflops`` (None off-CPU), ``peak_gflops`` (the larger),
        ``size``, ``threads``, ``device``.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"expected size to be a positive int, got {size!r}")
    device = torch.device(device)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=gen).to(device)
        b = torch.randn(size, size, generator=gen).to(device)
        out = torch.empty(size, size, device=device)

        def torch_mm():
            torch.mm(a, b, out=out)
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        flops = gemm_flops(size, size, size)
        torch_gflops = flops / _median_seconds(torch_mm, repeat=repeat, warmup=warmup) / 1e9
        numpy_gflops = None
        if device.type == "cpu":
            an, bn, on = a.numpy(), b.numpy(), out.numpy()
            numpy_gflops = flops / _median_seconds(lambda: np.matmul(an, bn, out=on), repeat=repeat,
                                                   warmup=warmup) / 1e9
        return {"size": size, "device": str(device), "threads": torch.get_num_threads(),
                "torch_gflops": torch_gflops, "numpy_gflops": numpy_gflops,
                "peak_gflops": max(torch_gflops, numpy_gflops or 0.0)}
    finally:
        torch.set_num_threads(previous)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="float32 GEMM peak of this machine (torch and NumPy)")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="smoke test: 512^3, 3 repeats")
    args = parser.parse_args(argv)
    size, repeat = (512, 3) if args.quick else (args.size, args.repeat)
    result = measure_matmul_peak(size=size, repeat=repeat, threads=args.threads, device=args.device)
    rows = [{"library": "torch.mm", "gflops": result["torch_gflops"]}]
    if result["numpy_gflops"] is not None:
        rows.append({"library": "numpy.matmul (OpenBLAS)", "gflops": result["numpy_gflops"]})
    print(f"float32 GEMM {size}^3 on {args.device}, torch threads {args.threads}:")
    print(format_table(rows, ["library", "gflops"]))
    print(f"peak used for fractions of peak: {result['peak_gflops']:.1f} GFLOP/s")
    path = write_json("bench_matmul_peak", {"quick": args.quick, **result})
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
