"""Which kind of student is closer to the teacher, layer by layer.

For every layer and metric, the medians over seeds of two student methods, which one is
closer to the teacher, and a two-sided Mann-Whitney U p-value over the seeds (with 10
seeds per method, p < 0.05 means the two groups barely overlap). "Closer" means a smaller
distance, a larger agreement, or a smoothness nearer the teacher's own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

# metric -> how "close to the teacher" reads: "lower", "higher", or "teacher" (nearest its value).
CLOSENESS = {
    "aligned_distance": "lower",
    "lambda_distance": "lower",
    "heat_trace_distance": "lower",
    "cross_graph_variation": "lower",
    "knn_agreement_teacher_block": "higher",
    "knn_agreement_teacher_output": "higher",
    "agreement": "higher",
    "agreement_teacher_right": "higher",
    "agreement_teacher_wrong": "higher",
    "smoothness_ratio": "teacher",
    "smoothness_normalized": "teacher",
    "smoothness_combinatorial": "teacher",
}


def _values(rows, method, layer, metric) -> np.ndarray:
    return np.array([r["value"] for r in rows if r["method"] == method and r["layer"] == layer
                     and r["metric"] == metric and r["value"] is not None], dtype=np.float64)


def closeness_by_layer(rows: Sequence[Mapping], *, methods: tuple[str, str] = ("gkd", "rkd-d"),
                       teacher_method: str = "teacher", metrics: Sequence[str] | None = None) -> list[dict]:
    """Compare two student methods' closeness to the teacher per layer and metric.

    Returns one dict per (layer, metric) with ``median_<method>`` for both, ``teacher``
    (the teacher's value, for smoothness), ``closer`` (the closer method's name) and
    ``p_value``.

    Examples
    --------
    >>> rows = [{"method": m, "seed": s, "layer": "pool", "metric": "aligned_distance", "value": v + s / 100}
    ...         for m, v in (("gkd", 1.0), ("rkd-d", 2.0)) for s in range(5)]
    >>> out = closeness_by_layer(rows)[0]
    >>> out["closer"], round(out["p_value"], 4)
    ('gkd', 0.0079)
    """
    from scipy.stats import mannwhitneyu

    a, b = methods
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    metrics = list(metrics) if metrics is not None else [m for m in CLOSENESS if any(r["metric"] == m for r in rows)]
    out = []
    for layer in layers:
        for metric in metrics:
            va, vb = _values(rows, a, layer, metric), _values(rows, b, layer, metric)
            if va.size == 0 or vb.size == 0:
                continue
            rule = CLOSENESS.get(metric, "lower")
            teacher = _values(rows, teacher_method, layer, metric)
            if rule == "teacher":
                if teacher.size == 0:
                    continue
                score_a, score_b = np.abs(va - teacher[0]), np.abs(vb - teacher[0])
            elif rule == "higher":
                score_a, score_b = -va, -vb
            else:
                score_a, score_b = va, vb
            ma, mb = float(np.median(score_a)), float(np.median(score_b))
            p_value = float(mannwhitneyu(score_a, score_b, alternative="two-sided").pvalue) \
                if va.size > 1 and vb.size > 1 else float("nan")
            out.append({
                "layer": layer, "metric": metric, f"median_{a}": float(np.median(va)),
                f"median_{b}": float(np.median(vb)),
                "teacher": float(teacher[0]) if teacher.size else None,
                "closer": a if ma < mb else b if mb < ma else "tie",
                "p_value": p_value,
            })
    return out
