"""How an analysis fits its node set in memory: which graphs it builds and where features live.

Decided once per analysis, from the node set's size, the number of layers and the memory
budget, so the teacher and every student are measured on the same kinds of graphs (and
the teacher cache keys on the decision, :meth:`ScalePlan.key`):

- **dense GKD graphs** ``Â`` (for the aligned distance): ``N²`` float32 per layer, the
  teacher's kept for every layer (in memory, or with a store on disk, read back in row
  blocks). Built up to ``DENSE_LIMIT`` nodes, and under a budget only when the graphs memory
  must hold at once (every layer's and one more in memory; two with a store) fit in 3/4 of
  what the budget leaves. Otherwise the aligned distance is left out and the analysis says why.
- **k-NN graphs**: exact up to ``APPROXIMATE_FROM`` nodes, above it approximate
  (:func:`geokd.graphs.knn_graph`, ``APPROXIMATE_CANDIDATES`` candidates per node: on the
  WRN-28-1 teacher's ``layer1`` over CIFAR-10's 50,000 training images, 99.8 % of the
  exact 10 neighbours, against 99.2 % with the default 64), unless ``knn`` says otherwise.
- **features**: in memory (``store_dir=None``), or written once to an on-disk store
  (:mod:`geokd.analysis.activation_store`) and read back in blocks sized from what the
  budget leaves (:mod:`geokd.analysis.memory_budget`).

Examples
--------
>>> plan = plan_scale(num_nodes=50_000, num_layers=4, memory_budget=4 * 2 ** 30, store_dir=None)
>>> plan.dense, plan.approximate
(False, True)
>>> plan_scale(num_nodes=1000, num_layers=4, memory_budget=None, store_dir=None).dense
True
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geokd.analysis.memory_budget import MemoryBudget, format_bytes

DENSE_LIMIT = 20_000
APPROXIMATE_FROM = 20_000
APPROXIMATE_CANDIDATES = 128
#: The fewest rows a k-NN block may hold: below, the products stop paying for their reads.
MIN_BLOCK_ROWS = 256
KNN_MODES = ("auto", "exact", "approximate")


@dataclass(frozen=True)
class ScalePlan:
    """The decisions of :func:`plan_scale` (see the module)."""

    num_nodes: int
    dense: bool
    approximate: bool
    budget: MemoryBudget | None = None
    store_dir: Path | None = None
    store_dtype: str = "float32"
    dense_note: str = ""          # why the dense graphs are left out, when they are
    teacher_graphs_on_disk: bool = False   # the teacher's dense graphs wait in the store, not in memory
    shard: object = None          # a geokd.graphs.dataset_knn.KnnShard: k-NN graphs built with other processes

    def key(self) -> dict:
        """What of the plan changes the numbers (for the teacher cache's key)."""
        return {"dense": self.dense, "approximate": self.approximate,
                "candidates": APPROXIMATE_CANDIDATES if self.approximate else None,
                "features": self.store_dtype if self.store_dir is not None else "memory-float32"}

    def store_for(self, network: str):
        """The activation store of ``network`` (``None``: features in memory)."""
        if self.store_dir is None:
            return None
        from geokd.analysis.activation_store import ActivationStore, _safe_name

        return ActivationStore(self.store_dir / _safe_name(network), dtype=self.store_dtype)

    def knn_budget(self, features, *, name: str) -> int | None:
        """Bytes the k-NN graph of ``features`` may use (``None``: its default), checked to hold
        at least ``MIN_BLOCK_ROWS`` rows; a :class:`MemoryBudgetError` if it does not."""
        if self.budget is None:
            return None
        width = int(np.prod(features.shape[1:]))
        block = 3 * MIN_BLOCK_ROWS * width * 4
        self.budget.require(block, what=f"{name}: one k-NN block ({MIN_BLOCK_ROWS} rows of {width} float32 "
                                        "features, three held at once)")
        return max(block, self.budget.available() // 2)

    def block_rows(self, features, *, name: str) -> int:
        """Rows of one block of the dense similarity of stored ``features`` (two held at once)."""
        from geokd.graphs.dense_cosine import DEFAULT_BLOCK

        if self.budget is None or isinstance(features, np.ndarray):
            return DEFAULT_BLOCK
        width = int(np.prod(features.shape[1:]))
        dense = self.num_nodes ** 2 * 4   # the similarity matrix the blocks fill
        left = self.budget.require(dense + 2 * MIN_BLOCK_ROWS * width * 4,
                                   what=f"{name}: the similarity matrix and two blocks of {MIN_BLOCK_ROWS} rows")
        # Two blocks and their normalized copies in a quarter of what is left beside a second
        # N x N (the GKD graph is made in place, but a student's is compared with the teacher's).
        left = max(0, self.budget.available() - 2 * dense)
        return int(min(DEFAULT_BLOCK, max(MIN_BLOCK_ROWS, left // (4 * 4 * 4 * width))))

    def whole(self, features, *, what: str) -> np.ndarray:
        """All rows of ``features`` as an array, for work that needs them at once (probe, variants)."""
        if isinstance(features, np.ndarray):
            return features
        if self.budget is not None:
            self.budget.require(features.nbytes_float32, what=f"{what} (all {features.shape[0]} rows at once)")
        return features.to_array()


def rows_at(features, positions) -> np.ndarray:
    """The rows at ``positions`` of in-memory or stored features, as a float32 array.

    Examples
    --------
    >>> rows_at(np.arange(6.0).reshape(3, 2), np.array([2, 0])).tolist()
    [[4.0, 5.0], [0.0, 1.0]]
    """
    if isinstance(features, np.ndarray):
        return features[positions]
    return features.take(positions).numpy()


def plan_scale(*, num_nodes: int, num_layers: int, memory_budget: int | None, store_dir=None,
               store_dtype: str = "float32", knn: str = "auto", shard=None) -> ScalePlan:
    """Decide the graphs and the features' place for ``num_nodes`` nodes and ``num_layers`` layers.

    ``memory_budget``: bytes of resident memory for the whole process, or ``None`` (unbounded,
    in-memory features unless ``store_dir``).
    """
    if knn not in KNN_MODES:
        raise ValueError(f"expected knn in {KNN_MODES}, got {knn!r}")
    budget = None if memory_budget is None else MemoryBudget(total=int(memory_budget))
    if budget is not None:
        budget.require(0, what="the analysis")   # already over it (Python, torch, the images)?
    # The teacher's graphs of every layer stay in memory while they fit beside one more (a
    # student's); with a store, and when they do not fit, they wait on disk (read back in row
    # blocks), and memory holds one layer's similarity and its copy.
    room = None if budget is None else 0.75 * budget.available()
    graphs = num_layers + 1
    on_disk = store_dir is not None and room is not None and graphs * num_nodes ** 2 * 4 > room
    graphs = 2 if on_disk else graphs
    dense_bytes = graphs * num_nodes ** 2 * 4
    note = ""
    if num_nodes > DENSE_LIMIT:
        dense = False
        note = f"above {DENSE_LIMIT} nodes"
    elif room is not None and dense_bytes > room:
        dense = False
        note = (f"{graphs} dense {num_nodes}-node GKD graphs ({format_bytes(dense_bytes)}) exceed 3/4 of what the "
                f"memory budget {format_bytes(budget.total)} leaves ({format_bytes(budget.available())})")
    else:
        dense = True
    approximate = knn == "approximate" or (knn == "auto" and num_nodes > APPROXIMATE_FROM)
    return ScalePlan(num_nodes=num_nodes, dense=dense, approximate=approximate, budget=budget,
                     store_dir=None if store_dir is None else Path(store_dir), store_dtype=store_dtype,
                     dense_note=note, teacher_graphs_on_disk=dense and on_disk, shard=shard)
