"""Figures of graph variants: which method is closest under each variant, and the graphs themselves.

- :func:`plot_variant_closeness`: from the rankings of :mod:`geokd.analysis.rankings`, one
  panel per metric with the variants as rows and the sensing points as columns, each cell
  coloured by the student method closest to the teacher (and Kendall's τ of the variant's
  ranking against the first variant's);
- :func:`plot_variant_graphs`: a network's graph of each sensing point under each variant
  as heat maps, nodes sorted by class, class boundaries marked.

Like :mod:`geokd.plots`, each writes ``<stem>.png``, ``<stem>.pdf`` and ``<stem>.csv`` (the
numbers drawn; for the closeness figure, the whole ``variants.csv`` table) and returns the
three paths.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from geokd.plots import _pyplot, _save, _style, _within_class_share

#: The metrics drawn by default (the others are in the CSV and the report's tables).
FIGURE_METRICS = ("aligned_distance", "lambda_distance", "heat_trace_distance", "cross_graph_variation",
                  "smoothness_ratio")
_SHORT = {"aligned_distance": "aligned ‖A_T − A_S‖_F", "lambda_distance": "λ-distance",
          "heat_trace_distance": "heat-trace distance", "cross_graph_variation": "cross-graph variation",
          "smoothness_ratio": "label smoothness (ratio)", "smoothness_normalized": "label smoothness (normalized)",
          "smoothness_combinatorial": "label smoothness tr(YᵀLY)"}


def plot_variant_closeness(rankings: Sequence[Mapping], stem: str, *,
                           metrics: Sequence[str] = FIGURE_METRICS) -> tuple[str, str, str]:
    """Variants (rows) x sensing points (columns) per metric, coloured by the closest method.

    A grey cell is a tie; a white, hatched cell a metric not measured under that variant
    (the label smoothness of an intra- or inter-class graph: fixed by construction).

    Parameters
    ----------
    rankings : sequence of dict
        Rows of :func:`geokd.analysis.rankings.variant_rankings`.
    stem : str
        Path without extension.
    metrics : sequence of str
        Metrics to draw, one panel each (those without rankings are skipped).
    """
    from matplotlib.patches import Patch

    plt = _pyplot()
    metrics = [m for m in metrics if any(r["metric"] == m for r in rankings)]
    if not metrics:
        raise ValueError("expected variant rankings of at least one metric, got none")
    variants = list(dict.fromkeys(r["graph"] for r in rankings))
    layers = list(dict.fromkeys(r["layer"] for r in rankings))
    ncols = min(len(metrics), 3)
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, squeeze=False,
                             figsize=(1.0 + 1.25 * len(layers) * ncols + 1.6, 0.9 + (0.42 * len(variants) + 0.9) * nrows))
    by_cell = {(r["metric"], r["graph"], r["layer"]): r for r in rankings}
    shown_methods, shown_other = [], set()
    for index, metric in enumerate(metrics):
        ax = axes[index // ncols][index % ncols]
        for i, graph in enumerate(variants):
            for j, layer in enumerate(layers):
                cell = by_cell.get((metric, graph, layer))
                closest = cell["closest"] if cell else ""
                if closest and closest != "tie":
                    colour, hatch, text = _style(closest)[1], None, _style(closest)[0]
                    if closest not in shown_methods:
                        shown_methods.append(closest)
                elif closest == "tie":
                    colour, hatch, text = "lightgrey", None, "tie"
                else:
                    colour, hatch, text = "white", "///", "n/a"
                shown_other.add(closest if closest in ("tie", "") else None)
                # A hatch is drawn in the edge colour: grey on the empty cells, white borders elsewhere.
                ax.add_patch(plt.Rectangle((j, i), 1, 1, facecolor=colour, hatch=hatch, linewidth=1.0,
                                           edgecolor="silver" if hatch else "white",
                                           alpha=0.85 if colour != "white" else 1.0))
                tau = cell.get("kendall_tau_vs_first") if cell else None
                label = text if tau is None or i == 0 else f"{text}\nτ={tau:+.2f}"
                ax.text(j + 0.5, i + 0.5, label, ha="center", va="center", fontsize=6.5,
                        color="black" if colour in ("white", "lightgrey", "gold", "lime") else "white")
        ax.set_xlim(0, len(layers))
        ax.set_ylim(len(variants), 0)
        ax.set_xticks(np.arange(len(layers)) + 0.5, layers, fontsize=7)
        ax.set_yticks(np.arange(len(variants)) + 0.5, variants if index % ncols == 0 else [""] * len(variants),
                      fontsize=7)
        ax.tick_params(length=0)
        ax.set_title(_SHORT.get(metric, metric), fontsize=8)
        for side in ax.spines.values():
            side.set_visible(False)
    for index in range(len(metrics), nrows * ncols):
        axes[index // ncols][index % ncols].set_visible(False)
    handles = [Patch(facecolor=_style(m)[1], label=_style(m)[0]) for m in shown_methods]
    if "tie" in shown_other:
        handles.append(Patch(facecolor="lightgrey", label="tie"))
    if "" in shown_other:
        handles.append(Patch(facecolor="white", hatch="///", edgecolor="grey",
                             label="not measured (fixed by construction)"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=7, frameon=False)
    fig.suptitle("Closest student method to the teacher under each graph variant "
                 f"(τ: Kendall's τ of the ranking vs {variants[0]})", fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    # The CSV beside holds every metric's rankings (the variants.csv table), drawn or not.
    return _save(fig, [dict(r) for r in rankings], stem)


def colour_scale(matrix: np.ndarray) -> tuple[float, float]:
    """A heat map's ``(low, high)``: from the 1st percentile of the off-diagonal entries (0 for
    a masked graph, the floor of a dense one, whose contrast would be lost from 0) to the 99th
    percentile of the nonzero ones (a power's diagonal would flatten the scale otherwise).

    Examples
    --------
    >>> colour_scale(np.array([[0.0, 1.0], [1.0, 0.0]]))
    (1.0, 1.0)
    """
    m = np.asarray(matrix, dtype=np.float64)
    off = m[~np.eye(m.shape[0], dtype=bool)]
    nonzero = off[off != 0]
    top = float(np.percentile(nonzero, 99)) if nonzero.size else 1.0
    return (float(np.percentile(off, 1)) if off.size else 0.0), top


def plot_variant_graphs(matrices: Mapping[tuple[str, str], np.ndarray], labels, stem: str, *,
                        title: str = "", scales: Mapping[tuple[str, str], tuple[float, float]] | None = None
                        ) -> tuple[str, str, str]:
    """Heat maps of one network's graphs: variants (rows) x sensing points (columns).

    Nodes are sorted by class (stable), white lines mark the class boundaries. Each panel's
    colour scale is :func:`colour_scale` of its matrix, or ``scales[(layer, variant)]`` (to
    draw several networks' graphs on the teacher's scales). The CSV beside
    gives, per panel, the share of the weight within classes and the nodes without edges.

    Parameters
    ----------
    matrices : dict
        ``(layer, variant) -> (N, N)`` array.
    labels : array-like of int, shape (N,)
    stem : str
    title : str
    """
    plt = _pyplot()
    if not matrices:
        raise ValueError("expected at least one graph to draw, got none")
    layers = list(dict.fromkeys(layer for layer, _ in matrices))
    variants = list(dict.fromkeys(variant for _, variant in matrices))
    y = np.asarray(labels)
    order = np.argsort(y, kind="stable")
    boundaries = np.flatnonzero(np.diff(y[order])) + 0.5
    fig, axes = plt.subplots(len(variants), len(layers), squeeze=False,
                             figsize=(2.5 * len(layers) + 0.6, 2.45 * len(variants) + 0.5))
    summary = []
    for i, variant in enumerate(variants):
        for j, layer in enumerate(layers):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            matrix = matrices.get((layer, variant))
            if matrix is None:
                ax.set_visible(False)
                continue
            m = np.asarray(matrix, dtype=np.float64)[np.ix_(order, order)]
            low, top = (scales or {}).get((layer, variant)) or colour_scale(m)
            image = ax.imshow(m, cmap="viridis", vmin=low, vmax=top if top > low else low + 1e-12,
                              interpolation="antialiased" if m.shape[0] > 300 else "nearest")
            for b in boundaries:
                ax.axhline(b, color="white", linewidth=0.4)
                ax.axvline(b, color="white", linewidth=0.4)
            cbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
            cbar.ax.tick_params(labelsize=5)
            if i == 0:
                ax.set_title(layer, fontsize=9)
            if j == 0:
                ax.set_ylabel(variant, fontsize=7)
            without_edges = int(np.count_nonzero(np.abs(m - np.diag(np.diag(m))).sum(axis=1) == 0))
            summary.append({"layer": layer, "graph": variant, "nodes": m.shape[0],
                            "within_class_share": _within_class_share(np.abs(m) - np.diag(np.diag(np.abs(m))),
                                                                      y[order]),
                            "nodes_without_edges": without_edges})
    fig.suptitle(title or "Graphs of the node set sorted by class (white lines: class borders)", fontsize=9)
    fig.tight_layout()
    return _save(fig, summary, stem)
