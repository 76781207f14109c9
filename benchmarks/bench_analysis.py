"""Analysis metrics vs named baselines, on a synthetic clustered node set.

- label smoothness on a sparse cosine k-NN graph (N = 10,000, k = 10): geokd's
  ``smoothness_from_graph`` (one pass over the edges) vs PyGSP (``compute_laplacian`` then
  ``tr(Yᵀ L Y)``), both combinatorial and normalized;
- leave-one-out k-NN vote (N = 10,000): geokd's ``knn_vote`` on the graph vs scikit-learn's
  ``KNeighborsClassifier`` (k + 1 neighbours, self dropped) from the features;
- spectrum of a 1,000-node graph: geokd's ``laplacian_spectrum`` (float64 eigenvalues only)
  vs PyGSP's ``compute_fourier_basis`` (eigenvalues and eigenvectors).

Run: ``python -m benchmarks.bench_analysis`` (prints a table, writes results/bench_analysis.json).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from benchmarks._common import format_table, time_best_of, write_json


def clustered(n: int, *, classes: int = 10, dim: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = np.abs(rng.normal(size=(classes, dim)))
    y = rng.integers(0, classes, size=n)
    x = np.abs(centers[y] + 0.7 * rng.normal(size=(n, dim))).astype(np.float32)
    return x, y


def cosine_knn(x: np.ndarray, k: int) -> sp.csr_matrix:
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(x)
    dist, idx = nn.kneighbors(x)
    n = x.shape[0]
    rows = np.repeat(np.arange(n), k)
    w = sp.csr_matrix((1.0 - dist[:, 1:].ravel(), (rows, idx[:, 1:].ravel())), shape=(n, n))
    w = w.maximum(w.T).tocsr()
    w.setdiag(0)
    w.eliminate_zeros()
    return w


def main() -> dict:
    import pygsp
    from sklearn.neighbors import KNeighborsClassifier

    from geokd.analysis.consistency import knn_vote
    from geokd.analysis.smoothness import smoothness_from_graph
    from geokd.analysis.spectral import laplacian_spectrum

    results = []
    x, y = clustered(10_000)
    w = cosine_knn(x, 10)
    one_hot = np.eye(10)[y]
    for lap in ("combinatorial", "normalized"):
        ours, _ = time_best_of(lambda: smoothness_from_graph(w, y, laplacian=lap), repeat=3)

        def baseline():
            graph = pygsp.graphs.Graph(w)
            graph.compute_laplacian(lap)
            return np.trace(one_hot.T @ (graph.L @ one_hot))

        theirs, _ = time_best_of(baseline, repeat=3)
        assert np.isclose(smoothness_from_graph(w, y, laplacian=lap), baseline())
        results.append({"case": f"smoothness {lap} N=10000", "baseline": "PyGSP", "geokd_s": ours,
                        "baseline_s": theirs, "speedup": theirs / ours})

    ours, _ = time_best_of(lambda: knn_vote(w, y), repeat=3)

    def sklearn_vote():
        clf = KNeighborsClassifier(n_neighbors=11, metric="cosine").fit(x, y)
        return clf.kneighbors(x)  # neighbour search is the cost; the vote itself is negligible

    theirs, _ = time_best_of(sklearn_vote, repeat=1)
    results.append({"case": "LOO k-NN vote N=10000 (graph given)", "baseline": "sklearn KNeighborsClassifier",
                    "geokd_s": ours, "baseline_s": theirs, "speedup": theirs / ours})

    x_small, _ = clustered(1000, seed=1)
    w_small = cosine_knn(x_small, 10)
    ours, _ = time_best_of(lambda: laplacian_spectrum(w_small), repeat=3)

    def pygsp_spectrum():
        graph = pygsp.graphs.Graph(w_small)
        graph.compute_laplacian("normalized")
        graph.compute_fourier_basis()
        return graph.e

    theirs, _ = time_best_of(pygsp_spectrum, repeat=3)
    assert np.allclose(laplacian_spectrum(w_small), pygsp_spectrum(), atol=1e-8)
    results.append({"case": "normalized-Laplacian spectrum N=1000", "baseline": "PyGSP compute_fourier_basis",
                    "geokd_s": ours, "baseline_s": theirs, "speedup": theirs / ours})

    print(format_table(results, ["case", "baseline", "geokd_s", "baseline_s", "speedup"]))
    payload = {"results": results}
    print(write_json("bench_analysis", payload))
    return payload


if __name__ == "__main__":
    main()
