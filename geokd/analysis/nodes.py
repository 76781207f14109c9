"""Evaluation node sets: which test inputs every compared network is measured on."""

from __future__ import annotations

import numpy as np

from geokd.analysis._validate import as_labels


def balanced_node_set(labels, *, per_class: int = 100, seed: int = 0) -> np.ndarray:
    """A fixed, class-balanced subset: ``per_class`` random inputs of each class.

    The same ``labels`` and ``seed`` always give the same nodes, so every network is
    compared on the same inputs. Indices come sorted by class, then by position (graph
    heat maps show the class blocks).

    Examples
    --------
    >>> nodes = balanced_node_set([0, 1, 0, 1, 1, 0], per_class=2, seed=0)
    >>> len(nodes), sorted(np.asarray([0, 1, 0, 1, 1, 0])[nodes].tolist())
    (4, [0, 0, 1, 1])
    """
    y = as_labels(labels, np.asarray(labels).shape[0])
    if not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise ValueError(f"expected per_class as a positive integer, got {per_class!r}")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        if members.size < per_class:
            raise ValueError(f"expected at least {per_class} inputs of class {c}, got {members.size}")
        chosen.append(np.sort(rng.choice(members, size=per_class, replace=False)))
    return np.concatenate(chosen)


def whole_set(labels) -> np.ndarray:
    """Every input, sorted by class then position.

    Examples
    --------
    >>> whole_set([1, 0, 1]).tolist()
    [1, 0, 2]
    """
    y = as_labels(labels, np.asarray(labels).shape[0])
    return np.argsort(y, kind="stable")
