"""Graph variants in the analysis: every metric under any GraphSpec, and whether the conclusion
depends on the graph (issue 26). Small real networks on real data (digits); the released
networks in the slow tests at the end."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from geokd.analysis.collect import collect_activations
from geokd.analysis.graph_names import default_knn_spec, default_rows, is_default_row
from geokd.analysis.pipeline import Network, analyze_networks
from geokd.analysis.rankings import kendall_tau, variant_rankings
from geokd.cli import main
from geokd.errors import ConfigError
from geokd.graphs import GraphSpec, batch_graph
from geokd.graphs.spec_names import nearest_graph_name, parse_graph_names
from geokd.losses.gkd import gkd_loss
from tests.test_analysis_pipeline import digits, saved_small_cnns, small_cnn  # noqa: F401 (digits is a fixture)

LAYERS = ("stage1", "stage2", "pool")
# A list covering k (full, 5, 16), task (all, inter, intra), power (1, 2), and the other
# kernels, normalizations and renormalization.
VARIANTS = ["cos-sym-full-all-p1", "cos-sym-k5-inter-p1", "cos-sym-full-all-p2", "cos-sym-k16-intra-p2",
            "cos-sym-k5-all-p1", "gauss-rw-k5-all-p1-renorm", "dot-none-full-inter-p1", "cos-sym-full-intra-p1"]
DISTANCES = ("aligned_distance", "lambda_distance", "heat_trace_distance")


def _analyze(digits, nodes, graphs=(), students=None, **kw):
    students = students or [Network("copy", "copy", 0, small_cnn(0)), Network("other", "other", 1, small_cnn(1))]
    return analyze_networks(Network("t", "teacher", None, small_cnn(0)), students, digits.images,
                            digits.labels.numpy(), node_indices=nodes, mean=digits.mean, std=digits.std, k=5,
                            num_eigenvectors=5, heatmap_per_class=2, graphs=graphs, **kw)


def _nodes(digits, per_class=10):
    labels = digits.labels.numpy()
    return np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])


@pytest.fixture(scope="module")
def variant_analysis(digits):
    return _analyze(digits, _nodes(digits), graphs=VARIANTS)


def _values(rows):
    return {(r["network"], r["layer"], r["metric"], r["graph"]): r["value"] for r in rows}


def test_the_teacher_against_itself_is_zero_under_every_variant(variant_analysis):
    value = _values(variant_analysis.rows)
    for graph in VARIANTS:
        for layer in LAYERS:
            for metric in DISTANCES:
                assert value[("copy", layer, metric, graph)] == pytest.approx(0.0, abs=1e-9), (graph, layer, metric)
                assert value[("other", layer, metric, graph)] > 0, (graph, layer, metric)
            assert value[("copy", layer, "cross_graph_variation", graph)] == pytest.approx(
                value[("t", layer, "cross_graph_variation", graph)], rel=1e-9, abs=1e-12)


def test_the_squared_aligned_distance_is_the_variants_gkd_loss(digits, variant_analysis):
    """Under each variant the analysis builds the graphs as the GKD loss does: same kernel,
    normalization, class mask, the teacher's k-NN mask on the student's graph, power."""
    nodes = _nodes(digits)
    labels = torch.from_numpy(digits.labels.numpy()[nodes])
    feats = {}
    for name, seed in (("t", 0), ("other", 1)):
        acts = collect_activations(small_cnn(seed), digits.images, node_indices=nodes, mean=digits.mean,
                                   std=digits.std)
        feats[name] = {layer: torch.from_numpy(acts.features[layer]).double() for layer in LAYERS}
    value = _values(variant_analysis.rows)
    for graph in VARIANTS:
        spec = GraphSpec.from_name(graph)
        for layer in LAYERS:
            expected = float(gkd_loss([feats["other"][layer]], [feats["t"][layer]], labels, spec=spec))
            assert value[("other", layer, "aligned_distance", graph)] ** 2 == pytest.approx(expected, rel=1e-6), \
                (graph, layer)


def test_label_smoothness_is_left_empty_on_task_graphs_with_the_reason(variant_analysis):
    rows = variant_analysis.rows
    for row in rows:
        if row["metric"].startswith("smoothness_") and row["graph"] in VARIANTS:
            task = GraphSpec.from_name(row["graph"]).task
            if task == "all":
                assert isinstance(row["value"], float) and math.isfinite(row["value"])
            else:
                assert row["value"] is None
                assert "fixed by construction" in row["note"] and f"{task}-class" in row["note"]
    # Every other value is a finite number.
    assert all(math.isfinite(r["value"]) for r in rows if not r["metric"].startswith("smoothness_"))


def test_the_default_analysis_gives_todays_values_and_names_its_graphs(digits, variant_analysis):
    # Values of the analysis as it was before graph variants (geokd at commit 13cd7f6, this setup).
    today = {
        's/stage1/smoothness_ratio': 0.2293606342672122, 's/stage1/knn_accuracy': 0.895,
        's/stage1/knn_agreement_teacher_block': 0.905, 's/stage1/aligned_distance': 0.16618172635654652,
        's/stage1/lambda_distance': 0.21485899765582442, 's/stage1/heat_trace_distance': 0.014414422675691695,
        's/stage1/cross_graph_variation': 0.08818018875192232, 's/stage2/smoothness_ratio': 0.29393705304452106,
        's/stage2/knn_accuracy': 0.845, 's/stage2/knn_agreement_teacher_block': 0.81,
        's/stage2/aligned_distance': 0.2145157008814699, 's/stage2/lambda_distance': 0.1748395589397508,
        's/stage2/heat_trace_distance': 0.015468221858932343, 's/stage2/cross_graph_variation': 0.15532523888737018,
        's/pool/smoothness_ratio': 0.7511415827412112, 's/pool/knn_accuracy': 0.35,
        's/pool/knn_agreement_teacher_block': 0.27, 's/pool/aligned_distance': 0.19215394845634542,
        's/pool/lambda_distance': 0.18400181832098356, 's/pool/heat_trace_distance': 0.025270114261591547,
        's/pool/cross_graph_variation': 0.6486933880448691, 't/pool/smoothness_ratio': 0.5901125836732255,
        't/stage1/cross_graph_variation': 0.02324306445639445,
    }
    plain = _analyze(digits, np.arange(200), students=[Network("s", "other", 1, small_cnn(1))]).rows
    got = {f"{r['network']}/{r['layer']}/{r['metric']}": r["value"] for r in plain}
    for key, value in today.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-12), key
    knn, dense = default_knn_spec(k=5).name, GraphSpec().name
    assert {r["graph"] for r in plain} == {knn, dense, ""}
    assert all(r["graph"] == (dense if r["metric"] == "aligned_distance" else "" if r["layer"] == "output" else knn)
               for r in plain)
    assert all(is_default_row(r) for r in plain)
    # With variants, the default rows are the same rows with the same values; the rest are new.
    with_variants = default_rows(variant_analysis.rows)
    plain_copy = {(r["network"], r["layer"], r["metric"], r["graph"]): r["value"] for r in
                  _analyze(digits, _nodes(digits)).rows}
    assert {(r["network"], r["layer"], r["metric"], r["graph"]): r["value"] for r in with_variants} == plain_copy
    keys = [(r["network"], r["layer"], r["metric"], r["graph"]) for r in variant_analysis.rows]
    assert len(keys) == len(set(keys))   # nothing measured twice on one graph


def test_the_default_knn_graph_is_the_graph_its_name_describes(digits):
    from geokd.analysis.layer_graph import cosine_knn_graph

    acts = collect_activations(small_cnn(0), digits.images, node_indices=np.arange(150), mean=digits.mean,
                               std=digits.std)
    for layer in LAYERS:
        x = acts.features[layer]
        spec = default_knn_spec(k=6)
        built = batch_graph(torch.from_numpy(x).double(), spec=spec).adjacency.numpy()
        np.testing.assert_allclose(cosine_knn_graph(x, k=6).toarray(), built, atol=1e-6)


def test_k_at_least_the_node_count_and_an_unknown_name_fail_before_any_network_is_loaded(digits, tmp_path):
    never = Network("t", "teacher", None, str(tmp_path / "does-not-exist.pt"))   # loading it would fail
    common = dict(node_indices=np.arange(30), mean=digits.mean, std=digits.std, k=5)
    with pytest.raises(ValueError, match=r"graph variant 'cos-sym-k30-inter-p1': expected k < the node count 30 "
                                         r"\(a node has 29 possible neighbours\), got k = 30"):
        analyze_networks(never, [], digits.images, digits.labels.numpy(), graphs=["cos-sym-k30-inter-p1"], **common)
    with pytest.raises(ConfigError, match=r"KERNEL-NORM-SIZE-TASK-pPOWER.*got 'cos-sym-k10-iner-p1'; the nearest "
                                          r"valid name is 'cos-sym-k10-inter-p1'"):
        analyze_networks(never, [], digits.images, digits.labels.numpy(), graphs=["cos-sym-k10-iner-p1"], **common)


def test_wrong_names_on_the_command_line_and_in_a_study_are_clear_errors(tmp_path, capsys):
    assert main(["analyze", "x.pt", "--teacher", "t.pt", "--graphs", "cos-sym-full-all-p1", "cosine-k16-intra",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--graphs: expected a graph variant name of the form KERNEL-NORM-SIZE-TASK-pPOWER" in err
    assert "got 'cosine-k16-intra'; the nearest valid name is 'cos-sym-k16-intra-p1'" in err
    assert not (tmp_path / "out").exists()   # refused before the output directory was made
    study = tmp_path / "study.toml"
    study.write_text('[graph]\nvariants = ["cos-sym-full-all-p1", "cos-rw-k10-al-p2"]\n')
    from geokd.analysis.study import load_study

    with pytest.raises(ConfigError, match=r"study.toml: \[graph\] variants: .*nearest valid name is "
                                          r"'cos-rw-k10-all-p2'"):
        load_study(str(study))
    study.write_text('[graph]\nvariants = ["cos-sym-full-all-p1", "cos-sym-k10-inter-p1"]\n')
    assert load_study(str(study)).variants == ["cos-sym-full-all-p1", "cos-sym-k10-inter-p1"]


def test_nearest_names_and_duplicates():
    assert nearest_graph_name("cos-sym-k10-iner-p1") == "cos-sym-k10-inter-p1"
    assert nearest_graph_name("gaussian-rw-full-all-p2") == "gauss-rw-full-all-p2"
    assert nearest_graph_name("cos-sym-k0-all-p0") == "cos-sym-k1-all-p1"
    assert nearest_graph_name("cos-sym-full-all-p1-s2") == "cos-sym-full-all-p1"   # a sigma needs gauss
    assert nearest_graph_name("intra") == "cos-sym-full-intra-p1"
    for name in ("cos-sym-full-all-p1", "gauss-sym-k16-inter-p2-s0.5-renorm-relu", "dot-none-k3-intra-p3"):
        assert nearest_graph_name(name) == name
    with pytest.raises(ConfigError, match="expected each graph variant once, got 'cos-sym-full-all-p1' twice"):
        parse_graph_names(["cos-sym-full-all-p1", GraphSpec()])
    with pytest.raises(ConfigError, match="at least one"):
        parse_graph_names([])


def test_a_class_with_one_node_under_intra_gives_finite_values_and_the_report_names_it(digits, tmp_path):
    from geokd.analysis.tables import write_table
    from geokd.report import build_report

    labels = digits.labels.numpy()
    nodes = np.concatenate([np.flatnonzero(labels == c)[:12] for c in range(9)] + [np.flatnonzero(labels == 9)[:1]])
    graphs = ["cos-sym-full-all-p1", "cos-sym-full-intra-p1", "cos-sym-k5-intra-p1", "cos-sym-full-intra-p1-renorm"]
    rows = _analyze(digits, nodes, graphs=graphs).rows
    alone = nodes.size - 1   # the only node of class 9, last in the node set
    for row in rows:
        if row["value"] is not None:
            assert math.isfinite(row["value"]), row
        if row["metric"] == "isolated_nodes":
            intra = GraphSpec.from_name(row["graph"]).task == "intra"
            assert row["value"] == (1.0 if intra else 0.0), row
            if intra:
                assert row["note"] == f"1 node without edges (positions in the node set): {alone} (class 9)"
    text = build_report(rows, settings={"variants": graphs})
    assert "Nodes without edges" in text
    assert f"under <code>cos-sym-full-intra-p1</code> at <code>pool</code>, 3 networks (t, copy, other): 1 node " \
           f"without edges (positions in the node set): {alone} (class 9)" in text
    write_table(rows, str(tmp_path / "metrics"))   # empty values survive the round trip
    from geokd.analysis.tables import read_table

    assert read_table(str(tmp_path / "metrics.csv")) == read_table(str(tmp_path / "metrics.json"))


def test_kendall_tau_equals_scipy_and_a_hand_computed_example():
    from scipy.stats import kendalltau

    # By hand: of the 6 pairs of [1, 2, 3, 4] vs [1, 3, 2, 4], one (2, 3) is discordant: (5 - 1) / 6.
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(2 / 3)
    # With ties: x = [1, 2, 2, 3], y = [1, 2, 3, 3]: 4 concordant, 0 discordant, one pair tied in
    # each; tau-b = 4 / sqrt((6 - 1) (6 - 1)) = 0.8.
    assert kendall_tau([1, 2, 2, 3], [1, 2, 3, 3]) == pytest.approx(0.8)
    assert kendall_tau([0.1, 0.5, 0.9], [3, 2, 1]) == -1.0
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(2, 10))
        x, y = rng.integers(0, 4, n), rng.integers(0, 4, n)
        ours, theirs = kendall_tau(x, y), kendalltau(x, y).statistic
        assert (math.isnan(ours) and math.isnan(theirs)) or ours == pytest.approx(theirs, abs=1e-12)


def _ranking_rows():
    """gkd closest under 'a' and at 'b''s layer1, rkd-d at 'b''s pool; smoothness empty under 'c'."""
    rows = []
    for method, seeds in (("teacher", [None]), ("gkd", [0, 1, 2]), ("rkd-d", [0, 1, 2]), ("baseline", [0, 1, 2])):
        for seed in seeds:
            net = method if seed is None else f"{method}-{seed}"
            for graph, layer, distance in (("a", "layer1", {"gkd": 1, "rkd-d": 2, "baseline": 3}),
                                           ("a", "pool", {"gkd": 1, "rkd-d": 2, "baseline": 3}),
                                           ("b", "layer1", {"gkd": 1, "rkd-d": 3, "baseline": 2}),
                                           ("b", "pool", {"gkd": 3, "rkd-d": 2, "baseline": 1})):
                base = {"network": net, "method": method, "seed": seed, "layer": layer, "graph": graph}
                if method != "teacher":
                    rows.append({**base, "metric": "aligned_distance", "value": distance[method] + 0.01 * seed})
                rows.append({**base, "metric": "smoothness_ratio", "value": 0.5 if method == "teacher" else
                             0.5 + 0.1 * distance[method]})
            for layer in ("layer1", "pool"):
                rows.append({"network": net, "method": method, "seed": seed, "layer": layer, "graph": "c",
                             "metric": "smoothness_ratio", "value": None, "note": "fixed by construction"})
    return rows


def test_rankings_and_tau_of_each_variant_against_the_first():
    table = {(r["layer"], r["metric"], r["graph"]): r for r in variant_rankings(_ranking_rows(),
                                                                                 variants=["a", "b", "c"])}
    first = table[("layer1", "aligned_distance", "a")]
    assert (first["ranking"], first["kendall_tau_vs_first"], first["closest"]) == ("gkd > rkd-d > baseline", 1.0, "gkd")
    swapped = table[("layer1", "aligned_distance", "b")]
    assert swapped["ranking"] == "gkd > baseline > rkd-d"
    assert swapped["kendall_tau_vs_first"] == pytest.approx(1 / 3)   # one discordant pair of three
    reversed_ = table[("pool", "aligned_distance", "b")]
    assert (reversed_["ranking"], reversed_["kendall_tau_vs_first"]) == ("baseline > rkd-d > gkd", -1.0)
    assert table[("pool", "smoothness_ratio", "b")]["closest"] == "baseline"   # nearest the teacher's 0.5
    empty = table[("pool", "smoothness_ratio", "c")]
    assert (empty["ranking"], empty["kendall_tau_vs_first"], empty["note"]) == ("", None, "fixed by construction")


def test_cli_variant_analysis_writes_variants_csv_and_the_graph_column(digits, tmp_path):

    paths = saved_small_cnns(tmp_path, (("teacher", 0), ("gkd_0", 1), ("rkd_1", 2)))
    out = tmp_path / "analysis"
    graphs = ["cos-sym-full-all-p1", "cos-sym-k10-inter-p1", "cos-sym-full-all-p2", "cos-sym-k16-intra-p2"]
    assert main(["analyze", paths["gkd_0"], paths["rkd_1"], "--teacher", paths["teacher"], "--dataset", "digits",
                 "--per-class", "10", "--k", "5", "--output-on", "nodes", "--graphs", *graphs,
                 "--out", str(out)]) == 0
    with open(out / "variants.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        table = list(reader)
    assert reader.fieldnames[:5] == ["layer", "metric", "graph", "ranking", "kendall_tau_vs_first"]
    assert {r["graph"] for r in table} == set(graphs)
    assert {r["kendall_tau_vs_first"] for r in table if r["graph"] == graphs[0]} == {"1.0"}
    assert all(r["ranking"] == "" and r["kendall_tau_vs_first"] == "" for r in table
               if r["metric"].startswith("smoothness") and "inter" in r["graph"] + r["graph"].replace("intra", "inter"))
    with open(out / "metrics.csv", newline="") as handle:
        metrics = list(csv.DictReader(handle))
    assert {"graph", "note"} <= set(metrics[0])
    assert {r["graph"] for r in metrics} >= set(graphs) | {"cos-none-k5-all-p1-relu", ""}
    settings = json.loads((out / "analysis.json").read_text())
    assert settings["variants"] == graphs and len(settings["node_indices"]) == 100
    assert "mean" in settings and "std" in settings
    assert main(["figures", str(out), "--out", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "variants.png").stat().st_size > 0 and (tmp_path / "fig" / "variants.pdf").exists()


def test_graphs_command_draws_each_variant_with_the_teachers_masks(digits, tmp_path):

    paths = saved_small_cnns(tmp_path, (("teacher", 0), ("student", 1)))
    graphs = ["cos-sym-full-all-p1", "cos-sym-k5-inter-p1", "cos-sym-full-all-p2"]
    out = tmp_path / "graphs"
    assert main(["graphs", paths["student"], "--teacher", paths["teacher"], "--dataset", "digits",
                 "--per-class", "6", "--graphs", *graphs, "--out", str(out)]) == 0
    for stem in ("teacher", "student"):
        for suffix in (".png", ".pdf", ".csv"):
            assert (out / f"{stem}{suffix}").stat().st_size > 0
    with np.load(out / "graphs.npz") as saved:
        labels = saved["labels"]
        assert labels.size == 60 and list(labels) == sorted(labels)
        assert set(saved.files) == {"labels", "node_indices"} | {f"{n}__{l}__{g}" for n in ("teacher", "student")
                                                                  for l in LAYERS for g in graphs}
        for layer in LAYERS:
            teacher, student = saved[f"teacher__{layer}__cos-sym-k5-inter-p1"], saved[f"student__{layer}__cos-sym-k5-inter-p1"]
            assert not np.any((student != 0) & (teacher == 0))   # the student keeps the teacher's k-NN edges only
            assert not np.any(teacher[labels[:, None] == labels[None, :]])   # inter-class: no edge within a class
        # The matrices are the GKD loss's graphs of the nodes.
        acts = collect_activations(small_cnn(0), digits.images, node_indices=saved["node_indices"],
                                   mean=digits.mean, std=digits.std)
        expected = batch_graph(torch.from_numpy(acts.features["pool"]).double(), spec=GraphSpec(power=2)).adjacency
        np.testing.assert_allclose(saved["teacher__pool__cos-sym-full-all-p2"], expected.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_report_of_a_variant_analysis_opens_in_headless_chromium(digits, tmp_path):
    from tests._browser import open_page


    paths = saved_small_cnns(tmp_path, (("teacher", 0), ("gkd_0", 1), ("gkd_1", 3), ("rkd_0", 2), ("rkd_1", 4)))
    out = tmp_path / "analysis"
    graphs = ["cos-sym-full-all-p1", "cos-sym-k10-inter-p1", "cos-sym-full-all-p2"]
    assert main(["analyze", *(paths[n] for n in ("gkd_0", "gkd_1", "rkd_0", "rkd_1")), "--teacher", paths["teacher"],
                 "--dataset", "digits", "--per-class", "15", "--k", "5", "--output-on", "nodes", "--graphs", *graphs,
                 "--out", str(out)]) == 0
    html = tmp_path / "report.html"
    assert main(["report", str(out), "--out", str(html)]) == 0
    view = open_page(html.as_uri(), screenshot=str(tmp_path / "report.png"))
    assert view.requests == [html.as_uri()]   # one self-contained page
    assert view.errors == []
    assert len(view.images) >= 5 and all(complete and width > 0 for complete, width in view.images)
    text = view.text
    assert "Does the conclusion depend on the graph?" in text
    assert "variants.png: closest method per variant (rows) and sensing point (columns)" in text
    for graph in graphs:
        assert graph in text
    assert "not measured (fixed by construction)" in text          # smoothness on the inter-class graph
    assert "Label smoothness is fixed by construction on an inter-class graph" in text
    assert "τ = " in text


@pytest.mark.slow
def test_released_networks_under_variants_equal_the_gkd_loss(graph_kd_dir):
    """The released teacher, a GKD and an RKD-D student on 100 CIFAR-10 test images."""
    import os

    from geokd.analysis.nodes import balanced_node_set
    from geokd.checkpoints import load_any
    from geokd.data import load_dataset

    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    data = load_dataset("cifar10", split="test")
    labels = data.labels.numpy()
    nodes = balanced_node_set(labels, per_class=10, seed=0)
    images, node_labels = data.images[nodes], labels[nodes]
    teacher = os.path.join(graph_kd_dir, "WideResNet28-1_0.pth")
    gkd = os.path.join(graph_kd_dir, "GKD_28-1_teaches_28-0.5_0.0_0.0_25.0_1_128_False_False_False_0.pth")
    rkd = os.path.join(graph_kd_dir, "RKD_28-1_teaches_28-0.5_0.0_0.0_25.0_False_0.pth")
    graphs = ["cos-sym-full-all-p1", "cos-sym-k10-all-p1", "cos-sym-full-inter-p1", "cos-sym-k16-intra-p2"]
    result = analyze_networks(Network("teacher", "teacher", None, teacher),
                              [Network("copy", "copy", 0, teacher), Network("gkd-0", "gkd", 0, gkd),
                               Network("rkd-d-0", "rkd-d", 0, rkd)],
                              images, node_labels, node_indices=np.arange(nodes.size), mean=mean, std=std, k=10,
                              heatmap_per_class=1, graphs=graphs)
    value = _values(result.rows)
    feats = {name: collect_activations(load_any(path, device="cpu"), images, node_indices=np.arange(nodes.size),
                                       mean=mean, std=std).features for name, path in (("t", teacher), ("gkd-0", gkd))}
    y = torch.from_numpy(node_labels)
    for graph in graphs:
        for layer in ("layer1", "layer2", "pool"):
            assert value[("copy", layer, "aligned_distance", graph)] == pytest.approx(0.0, abs=1e-9)
            expected = float(gkd_loss([torch.from_numpy(feats["gkd-0"][layer]).double()],
                                      [torch.from_numpy(feats["t"][layer]).double()], y, spec=GraphSpec.from_name(graph)))
            assert value[("gkd-0", layer, "aligned_distance", graph)] ** 2 == pytest.approx(expected, rel=1e-6)
            assert value[("rkd-d-0", layer, "aligned_distance", graph)] > 0


def test_the_default_figures_and_report_tables_ignore_the_variant_rows(digits, tmp_path, variant_analysis):
    from geokd.analysis.saved import write_heatmaps
    from geokd.analysis.tables import write_table
    from geokd.plots import draw_saved_analysis
    from geokd.report import build_report

    plain = _analyze(digits, _nodes(digits))
    for name, result in (("plain", plain), ("variants", variant_analysis)):
        write_table(result.rows, str(tmp_path / name / "metrics"))
        write_heatmaps(str(tmp_path / name / "heatmaps.npz"), result.heatmaps, result.heatmap_labels)
        draw_saved_analysis([str(tmp_path / name)], str(tmp_path / name / "fig"))
    for figure in ("smoothness", "consistency", "distances", "knn_accuracy"):
        assert (tmp_path / "plain" / "fig" / f"{figure}.csv").read_text() == \
            (tmp_path / "variants" / "fig" / f"{figure}.csv").read_text(), figure
    assert not (tmp_path / "plain" / "fig" / "variants.png").exists()
    assert (tmp_path / "variants" / "fig" / "variants.png").exists()
    plain_text = build_report(plain.rows)
    variant_text = build_report(variant_analysis.rows, settings={"variants": VARIANTS})
    def layer_tables(text):
        return text.split("<h2>Layer by layer</h2>")[1].split("<h2 id='variants'>")[0].split("</body>")[0]

    assert layer_tables(variant_text) == layer_tables(plain_text)
    assert "Does the conclusion depend on the graph?" in variant_text and "Does the conclusion" not in plain_text
