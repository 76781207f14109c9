"""A self-contained HTML report of a saved analysis: how close students are to the teacher.

The page tells, layer by layer, the teacher's value and each student method's median
(over seeds) of every metric, which method is closer to the teacher (with a Mann-Whitney
p-value), where each method diverges most, and embeds the figures as base64 PNGs, so the
single file can be mailed or attached to an issue. An analysis under graph variants adds
a section on whether the conclusion depends on the graph (:mod:`geokd.report_variants`).
"""

from __future__ import annotations

import base64
import html
import json
import os
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np

from geokd.analysis.compare import CLOSENESS, closeness_by_layer

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.4}
table{border-collapse:collapse;margin:0.6em 0 1.4em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.closer{font-weight:bold;color:#0a5}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}code{background:#f5f5f5;padding:0 3px}
table.variants td{text-align:left}td.empty{color:#888;font-style:italic}
"""


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))


def _table(header: Sequence[str], body: Sequence[Sequence], *, highlight: Sequence[set] | None = None) -> str:
    cells = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for i, row in enumerate(body):
        marks = highlight[i] if highlight else set()
        cells.append("<tr>" + "".join(
            f"<td class='closer'>{_fmt(v)}</td>" if j in marks else f"<td>{_fmt(v)}</td>"
            for j, v in enumerate(row)) + "</tr>")
    return "".join(cells) + "</table>"


def _student_methods(rows) -> list[str]:
    from geokd.plots import method_order

    return [m for m in method_order(rows) if m != "teacher"]


def _median(rows, method, layer, metric):
    values = [r["value"] for r in rows if r["method"] == method and r["layer"] == layer and r["metric"] == metric
              and r["value"] is not None]
    return float(np.median(values)) if values else None


def divergence_summary(rows: Sequence[Mapping], method: str) -> list[str]:
    """Sentences naming where a student method departs most from the teacher."""
    from geokd.plots import layer_order

    layers = [l for l in layer_order(rows) if l != "output"]
    sentences = []
    agreement = {l: _median(rows, method, l, "knn_agreement_teacher_block") for l in layers}
    agreement = {l: v for l, v in agreement.items() if v is not None}
    if agreement:
        worst = min(agreement, key=agreement.get)
        sentences.append(f"its blocks' k-NN votes agree least with the teacher's at <code>{worst}</code> "
                         f"({100 * agreement[worst]:.1f} %).")
    gaps = {}
    for layer in layers:
        s, t = _median(rows, method, layer, "smoothness_ratio"), _median(rows, "teacher", layer, "smoothness_ratio")
        if s is not None and t is not None:
            gaps[layer] = s - t
    if gaps:
        worst = max(gaps, key=lambda l: abs(gaps[l]))
        direction = "rougher" if gaps[worst] > 0 else "smoother"
        sentences.append(f"its label smoothness departs most from the teacher's at <code>{worst}</code> "
                         f"({direction} by {abs(gaps[worst]):.3f} in crossing-weight ratio).")
    output = _median(rows, method, "output", "agreement")
    if output is not None:
        sentences.append(f"its final decisions agree with the teacher's on {100 * output:.2f} % of the inputs "
                         f"({100 * (_median(rows, method, 'output', 'agreement_teacher_wrong') or 0):.1f} % of "
                         "those the teacher gets wrong).")
    return sentences


def build_report(rows: Sequence[Mapping], *, figures: Sequence[str] = (), settings: Mapping | None = None,
                 title: str = "geokd: how close are the students to their teacher?") -> str:
    """The HTML text of the report (figures are PNG paths, embedded as base64).

    Examples
    --------
    >>> rows = [{"network": "t", "method": "teacher", "seed": None, "layer": "pool",
    ...          "metric": "smoothness_ratio", "value": 0.1}]
    >>> "<html" in build_report(rows)
    True
    """
    from geokd.analysis.graph_names import default_rows, variant_names
    from geokd.plots import layer_order

    all_rows = rows
    variants = variant_names(all_rows, settings.get("analyses", [settings]) if settings else None)
    rows = default_rows(all_rows)   # the sections below show the default analysis
    methods = _student_methods(rows)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    if settings:
        shown = {k: v for k, v in settings.items() if k != "node_indices"}
        parts.append("<details><summary>settings</summary><pre>" + html.escape(json.dumps(shown, indent=1))
                     + "</pre></details>")
    errors = [(m, _median(rows, m, "output", "test_error")) for m in ["teacher"] + methods]
    parts.append("<h2>At the output</h2>" + _table(
        ["network", "test error (%)", "agreement with teacher (%)", "… where teacher right", "… where teacher wrong"],
        [[m, e] + [None if _median(rows, m, "output", k) is None else 100 * _median(rows, m, "output", k)
                   for k in ("agreement", "agreement_teacher_right", "agreement_teacher_wrong")]
         for m, e in errors]))
    parts.append("<h2>Layer by layer</h2><p>Medians over seeds. Closer to the teacher = lower distance, "
                 "higher agreement, smoothness nearer the teacher's. Bold marks the closer method.</p>")
    comparisons = {}
    if len(methods) >= 2:
        pair = (methods[-1], methods[-2]) if "gkd" in methods and "rkd-d" in methods else tuple(methods[:2])
        pair = ("gkd", "rkd-d") if "gkd" in methods and "rkd-d" in methods else pair
        comparisons = {(c["layer"], c["metric"]): c for c in closeness_by_layer(rows, methods=pair)}
    # Another architecture's students are compared by position: name both sides of each pair.
    teacher_layers, student_layers = (settings or {}).get("layers"), (settings or {}).get("student_layers")
    student_layer_of = (dict(zip(teacher_layers, student_layers))
                        if teacher_layers and student_layers and student_layers != teacher_layers else {})
    for layer in [l for l in layer_order(rows) if l != "output"]:
        metrics = [m for m in CLOSENESS if any(r["layer"] == layer and r["metric"] == m for r in rows)]
        metrics += [m for m in ("knn_accuracy",) if any(r["layer"] == layer and r["metric"] == m for r in rows)]
        body, marks = [], []
        for metric in metrics:
            line = [metric, _median(rows, "teacher", layer, metric)] + [_median(rows, m, layer, metric) for m in methods]
            comp = comparisons.get((layer, metric))
            mark = {2 + methods.index(comp["closer"])} if comp and comp["closer"] in methods else set()
            line.append(comp["p_value"] if comp else None)
            body.append(line)
            marks.append(mark)
        paired = student_layer_of.get(layer)
        pairing = f" &harr; students' <code>{html.escape(paired)}</code>" if paired else ""
        parts.append(f"<h3><code>{html.escape(layer)}</code>{pairing}</h3>"
                     + _table(["metric", "teacher"] + methods + ["p (Mann-Whitney)"], body, highlight=marks))
    parts.append("<h2>Where each student method diverges</h2><ul>")
    for method in methods:
        sentences = divergence_summary(rows, method)
        if sentences:
            parts.append(f"<li><b>{html.escape(method)}</b>: " + " ".join(s[0].upper() + s[1:] for s in sentences) + "</li>")
    parts.append("</ul>")
    if variants:
        from geokd.report_variants import variant_section

        figure = next((p for p in figures if os.path.basename(p) == "variants.png"), None)
        parts.append(variant_section(all_rows, variants=variants, figure=figure))
        figures = [p for p in figures if p != figure]
    if figures:
        parts.append("<h2>Figures</h2>")
        for path in figures:
            with open(path, "rb") as handle:
                data = base64.b64encode(handle.read()).decode("ascii")
            parts.append(f"<figure><img alt='{html.escape(os.path.basename(path))}' "
                         f"src='data:image/png;base64,{data}'><figcaption>{html.escape(os.path.basename(path))}"
                         "</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(directories, out: str) -> str:
    """Read saved analyses (``geokd analyze`` outputs), draw their figures, write one HTML file."""
    from geokd.analysis.saved import read_analyses
    from geokd.plots import draw_saved_analysis

    saved = read_analyses(directories)
    rows = saved.rows
    shown = [{k: v for k, v in s.items() if k != "node_indices"} for s in saved.settings]
    settings = shown[0] if len(shown) == 1 else ({"analyses": shown} if shown else None)
    with tempfile.TemporaryDirectory() as tmp:
        figures = [p for p in draw_saved_analysis(directories, tmp) if p.endswith(".png")]
        text = build_report(rows, figures=figures, settings=settings)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as handle:
        handle.write(text)
    return out
