"""A saved analysis on disk (what ``geokd analyze`` writes), read back for figures and reports.

A directory holds ``metrics.csv`` / ``metrics.json`` (tidy rows), ``heatmaps.npz`` (the
GKD graphs of one class-sorted batch, keys ``<network>__<layer>`` plus ``labels``) and
``analysis.json`` (settings and the node set). Several directories analysed with the same
teacher and node set (e.g. one per student method, run in parallel) merge into one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from geokd.analysis.tables import read_table


@dataclass
class SavedAnalysis:
    rows: list[dict]
    heatmaps: dict[str, np.ndarray]
    heatmap_labels: np.ndarray | None
    settings: list[dict]


def write_heatmaps(path: str, heatmaps: dict[str, np.ndarray], labels: np.ndarray) -> None:
    """Save heat-map graphs as float32 in one compressed ``.npz``."""
    np.savez_compressed(path, labels=labels,
                        **{key.replace("/", "__"): value.astype(np.float32) for key, value in heatmaps.items()})


def read_analyses(directories) -> SavedAnalysis:
    """Read and merge saved analyses; the same (network, layer, metric) twice must agree.

    Examples
    --------
    >>> import tempfile
    >>> from geokd.analysis.tables import make_row, write_table
    >>> d1, d2 = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> t = make_row(network="t", method="teacher", seed=None, layer="pool", metric="m", value=1.0)
    >>> _ = write_table([t, {**t, "network": "a", "method": "a"}], os.path.join(d1, "metrics"))
    >>> _ = write_table([t, {**t, "network": "b", "method": "b"}], os.path.join(d2, "metrics"))
    >>> [r["network"] for r in read_analyses([d1, d2]).rows]
    ['t', 'a', 'b']
    """
    if isinstance(directories, (str, os.PathLike)):
        directories = [directories]
    rows, seen, heatmaps, labels, settings = [], {}, {}, None, []
    for directory in directories:
        for row in read_table(os.path.join(directory, "metrics.json")):
            key = (row["network"], row["layer"], row["metric"], row.get("node_set"), row.get("k"), row.get("graph"))
            if key in seen:
                if (seen[key] is None) != (row["value"] is None) or (
                        row["value"] is not None and not np.isclose(seen[key], row["value"], rtol=1e-6, atol=1e-9)):
                    on = f" on graph {key[5]}" if key[5] else ""
                    raise ValueError(f"{directory}: {key[0]} / {key[1]} / {key[2]}{on} = {row['value']} "
                                     f"differs from {seen[key]} in an earlier directory (not the same analysis?)")
                continue
            seen[key] = row["value"]
            rows.append(row)
        heat_path = os.path.join(directory, "heatmaps.npz")
        if os.path.exists(heat_path):
            with np.load(heat_path) as saved:
                if labels is not None and not np.array_equal(labels, saved["labels"]):
                    raise ValueError(f"{directory}: heat-map batch differs from an earlier directory's")
                labels = saved["labels"]
                for key in saved.files:
                    if key != "labels":
                        heatmaps.setdefault(key.replace("__", "/", 1), saved[key])
        settings_path = os.path.join(directory, "analysis.json")
        if os.path.exists(settings_path):
            with open(settings_path) as handle:
                settings.append(json.load(handle))
    return SavedAnalysis(rows=rows, heatmaps=heatmaps, heatmap_labels=labels, settings=settings)
