"""Does the conclusion depend on the graph? Rankings of the student methods under each variant.

Per sensing point and metric, the student methods are ranked by their closeness to the
teacher (the median over seeds of the closeness score of :mod:`geokd.analysis.compare`:
the distance itself, the agreement negated, or the gap to the teacher's own value), under
each graph variant; Kendall's τ-b of each variant's ranking against the first variant's
tells whether the variant changes the conclusion (1: the same order, -1: reversed).

The table (``variants.csv``) has one row per layer, metric and variant: ``layer``,
``metric``, ``graph``, ``ranking`` (closest first: ``"gkd > rkd-d"`` reads "GKD is closer to
the teacher than RKD-D"; ``=`` joins ties), ``kendall_tau_vs_first``, then ``closest`` and
``note``. A metric not measured under a variant (the label smoothness of an intra-class
graph) has an empty ranking and τ, and its reason in ``note``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from geokd.analysis.compare import CLOSENESS

#: The metrics measured under every variant that say how close a student is to its teacher.
RANKED_METRICS = ("aligned_distance", "lambda_distance", "heat_trace_distance", "cross_graph_variation",
                  "smoothness_ratio", "smoothness_normalized", "smoothness_combinatorial")
VARIANT_COLUMNS = ("layer", "metric", "graph", "ranking", "kendall_tau_vs_first", "closest", "note")


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's τ-b between two paired sequences (ties counted as in ``scipy.stats.kendalltau``).

    ``τ_b = (C - D) / sqrt((P - T_x)(P - T_y))`` with ``C``/``D`` the concordant/discordant
    pairs, ``P = n(n-1)/2`` and ``T_x``/``T_y`` the pairs tied in ``x``/``y``. ``nan`` when
    either sequence is constant (or shorter than 2).

    Examples
    --------
    >>> kendall_tau([1, 2, 3, 4], [1, 3, 2, 4])      # one discordant pair of six
    0.6666666666666666
    >>> kendall_tau([1, 2], [2, 1])
    -1.0
    """
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"expected two 1-D sequences of equal length, got shapes {a.shape} and {b.shape}")
    i, j = np.triu_indices(a.size, k=1)
    da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    pairs = i.size
    tied_a, tied_b = int(np.count_nonzero(da == 0)), int(np.count_nonzero(db == 0))
    denominator = math.sqrt((pairs - tied_a) * (pairs - tied_b))
    if denominator == 0:
        return float("nan")
    return float(np.sum(da * db) / denominator)


def closeness_score(values: np.ndarray, *, metric: str, teacher: float | None = None) -> np.ndarray:
    """Lower = closer to the teacher, by the rule of ``metric`` in :data:`geokd.analysis.compare.CLOSENESS`.

    Examples
    --------
    >>> closeness_score(np.array([0.2, 0.5]), metric="smoothness_ratio", teacher=0.3).round(3)
    array([0.1, 0.2])
    """
    rule = CLOSENESS.get(metric, "lower")
    if rule == "teacher":
        if teacher is None:
            raise ValueError(f"{metric}: expected the teacher's value to score closeness to it, got none")
        return np.abs(values - teacher)
    return -values if rule == "higher" else values


def method_scores(rows: Sequence[Mapping], *, layer: str, metric: str, graph: str, methods: Sequence[str],
                  teacher_method: str = "teacher") -> dict[str, float]:
    """Median over seeds of each method's closeness score (methods without a value are left out)."""
    chosen = [r for r in rows if r["layer"] == layer and r["metric"] == metric and r.get("graph") == graph
              and r["value"] is not None]
    teacher = [r["value"] for r in chosen if r["method"] == teacher_method]
    scores = {}
    for method in methods:
        values = np.array([r["value"] for r in chosen if r["method"] == method], dtype=np.float64)
        if values.size == 0 or (CLOSENESS.get(metric) == "teacher" and not teacher):
            continue
        scores[method] = float(np.median(closeness_score(values, metric=metric,
                                                         teacher=teacher[0] if teacher else None)))
    return scores


def format_ranking(scores: Mapping[str, float]) -> str:
    """Methods closest first, ``" > "`` between them and ``" = "`` between ties.

    Examples
    --------
    >>> format_ranking({"rkd-d": 0.3, "gkd": 0.1, "baseline": 0.3})
    'gkd > rkd-d = baseline'
    """
    ordered = sorted(scores, key=lambda m: scores[m])   # stable: ties keep the given order
    text = ordered[0] if ordered else ""
    for before, method in zip(ordered, ordered[1:]):
        text += (" = " if scores[method] == scores[before] else " > ") + method
    return text


def variant_rankings(rows: Sequence[Mapping], *, variants: Sequence[str], methods: Sequence[str] | None = None,
                     teacher_method: str = "teacher", metrics: Sequence[str] = RANKED_METRICS) -> list[dict]:
    """The rows of ``variants.csv``: per layer, metric and variant, the ranking and its τ vs the first.

    Parameters
    ----------
    rows : sequence of dict
        Metric rows (``geokd analyze --graphs`` output) with a ``graph`` column.
    variants : sequence of str
        Variant names; the first is the reference of Kendall's τ.
    methods : sequence of str, optional
        Student methods to rank (default: every method but the teacher's, in table order).

    Examples
    --------
    >>> rows = [{"method": m, "layer": "pool", "metric": "aligned_distance", "graph": g, "value": v}
    ...         for g, values in (("a", {"gkd": 1.0, "rkd-d": 2.0}), ("b", {"gkd": 3.0, "rkd-d": 2.0}))
    ...         for m, v in values.items()]
    >>> [(r["graph"], r["ranking"], r["kendall_tau_vs_first"]) for r in variant_rankings(rows, variants=["a", "b"])]
    [('a', 'gkd > rkd-d', 1.0), ('b', 'rkd-d > gkd', -1.0)]
    """
    from geokd.plots import layer_order, method_order

    variants = list(variants)
    if not variants:
        raise ValueError("expected at least one graph variant to rank under, got none")
    if methods is None:
        methods = [m for m in method_order(rows) if m != teacher_method]
    notes = {(r["layer"], r["metric"], r.get("graph")): r.get("note") for r in rows
             if r["value"] is None and r.get("note")}
    out = []
    for layer in [l for l in layer_order(rows) if l != "output"]:
        for metric in metrics:
            per_variant = [method_scores(rows, layer=layer, metric=metric, graph=g, methods=methods,
                                         teacher_method=teacher_method) for g in variants]
            if not any(per_variant):
                if not any((layer, metric, g) in notes for g in variants):
                    continue   # a metric this analysis has no rows of
            first = per_variant[0]
            for graph, scores in zip(variants, per_variant):
                common = [m for m in methods if m in scores and m in first]
                tau = kendall_tau([first[m] for m in common], [scores[m] for m in common]) if len(common) >= 2 \
                    else float("nan")
                closest = min(scores, key=scores.get) if scores else ""
                if scores and list(scores.values()).count(scores[closest]) > 1:
                    closest = "tie"
                out.append({"layer": layer, "metric": metric, "graph": graph, "ranking": format_ranking(scores),
                            "kendall_tau_vs_first": None if math.isnan(tau) else tau, "closest": closest,
                            "note": notes.get((layer, metric, graph)) or ("" if scores else "no values")})
    return out
