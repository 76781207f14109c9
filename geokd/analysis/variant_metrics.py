"""Every metric of a layer under one graph variant, teacher and student.

Under a variant (its graphs from :mod:`geokd.analysis.variant_graphs`):

- ``aligned_distance``: ``||A_T - A_S||_F`` of the variant's graphs (its square is the
  variant's one-layer GKD term on the node set);
- ``lambda_distance``, ``heat_trace_distance``: spectral distances of their analysis graphs;
- ``cross_graph_variation``: the teacher's lowest-frequency eigenvectors of the variant's
  graph, their variation on the student's;
- ``smoothness_combinatorial`` / ``_normalized`` / ``_ratio``: the label smoothness, on a
  ``task = "all"`` graph only. On an intra-class graph no edge crosses classes and on an
  inter-class graph every edge does, so the value is fixed by construction: the measure is
  left empty (``value = None``) with the reason as its note, never a number that looks like
  a measurement;
- ``isolated_nodes``: how many nodes the variant leaves without an edge (the only node of
  its class under ``intra``, say), named in the note; the values above stay finite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from geokd.analysis.crossgraph import low_frequency_basis, signal_variation
from geokd.analysis.smoothness import smoothness_metrics
from geokd.analysis.spectral import aligned_distance, heat_trace_distance, lambda_distance
from geokd.analysis.variant_graphs import VariantGraph, describe_isolated
from geokd.graphs.spec import GraphSpec

#: Why the label smoothness is left empty on a task graph.
SMOOTHNESS_FIXED = {
    "intra": "label smoothness is fixed by construction on an intra-class graph (no edge crosses classes: "
             "0 crossing weight), so it is not measured",
    "inter": "label smoothness is fixed by construction on an inter-class graph (every edge crosses classes: "
             "a crossing-weight ratio of 1), so it is not measured",
}
SMOOTHNESS_METRICS = ("smoothness_combinatorial", "smoothness_normalized", "smoothness_ratio")


class Measure(NamedTuple):
    """One metric's value (``None``: not measured, ``note`` says why) and a note."""

    metric: str
    value: float | None
    note: str = ""


@dataclass(frozen=True)
class TeacherVariant:
    """What every student's comparison under one variant needs of the teacher's graph of a
    layer (its analysis graph is dropped once measured: the teacher's are kept for every
    layer and variant), and the teacher's own measures."""

    spec: GraphSpec
    adjacency: torch.Tensor
    knn_mask: torch.Tensor | None
    spectrum: np.ndarray
    eigenvalues: np.ndarray
    basis: np.ndarray
    measures: tuple[Measure, ...]


def teacher_variant(graph: VariantGraph, labels, *, num_eigenvectors: int = 10,
                    name: str | None = None) -> TeacherVariant:
    """The teacher's side of every student's comparison under this variant (computed once),
    with the teacher's own measures: smoothness, the mean of its low-frequency eigenvalues
    (the cross-graph variation on its own graph, as in the default analysis), isolated nodes.

    Examples
    --------
    >>> from geokd.analysis.variant_graphs import layer_gram, variant_graph
    >>> x = np.abs(np.random.default_rng(0).normal(size=(8, 5))).astype(np.float32)
    >>> graph = variant_graph(layer_gram(x), GraphSpec(task="inter"), [0, 1] * 4)
    >>> t = teacher_variant(graph, [0, 1] * 4, num_eigenvectors=2)
    >>> [(m.metric, m.value) for m in t.measures][:2]
    [('smoothness_combinatorial', None), ('smoothness_normalized', None)]
    """
    m = min(int(num_eigenvectors), graph.graph.shape[0])
    eigenvalues, basis = low_frequency_basis(graph.graph, num_eigenvectors=m, name=name)
    measures = (_smoothness(graph, labels, name)
                + [Measure("cross_graph_variation", float(eigenvalues.mean())), _isolated(graph, labels)])
    return TeacherVariant(spec=graph.spec, adjacency=graph.adjacency, knn_mask=graph.knn_mask,
                          spectrum=graph.spectrum, eigenvalues=eigenvalues, basis=basis, measures=tuple(measures))


def _smoothness(graph: VariantGraph, labels, name) -> list[Measure]:
    note = SMOOTHNESS_FIXED.get(graph.spec.task)
    if note is not None:
        return [Measure(metric, None, note) for metric in SMOOTHNESS_METRICS]
    if graph.graph.matrix.nnz == 0:
        return [Measure(metric, None, "the graph has no edges") for metric in SMOOTHNESS_METRICS]
    values = smoothness_metrics(graph.graph, labels, name=name)
    return [Measure(f"smoothness_{lap}", value) for lap, value in values.items()]


def _isolated(graph: VariantGraph, labels) -> Measure:
    return Measure("isolated_nodes", float(graph.isolated.size), describe_isolated(graph.isolated, labels))


def student_measures(student: VariantGraph, teacher: TeacherVariant, labels, *,
                     name: str | None = None) -> list[Measure]:
    """A student's measures under the variant, against the teacher's graph of the same variant.

    Examples
    --------
    >>> from geokd.analysis.variant_graphs import layer_gram, variant_graph
    >>> from geokd.graphs import GraphSpec
    >>> x = np.abs(np.random.default_rng(0).normal(size=(8, 5))).astype(np.float32)
    >>> graph = variant_graph(layer_gram(x), GraphSpec(k=3), [0, 1] * 4)
    >>> same = student_measures(graph, teacher_variant(graph, [0, 1] * 4, num_eigenvectors=2), [0, 1] * 4)
    >>> {m.metric: m.value for m in same}["aligned_distance"]
    0.0
    """
    if student.spec != teacher.spec:
        raise ValueError(f"{name + ': ' if name else ''}expected the student's and the teacher's graphs under one "
                         f"variant, got {student.spec.name!r} and {teacher.spec.name!r}")
    t = teacher
    return [
        Measure("aligned_distance", aligned_distance(t.adjacency, student.adjacency, name=name)),
        Measure("lambda_distance", lambda_distance(t.spectrum, student.spectrum, name=name)),
        Measure("heat_trace_distance", heat_trace_distance(t.spectrum, student.spectrum, name=name)),
        Measure("cross_graph_variation", float(signal_variation(teacher.basis, student.graph, name=name).mean())),
        *_smoothness(student, labels, name),
        _isolated(student, labels),
    ]
