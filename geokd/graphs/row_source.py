"""Rows of a feature matrix read a block at a time, wherever they live.

The k-NN graphs of a whole dataset (:func:`geokd.graphs.knn_graph`) never need all of a
layer's features at once: they read row blocks (the exact scan, the projection), and a
sample or a working set of rows by position (the basis, the re-ranking). A *row source*
is anything with that interface:

- ``shape``: ``(N, d)``;
- ``read(start, stop)``: rows ``start:stop`` as a float32 tensor;
- ``take(positions)``: the rows at sorted int64 ``positions`` as a float32 tensor;
- ``block_rows``: the read granularity it prefers (reads aligned to it cost least);
- ``norms``: the float32 row norms if it knows them already, else ``None``;
- ``in_memory``: whether ``take`` is as cheap as indexing an array.

:class:`TensorRows` is one over an in-memory tensor; the analysis' on-disk activation store
(:class:`geokd.analysis.activation_store.StoredRows`) is another.
"""

from __future__ import annotations

import numpy as np
import torch


class TensorRows:
    """A row source over an in-memory ``(N, d)`` float32 tensor (no copy).

    Examples
    --------
    >>> rows = TensorRows(torch.arange(6.0).reshape(3, 2))
    >>> rows.shape, rows.read(1, 3).tolist(), rows.take(np.array([0, 2])).tolist()
    ((3, 2), [[2.0, 3.0], [4.0, 5.0]], [[0.0, 1.0], [4.0, 5.0]])
    """

    in_memory = True
    norms = None

    def __init__(self, x: torch.Tensor):
        self.x = x
        self.shape = tuple(x.shape)
        self.block_rows = max(1, x.shape[0])

    def read(self, start: int, stop: int) -> torch.Tensor:
        return self.x[start:stop]

    def take(self, positions) -> torch.Tensor:
        return self.x[torch.as_tensor(np.asarray(positions, dtype=np.int64), device=self.x.device)]


def is_row_source(x) -> bool:
    """Whether ``x`` is a row source rather than an array or tensor.

    Examples
    --------
    >>> is_row_source(TensorRows(torch.zeros(2, 2))), is_row_source(torch.zeros(2, 2))
    (True, False)
    """
    return all(hasattr(x, name) for name in ("read", "take", "block_rows")) and not isinstance(x, torch.Tensor)
