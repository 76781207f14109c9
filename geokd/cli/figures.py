"""``geokd figures``: draw the paper's figures from a saved analysis (no recomputation)."""

from __future__ import annotations

import os


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "figures",
        help="draw figures (PNG, PDF, CSV) and the error table from a `geokd analyze` output",
        description="Read DIR/metrics.json (and DIR/heatmaps.npz) written by `geokd analyze` and draw "
                    "smoothness, consistency, distance and heat-map figures plus the error table.",
    )
    parser.add_argument("directory", metavar="DIR", help="output directory of `geokd analyze`")
    parser.add_argument("--out", help="where to write the figures (default DIR/figures)")
    parser.set_defaults(handler=run)


def draw_all(directory: str, out: str) -> list[str]:
    """Draw every figure the saved analysis has data for; return the written paths."""
    import numpy as np

    from geokd import plots
    from geokd.analysis.tables import read_table

    rows = read_table(os.path.join(directory, "metrics.json"))
    os.makedirs(out, exist_ok=True)
    written = []
    written += plots.plot_smoothness(rows, os.path.join(out, "smoothness"))
    written += plots.plot_consistency(rows, os.path.join(out, "consistency"))
    written += plots.plot_distances(rows, os.path.join(out, "distances"))
    written += plots.plot_layer_profile(rows, os.path.join(out, "knn_accuracy"), metric="knn_accuracy",
                                        title="Leave-one-out k-NN accuracy per layer")
    methods = {r["method"] for r in rows}
    if {"gkd-intra", "gkd-inter"} & methods or len([m for m in methods if m.startswith("gkd")]) > 1:
        written += plots.plot_task_graphs(rows, os.path.join(out, "task_graphs"))
    markdown, latex = plots.error_table(rows)
    for suffix, text in ((".md", markdown), (".tex", latex)):
        path = os.path.join(out, "error_table" + suffix)
        with open(path, "w") as handle:
            handle.write(text + "\n")
        written.append(path)
    heatmap_file = os.path.join(directory, "heatmaps.npz")
    if os.path.exists(heatmap_file):
        with np.load(heatmap_file) as saved:
            labels = saved["labels"]
            maps = {key.replace("__", "/"): saved[key] for key in saved.files if key != "labels"}
        written += plots.plot_graph_heatmaps(maps, labels, os.path.join(out, "heatmaps"))
    return written


def run(args) -> int:
    out = args.out or os.path.join(args.directory, "figures")
    written = draw_all(args.directory, out)
    for path in written:
        print(path)
    return 0
