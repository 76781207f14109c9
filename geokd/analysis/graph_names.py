"""Which graph each metric was measured on: the ``graph`` column of the metric tables.

Every row of ``metrics.csv`` names its graph by :attr:`geokd.graphs.GraphSpec.name`. The
default analysis measures on two graphs, and names them too:

- the cosine k-NN union graph of the node set, weights the cosines clipped at 0
  (``cos-none-k10-all-p1-relu`` for k = 10): smoothness, k-NN votes, spectra and the
  cross-graph variation;
- the GKD paper's graph ``Â = D^-1/2 A D^-1/2`` of the full cosine graph
  (``cos-sym-full-all-p1``): the aligned distance.

Rows of the final decision (test error, output agreement) and of the linear probe are on
no graph (``""``). A graph-variant analysis (``geokd analyze --graphs``) adds rows under
each variant's name; a row that the default analysis already gives (same network, layer,
metric and graph) is not repeated, so one file holds both without duplicates.

Examples
--------
>>> default_graph("aligned_distance", k=10), default_graph("smoothness_ratio", k=10)
('cos-sym-full-all-p1', 'cos-none-k10-all-p1-relu')
>>> default_graph("test_error", k=10)
''
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from geokd.graphs.spec import GraphSpec

#: Metrics the default analysis measures on its cosine k-NN graph.
KNN_GRAPH_METRICS = frozenset({
    "smoothness_combinatorial", "smoothness_normalized", "smoothness_ratio", "knn_accuracy",
    "knn_agreement_own_output", "knn_agreement_teacher_block", "knn_agreement_teacher_output",
    "lambda_distance", "heat_trace_distance", "cross_graph_variation",
})
#: Metrics the default analysis measures on the paper's dense graph.
DENSE_GRAPH_METRICS = frozenset({"aligned_distance"})


def default_knn_spec(*, k: int) -> GraphSpec:
    """The spec of the default analysis' k-NN graph (the same graph: see the module notes).

    Examples
    --------
    >>> default_knn_spec(k=10).name
    'cos-none-k10-all-p1-relu'
    """
    return GraphSpec(normalization="none", k=int(k), clamp_negative=True)


def default_graph(metric: str, *, k: int) -> str:
    """The name of the graph the default analysis measures ``metric`` on (``""``: none)."""
    if metric in DENSE_GRAPH_METRICS:
        return GraphSpec().name
    if metric in KNN_GRAPH_METRICS:
        return default_knn_spec(k=k).name
    return ""


def name_default_graphs(rows: Iterable[dict], *, k: int) -> None:
    """Give every row without a ``graph`` the default analysis' graph of its metric (in place)."""
    for row in rows:
        if "graph" not in row:
            row["graph"] = default_graph(row["metric"], k=k)


def is_default_row(row: Mapping) -> bool:
    """Whether ``row`` is a measure of the default analysis (rows written before graph
    variants existed, without a ``graph`` column, all are).

    Examples
    --------
    >>> is_default_row({"metric": "lambda_distance", "k": 10, "graph": "cos-sym-full-all-p1"})
    False
    >>> is_default_row({"metric": "lambda_distance", "k": 10})
    True
    """
    graph = row.get("graph")
    if graph in (None, ""):
        return True
    k = row.get("k")
    return isinstance(k, int) and graph == default_graph(row["metric"], k=k)


def default_rows(rows: Iterable[Mapping]) -> list[Mapping]:
    """The rows of the default analysis (what the figures and tables of one graph show)."""
    return [row for row in rows if is_default_row(row)]


def variant_names(rows: Sequence[Mapping], settings: Sequence[Mapping] | Mapping | None = None) -> list[str]:
    """The graph variants of an analysis, in the order they were asked for.

    From the settings (``analysis.json``'s ``variants``) when given; else every graph
    name of a row that is not a default measure, in order of first appearance (a variant
    whose every row is also a default one is then not seen).

    Examples
    --------
    >>> rows = [{"metric": "aligned_distance", "k": 10, "graph": "cos-sym-full-all-p1"},
    ...         {"metric": "aligned_distance", "k": 10, "graph": "cos-sym-k10-inter-p1"}]
    >>> variant_names(rows), variant_names(rows, {"variants": ["cos-sym-full-all-p1", "cos-sym-k10-inter-p1"]})
    (['cos-sym-k10-inter-p1'], ['cos-sym-full-all-p1', 'cos-sym-k10-inter-p1'])
    """
    if isinstance(settings, Mapping):
        settings = [settings]
    for entry in settings or ():
        if entry.get("variants"):
            return list(entry["variants"])
    return list(dict.fromkeys(r["graph"] for r in rows if not is_default_row(r)))
