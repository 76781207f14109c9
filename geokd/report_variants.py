"""The report's graph-variant section: does the conclusion depend on the graph?

One table per metric (variants as rows, sensing points as columns, each cell the ranking of
the student methods, closest to the teacher first, and Kendall's τ against the first
variant), the figure of :func:`geokd.plots_variants.plot_variant_closeness`, why a metric is
left empty on a task graph, and which variants leave nodes without edges.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence

from geokd.analysis.rankings import RANKED_METRICS, variant_rankings

_LABEL = {
    "aligned_distance": "aligned distance ‖A_T − A_S‖_F (its square: the variant's GKD term)",
    "lambda_distance": "λ-distance (normalized-Laplacian spectra)",
    "heat_trace_distance": "NetLSD heat-trace distance",
    "cross_graph_variation": "cross-graph variation of the teacher's low-frequency eigenvectors",
    "smoothness_ratio": "label smoothness, crossing-weight ratio (nearest the teacher's)",
    "smoothness_normalized": "label smoothness tr(YᵀL_sym Y) (nearest the teacher's)",
    "smoothness_combinatorial": "label smoothness tr(YᵀLY) (nearest the teacher's)",
}


def _tint(method: str) -> str:
    from matplotlib.colors import to_hex

    from geokd.plots import _style

    return to_hex(_style(method)[1]) + "33"   # the figure's colour, light


def _cell(entry: Mapping | None, *, first: bool) -> str:
    if entry is None:
        return "<td>–</td>"
    if not entry["ranking"]:
        reason = entry.get("note") or "not measured"
        short = "fixed by construction" if "fixed by construction" in reason else reason
        return f"<td class='empty' title='{html.escape(reason)}'>not measured ({html.escape(short)})</td>"
    tau = entry.get("kendall_tau_vs_first")
    suffix = "" if first else (" (τ = –)" if tau is None else f" (τ = {tau:+.2f})")
    closest = entry.get("closest")
    style = f" style='background:{_tint(closest)}'" if closest and closest != "tie" else ""
    return f"<td{style}>{html.escape(entry['ranking'])}{suffix}</td>"


def _isolated_notes(rows: Sequence[Mapping], variants: Sequence[str]) -> list[str]:
    groups: dict[tuple[str, str, str], list[str]] = {}
    for row in rows:
        if row["metric"] == "isolated_nodes" and row["value"] and row.get("graph") in variants:
            groups.setdefault((row["graph"], row["layer"], row.get("note") or ""), []).append(row["network"])
    notes = []
    for (graph, layer, note), networks in groups.items():
        who = networks[0] if len(networks) == 1 else f"{len(networks)} networks ({', '.join(networks[:3])}" \
            + (", …)" if len(networks) > 3 else ")")
        notes.append(f"<li>under <code>{html.escape(graph)}</code> at <code>{html.escape(layer)}</code>, "
                     f"{html.escape(who)}: {html.escape(note)}; every value stays finite (such a node is "
                     "isolated in the graph: an eigenvalue 0, no weight in the distances)</li>")
    return notes


def variant_section(rows: Sequence[Mapping], *, variants: Sequence[str], figure: str | None = None) -> str:
    """The HTML of the section (``figure``: the path of the closeness figure's PNG, embedded).

    Examples
    --------
    >>> rows = [{"network": f"{m}-0", "method": m, "layer": "pool", "metric": "aligned_distance", "graph": g,
    ...          "value": v} for g, d in (("a", {"gkd": 1.0, "rkd-d": 2.0}), ("b", {"gkd": 3.0, "rkd-d": 2.0}))
    ...         for m, v in d.items()]
    >>> "rkd-d &gt; gkd (τ = -1.00)" in variant_section(rows, variants=["a", "b"])
    True
    """
    rankings = variant_rankings(rows, variants=variants)
    layers = list(dict.fromkeys(r["layer"] for r in rankings))
    by_cell = {(r["metric"], r["graph"], r["layer"]): r for r in rankings}
    parts = ["<h2 id='variants'>Does the conclusion depend on the graph?</h2>",
             "<p>Every metric again under each graph variant, its graphs built on the node set exactly as the GKD "
             "loss builds them (kernel, normalization by the degrees of the unmasked graph, class mask from the "
             "nodes' labels, the teacher's k-NN mask applied to the student's graph too, then the power). Each cell "
             "ranks the student methods by closeness to the teacher (median over seeds), closest first "
             "(<code>a &gt; b</code>: a is closer); τ is Kendall's τ of that ranking against the first variant's, "
             f"<code>{html.escape(variants[0])}</code> (1: same order, −1: reversed). A cell's tint is the closest "
             "method's colour.</p>"]
    if figure:
        with open(figure, "rb") as handle:
            data = base64.b64encode(handle.read()).decode("ascii")
        parts.append(f"<figure><img alt='variants.png' src='data:image/png;base64,{data}'>"
                     "<figcaption>variants.png: closest method per variant (rows) and sensing point "
                     "(columns)</figcaption></figure>")
    agree, total = 0, 0
    for metric in [m for m in RANKED_METRICS if any(r["metric"] == m for r in rankings)]:
        header = "<tr><th>graph</th>" + "".join(f"<th>{html.escape(l)}</th>" for l in layers) + "</tr>"
        body = []
        for i, graph in enumerate(variants):
            cells = [_cell(by_cell.get((metric, graph, layer)), first=i == 0) for layer in layers]
            body.append(f"<tr><td><code>{html.escape(graph)}</code></td>{''.join(cells)}</tr>")
            for layer in layers:
                entry = by_cell.get((metric, graph, layer))
                if i and entry and entry["kendall_tau_vs_first"] is not None:
                    total += 1
                    agree += entry["kendall_tau_vs_first"] == 1.0
        parts.append(f"<h3>{html.escape(_LABEL.get(metric, metric))}</h3><table class='variants'>{header}"
                     + "".join(body) + "</table>")
    if total:
        parts.append(f"<p>Against <code>{html.escape(variants[0])}</code>: the other variants keep its ranking in "
                     f"{agree} of {total} (metric, sensing point) cells and change it in {total - agree}.</p>")
    fixed = sorted({r["note"] for r in rankings if not r["ranking"] and r.get("note")})
    if fixed:
        parts.append("<p><b>Empty cells.</b> " + " ".join(html.escape(n[0].upper() + n[1:]) + "." for n in fixed)
                     + " The metric tables leave these values empty rather than give a number that looks like a "
                     "measurement.</p>")
    isolated = _isolated_notes(rows, variants)
    if isolated:
        parts.append("<p><b>Nodes without edges.</b></p><ul>" + "".join(isolated) + "</ul>")
    return "\n".join(parts)
