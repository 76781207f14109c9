"""Figures from tidy rows: files written, plotted numbers equal independent medians."""

import csv
import os

import numpy as np
import pytest

from geokd import plots
from geokd.analysis.tables import make_row

LAYERS = ("layer1", "layer2", "pool")


def synthetic_rows(seed=0):
    """Rows shaped like `geokd analyze` output, with known values per method and layer."""
    rng = np.random.default_rng(seed)
    rows = []
    base = {"teacher": 0.1, "rkd-d": 0.3, "gkd": 0.2}
    for method, level in base.items():
        seeds = [None] if method == "teacher" else list(range(5))
        for s in seeds:
            name = method if s is None else f"{method}-{s}"
            noise = 0.0 if s is None else rng.normal(scale=0.01)
            rows.append(make_row(network=name, method=method, seed=s, layer="output", metric="test_error",
                                 value=100 * level / 3 + noise))
            for i, layer in enumerate(LAYERS):
                rows.append(make_row(network=name, method=method, seed=s, layer=layer, metric="smoothness_ratio",
                                     value=level * (3 - i) / 3 + noise))
                rows.append(make_row(network=name, method=method, seed=s, layer=layer, metric="knn_accuracy",
                                     value=0.5 + 0.1 * i + noise))
                if method != "teacher":
                    for metric in ("aligned_distance", "lambda_distance", "heat_trace_distance",
                                   "cross_graph_variation"):
                        rows.append(make_row(network=name, method=method, seed=s, layer=layer, metric=metric,
                                             value=level + i + noise))
                    rows.append(make_row(network=name, method=method, seed=s, layer=layer,
                                         metric="knn_agreement_teacher_block", value=1 - level + noise / 10))
            if method != "teacher":
                for metric in ("agreement", "agreement_teacher_right", "agreement_teacher_wrong"):
                    rows.append(make_row(network=name, method=method, seed=s, layer="output", metric=metric,
                                         value=1 - level / 2 + noise / 10))
    return rows


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_smoothness_figure_writes_png_pdf_and_true_medians(tmp_path):
    rows = synthetic_rows()
    png, pdf, csv_path = plots.plot_smoothness(rows, str(tmp_path / "smoothness"))
    with open(png, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(pdf, "rb") as handle:
        assert handle.read(5) == b"%PDF-"
    table = read_csv(csv_path)
    assert {r["method"] for r in table} == {"teacher", "rkd-d", "gkd"}
    for entry in table:
        values = [r["value"] for r in rows if r["method"] == entry["method"] and r["layer"] == entry["layer"]
                  and r["metric"] == "smoothness_ratio"]
        assert float(entry["median"]) == pytest.approx(np.median(values))
        assert int(entry["n"]) == len(values)
    assert [r["layer"] for r in table if r["method"] == "gkd"] == list(LAYERS)


def test_consistency_and_distance_figures(tmp_path):
    rows = synthetic_rows()
    _, _, csv_path = plots.plot_consistency(rows, str(tmp_path / "consistency"))
    table = read_csv(csv_path)
    assert {r["layer"] for r in table} == set(LAYERS) | {"output"}
    assert "teacher" not in {r["method"] for r in table}
    out = [r for r in table if r["layer"] == "output" and r["method"] == "gkd"][0]
    expected = np.median([r["value"] for r in rows if r["method"] == "gkd" and r["metric"] == "agreement"])
    assert float(out["median"]) == pytest.approx(expected)
    paths = plots.plot_distances(rows, str(tmp_path / "distances"))
    assert all(os.path.getsize(p) > 0 for p in paths)
    assert {r["metric"] for r in read_csv(paths[2])} == {"aligned_distance", "lambda_distance",
                                                         "heat_trace_distance", "cross_graph_variation"}


def test_task_graph_figure_and_heatmaps(tmp_path):
    rows = synthetic_rows()
    rows += [{**r, "method": "gkd-inter", "network": r["network"].replace("gkd", "gkd-inter")}
             for r in rows if r["method"] == "gkd"]
    paths = plots.plot_task_graphs(rows, str(tmp_path / "task"))
    assert os.path.getsize(paths[0]) > 1000
    labels = np.repeat([0, 1, 2], 4)
    block = (labels[:, None] == labels[None, :]).astype(float)
    np.fill_diagonal(block, 0)
    maps = {"teacher/layer1": block, "gkd-0/layer1": np.ones((12, 12)) - np.eye(12)}
    _, _, csv_path = plots.plot_graph_heatmaps(maps, labels, str(tmp_path / "heat"))
    shares = {r["method"]: float(r["median"]) for r in read_csv(csv_path)}
    assert shares["teacher"] == pytest.approx(1.0)
    assert shares["gkd-0"] == pytest.approx(3 * 12 / (12 * 11))  # 3 same-class neighbours of 11


def test_error_table_median_and_sd():
    rows = synthetic_rows()
    markdown, latex = plots.error_table(rows)
    gkd = [r["value"] for r in rows if r["method"] == "gkd" and r["metric"] == "test_error"]
    assert f"| GKD | 5 | {np.median(gkd):.2f} ± {np.std(gkd, ddof=1):.2f} |" in markdown
    assert "| teacher | 1 |" in markdown
    assert r"\pm" in latex and latex.startswith(r"\begin{tabular}")


def test_missing_metric_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="knn_agreement_teacher_block"):
        plots.plot_consistency([r for r in synthetic_rows() if r["metric"] == "smoothness_ratio"],
                               str(tmp_path / "c"))
