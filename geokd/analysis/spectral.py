"""Distances between two graphs on the same nodes: spectral and aligned.

Spectral distances compare the normalized-Laplacian spectra (eigenvalues in ``[0, 2]``,
computed in float64) and so ignore which node is which; the aligned distance
``||Â_T - Â_S||_F`` (the GKD distance) compares node by node. Reporting both tells apart
"same shape of geometry" from "same geometry on the same inputs".
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import torch

from geokd.analysis._validate import as_weight_matrix, where

DEFAULT_HEAT_TIMES = np.logspace(-2, 2, 250)


def sparse_normalized_laplacian(w, *, name: str | None = None) -> sp.csr_matrix:
    """Sparse float64 ``L_sym = I - D^-1/2 W D^-1/2``; an isolated node's row is zero (as in PyGSP).

    Examples
    --------
    >>> sparse_normalized_laplacian(np.array([[0.0, 2.0], [2.0, 0.0]])).toarray()
    array([[ 1., -1.],
           [-1.,  1.]])
    """
    csr = as_weight_matrix(w, name=name)
    degrees = np.asarray(csr.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(degrees)
    np.power(degrees, -0.5, where=degrees > 0, out=inv_sqrt)
    scale = sp.diags(inv_sqrt)
    return (sp.diags((degrees > 0).astype(np.float64)) - scale @ csr @ scale).tocsr()


def normalized_laplacian(w, *, name: str | None = None) -> np.ndarray:
    """Dense float64 ``L_sym = I - D^-1/2 W D^-1/2``; an isolated node's row is zero (as in PyGSP).

    Examples
    --------
    >>> normalized_laplacian(np.array([[0.0, 2.0], [2.0, 0.0]]))
    array([[ 1., -1.],
           [-1.,  1.]])
    """
    return sparse_normalized_laplacian(w, name=name).toarray()


def laplacian_spectrum(w, *, name: str | None = None) -> np.ndarray:
    """Sorted eigenvalues of the normalized Laplacian of ``w`` (float64, in ``[0, 2]``).

    Examples
    --------
    >>> laplacian_spectrum(np.ones((3, 3)) - np.eye(3)).round(6)       # triangle
    array([0. , 1.5, 1.5])
    """
    eigenvalues = scipy.linalg.eigvalsh(normalized_laplacian(w, name=name))
    # Round-off can leave -1e-16 or 2 + 1e-16; the true values lie in [0, 2].
    return np.clip(eigenvalues, 0.0, 2.0)


def heat_trace(eigenvalues, *, times=None) -> np.ndarray:
    """NetLSD heat trace ``h_t = (1/N) sum_j exp(-t λ_j)`` on the grid ``times``.

    Examples
    --------
    >>> heat_trace(np.array([0.0, 2.0]), times=[0.0, 1.0]).round(4)
    array([1.    , 0.5677])
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    t = DEFAULT_HEAT_TIMES if times is None else np.asarray(times, dtype=np.float64)
    return np.exp(-np.outer(t, lam)).mean(axis=1)


def _check_same_size(spec_a: np.ndarray, spec_b: np.ndarray, name: str | None) -> None:
    if spec_a.shape != spec_b.shape:
        raise ValueError(
            f"{where(name)}expected two graphs on the same number of nodes, got {spec_a.size} and {spec_b.size}"
        )


def lambda_distance(spectrum_a, spectrum_b, *, name: str | None = None) -> float:
    """``||sort(λ_a) - sort(λ_b)||_2`` between two spectra of equal size.

    Examples
    --------
    >>> lambda_distance([0.0, 1.0, 2.0], [0.0, 1.0, 1.0])
    1.0
    """
    a = np.sort(np.asarray(spectrum_a, dtype=np.float64))
    b = np.sort(np.asarray(spectrum_b, dtype=np.float64))
    _check_same_size(a, b, name)
    return float(np.linalg.norm(a - b))


def heat_trace_distance(spectrum_a, spectrum_b, *, times=None, name: str | None = None) -> float:
    """L2 distance between the NetLSD heat traces of two spectra of equal size.

    Examples
    --------
    >>> heat_trace_distance([0.0, 1.0], [0.0, 1.0])
    0.0
    """
    a = np.asarray(spectrum_a, dtype=np.float64)
    b = np.asarray(spectrum_b, dtype=np.float64)
    _check_same_size(a, b, name)
    return float(np.linalg.norm(heat_trace(a, times=times) - heat_trace(b, times=times)))


def spectral_distances(w_a, w_b, *, times=None, name: str | None = None) -> dict[str, float]:
    """Both spectral distances between graphs ``w_a`` and ``w_b`` on the same nodes.

    Returns ``{"lambda_distance": ..., "heat_trace_distance": ...}``.

    Examples
    --------
    >>> ring = np.roll(np.eye(4), 1, axis=1); ring = ring + ring.T
    >>> spectral_distances(ring, ring)
    {'lambda_distance': 0.0, 'heat_trace_distance': 0.0}
    """
    spec_a = laplacian_spectrum(w_a, name=name)
    spec_b = laplacian_spectrum(w_b, name=name)
    return {
        "lambda_distance": lambda_distance(spec_a, spec_b, name=name),
        "heat_trace_distance": heat_trace_distance(spec_a, spec_b, times=times, name=name),
    }


def aligned_distance(adjacency_a, adjacency_b, *, name: str | None = None) -> float:
    """Frobenius distance ``||Â_a - Â_b||_F`` between two graphs on the same, aligned nodes.

    Examples
    --------
    >>> aligned_distance(torch.zeros(2, 2), torch.eye(2))
    1.4142135623730951
    """
    from geokd.graphs.row_source import TensorRows, is_row_source

    # Either graph may be a row source (a teacher's graph stored on disk): read in the same
    # row chunks as an in-memory one, so the distance is the same to the last bit.
    a = adjacency_a if is_row_source(adjacency_a) else TensorRows(torch.as_tensor(adjacency_a))
    b = adjacency_b if is_row_source(adjacency_b) else TensorRows(torch.as_tensor(adjacency_b))
    if tuple(a.shape) != tuple(b.shape) or len(a.shape) != 2:
        raise ValueError(f"{where(name)}expected two (N, N) graphs of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    # Row chunks: no full-size temporaries (400 MB each at 10,000 nodes). Float32 differences
    # and per-row (pairwise) sums, added in float64: a float64 copy of both graphs would be
    # 6x slower for a relative error of 1e-7 either way. Float64 graphs (the graph variants'
    # analysis) keep float64 differences.
    total = 0.0
    for start in range(0, a.shape[0], 1024):
        rows_a, rows_b = a.read(start, start + 1024), b.read(start, start + 1024)
        dtype = torch.float64 if torch.float64 in (rows_a.dtype, rows_b.dtype) else torch.float32
        diff = rows_a.to(dtype) - rows_b.to(device=rows_a.device, dtype=dtype)
        total += float(torch.linalg.vector_norm(diff, dim=1).double().square().sum())
    return math.sqrt(total)
