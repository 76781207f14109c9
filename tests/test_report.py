"""The HTML report: self-contained, and it says which student is closer where."""

import base64
import json
import re

import numpy as np
import pytest

from geokd.analysis.compare import closeness_by_layer
from geokd.analysis.tables import write_table
from geokd.report import build_report, write_report
from tests.test_plots import synthetic_rows


def test_closeness_follows_each_metric_direction():
    rows = synthetic_rows()
    found = {(c["layer"], c["metric"]): c for c in closeness_by_layer(rows)}
    # gkd has the smaller distances, the higher agreement, and a smoothness nearer the teacher's.
    for metric in ("aligned_distance", "knn_agreement_teacher_block", "smoothness_ratio"):
        assert found[("layer1", metric)]["closer"] == "gkd"
        assert found[("layer1", metric)]["p_value"] < 0.05
    assert found[("output", "agreement")]["closer"] == "gkd"


def test_report_is_self_contained(tmp_path):
    rows = synthetic_rows()
    write_table(rows, str(tmp_path / "metrics"))
    labels = np.repeat([0, 1], 3)
    np.savez_compressed(tmp_path / "heatmaps.npz", labels=labels, **{"teacher__pool": np.ones((6, 6)) - np.eye(6)})
    (tmp_path / "analysis.json").write_text(json.dumps({"k": 10, "node_indices": [1, 2]}))
    out = write_report(str(tmp_path), str(tmp_path / "report.html"))
    text = open(out).read()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    assert len(images) >= 5
    assert all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    assert "http://" not in text and "https://" not in text
    for layer in ("layer1", "layer2", "pool"):
        assert f"<code>{layer}</code>" in text
    assert "Its blocks' k-NN votes agree least with the teacher" in text


def test_report_without_students_still_renders():
    rows = [{"network": "t", "method": "teacher", "seed": None, "layer": "pool", "metric": "smoothness_ratio",
             "value": 0.2}]
    assert "pool" in build_report(rows)


def test_report_refuses_a_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics table"):
        write_report(str(tmp_path / "nothing"), str(tmp_path / "r.html"))


def test_merging_analyses_refuses_disagreeing_values(tmp_path):
    from geokd.analysis.saved import read_analyses

    rows = synthetic_rows()
    write_table(rows, str(tmp_path / "a" / "metrics"))
    changed = [dict(r) for r in rows]
    changed[0]["value"] += 1.0
    write_table(changed, str(tmp_path / "b" / "metrics"))
    with pytest.raises(ValueError, match="differs from"):
        read_analyses([str(tmp_path / "a"), str(tmp_path / "b")])
    merged = read_analyses([str(tmp_path / "a"), str(tmp_path / "a")])
    assert len(merged.rows) == len(rows)
