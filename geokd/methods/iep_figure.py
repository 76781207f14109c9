"""IEP's visualization: the compressed vectors of every stage in 3-D, coloured by class.

IEP's incremental PCA orders the components by variance, so the first three coordinates of
the compressed vectors are the 3-D view of each stage's embedding; classes separating from
stage to stage is what the figure shows. Written as PNG + PDF with a CSV of the plotted
points beside them.

Examples
--------
>>> import numpy as np, tempfile, os
>>> rng = np.random.default_rng(0)
>>> codes = [rng.normal(size=(30, 4)), rng.normal(size=(30, 8))]
>>> with tempfile.TemporaryDirectory() as d:
...     paths = plot_stage_embeddings(codes, np.arange(30) % 3, path_stem=os.path.join(d, "emb"))
...     sorted(os.path.basename(p) for p in paths)
['emb.csv', 'emb.pdf', 'emb.png']
"""

from __future__ import annotations

import csv
import os
from typing import Sequence

import numpy as np

__all__ = ["plot_stage_embeddings"]


def plot_stage_embeddings(codes: Sequence[np.ndarray], labels, *, path_stem: str,
                          titles: Sequence[str] | None = None) -> list[str]:
    """Scatter the first 3 coordinates of each stage's codes; return the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.asarray(labels)
    if not codes:
        raise ValueError("codes: expected at least one stage, got none")
    for i, c in enumerate(codes):
        c = np.asarray(c)
        if c.ndim != 2 or c.shape[0] != labels.shape[0] or c.shape[1] < 3:
            raise ValueError(
                f"stage {i}: expected codes of shape ({labels.shape[0]}, >=3), got {c.shape}"
            )
    titles = list(titles) if titles is not None else [f"stage {i + 1}" for i in range(len(codes))]
    if len(titles) != len(codes):
        raise ValueError(f"titles: expected {len(codes)}, got {len(titles)}")
    os.makedirs(os.path.dirname(os.path.abspath(path_stem)), exist_ok=True)
    fig = plt.figure(figsize=(4 * len(codes), 4))
    cmap = plt.get_cmap("tab10")
    for i, (c, title) in enumerate(zip(codes, titles)):
        ax = fig.add_subplot(1, len(codes), i + 1, projection="3d")
        c = np.asarray(c)
        ax.scatter(c[:, 0], c[:, 1], c[:, 2], c=cmap(labels % 10), s=6, depthshade=False)
        ax.set_title(title)
        ax.set_xticklabels([])
        ax.set_yticklabels([])
        ax.set_zticklabels([])
    fig.tight_layout()
    paths = [f"{path_stem}.png", f"{path_stem}.pdf", f"{path_stem}.csv"]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
    plt.close(fig)
    with open(paths[2], "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["stage", "index", "label", "z1", "z2", "z3"])
        for title, c in zip(titles, codes):
            for j, (row, y) in enumerate(zip(np.asarray(c)[:, :3], labels)):
                writer.writerow([title, j, int(y), *(f"{v:.6g}" for v in row)])
    return paths
