"""Tiny shared helpers for the benchmarks: timing, peak memory, a table, a JSON file.

>>> best, times = time_best_of(lambda: sum(range(1000)), repeat=3, warmup=1)
>>> len(times), best == min(times)
(3, True)
>>> print(format_table([{"case": "a", "seconds": 0.5}], ["case", "seconds"]))
case  seconds
----  -------
a      0.5000
"""

from __future__ import annotations

import gc
import json
import os
import platform
import threading
import time
import tracemalloc
from typing import Any, Callable

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def time_best_of(fn: Callable[[], Any], *, repeat: int = 5, warmup: int = 1) -> tuple[float, list[float]]:
    """Best wall time of ``repeat`` calls after ``warmup`` untimed calls (best-of-n is the
    least noisy estimate on a shared machine)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), times


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory(fn: Callable[[], Any], *, interval: float = 0.002, trace_python: bool = False) -> dict[str, Any]:
    """Run ``fn`` once: wall time and peak RSS above the starting RSS (sampled every
    ``interval`` s by a thread; covers torch/BLAS buffers). ``trace_python=True`` adds the
    tracemalloc peak (Python and NumPy allocations) but slows allocation-heavy code a lot,
    so the time is then not comparable."""
    gc.collect()
    baseline = _rss_bytes()
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    if trace_python:
        tracemalloc.start()
    sampler.start()
    start = time.perf_counter()
    try:
        result = fn()
    finally:
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        traced_peak = 0
        if trace_python:
            _, traced_peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    peak[0] = max(peak[0], _rss_bytes())
    return {"seconds": seconds, "peak_rss_delta_mb": (peak[0] - baseline) / 2 ** 20,
            "tracemalloc_peak_mb": traced_peak / 2 ** 20 if trace_python else None, "result": result}


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain fixed-width table (floats with 4 decimals)."""
    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    cells = [[cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    for r in cells:
        lines.append("  ".join(v.rjust(w) if v[:1].isdigit() or v[:1] == "-" and v[1:2].isdigit() else v.ljust(w)
                               for v, w in zip(r, widths)).rstrip())
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "machine": platform.machine(), "processor": platform.processor()}


def write_json(name: str, payload: dict[str, Any]) -> str:
    """Write ``benchmarks/results/<name>.json`` (with the environment) and return its path."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    with open(path, "w") as handle:
        json.dump({"benchmark": name, "environment": environment(), **payload}, handle, indent=2, default=str)
    return path
