"""The analysis pipeline end to end on small real networks and real data (digits)."""

import json
import os

import numpy as np
import pytest
import torch

from geokd.analysis.collect import collect_activations, normalize_images
from geokd.analysis.pipeline import Network, analyze_networks
from geokd.analysis.smoothness import label_smoothness
from geokd.cli import main
from geokd.models import build_model, model_config


def small_cnn(seed):
    torch.manual_seed(seed)
    return build_model("small_cnn", in_channels=1, num_classes=10, widths=(4, 8, 8)).eval()


def saved_small_cnns(folder, seeds) -> dict[str, str]:
    """``{name: path}`` of checkpoints ``<folder>/<name>.pt`` of :func:`small_cnn`, one per
    ``(name, torch seed)`` pair of ``seeds``."""
    from geokd.checkpoints import save_checkpoint

    paths = {}
    for name, seed in seeds:
        net = small_cnn(seed)
        paths[name] = os.path.join(str(folder), f"{name}.pt")
        save_checkpoint(paths[name], net, model_config=model_config(net))
    return paths


@pytest.fixture(scope="module")
def digits():
    from geokd.data import load_dataset

    return load_dataset("digits", split="test")


def test_collect_matches_direct_forward(digits):
    net = small_cnn(0)
    nodes = np.array([7, 3, 100, 4])
    acts = collect_activations(net, digits.images, node_indices=nodes, mean=digits.mean, std=digits.std,
                               batch_size=64)
    x = normalize_images(digits.images, mean=digits.mean, std=digits.std, device="cpu")
    seen = {}
    handle = dict(net.named_modules())["stage2"].register_forward_hook(lambda m, i, o: seen.setdefault("s2", o))
    with torch.no_grad():
        logits = net(x[nodes])
    handle.remove()
    np.testing.assert_allclose(acts.features["stage2"], seen["s2"].reshape(4, -1).numpy(), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_array_equal(acts.predictions, net(x).argmax(dim=1).numpy())
    np.testing.assert_array_equal(acts.node_predictions, logits.argmax(dim=1).numpy())


def test_identical_student_is_at_distance_zero_and_fully_consistent(digits):
    teacher, other = small_cnn(0), small_cnn(1)
    nodes = np.arange(len(digits))[:300]
    result = analyze_networks(
        Network("t", "teacher", None, teacher),
        [Network("copy", "copy", 0, small_cnn(0)), Network("other", "other", 0, other)],
        digits.images, digits.labels.numpy(), node_indices=nodes, mean=digits.mean, std=digits.std, k=5,
        num_eigenvectors=5, heatmap_per_class=2)
    value = {(r["network"], r["layer"], r["metric"]): r["value"] for r in result.rows}
    for layer in ("stage1", "stage2", "pool"):
        assert value[("copy", layer, "aligned_distance")] == pytest.approx(0.0, abs=1e-5)
        assert value[("copy", layer, "lambda_distance")] == pytest.approx(0.0, abs=1e-8)
        assert value[("copy", layer, "knn_agreement_teacher_block")] == 1.0
        assert value[("copy", layer, "cross_graph_variation")] == pytest.approx(value[("t", layer, "cross_graph_variation")])
        assert value[("copy", layer, "smoothness_ratio")] == pytest.approx(value[("t", layer, "smoothness_ratio")])
        assert value[("other", layer, "aligned_distance")] > 1e-3
    assert value[("copy", "output", "agreement")] == 1.0
    assert value[("other", "output", "agreement")] < 1.0
    assert {r["seed"] for r in result.rows if r["network"] == "copy"} == {0}
    assert set(result.heatmaps) == {f"{n}/{l}" for n in ("t", "copy", "other") for l in ("stage1", "stage2", "pool")}
    assert result.heatmaps["t/pool"].shape == (20, 20)


def test_node_order_does_not_change_the_metrics(digits):
    labels = digits.labels.numpy()
    nodes = np.arange(200)
    perm = np.random.default_rng(0).permutation(nodes)
    common = dict(mean=digits.mean, std=digits.std, k=5, num_eigenvectors=4, heatmap_per_class=1)
    nets = lambda: (Network("t", "teacher", None, small_cnn(0)), [Network("s", "s", 1, small_cnn(1))])
    a = analyze_networks(*nets(), digits.images, labels, node_indices=nodes, **common).rows
    b = analyze_networks(*nets(), digits.images, labels, node_indices=perm, **common).rows
    for ra, rb in zip(a, b):
        assert (ra["network"], ra["layer"], ra["metric"]) == (rb["network"], rb["layer"], rb["metric"])
        assert rb["value"] == pytest.approx(ra["value"], rel=1e-4, abs=1e-5), ra["metric"]


def test_label_smoothness_on_real_features_matches_pygsp_and_sklearn_graph(digits):
    import pygsp
    import scipy.sparse as sp
    from sklearn.neighbors import kneighbors_graph

    net = small_cnn(0)
    nodes = np.arange(150)
    acts = collect_activations(net, digits.images, node_indices=nodes, mean=digits.mean, std=digits.std)
    x = acts.features["pool"].astype(np.float64)
    y = digits.labels.numpy()[nodes]
    conn = kneighbors_graph(x, n_neighbors=6, metric="cosine", include_self=False)
    conn = conn.maximum(conn.T).tocoo()
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    w = sp.csr_matrix((np.einsum("ij,ij->i", z[conn.row], z[conn.col]), (conn.row, conn.col)), shape=conn.shape)
    graph = pygsp.graphs.Graph(w)
    one_hot = np.eye(10)[y]
    for lap in ("combinatorial", "normalized"):
        graph.compute_laplacian(lap)
        expected = np.trace(one_hot.T @ (graph.L @ one_hot))
        assert label_smoothness(x, y, k=6, laplacian=lap) == pytest.approx(expected, rel=1e-5)


def test_label_smoothness_refuses_bad_k():
    x = np.abs(np.random.default_rng(0).normal(size=(5, 3)))
    with pytest.raises(ValueError, match=r"pool: expected an integer k with 1 <= k < N = 5, got 5"):
        label_smoothness(x, [0, 1, 0, 1, 0], k=5, name="pool")


def test_cli_analyze_figures_report_on_digits(tmp_path, digits):

    paths = saved_small_cnns(tmp_path, (("teacher", 0), ("gkd_0", 1), ("rkd_1", 2)))
    out = tmp_path / "analysis"
    code = main(["analyze", paths["gkd_0"], paths["rkd_1"], "--teacher", paths["teacher"], "--dataset", "digits",
                 "--per-class", "20", "--k", "5", "--output-on", "nodes", "--out", str(out)])
    assert code == 0
    rows = json.loads((out / "metrics.json").read_text())
    assert {r["network"] for r in rows} == {"teacher", "gkd_0", "rkd_1"}
    assert {r["node_set"] for r in rows} == {"digits-test-20perclass-seed0+output-on-nodes"}
    # The teacher's error is measured on the 200 nodes only: a multiple of 0.5 %.
    error = [r["value"] for r in rows if r["network"] == "teacher" and r["metric"] == "test_error"][0]
    assert (error / 0.5) == pytest.approx(round(error / 0.5))
    settings = json.loads((out / "analysis.json").read_text())
    assert len(settings["node_indices"]) == 200
    assert main(["figures", str(out), "--out", str(tmp_path / "fig")]) == 0
    assert os.path.exists(tmp_path / "fig" / "smoothness.pdf")
    assert main(["report", str(out), "--out", str(tmp_path / "report.html")]) == 0
    assert "data:image/png;base64," in (tmp_path / "report.html").read_text()


def test_cli_reports_missing_teacher(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "x.pt"), "--out", str(tmp_path)]) == 2
    assert "error" in capsys.readouterr().err
