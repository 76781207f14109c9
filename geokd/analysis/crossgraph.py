"""Cross-graph variation: does the student's graph keep the teacher's smooth signals smooth?

Take the teacher's ``m`` lowest-frequency eigenvectors ``u_1..u_m`` of its normalized
Laplacian (on a node set with C well-separated classes, they nearly span the class
indicators). Their variation on the student's graph, ``u^T L_S u`` with the student's
normalized Laplacian (a value in ``[0, 2]``), is small when the student's geometry keeps
the teacher's low-frequency structure, whatever happens to individual edges.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from geokd.analysis._validate import where
from geokd.analysis.spectral import normalized_laplacian


def low_frequency_basis(w, *, num_eigenvectors: int = 10, name: str | None = None):
    """The ``num_eigenvectors`` lowest eigenpairs of the normalized Laplacian of ``w`` (float64).

    Returns ``(eigenvalues, vectors)`` with unit-norm eigenvectors as columns.

    Examples
    --------
    >>> values, vectors = low_frequency_basis(np.ones((3, 3)) - np.eye(3), num_eigenvectors=1)
    >>> bool(abs(values[0]) < 1e-12), vectors.shape
    (True, (3, 1))
    """
    laplacian = normalized_laplacian(w, name=name)
    n = laplacian.shape[0]
    if not isinstance(num_eigenvectors, (int, np.integer)) or not 1 <= num_eigenvectors <= n:
        raise ValueError(f"{where(name)}expected 1 <= num_eigenvectors <= N = {n}, got {num_eigenvectors!r}")
    return scipy.linalg.eigh(laplacian, subset_by_index=(0, int(num_eigenvectors) - 1))


def signal_variation(signals, w, *, name: str | None = None) -> np.ndarray:
    """``u^T L_sym u`` of every column ``u`` of ``signals`` on the graph ``w``.

    Examples
    --------
    >>> w = np.array([[0.0, 1.0], [1.0, 0.0]])
    >>> signal_variation(np.array([[1.0], [-1.0]]) / np.sqrt(2), w)
    array([2.])
    """
    laplacian = normalized_laplacian(w, name=name)
    u = np.asarray(signals, dtype=np.float64)
    if u.ndim != 2 or u.shape[0] != laplacian.shape[0]:
        raise ValueError(
            f"{where(name)}expected signals of shape ({laplacian.shape[0]}, m) on the student's graph, got {u.shape}"
        )
    return np.einsum("ni,ni->i", u, laplacian @ u)


def cross_graph_variation(teacher_w, student_w, *, num_eigenvectors: int = 10,
                          name: str | None = None) -> dict[str, np.ndarray | float]:
    """Variation of the teacher's low-frequency eigenvectors on the student's graph.

    Parameters
    ----------
    teacher_w, student_w : array-like or scipy.sparse matrix, shape (N, N)
        Graphs on the same, aligned nodes.
    num_eigenvectors : int
        How many of the teacher's lowest-frequency eigenvectors to carry over.
    name : str, optional
        The layer's name, used in error messages.

    Returns
    -------
    dict
        ``teacher_eigenvalues`` (their variation on the teacher's own graph),
        ``student_variation`` (``u_i^T L_S u_i``), and ``mean_student_variation``,
        ``mean_teacher_eigenvalue`` (floats).

    Examples
    --------
    >>> w = np.ones((4, 4)) - np.eye(4)
    >>> out = cross_graph_variation(w, w, num_eigenvectors=2)
    >>> bool(np.allclose(out["student_variation"], out["teacher_eigenvalues"]))
    True
    """
    eigenvalues, vectors = low_frequency_basis(teacher_w, num_eigenvectors=num_eigenvectors, name=name)
    student_variation = signal_variation(vectors, student_w, name=name)
    return {
        "teacher_eigenvalues": eigenvalues,
        "student_variation": student_variation,
        "mean_teacher_eigenvalue": float(eigenvalues.mean()),
        "mean_student_variation": float(student_variation.mean()),
    }
