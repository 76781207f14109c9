"""The dense cosine matrix and the k-NN graph read from it, against float64 and sklearn oracles."""

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from geokd.graphs import knn_graph
from geokd.graphs.dense_cosine import cosine_similarity_matrix, knn_from_similarity


def clustered(n=257, d=40, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, d))
    y = rng.integers(0, classes, size=n)
    return (centers[y] + 0.5 * rng.normal(size=(n, d))).astype(np.float32)


def float64_cosine(x):
    z = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    s = z @ z.T
    np.fill_diagonal(s, 0.0)
    return s


@pytest.mark.parametrize("block", [1, 64, 100, 257, 4096])
def test_cosine_matrix_matches_float64_for_every_block_size(block):
    x = clustered()
    s = cosine_similarity_matrix(x, block=block)
    assert s.dtype == torch.float32 and s.shape == (257, 257)
    np.testing.assert_allclose(s.numpy(), float64_cosine(x), atol=2e-6)
    assert torch.equal(s, s.T)                     # exactly symmetric, not merely close
    assert torch.count_nonzero(torch.diagonal(s)) == 0


def test_cosine_matrix_is_invariant_to_row_scaling_and_permutes_with_rows():
    x = clustered(seed=1)
    s = cosine_similarity_matrix(x).numpy()
    scales = np.exp(np.random.default_rng(0).uniform(-20, 20, size=x.shape[0])).astype(np.float32)
    np.testing.assert_allclose(cosine_similarity_matrix(x * scales[:, None]).numpy(), s, atol=2e-6)
    perm = np.random.default_rng(1).permutation(x.shape[0])
    np.testing.assert_allclose(cosine_similarity_matrix(x[perm], block=50).numpy(), s[perm][:, perm], atol=2e-6)


def test_cosine_matrix_handles_norms_beyond_float32_products():
    x = clustered(n=30)
    big = x.astype(np.float32) * np.float32(1e30)      # squared norms overflow float32
    np.testing.assert_allclose(cosine_similarity_matrix(big).numpy(), float64_cosine(x), atol=2e-6)


def test_cosine_matrix_refuses_zero_rows_and_non_finite_values():
    x = clustered(n=10)
    x[3] = 0
    with pytest.raises(ValueError, match="nonzero rows.*1 all-zero rows.*index 3"):
        cosine_similarity_matrix(x)
    x = clustered(n=10)
    x[4, 2] = np.nan
    with pytest.raises(ValueError, match="finite points.*row 4"):
        cosine_similarity_matrix(x)
    with pytest.raises(ValueError, match="block to be a positive int"):
        cosine_similarity_matrix(clustered(n=10), block=0)


def test_knn_from_similarity_equals_the_exact_scan_and_sklearn():
    x = clustered(n=400, d=64, seed=3)
    k = 7
    w = knn_from_similarity(cosine_similarity_matrix(x), k=k, rows_per_chunk=97)
    scan = knn_graph(x, k=k)
    np.testing.assert_allclose(w.toarray(), scan.toarray(), atol=1e-6)
    np.testing.assert_array_equal((w != 0).toarray(), (scan != 0).toarray())
    # Neighbour sets against scikit-learn's brute-force cosine search (self dropped).
    _, idx = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(x).kneighbors(x)
    expected = np.zeros((400, 400), dtype=bool)
    expected[np.repeat(np.arange(400), k), idx[:, 1:].ravel()] = True
    np.testing.assert_array_equal((w != 0).toarray(), expected | expected.T)
    assert (w != w.T).nnz == 0


def test_knn_from_similarity_refuses_bad_input():
    s = cosine_similarity_matrix(clustered(n=10))
    with pytest.raises(ValueError, match=r"1 <= k < N=10, got 10"):
        knn_from_similarity(s, k=10)
    with pytest.raises(ValueError, match="square"):
        knn_from_similarity(s[:5], k=2)
