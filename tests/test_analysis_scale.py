"""Analysis at dataset scale: the on-disk activation store, streaming metrics, the memory budget.

The streaming paths (features written to a checksummed store, every graph built from blocks
of it) are checked against the in-memory analysis (same rows to 1e-6 on the released
networks and 2,000 CIFAR-10 nodes), against exact k-NN graphs, and for what they promise:
the peak resident memory stays within the budget while the features would not fit in it, a
corrupt block is a checksum error, and bad activations are refused as they are written.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from geokd.analysis.activation_store import ActivationStore, StoredRows
from geokd.analysis.memory_budget import MemoryBudgetError, parse_bytes
from geokd.analysis.pipeline import Network, analyze_networks, layer_graphs
from geokd.analysis.scale import plan_scale
from geokd.errors import DataIntegrityError
from geokd.graphs import knn_graph

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
GKD_0 = "GKD_28-1_teaches_28-0.5_0.0_0.0_25.0_1_128_False_False_False_0.pth"


def activations_like(n=3000, d=600, classes=10, seed=0):
    """Non-negative clustered features with a few hundred dominant directions, as post-ReLU layers have."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centers = rng.normal(size=(classes, 40))
    mixing = rng.normal(size=(40, d)) / np.sqrt(40)
    latent = centers[labels] + 0.8 * rng.normal(size=(n, 40))
    x = np.maximum(0, latent @ mixing + 0.3 * rng.normal(size=(n, d)))
    return x.astype(np.float32), labels


def stored(x, folder, *, dtype="float32", batch=128, order=None):
    store = ActivationStore(folder, dtype=dtype)
    writer = store.writer("layer", num_rows=x.shape[0], width=x.shape[1])
    positions = np.arange(x.shape[0]) if order is None else order
    for start in range(0, x.shape[0], batch):
        chunk = positions[start:start + batch]
        writer.write(chunk, x[chunk])
    return writer.finish()


def test_store_reads_back_what_was_written_in_any_order(tmp_path):
    x, _ = activations_like(n=700, d=50)
    order = np.random.default_rng(1).permutation(700)   # written scattered, as a shuffled node set is
    rows = stored(x, tmp_path / "f32", order=order, batch=33)
    np.testing.assert_array_equal(rows.read(0, 700).numpy(), x)
    np.testing.assert_array_equal(rows.read(123, 456).numpy(), x[123:456])
    picks = np.array([699, 0, 5, 5, 321])
    np.testing.assert_array_equal(rows.take(picks).numpy(), x[picks])
    np.testing.assert_allclose(rows.norms.numpy(), np.linalg.norm(x, axis=1), rtol=1e-6)
    half = stored(x, tmp_path / "f16", dtype="float16")
    np.testing.assert_array_equal(half.read(0, 700).numpy(), x.astype(np.float16).astype(np.float32))
    assert os.path.getsize(half.path) * 2 == os.path.getsize(rows.path) == x.nbytes
    reopened = StoredRows.open(rows.path.with_suffix(".json"))
    np.testing.assert_array_equal(reopened.take(picks).numpy(), x[picks])


def test_a_corrupt_block_is_a_checksum_error_naming_it(tmp_path):
    x, _ = activations_like(n=600, d=4000)   # 16 KB rows: several 16 MB blocks? no, 1 block per 1024 rows
    rows = stored(x, tmp_path)
    np.testing.assert_array_equal(rows.read(0, 10).numpy(), x[:10])   # verified once, then trusted while unchanged
    with open(rows.path, "r+b") as handle:
        handle.seek(rows.row_bytes * 500 + 7)
        handle.write(b"\x42")
    with pytest.raises(DataIntegrityError, match=r"layer: stored activations .* fail their checksum in block 0 "
                                                 r"\(rows 0\.\.599\)"):
        rows.take(np.array([3]))
    with pytest.raises(DataIntegrityError, match="fail their checksum"):
        StoredRows.open(rows.path.with_suffix(".json")).read(0, 600)
    with open(rows.path, "r+b") as handle:   # a truncated store too
        handle.truncate(rows.row_bytes * 100)
    with pytest.raises(DataIntegrityError, match="block 0"):
        StoredRows.open(rows.path.with_suffix(".json")).read(0, 1)


def test_bad_activations_are_refused_as_they_are_written(tmp_path):
    writer = ActivationStore(tmp_path, dtype="float16").writer("layer1", num_rows=4, width=3, label="gkd-0 layer1")
    bad = np.ones((2, 3), dtype=np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="gkd-0 layer1: expected finite activations, got NaN/Inf at node 3"):
        writer.write(np.array([2, 3]), bad)
    with pytest.raises(ValueError, match=r"within float16's range .* got 1e\+05; store them in float32"):
        writer.write(np.array([0, 1]), np.full((2, 3), 1e5, dtype=np.float32))
    writer.write(np.array([0, 1]), np.ones((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="expected every one of the 4 rows written, got 2 missing"):
        writer.finish()
    with pytest.raises(ValueError, match="expected a store dtype in"):
        ActivationStore(tmp_path, dtype="bfloat16")


@pytest.mark.parametrize("approximate", [False, True])
def test_knn_graph_from_stored_rows_equals_the_in_memory_one(tmp_path, approximate):
    x, _ = activations_like()
    rows = stored(x, tmp_path)
    # A budget that holds 2/3 of the rows: the exact scan reads blocks, the re-ranking makes passes.
    budget = x.nbytes * 2 // 3
    options = dict(k=10, approximate=approximate, memory_budget=budget, projection_dim=64)
    from_store = knn_graph(rows, **options)
    in_memory = knn_graph(x, **options)
    exact = knn_graph(x, k=10)
    if not approximate:
        assert abs(from_store - in_memory).max() == 0 and from_store.nnz == in_memory.nnz   # the same blocks
        assert abs(from_store - exact).max() < 1e-6 and from_store.nnz == exact.nnz
    else:
        # The sample of the projection basis is capped by the budget on disk: the candidates can
        # differ, the edges found are exact cosines, and both keep the neighbours.
        common = from_store.multiply(exact.astype(bool))
        assert abs(common - exact.multiply(from_store.astype(bool))).max() < 1e-6
        for graph in (from_store, in_memory):
            recall = graph.astype(bool).multiply(exact.astype(bool)).nnz / exact.nnz
            assert recall > 0.97


def test_a_reranking_group_that_cannot_fit_names_the_budget_and_the_exact_mode(tmp_path):
    x, _ = activations_like()
    with pytest.raises(ValueError, match=r"re-ranking group: 128 rows and their candidates are \d+ rows .* "
                                         r"memory_budget 1200000 bytes holds 375: .* exact mode"):
        knn_graph(stored(x, tmp_path), k=10, approximate=True, memory_budget=x.nbytes // 6, projection_dim=64)


def test_layer_graphs_stream_the_same_graphs(tmp_path):
    x, labels = activations_like(n=1200, d=300)
    rows = stored(x, tmp_path)
    subset = np.arange(0, 1200, 2)
    for dense in (True, False):
        plan = plan_scale(num_nodes=1200, num_layers=1, memory_budget=None, knn="exact")
        plan = type(plan)(**{**plan.__dict__, "dense": dense})
        a = layer_graphs(x, labels, k=10, num_classes=10, device="cpu", name="x", subset=subset, plan=plan)
        b = layer_graphs(rows, labels, k=10, num_classes=10, device="cpu", name="x", subset=subset, plan=plan)
        assert abs(a.knn.matrix - b.knn.matrix).max() < 1e-6
        np.testing.assert_array_equal(a.votes, b.votes)
        np.testing.assert_allclose(a.spectrum, b.spectrum, atol=1e-9)
        if dense:
            np.testing.assert_allclose(a.adjacency.numpy(), b.adjacency.numpy(), atol=1e-7)
        else:
            assert a.adjacency is None and b.adjacency is None


def test_memory_budget_errors_name_the_budget_and_the_block():
    with pytest.raises(MemoryBudgetError, match=r"memory budget 64\.0 GB too small: x: one k-NN block \(256 rows "
                                                r"of 100000000 float32 features"):
        plan = plan_scale(num_nodes=100, num_layers=1, memory_budget=parse_bytes("64GB"))
        plan.knn_budget(type("Wide", (), {"shape": (2, 100_000_000)})(), name="x")
    with pytest.raises(MemoryBudgetError, match=r"memory budget 1\.0 MB too small: the analysis needs 0 B"):
        plan_scale(num_nodes=100, num_layers=1, memory_budget=parse_bytes("1MB"))
    with pytest.raises(ValueError, match="expected a size such as 4GB"):
        parse_bytes("4 gigs")


def _released_analysis(graph_kd_dir, per_class, **options):
    from geokd.analysis.nodes import balanced_node_set
    from geokd.data import load_dataset

    data = load_dataset("cifar10", split="test")
    labels = data.labels.numpy()
    nodes = balanced_node_set(labels, per_class=per_class, seed=0)
    teacher = Network("teacher", "teacher", None, os.path.join(graph_kd_dir, "WideResNet28-1_0.pth"))
    student = Network("gkd-0", "gkd", 0, os.path.join(graph_kd_dir, GKD_0))
    return analyze_networks(teacher, [student], data.images[nodes], labels[nodes], node_indices=np.arange(nodes.size),
                            mean=MEAN, std=STD, k=10, heatmap_per_class=2, **options)


@pytest.mark.slow
def test_streaming_and_in_memory_analyses_agree_on_2000_released_nodes(graph_kd_dir, tmp_path):
    in_memory = _released_analysis(graph_kd_dir, 200)
    streamed = _released_analysis(graph_kd_dir, 200, store_dir=tmp_path / "activations",
                                  memory_budget=parse_bytes("2.5GB"))
    a = {(r["network"], r["layer"], r["metric"]): r["value"] for r in in_memory.rows}
    b = {(r["network"], r["layer"], r["metric"]): r["value"] for r in streamed.rows}
    assert a.keys() == b.keys() and any(key[2] == "aligned_distance" for key in a)
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), key
    for name, graph in in_memory.heatmaps.items():
        np.testing.assert_allclose(streamed.heatmaps[name], graph, atol=1e-7)
    assert not any((tmp_path / "activations").iterdir())   # each network's store is gone once it is measured


@pytest.mark.slow
def test_the_memory_budget_bounds_the_peak_of_a_run(graph_kd_dir, tmp_path):
    """5,000 nodes: the teacher's features alone are 581 MB in float32, more than the budget leaves."""
    budget = "900MB"
    out = tmp_path / "out"
    # VmHWM, not ru_maxrss: Linux carries the forking parent's peak (this big pytest process)
    # into a child's ru_maxrss across exec; the high-water mark of the child's own memory is reset.
    code = ("import re, sys; from geokd.cli import main; rc = main(sys.argv[1:]); "
            "print('PEAK', int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]) * 1024); "
            "sys.exit(rc)")
    args = ["analyze", "--teacher", os.path.join(graph_kd_dir, "WideResNet28-1_0.pth"),
            os.path.join(graph_kd_dir, GKD_0), "--per-class", "500", "--output-on", "nodes",
            "--memory-budget", budget, "--store-dtype", "float16", "--no-teacher-cache", "--out", str(out),
            "--batch-size", "100"]   # the forward pass's own memory grows with the batch (not with N)
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "2"}, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    peak = int(done.stdout.split("PEAK")[-1].split()[0])
    teacher_features = 5000 * (16 * 32 * 32 + 32 * 16 * 16 + 64 * 8 * 8 + 64) * 4
    assert peak <= parse_bytes(budget), (peak, done.stderr[:3000])
    assert teacher_features > parse_bytes(budget) - peak // 2   # in memory, they alone would not have fitted
    settings = json.loads((out / "analysis.json").read_text())
    assert settings["memory_budget"] == parse_bytes(budget) and settings["store_dtype"] == "float16"
    rows = json.loads((out / "metrics.json").read_text())
    assert {r["metric"] for r in rows} >= {"knn_accuracy", "smoothness_ratio", "lambda_distance"}
    assert not (out / "activations").exists() or not any((out / "activations").rglob("*.f16"))


@pytest.mark.slow
def test_a_budget_below_what_the_process_holds_fails_at_once(graph_kd_dir, tmp_path):
    done = subprocess.run([sys.executable, "-m", "geokd", "analyze", "--teacher",
                           os.path.join(graph_kd_dir, "WideResNet28-1_0.pth"), os.path.join(graph_kd_dir, GKD_0),
                           "--memory-budget", "50MB", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "memory budget 50.0 MB too small" in done.stderr and "raise --memory-budget to at least" in done.stderr


def test_the_teacher_cache_removes_its_least_recently_used_entries(tmp_path):
    from geokd.analysis.teacher_cache import prune_cache

    for age, name in enumerate(["teacher-old", "teacher-mid", "teacher-new"]):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "a.npy").write_bytes(b"x" * 1000)
        (folder / "manifest.json").write_text("{}")
        os.utime(folder / "manifest.json", (1000 + age, 1000 + age))
    (tmp_path / "unrelated").mkdir()
    removed = prune_cache(tmp_path, max_bytes=2100, keep=[tmp_path / "teacher-old"])
    assert [p.name for p in removed] == ["teacher-mid"]   # the oldest is kept when asked, the next goes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher-new", "teacher-old", "unrelated"]
    assert prune_cache(tmp_path, max_bytes=10_000) == []


SHARDED_KNN = '''
import sys
import numpy as np, scipy.sparse as sp, torch, torch.distributed as dist
from geokd.graphs import knn_graph
from geokd.graphs.dataset_knn import KnnShard
sys.path.insert(0, sys.argv[1])
from test_analysis_scale import activations_like, stored
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()

def all_gather(tensor):
    out = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(out, tensor)
    return out

shard = KnnShard(rank=rank, world_size=world, all_gather=all_gather)
x, _ = activations_like()
import geokd.graphs.dataset_knn as dataset_knn
products = []
matmul_nt = dataset_knn._matmul_nt
dataset_knn._matmul_nt = lambda a, b, out=None: products.append(1) or matmul_nt(a, b, out=out)
knn_graph(x, k=10, chunk_size=256, shard=shard)
dataset_knn._matmul_nt = matmul_nt
open(f"{sys.argv[2]}/products-rank{rank}", "w").write(str(len(products)))
rows = stored(x, f"{sys.argv[2]}/store{rank}")
graphs = {"exact": knn_graph(x, k=10, chunk_size=256, shard=shard),
          "approximate": knn_graph(x, k=10, approximate=True, projection_dim=64, shard=shard),
          # Budgets differ between ranks (each sizes its blocks from what it has left): they
          # must agree on the smaller, or they would deal different blocks.
          "stored": knn_graph(rows, k=10, approximate=True, projection_dim=64,
                              memory_budget=x.nbytes * (2 + rank) // 3, shard=shard)}
for name, graph in graphs.items():
    sp.save_npz(f"{sys.argv[2]}/{name}-rank{rank}.npz", graph)
'''


@pytest.mark.slow
def test_one_graph_split_over_two_processes_is_the_graph_of_one(tmp_path):
    """The k-NN row blocks, candidate chunks and re-ranking groups of one network dealt over
    two gloo processes (torchrun): every rank ends with the single-process graph."""
    script = tmp_path / "sharded_knn.py"
    script.write_text(SHARDED_KNN)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), os.path.dirname(__file__), str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    x, _ = activations_like()
    alone = {"exact": knn_graph(x, k=10, chunk_size=256),
             "approximate": knn_graph(x, k=10, approximate=True, projection_dim=64),
             "stored": knn_graph(stored(x, tmp_path / "alone"), k=10, approximate=True, projection_dim=64,
                                 memory_budget=x.nbytes * 2 // 3)}
    # The exact scan of 3,000 rows in 256-row blocks: 12 * 13 / 2 = 78 block products, dealt 39 + 39.
    products = [int((tmp_path / f"products-rank{rank}").read_text()) for rank in (0, 1)]
    assert products == [39, 39]
    for name, graph in alone.items():
        for rank in (0, 1):
            shared = sp.load_npz(tmp_path / f"{name}-rank{rank}.npz")
            assert shared.nnz == graph.nnz, (name, rank)
            assert abs(shared - graph).max() < 1e-6, (name, rank)


SHARED_TEACHER = '''
import json, sys
import numpy as np
import geokd.analysis.distributed_analysis as distributed_analysis
import geokd.analysis.scale as scale
from geokd.analysis.distributed_analysis import analyze_across_ranks, joined_ranks
from geokd.analysis.pipeline import Network
from geokd.analysis.progress import ProgressReporter
sys.path.insert(0, sys.argv[1])
from test_analysis_scale import shared_teacher_inputs
# Below the limit the graphs come from the dense similarity; lowered, these 1,000 nodes take
# the path of a whole training split (k-NN graphs alone, the teacher's shared by the ranks).
scale.DENSE_LIMIT = distributed_analysis.DENSE_LIMIT = 500
teacher, students, images, labels, options = shared_teacher_inputs(sys.argv[2])
with joined_ranks(device="cpu") as ranks:
    lines = []
    result = analyze_across_ranks(teacher, students, images, labels, ranks=ranks, cache_dir=sys.argv[3],
                                  progress=ProgressReporter(write=lines.append), **options)
    if ranks.is_main:
        json.dump({"rows": result.result.rows, "lines": lines}, open(sys.argv[4], "w"))
'''


def shared_teacher_inputs(graph_kd_dir):
    from geokd.analysis.nodes import balanced_node_set
    from geokd.data import load_dataset

    data = load_dataset("cifar10", split="test")
    labels = data.labels.numpy()
    nodes = balanced_node_set(labels, per_class=100, seed=0)
    teacher = Network("teacher", "teacher", None, os.path.join(graph_kd_dir, "WideResNet28-1_0.pth"))
    students = [Network("gkd-0", "gkd", 0, os.path.join(graph_kd_dir, GKD_0))]
    options = dict(node_indices=np.arange(nodes.size), mean=MEAN, std=STD, k=10, heatmap_per_class=2)
    return teacher, students, data.images[nodes], labels[nodes], options


@pytest.mark.slow
def test_a_teacher_above_the_dense_limit_is_shared_by_the_ranks(graph_kd_dir, tmp_path, monkeypatch):
    """torchrun, 2 gloo ranks: both build the teacher's k-NN graphs together (each a share of
    the blocks), and rank 0's rows are those of one process."""
    import geokd.analysis.scale as scale

    script = tmp_path / "shared_teacher.py"
    script.write_text(SHARED_TEACHER)
    out = tmp_path / "rows.json"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), os.path.dirname(__file__), graph_kd_dir, str(tmp_path / "cache"), str(out)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    shared = json.loads(out.read_text())
    assert any("computed by all 2 ranks" in line for line in shared["lines"])
    monkeypatch.setattr(scale, "DENSE_LIMIT", 500)
    teacher, students, images, labels, options = shared_teacher_inputs(graph_kd_dir)
    alone = analyze_networks(teacher, students, images, labels, **options).rows
    key = lambda r: (r["network"], r["layer"], r["metric"])   # noqa: E731
    assert not any(r["metric"] == "aligned_distance" for r in alone)   # the path above the limit
    # To 1e-6: the ranks run on one thread each, whose eigensolvers round the spectra differently.
    assert {key(r): r["value"] for r in shared["rows"]} == pytest.approx({key(r): r["value"] for r in alone},
                                                                           rel=1e-6)
