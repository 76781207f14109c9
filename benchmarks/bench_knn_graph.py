"""Sparse dataset k-NN graph: geokd (exact, approximate) against scikit-learn and PyGSP.

Data: N points of dimension d (default 10,000 x 4,096), clustered, low-rank and post-ReLU
like network activations (float32). Baselines measured in the same run: scikit-learn's
``NearestNeighbors(metric="cosine", algorithm="brute")`` (fit + kneighbors on all points),
and PyGSP's ``NNGraph`` (its default k-NN backend, Euclidean) on the first ``--pygsp-n``
points, where geokd is timed again on the same subset. Reports wall time, peak RSS above
the starting RSS, and the approximate mode's edge recall against exact.

Run: ``python -m benchmarks.bench_knn_graph [--n 10000 --d 4096 --k 10 --pygsp-n 2000]``
"""

from __future__ import annotations

import argparse

import numpy as np
import scipy.sparse as sp
import torch

from benchmarks._common import format_table, peak_memory, write_json
from geokd.graphs import knn_graph


def structured_points(n: int, d: int, *, seed: int = 0, clusters: int = 100, latent: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, latent))
    z = centers[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, latent))
    lift = (rng.standard_normal((latent, d)) / np.sqrt(latent)).astype(np.float32)
    x = np.maximum(z.astype(np.float32) @ lift, 0)
    x += 0.05 * rng.random((n, d), dtype=np.float32)
    return x


def edge_set(w) -> set:
    w = sp.coo_matrix(w)
    return set(zip(w.row.tolist(), w.col.tolist()))


def sklearn_knn(x: np.ndarray, k: int):
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(x)
    return nn.kneighbors(x)


def pygsp_knn(x: np.ndarray, k: int):
    import pygsp

    return pygsp.graphs.NNGraph(x, k=k)


def measure(name: str, fn, rows: list, *, n: int) -> object:
    stats = peak_memory(fn)
    rows.append({"method": name, "n": n, "seconds": stats["seconds"], "peak_rss_mb": stats["peak_rss_delta_mb"]})
    return stats["result"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--d", type=int, default=4096)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--pygsp-n", type=int, default=2000, help="points for the PyGSP comparison (0 to skip)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    x = structured_points(args.n, args.d)
    # First calls pay one-time costs (sklearn's thread-pool and BLAS setup: seconds), which
    # are not what we compare: warm every method up on a small subset.
    warm = x[:200]
    knn_graph(warm, k=args.k), knn_graph(warm, k=args.k, approximate=True), sklearn_knn(warm, args.k)
    if args.pygsp_n:
        pygsp_knn(warm, args.k)
    rows: list[dict] = []
    exact = measure("geokd exact", lambda: knn_graph(x, k=args.k), rows, n=args.n)
    approx = measure("geokd approximate", lambda: knn_graph(x, k=args.k, approximate=True), rows, n=args.n)
    _, idx = measure("sklearn brute cosine", lambda: sklearn_knn(x, args.k), rows, n=args.n)

    exact_edges = edge_set(exact)
    recall = len(exact_edges & edge_set(approx)) / len(exact_edges)
    union_rows = exact.tolil().rows
    contained = np.mean([len(set(j for j in found if j != i).intersection(union_rows[i])) >= args.k
                         for i, found in enumerate(idx)])
    base = rows[2]["seconds"]
    for row in rows[:3]:
        row["sklearn_over_this"] = base / row["seconds"]

    if args.pygsp_n:
        sub = x[: args.pygsp_n]
        measure("geokd exact (subset)", lambda: knn_graph(sub, k=args.k), rows, n=args.pygsp_n)
        measure("pygsp NNGraph (subset)", lambda: pygsp_knn(sub, args.k), rows, n=args.pygsp_n)
        rows[3]["pygsp_over_this"] = rows[4]["seconds"] / rows[3]["seconds"]
        rows[4]["pygsp_over_this"] = 1.0

    print(f"k-NN graph, N={args.n}, d={args.d}, k={args.k}, {torch.get_num_threads()} threads")
    print(format_table(rows, ["method", "n", "seconds", "peak_rss_mb", "sklearn_over_this", "pygsp_over_this"]))
    print(f"approximate edge recall vs exact: {recall:.4f}; rows whose union neighbours contain "
          f"sklearn's k-NN: {contained:.4f}")
    path = write_json("bench_knn_graph", {"n": args.n, "d": args.d, "k": args.k, "rows": rows,
                                          "approximate_recall": recall, "sklearn_agreement": float(contained)})
    print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
