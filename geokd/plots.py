"""The paper's figures, drawn from saved analysis tables (never recomputed here).

Every figure function takes tidy rows (see :mod:`geokd.analysis.tables`) and a path stem,
writes ``<stem>.png``, ``<stem>.pdf`` and ``<stem>.csv`` (the plotted numbers), and returns
the three paths. Students are summarized per method by the median over seeds, with the
interquartile range as the band ("spread").
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence

import numpy as np

LAYER_OUTPUT = "output"
METHOD_STYLE = {  # method -> (label, colour)
    "teacher": ("teacher", "black"),
    "baseline": ("student, no KD", "tab:gray"),
    "rkd-d": ("RKD-D", "tab:orange"),
    "gkd": ("GKD", "tab:blue"),
    "gkd-intra": ("GKD intra-class", "tab:green"),
    "gkd-inter": ("GKD inter-class", "tab:purple"),
    "gkd-full": ("GKD full graph", "tab:blue"),
}
METRIC_LABEL = {
    "smoothness_ratio": "label smoothness (crossing / total weight)",
    "smoothness_combinatorial": "label smoothness tr(YᵀLY)",
    "smoothness_normalized": "label smoothness tr(YᵀL_sym Y)",
    "knn_agreement_teacher_block": "k-NN vote agrees with teacher's block (%)",
    "knn_agreement_teacher_output": "k-NN vote agrees with teacher's decision (%)",
    "agreement": "agrees with teacher (%)",
    "aligned_distance": "‖Â_T − Â_S‖_F",
    "lambda_distance": "λ-distance (normalized Laplacian)",
    "heat_trace_distance": "NetLSD heat-trace distance",
    "cross_graph_variation": "teacher's low-frequency variation on graph",
    "knn_accuracy": "k-NN vote accuracy (%)",
    "test_error": "test error (%)",
}
PERCENT_METRICS = {"knn_agreement_teacher_block", "knn_agreement_teacher_output", "agreement",
                   "agreement_teacher_right", "agreement_teacher_wrong", "knn_accuracy"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: Colours for methods without a fixed style, none of them used by METHOD_STYLE (matplotlib's
#: own cycle would repeat GKD's blue and RKD-D's orange for the next methods drawn).
_EXTRA_COLOURS = ("tab:red", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "gold", "darkblue",
                  "lime", "maroon", "teal", "salmon", "indigo")
_assigned: dict[str, str] = {}


def _style(method: str) -> tuple[str, str]:
    """``(label, colour)``; a method without a fixed style gets the next free extra colour,
    the same one for the rest of the process (so a method keeps its colour across panels).

    Examples
    --------
    >>> _style("gkd")
    ('GKD', 'tab:blue')
    >>> _style("my-variant")[1] not in {c for _, c in METHOD_STYLE.values()}
    True
    """
    if method in METHOD_STYLE:
        return METHOD_STYLE[method]
    if method not in _assigned:
        _assigned[method] = _EXTRA_COLOURS[len(_assigned) % len(_EXTRA_COLOURS)]
    return method, _assigned[method]


def layer_order(rows: Sequence[Mapping]) -> list[str]:
    """Layers in the order they first appear, ``output`` last.

    Examples
    --------
    >>> layer_order([{"layer": "output"}, {"layer": "layer1"}, {"layer": "pool"}])
    ['layer1', 'pool', 'output']
    """
    seen = []
    for row in rows:
        if row["layer"] not in seen:
            seen.append(row["layer"])
    return [l for l in seen if l != LAYER_OUTPUT] + ([LAYER_OUTPUT] if LAYER_OUTPUT in seen else [])


def method_order(rows: Sequence[Mapping]) -> list[str]:
    """Methods in a fixed reading order (teacher, baseline, RKD-D, GKD variants), then others."""
    present = {row["method"] for row in rows}
    known = [m for m in METHOD_STYLE if m in present]
    return known + sorted(present - set(known))


def summarize(rows: Sequence[Mapping], *, metric: str, layers: Sequence[str] | None = None) -> list[dict]:
    """Median, quartiles and extremes over seeds of ``metric``, per method and layer.

    Examples
    --------
    >>> rows = [{"method": "gkd", "seed": s, "layer": "pool", "metric": "m", "value": float(s)}
    ...         for s in range(5)]
    >>> summarize(rows, metric="m")[0]["median"], summarize(rows, metric="m")[0]["n"]
    (2.0, 5)
    """
    chosen = [r for r in rows if r["metric"] == metric and r["value"] is not None]
    if not chosen:
        raise ValueError(f"expected rows of metric {metric!r} in the table, found none")
    layers = list(layers) if layers is not None else layer_order(chosen)
    out = []
    for method in method_order(chosen):
        for layer in layers:
            values = np.array([r["value"] for r in chosen if r["method"] == method and r["layer"] == layer])
            if values.size == 0:
                continue
            q25, med, q75 = np.percentile(values, [25, 50, 75])
            out.append({"method": method, "layer": layer, "metric": metric, "median": float(med),
                        "q25": float(q25), "q75": float(q75), "min": float(values.min()),
                        "max": float(values.max()), "sd": float(values.std(ddof=1)) if values.size > 1 else 0.0,
                        "n": int(values.size)})
    return out


def _write_csv(summary: list[dict], path: str) -> None:
    if not summary:
        raise ValueError(f"nothing to write to {path}")
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)


def _save(fig, summary: list[dict], stem: str) -> tuple[str, str, str]:
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    paths = (f"{stem}.png", f"{stem}.pdf", f"{stem}.csv")
    fig.savefig(paths[0], dpi=110, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    _pyplot().close(fig)
    _write_csv(summary, paths[2])
    return paths


def _draw_profile(ax, summary: list[dict], layers: list[str], *, metric: str) -> None:
    scale = 100.0 if metric in PERCENT_METRICS else 1.0
    x = np.arange(len(layers))
    for method in method_order(summary):
        label, colour = _style(method)
        points = {s["layer"]: s for s in summary if s["method"] == method}
        idx = [i for i, layer in enumerate(layers) if layer in points]
        med = np.array([points[layers[i]]["median"] for i in idx]) * scale
        line = ax.plot(x[idx], med, marker="o", label=label, color=colour,
                       linestyle="--" if method == "teacher" else "-")[0]
        if any(points[layers[i]]["n"] > 1 for i in idx):
            lo = np.array([points[layers[i]]["q25"] for i in idx]) * scale
            hi = np.array([points[layers[i]]["q75"] for i in idx]) * scale
            ax.fill_between(x[idx], lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xticks(x, layers)
    ax.set_ylabel(METRIC_LABEL.get(metric, metric))
    ax.grid(alpha=0.3)


def plot_layer_profile(rows: Sequence[Mapping], stem: str, *, metric: str, methods: Sequence[str] | None = None,
                       title: str | None = None) -> tuple[str, str, str]:
    """One metric across layers, one line per method (median over seeds, IQR band)."""
    chosen = [r for r in rows if methods is None or r["method"] in methods]
    summary = summarize(chosen, metric=metric)
    layers = layer_order(summary)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    _draw_profile(ax, summary, layers, metric=metric)
    ax.set_xlabel("sensing point")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, summary, stem)


def plot_smoothness(rows, stem: str, *, metric: str = "smoothness_ratio") -> tuple[str, str, str]:
    """Label smoothness across layers for the teacher and every kind of student."""
    return plot_layer_profile(rows, stem, metric=metric, title="Label smoothness across layers (lower = smoother)")


def plot_consistency(rows, stem: str) -> tuple[str, str, str]:
    """Consistency with the teacher across blocks: per-block k-NN votes, then the output."""
    per_block = [r for r in rows if r["metric"] == "knn_agreement_teacher_block"]
    at_output = [{**r, "metric": "knn_agreement_teacher_block"} for r in rows
                 if r["metric"] == "agreement" and r["layer"] == LAYER_OUTPUT]
    if not per_block:
        raise ValueError("expected rows of metric 'knn_agreement_teacher_block' (students), found none")
    combined = per_block + at_output
    summary = summarize(combined, metric="knn_agreement_teacher_block")
    layers = layer_order(combined)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    _draw_profile(ax, summary, layers, metric="knn_agreement_teacher_block")
    ax.set_ylabel("agreement with the teacher (%)")
    ax.set_xlabel("block (k-NN vote on its graph) / output (decision)")
    ax.set_title("Consistency with the teacher across blocks")
    ax.legend(fontsize=8)
    return _save(fig, summary, stem)


def plot_distances(rows, stem: str, *, metrics: Sequence[str] = ("aligned_distance", "lambda_distance",
                                                                 "heat_trace_distance", "cross_graph_variation")
                   ) -> tuple[str, str, str]:
    """Teacher-student graph distances per layer, one panel per distance."""
    plt = _pyplot()
    metrics = [m for m in metrics if any(r["metric"] == m for r in rows)]
    if not metrics:
        raise ValueError("expected distance rows (aligned_distance, lambda_distance, ...), found none")
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3.3), squeeze=False)
    summary = []
    for ax, metric in zip(axes[0], metrics):
        part = summarize(rows, metric=metric)
        summary += part
        _draw_profile(ax, part, layer_order(part), metric=metric)
        ax.set_title(METRIC_LABEL.get(metric, metric), fontsize=9)
        ax.set_ylabel("")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle("How far each student's graphs are from the teacher's (lower = closer)", fontsize=10)
    fig.tight_layout()
    return _save(fig, summary, stem)


def plot_task_graphs(rows, stem: str, *, metric: str = "smoothness_ratio") -> tuple[str, str, str]:
    """Effect of the task-specific graphs: test error per method and smoothness per layer."""
    plt = _pyplot()
    errors = summarize(rows, metric="test_error", layers=[LAYER_OUTPUT])
    smooth = summarize(rows, metric=metric)
    fig, (ax_err, ax_smooth) = plt.subplots(1, 2, figsize=(9, 3.5), gridspec_kw={"width_ratios": [1, 1.4]})
    methods = [s["method"] for s in errors]
    for i, s in enumerate(errors):
        label, colour = _style(s["method"])
        ax_err.errorbar(i, s["median"], yerr=s["sd"], fmt="o", color=colour, capsize=4)
    ax_err.set_xticks(range(len(methods)), [_style(m)[0] for m in methods], rotation=30, ha="right", fontsize=8)
    ax_err.set_ylabel("test error (%), median ± sd")
    ax_err.grid(alpha=0.3)
    _draw_profile(ax_smooth, smooth, layer_order(smooth), metric=metric)
    ax_smooth.legend(fontsize=7)
    fig.suptitle("Task-specific graphs: error and smoothness per layer", fontsize=10)
    fig.tight_layout()
    return _save(fig, errors + smooth, stem)


def error_table(rows) -> tuple[str, str]:
    """The test-error table (median ± sd over seeds) as Markdown and as LaTeX.

    Examples
    --------
    >>> rows = [{"method": "gkd", "seed": s, "layer": "output", "metric": "test_error", "value": v}
    ...         for s, v in enumerate([9.0, 10.0, 11.0])]
    >>> print(error_table(rows)[0])
    | network | runs | test error (%) |
    |---|---|---|
    | GKD | 3 | 10.00 ± 1.00 |
    """
    summary = summarize(rows, metric="test_error", layers=[LAYER_OUTPUT])
    md = ["| network | runs | test error (%) |", "|---|---|---|"]
    tex = [r"\begin{tabular}{lrr}", r"\toprule", r"network & runs & test error (\%) \\", r"\midrule"]
    for s in summary:
        label = _style(s["method"])[0]
        cell = f"{s['median']:.2f} ± {s['sd']:.2f}" if s["n"] > 1 else f"{s['median']:.2f}"
        md.append(f"| {label} | {s['n']} | {cell} |")
        tex_cell = cell.replace("±", r"$\pm$")
        tex.append(f"{label} & {s['n']} & {tex_cell} " + "\\\\")
    tex += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(md), "\n".join(tex)


def plot_graph_heatmaps(heatmaps: Mapping[str, np.ndarray], labels: np.ndarray, stem: str) -> tuple[str, str, str]:
    """Heat maps of the GKD graphs ``Â`` of one batch sorted by class, per network and layer.

    ``heatmaps`` maps ``"<network>/<layer>"`` to an ``(n, n)`` array; rows of the figure are
    networks, columns layers. The colour scale of each panel spans its off-diagonal entries
    (the zero diagonal would otherwise flatten it). The CSV beside gives, per panel, the
    share of the graph's weight that stays within classes.
    """
    plt = _pyplot()
    keys = list(heatmaps)
    if not keys:
        raise ValueError("expected at least one heat map, got none")
    networks = list(dict.fromkeys(k.split("/")[0] for k in keys))
    layers = list(dict.fromkeys(k.split("/", 1)[1] for k in keys))
    order = np.argsort(np.asarray(labels), kind="stable")
    boundaries = np.flatnonzero(np.diff(np.asarray(labels)[order])) + 0.5
    fig, axes = plt.subplots(len(networks), len(layers), figsize=(2.6 * len(layers), 2.5 * len(networks)),
                             squeeze=False)
    summary = []
    for i, net in enumerate(networks):
        for j, layer in enumerate(layers):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            matrix = heatmaps.get(f"{net}/{layer}")
            if matrix is None:
                ax.set_visible(False)
                continue
            m = np.asarray(matrix)[np.ix_(order, order)]
            off_diagonal = m[~np.eye(m.shape[0], dtype=bool)]
            ax.imshow(m, cmap="viridis", interpolation="nearest",
                      vmin=np.percentile(off_diagonal, 1), vmax=np.percentile(off_diagonal, 99))
            for b in boundaries:
                ax.axhline(b, color="white", linewidth=0.3)
                ax.axvline(b, color="white", linewidth=0.3)
            if i == 0:
                ax.set_title(layer, fontsize=9)
            if j == 0:
                ax.set_ylabel(net, fontsize=8)
            summary.append({"method": net, "layer": layer, "metric": "adjacency_mean_within_class",
                            "median": float(_within_class_share(m, np.asarray(labels)[order])), "n": m.shape[0]})
    fig.suptitle("GKD graphs Â of one batch sorted by class (white lines: class borders)", fontsize=9)
    fig.tight_layout()
    return _save(fig, summary, stem)


def _within_class_share(matrix: np.ndarray, labels: np.ndarray) -> float:
    same = labels[:, None] == labels[None, :]
    total = matrix.sum()
    return float(matrix[same].sum() / total) if total > 0 else 0.0


def draw_saved_analysis(directories, out: str) -> list[str]:
    """Draw every figure the saved analyses have data for; return the written paths.

    The figures of the default analysis show its rows only (:mod:`geokd.analysis.graph_names`);
    a graph-variant analysis adds ``variants.*`` (:func:`geokd.plots_variants.plot_variant_closeness`).
    """
    from geokd.analysis.graph_names import default_rows, variant_names
    from geokd.analysis.saved import read_analyses

    saved = read_analyses(directories)
    rows = default_rows(saved.rows)
    os.makedirs(out, exist_ok=True)
    written = []
    variants = variant_names(saved.rows, saved.settings)
    if variants:
        from geokd.analysis.rankings import variant_rankings
        from geokd.plots_variants import plot_variant_closeness

        rankings = variant_rankings(saved.rows, variants=variants)
        if rankings:
            written += plot_variant_closeness(rankings, os.path.join(out, "variants"))
    written += plot_smoothness(rows, os.path.join(out, "smoothness"))
    written += plot_consistency(rows, os.path.join(out, "consistency"))
    written += plot_distances(rows, os.path.join(out, "distances"))
    written += plot_layer_profile(rows, os.path.join(out, "knn_accuracy"), metric="knn_accuracy",
                                        title="Leave-one-out k-NN accuracy per layer")
    methods = {r["method"] for r in rows}
    if {"gkd-intra", "gkd-inter"} & methods or len([m for m in methods if m.startswith("gkd")]) > 1:
        written += plot_task_graphs(rows, os.path.join(out, "task_graphs"))
    markdown, latex = error_table(rows)
    for suffix, text in ((".md", markdown), (".tex", latex)):
        path = os.path.join(out, "error_table" + suffix)
        with open(path, "w") as handle:
            handle.write(text + "\n")
        written.append(path)
    if saved.heatmaps:
        written += plot_graph_heatmaps(saved.heatmaps, saved.heatmap_labels, os.path.join(out, "heatmaps"))
    return written
