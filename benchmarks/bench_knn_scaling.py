"""Dataset-scale cosine k-NN graphs at the layer1 size, against scikit-learn and PyGSP, and how they scale.

Data: real activations, the ``layer1`` output (16 x 32 x 32 = 16,384 values) of the released
WRN-28-1 teacher (in ``geokd.checkpoints.released.released_dir()``, ``$GEOKD_RELEASED_DIR``) on
the first N CIFAR-10 training images (float32, no augmentation), k = 10.

At ``--n`` (10,000) points, measured in one run, interleaved (``--rounds`` rounds in the
order exact, sklearn, approximate, then reversed, so that a change of machine load hits
all three alike; the best time of each is reported, the largest memory):

- geokd ``knn_graph(x, k=10)`` (exact, symmetric blocked scan);
- scikit-learn ``NearestNeighbors(n_neighbors=k+1, algorithm="brute", metric="cosine")``
  ``.fit(x).kneighbors(x)`` (exact);
- geokd ``knn_graph(x, k=10, approximate=True)`` at its defaults (projection on the top 384
  principal directions of a 2048-row sample, 64 candidates per point re-ranked with exact
  cosines), with its recall: the share of the true k neighbours of each point
  (scikit-learn's, self excluded) that are its neighbours in the approximate graph, and the
  share of the exact graph's edges present;
- PyGSP ``NNGraph(x_normalized, k=10, center=False, rescale=False)`` (scipy KD-tree,
  exact; Euclidean distance between unit rows ranks neighbours as cosine does) on the
  first ``--pygsp-n`` points only: its KD-tree degrades to a scalar scan at d = 16,384
  (minutes per thousand points), so geokd is timed again on the same subset and the ratio
  is taken there. Both are O(N²·d), so the ratio carries over to larger N.

Time is the wall time of one call (after a warm-up of every method on a small subset),
memory the peak RSS above the RSS before the call (input excluded, it exists already)
and the absolute peak RSS of the process. The GEMM rate of the exact methods is given as
a fraction of the CPU's measured float32 matmul peak (:mod:`benchmarks.bench_matmul_peak`),
counting the multiply-adds each really performs: geokd's scan ``2·b_i·b_j·d`` per
off-diagonal block and ``b_i²·d`` per diagonal one (NumPy runs ``a @ a.T`` as BLAS
``syrk``), ``N²·d`` in all; scikit-learn also ``N²·d`` while the whole N x N distance
matrix fits its ``working_memory`` (one chunk: NumPy sees ``X_norm @ X_norm.T`` and uses
``syrk``), ``2·N²·d`` beyond (N > 11,585 at the default 1 GiB).

Scaling table: N = 1k, 5k, 10k, 50k for both modes (exact above ``--exact-max-n`` is
skipped: ~25x the 10k time), with the growth exponent between successive sizes
(expected: time ~N² for exact and, asymptotically, for the approximate candidate search,
memory ~N·k beyond the fixed-size blocks) and, for the approximate mode, the recall of
the true 10 neighbours of ``--recall-queries`` random points (exact cosines against all N).

Run: ``python -m benchmarks.bench_knn_scaling [--quick] [--n 10000] [--pygsp-n 1000]``
(prints tables, writes ``benchmarks/results/bench_knn_scaling.json``).
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from benchmarks._common import _rss_bytes, format_table, peak_memory, write_json
from benchmarks.bench_matmul_peak import measure_matmul_peak
from geokd.graphs import knn_graph
from geokd.graphs.dataset_knn import search_dtype

K = 10
TARGET_MEMORY_MB = 2048
TARGET_VS_PYGSP = 3.0
TARGET_APPROX_VS_SKLEARN = 3.0
TARGET_RECALL = 0.99


@torch.no_grad()
def layer1_activations(n: int, *, teacher_path: Path | None = None, device="cpu", batch: int = 500) -> np.ndarray:
    """``(n, 16384)`` float32 layer1 outputs of the released teacher on the first n CIFAR-10 training images
    (default ``teacher_path``: ``WideResNet28-1_0.pth`` in :func:`geokd.checkpoints.released.released_dir`)."""
    from geokd.checkpoints import load_any
    from geokd.checkpoints.released import released_dir
    from geokd.data import BatchLoader, load_dataset

    teacher_path = teacher_path or released_dir() / "WideResNet28-1_0.pth"
    teacher = load_any(teacher_path, device=device).eval()
    train = load_dataset("cifar10", split="train")
    if n > len(train):
        raise ValueError(f"expected at most {len(train)} points (CIFAR-10 train), got n={n}")
    out = None
    filled = 0
    for x, _ in BatchLoader(train, batch_size=batch, shuffle=False, augment=False, device=device):
        take = min(batch, n - filled)
        x = x[:take]
        # The network up to its first sensing point (WideResNet's stem, then layer1).
        h = teacher.layer1(teacher.relu(teacher.bn(teacher.conv1(x)))).reshape(take, -1)
        if out is None:
            out = np.empty((n, h.shape[1]), dtype=np.float32)
        out[filled:filled + take] = h.cpu().numpy()
        filled += take
        if filled == n:
            break
    return out


def sklearn_knn(x: np.ndarray, k: int):
    from sklearn.neighbors import NearestNeighbors

    return NearestNeighbors(n_neighbors=k + 1, algorithm="brute", metric="cosine").fit(x).kneighbors(x)


def pygsp_knn(x_unit: np.ndarray, k: int):
    import logging

    import pygsp

    # PyGSP logs every k-NN backend choice at DEBUG on its own handler.
    logging.getLogger("pygsp").setLevel(logging.WARNING)

    return pygsp.graphs.NNGraph(x_unit, k=k, center=False, rescale=False)


def unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def true_neighbours(indices: np.ndarray) -> np.ndarray:
    """Drop each row's self match from scikit-learn's k+1 neighbours (wherever ties put it)."""
    n, kp1 = indices.shape
    out = np.empty((n, kp1 - 1), dtype=np.int64)
    for i in range(n):
        row = indices[i][indices[i] != i]
        out[i] = row[: kp1 - 1]
    return out


def neighbour_recall(graph: sp.csr_matrix, truth: np.ndarray) -> float:
    """Share of the true (i, j) neighbour pairs that are edges of ``graph``."""
    n, k = truth.shape
    hits = np.asarray(graph[np.repeat(np.arange(n), k), truth.reshape(-1)]).reshape(-1) != 0
    return float(hits.mean())


def edge_recall(approx: sp.csr_matrix, exact: sp.csr_matrix) -> float:
    """Share of the exact graph's edges present in the approximate one."""
    both = exact.multiply(approx != 0)
    return both.nnz / exact.nnz


def geokd_exact_gemm_flops(n: int, d: int, *, block: int = 2048) -> float:
    """FLOPs of the blocks geokd's symmetric scan multiplies: the upper block triangle,
    diagonal blocks through ``syrk`` (half of their square)."""
    sizes = [min(block, n - s) for s in range(0, n, block)]
    return sum((1.0 if i == j else 2.0) * sizes[i] * sizes[j] * d
               for i in range(len(sizes)) for j in range(i, len(sizes)))


def sklearn_gemm_flops(n: int, d: int) -> float:
    """FLOPs of scikit-learn's brute cosine kneighbors(X) on its own training X: one
    ``syrk`` (``N²·d``) when the N x N float64 chunk fits ``working_memory``, else a GEMM
    per chunk (``2·N²·d``)."""
    import sklearn

    one_chunk = 8 * n * n <= sklearn.get_config()["working_memory"] * 2 ** 20
    return (1.0 if one_chunk else 2.0) * n * n * d


def sampled_recall(graph: sp.csr_matrix, x: np.ndarray, queries: np.ndarray, k: int, *, rows: int = 4096) -> float:
    """Recall of the true k neighbours (exact cosine against all N, self excluded) of the
    ``queries`` rows among their edges in ``graph``."""
    q = unit_rows(x[queries]).astype(np.float32)
    best = np.full((len(queries), k + 1), -np.inf, dtype=np.float32)
    best_idx = np.zeros((len(queries), k + 1), dtype=np.int64)
    for start in range(0, len(x), rows):
        scores = q @ unit_rows(x[start:start + rows]).astype(np.float32).T
        merged = np.concatenate([best, scores], axis=1)
        merged_idx = np.concatenate([best_idx, np.broadcast_to(np.arange(start, start + scores.shape[1]),
                                                               scores.shape)], axis=1)
        top = np.argpartition(-merged, k, axis=1)[:, : k + 1]
        best, best_idx = np.take_along_axis(merged, top, 1), np.take_along_axis(merged_idx, top, 1)
    order = np.argsort(-best, axis=1, kind="stable")
    truth = np.take_along_axis(best_idx, order, 1)
    hits = []
    for qi, row in zip(queries, truth):
        found = set(graph.indices[graph.indptr[qi]:graph.indptr[qi + 1]].tolist())
        hits.extend(j in found for j in [j for j in row if j != qi][:k])
    return float(np.mean(hits))


def run_measured(fn) -> dict:
    before = _rss_bytes()
    stats = peak_memory(fn)
    stats["peak_rss_mb"] = before / 2 ** 20 + stats["peak_rss_delta_mb"]
    return stats


def growth(rows: list[dict], key: str) -> None:
    """Log-log slope of ``key`` against N between successive rows of one mode."""
    for prev, cur in zip(rows, rows[1:]):
        if prev[key] > 0 and cur[key] > 0:
            cur[f"{key}_exponent"] = math.log(cur[key] / prev[key]) / math.log(cur["n"] / prev["n"])


def interleaved(methods: dict, rounds: int) -> dict:
    """Each method measured ``rounds`` times in the order ABC CBA ...: best time, largest
    memory, the first result."""
    stats: dict = {}
    names = list(methods)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            run = run_measured(methods[name])
            run["load_average"] = os.getloadavg()[0]
            if name not in stats:
                stats[name] = {**run, "all_seconds": [run["seconds"]], "load_averages": [run["load_average"]]}
                continue
            best = stats[name]
            best["all_seconds"].append(run["seconds"])
            best["load_averages"].append(run["load_average"])
            best["seconds"] = min(best["seconds"], run["seconds"])
            best["peak_rss_delta_mb"] = max(best["peak_rss_delta_mb"], run["peak_rss_delta_mb"])
            best["peak_rss_mb"] = max(best["peak_rss_mb"], run["peak_rss_mb"])
    return stats


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="dataset-scale cosine k-NN graphs vs sklearn and PyGSP; scaling")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--pygsp-n", type=int, default=1000, help="points for the PyGSP comparison")
    parser.add_argument("--scaling", default="1000,5000,10000,50000", help="N values of the scaling table")
    parser.add_argument("--exact-max-n", type=int, default=10_000, help="largest N timed in exact mode")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the main comparison")
    parser.add_argument("--recall-queries", type=int, default=500, help="points whose recall the scaling rows report")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke test: N = 1000, PyGSP on 150, scaling 300/1000")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.n, args.pygsp_n, args.scaling, args.rounds = 1000, 150, "300,1000", 1
    scaling_ns = sorted({int(v) for v in args.scaling.split(",") if v.strip()})
    peak = measure_matmul_peak(size=512 if args.quick else 2048, repeat=3 if args.quick else 5, threads=args.threads)
    peak_gflops = peak["peak_gflops"]

    x = layer1_activations(args.n)
    n, d = x.shape
    warm = x[:200]
    knn_graph(warm, k=K), knn_graph(warm, k=K, approximate=True), sklearn_knn(warm, K)
    pygsp_knn(unit_rows(warm[:50]), K)

    # ---- the main comparison at N = --n, interleaved
    # The default search precision resolves per machine; where it is bfloat16, the float32
    # search is timed too, so the table shows what the bfloat16 products bring.
    default_search = str(search_dtype("auto", "cpu")).removeprefix("torch.")
    methods = {"exact": lambda: knn_graph(x, k=K), "sklearn": lambda: sklearn_knn(x, K),
               "approximate": lambda: knn_graph(x, k=K, approximate=True)}
    if default_search != "float32":
        methods["approximate float32"] = lambda: knn_graph(x, k=K, approximate=True, search_precision="float32")
    measured = interleaved(methods, args.rounds)
    exact, skl, approx = measured["exact"], measured["sklearn"], measured["approximate"]
    truth = true_neighbours(skl["result"][1])
    exact_recall = neighbour_recall(exact["result"], truth)
    approx_recall = neighbour_recall(approx["result"], truth)
    approx_edges = edge_recall(approx["result"], exact["result"])
    main_rows = []
    compared = [("geokd exact", exact, geokd_exact_gemm_flops(n, d), exact_recall),
                ("sklearn brute cosine", skl, sklearn_gemm_flops(n, d), None),
                (f"geokd approximate (default: {default_search} search)", approx, None, approx_recall)]
    if "approximate float32" in measured:
        float32_search = measured["approximate float32"]
        compared.append(("geokd approximate (float32 search)", float32_search, None,
                         neighbour_recall(float32_search["result"], truth)))
    for name, stats, flops, recall in compared:
        row = {"method": name, "n": n, "seconds": stats["seconds"],
               "ratio_sklearn/this": skl["seconds"] / stats["seconds"],
               "peak_rss_delta_mb": stats["peak_rss_delta_mb"], "peak_rss_mb": stats["peak_rss_mb"],
               "all_seconds": stats["all_seconds"], "load_averages": stats["load_averages"]}
        if flops is not None:
            row["gemm_flops"] = flops
            row["gemm_fraction_of_peak"] = flops / stats["seconds"] / 1e9 / peak_gflops
        if recall is not None:
            row["recall"] = recall
        main_rows.append(row)

    # ---- PyGSP on a subset (its KD-tree scans every coordinate in Python-free but scalar C)
    xs = x[: args.pygsp_n]
    xs_unit = unit_rows(xs)
    pyg = run_measured(lambda: pygsp_knn(xs_unit, K))
    ours_small = run_measured(lambda: knn_graph(xs, k=K))
    pygsp_rows = [
        {"method": "PyGSP NNGraph (KD-tree)", "n": len(xs), "seconds": pyg["seconds"],
         "peak_rss_delta_mb": pyg["peak_rss_delta_mb"]},
        {"method": "geokd exact", "n": len(xs), "seconds": ours_small["seconds"],
         "peak_rss_delta_mb": ours_small["peak_rss_delta_mb"], "speedup_vs_pygsp": pyg["seconds"] / ours_small["seconds"]},
    ]
    pygsp_recall = neighbour_recall(ours_small["result"], true_neighbours(
        np.argsort(-(xs_unit @ xs_unit.T), axis=1, kind="stable")[:, : K + 1]))

    # ---- scaling table: sizes up to --n are prefixes of x (the --n row is the run above);
    # larger sizes get their own activations once x is freed.
    scaling = {"exact": [], "approximate": []}
    rng = np.random.default_rng(0)

    def scale_row(mode: str, size: int, stats: dict, data: np.ndarray) -> None:
        row = {"mode": mode, "n": size, "seconds": stats["seconds"],
               "peak_rss_delta_mb": stats["peak_rss_delta_mb"], "nnz": stats["result"].nnz,
               "load_average": os.getloadavg()[0]}
        if mode == "approximate":
            queries = np.sort(rng.choice(size, min(size, args.recall_queries), replace=False))
            row["recall_sampled"] = sampled_recall(stats["result"], data, queries, K)
        scaling[mode].append(row)

    measured_at_n = {"exact": exact, "approximate": approx}
    del skl, measured
    for size in [s for s in scaling_ns if s <= n]:
        for mode in ("exact", "approximate"):
            if mode == "exact" and size > args.exact_max_n:
                continue
            xn = x[:size]
            stats = measured_at_n[mode] if size == n else run_measured(
                lambda: knn_graph(xn, k=K, approximate=(mode == "approximate")))
            scale_row(mode, size, stats, xn)
    del x, exact, approx, measured_at_n
    larger = [s for s in scaling_ns if s > n]
    if larger:
        xl = layer1_activations(max(larger))
        for size in larger:
            xn = xl[:size]
            for mode in ("approximate", "exact"):
                if mode == "exact" and size > args.exact_max_n:
                    continue
                scale_row(mode, size, run_measured(lambda: knn_graph(xn, k=K, approximate=(mode == "approximate"))),
                          xn)
        del xl
    for rows in scaling.values():
        growth(rows, "seconds")
        growth(rows, "peak_rss_delta_mb")

    targets = {
        f"exact peak memory < {TARGET_MEMORY_MB} MB (absolute RSS)": main_rows[0]["peak_rss_mb"] < TARGET_MEMORY_MB,
        f"exact >= {TARGET_VS_PYGSP}x PyGSP": pygsp_rows[1]["speedup_vs_pygsp"] >= TARGET_VS_PYGSP,
        "exact no slower than sklearn": main_rows[0]["seconds"] <= skl_seconds(main_rows),
        f"approximate >= {TARGET_APPROX_VS_SKLEARN}x sklearn":
            main_rows[2]["ratio_sklearn/this"] >= TARGET_APPROX_VS_SKLEARN,
        f"approximate recall >= {TARGET_RECALL}": approx_recall >= TARGET_RECALL,
    }
    print(f"cosine k-NN graph, k = {K}, layer1 activations of the released WRN-28-1 on CIFAR-10 train, "
          f"N = {n}, d = {d}; torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.2f}; "
          f"measured float32 matmul peak {peak_gflops:.1f} GFLOP/s; best of {args.rounds} interleaved rounds; "
          f"approximate search precision by default here: {default_search}")
    print(format_table(main_rows, ["method", "n", "seconds", "ratio_sklearn/this", "peak_rss_delta_mb", "peak_rss_mb",
                                   "gemm_fraction_of_peak", "recall"]))
    print(f"approximate mode: recall of the true {K} neighbours {approx_recall:.4f}, "
          f"exact-graph edges kept {approx_edges:.4f}; exact mode recall {exact_recall:.4f}")
    print(f"\nPyGSP NNGraph on the first {len(xs)} points (geokd timed on the same subset; "
          f"geokd recall vs a dense argsort there {pygsp_recall:.4f}):")
    print(format_table(pygsp_rows, ["method", "n", "seconds", "peak_rss_delta_mb", "speedup_vs_pygsp"]))
    print("\nscaling (exponent: log-log slope vs the previous N; expected ~2 for time, <= 1 for memory):")
    flat = scaling["exact"] + scaling["approximate"]
    print(format_table(flat, ["mode", "n", "seconds", "seconds_exponent", "peak_rss_delta_mb",
                              "peak_rss_delta_mb_exponent", "nnz", "recall_sampled", "load_average"]))
    print("\ntargets: " + "; ".join(f"{name}: {'met' if ok else 'MISSED'}" for name, ok in targets.items()))
    payload = {"quick": args.quick, "k": K, "n": n, "d": d, "threads": torch.get_num_threads(),
               "rounds": args.rounds, "load_average": os.getloadavg(), "matmul_peak": peak, "main": main_rows,
               "default_search_precision": default_search,
               "approx_neighbour_recall": approx_recall, "approx_edge_recall": approx_edges,
               "exact_neighbour_recall": exact_recall, "pygsp": pygsp_rows, "scaling": flat,
               "targets": {k_: bool(v) for k_, v in targets.items()}}
    path = write_json("bench_knn_scaling_quick" if args.quick else "bench_knn_scaling", payload)
    print(f"wrote {path}")
    return payload


def skl_seconds(rows: list[dict]) -> float:
    return next(r["seconds"] for r in rows if r["method"].startswith("sklearn"))


if __name__ == "__main__":
    main()
