"""The whole per-layer analysis of a teacher and its students, as tidy rows.

The teacher's activations, graphs, spectra, k-NN votes and low-frequency bases are
computed once and reused for every student; students are loaded one at a time, so memory
holds one student's node-set features at most.

Graph variants (``graphs=``, ``geokd analyze --graphs``): every variant's graphs of a layer
come from one float64 Gram product of that layer's features (one per layer and network,
beside the default graphs' float32 one, which keeps the default analysis' values as they
are), and every variant's metrics are added as rows named by the variant's ``graph``
(:mod:`geokd.analysis.variant_graphs`, :mod:`geokd.analysis.variant_metrics`).

Scale (:mod:`geokd.analysis.scale`, decided once per analysis): each layer's k-NN graph and
dense GKD graph ``Â`` come from one Gram product while the dense graphs fit (up to
``DENSE_LIMIT`` nodes, and within the memory budget), the k-NN graphs alone otherwise
(approximate above 20,000 nodes); above ``EXACT_SPECTRUM_LIMIT`` nodes the spectra are taken
on a fixed class-balanced subset (see :func:`spectral_subset`), every other metric on all
nodes. With ``store_dir`` every network's features go to an on-disk store
(:mod:`geokd.analysis.activation_store`) and every graph is built from blocks of it; when
the teacher's dense graphs do not fit the budget beside a student's, they wait there too, read
back in row blocks by the aligned distance. The whole CIFAR-10 training split (50,000 nodes), teacher and one
student: 3 minutes and 2.7 GB on 2 cores (``benchmarks/bench_analysis_scale.py``).

Progress and the teacher cache: every piece of work runs inside a stage of a
:class:`geokd.analysis.progress.ProgressReporter` (``features``, ``k-NN graphs``, ``spectra``,
``consistency``, ``smoothness``, ``distances``, ...), whose sums come back in
``AnalysisResult.timings``; with ``cache_dir`` the teacher's work (:class:`TeacherWork`) is
read from / written to :mod:`geokd.analysis.teacher_cache`, so the teacher is not run again
for new students on the same node set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from geokd.analysis.collect import Activations, collect_activations
from geokd.analysis._validate import CheckedGraph, check_graph
from geokd.analysis.consistency import knn_vote, linear_probe_predictions, output_agreement
from geokd.analysis.crossgraph import low_frequency_basis, signal_variation
from geokd.analysis.layer_graph import cosine_graphs, cosine_knn_graph, gkd_adjacency
from geokd.analysis.progress import ProgressReporter
from geokd.analysis.scale import ScalePlan, plan_scale, rows_at
from geokd.analysis.smoothness import smoothness_metrics
from geokd.analysis.spectral import aligned_distance, heat_trace_distance, lambda_distance, laplacian_spectrum
from geokd.analysis.graph_names import name_default_graphs
from geokd.analysis.tables import empty_row, make_row
from geokd.analysis.variant_graphs import check_variants, variant_graphs_of
from geokd.analysis.variant_metrics import student_measures, teacher_variant


@dataclass(frozen=True)
class Network:
    """A network to analyze: its identity in the tables and how to get it.

    ``source`` is an ``nn.Module``, or a path or network spec loadable by
    :func:`geokd.checkpoints.load_network` (``torchvision:resnet18?num_classes=10@w.pt``).
    """

    name: str
    method: str
    seed: int | None
    source: object = field(repr=False)

    def load(self, device) -> nn.Module:
        if isinstance(self.source, nn.Module):
            return self.source.to(device)
        from geokd.checkpoints import load_network

        return load_network(str(self.source), device=device)


@dataclass
class AnalysisResult:
    """Tidy metric rows, plus the GKD graphs of one small class-sorted batch for heat maps.

    ``timings`` maps each stage (``features``, ``k-NN graphs``, ``spectra``, ``consistency``,
    ...: :data:`geokd.analysis.progress.STAGES`) to its seconds summed over the networks.
    ``heatmaps`` maps ``"<network>/<layer>"`` to the batch's ``Â`` (float32 array);
    ``heatmap_labels`` are the batch's labels (same for every network).
    """

    rows: list[dict]
    heatmaps: dict[str, np.ndarray]
    heatmap_labels: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)   # seconds per stage, summed over networks
    teacher_cached: bool = False                               # the teacher's work was read from the cache


def heatmap_batch(node_labels: np.ndarray, *, per_class: int) -> np.ndarray:
    """Positions in the node set of the first ``per_class`` nodes of each class, class-sorted.

    Examples
    --------
    >>> heatmap_batch(np.array([1, 0, 1, 0, 0]), per_class=2).tolist()
    [1, 3, 0, 2]
    """
    chosen = [np.flatnonzero(node_labels == c)[:per_class] for c in np.unique(node_labels)]
    return np.concatenate(chosen)


@dataclass(frozen=True)
class LayerGraphs:
    """One layer of one network on the node set."""

    knn: CheckedGraph               # the cosine k-NN graph, checked once (analysis._validate)
    votes: np.ndarray               # leave-one-out k-NN vote of every node
    adjacency: torch.Tensor | None  # the dense GKD graph Â (None above DENSE_LIMIT nodes)
    spectrum: np.ndarray            # normalized-Laplacian eigenvalues of the k-NN graph (of the spectral subset)


# Up to scale.DENSE_LIMIT nodes (geokd.analysis.scale, which also weighs the memory budget) the dense
# GKD graphs Â are built, from the same Gram product as the k-NN graph, for the aligned distance:
# N² float32 each (400 MB at 10,000 nodes; the teacher's are kept for every layer).
# Above this many nodes the spectra (exact, dense O(N³) eigensolves: 70 s each at 10,000 nodes
# on 2 cores) are those of the k-NN graphs of a fixed class-balanced subset of the node set,
# SPECTRUM_PER_CLASS nodes per class (the paper's 1,000-node set on CIFAR-10).
EXACT_SPECTRUM_LIMIT = 3000
SPECTRUM_PER_CLASS = 100


def spectral_subset(node_labels: np.ndarray) -> np.ndarray | None:
    """Positions in the node set of the nodes the spectra are taken on (``None``: all of them).

    Examples
    --------
    >>> spectral_subset(np.repeat([0, 1], 100)) is None
    True
    >>> spectral_subset(np.repeat(np.arange(10), 400)).size
    1000
    """
    if node_labels.size <= EXACT_SPECTRUM_LIMIT:
        return None
    from geokd.analysis.nodes import balanced_node_set

    smallest = int(np.bincount(node_labels)[np.unique(node_labels)].min())
    return balanced_node_set(node_labels, per_class=min(SPECTRUM_PER_CLASS, smallest), seed=0)


def layer_graphs(features, labels: np.ndarray, *, k: int, num_classes: int, device,
                 name: str, subset: np.ndarray | None = None, progress: ProgressReporter | None = None,
                 network: str = "", layer: str = "", plan: ScalePlan | None = None) -> LayerGraphs:
    """Build everything the metrics of one layer need, once (``subset``: see :func:`spectral_subset`).

    ``features``: an ``(N, D)`` array or stored rows (:mod:`geokd.analysis.activation_store`,
    read in blocks). ``plan`` (:func:`geokd.analysis.scale.plan_scale`; default from ``N``
    alone) says whether the dense GKD graph is built and the k-NN graph approximate.
    ``progress`` times the ``k-NN graphs``, ``consistency`` (the k-NN votes) and ``spectra``
    stages of ``network`` at ``layer``.
    """
    from geokd.analysis.scale import APPROXIMATE_CANDIDATES

    progress = progress if progress is not None else ProgressReporter()
    plan = plan if plan is not None else plan_scale(num_nodes=features.shape[0], num_layers=1, memory_budget=None)
    with progress.stage(network, "k-NN graphs", detail=layer):
        if plan.dense:
            graphs = cosine_graphs(features, k=k, subset=subset, device=device, name=name,
                                   block=plan.block_rows(features, name=name))
            knn, adjacency, subset_knn = graphs.knn, graphs.adjacency, graphs.subset_knn
        else:
            knn = cosine_knn_graph(features, k=k, device=device, name=name, approximate=plan.approximate,
                                   candidates=APPROXIMATE_CANDIDATES if plan.approximate else None,
                                   memory_budget=plan.knn_budget(features, name=name), shard=plan.shard)
            adjacency = None
            subset_knn = None if subset is None else cosine_knn_graph(rows_at(features, subset), k=k, device=device,
                                                                      name=name)
        # Checked once here; the half-dozen metrics below take the CheckedGraph as it is.
        knn = check_graph(knn, name=name)
        spectral_knn = knn if subset is None else check_graph(subset_knn, name=name)
    with progress.stage(network, "consistency", detail=layer):
        votes = knn_vote(knn, labels, num_classes=num_classes, name=name)
    with progress.stage(network, "spectra", detail=layer):
        spectrum = laplacian_spectrum(spectral_knn, name=name)
    return LayerGraphs(knn=knn, votes=votes, adjacency=adjacency, spectrum=spectrum)


def _network_layer_rows(net: Network, layer: str, graphs: LayerGraphs, labels: np.ndarray,
                        final_predictions: np.ndarray, extra: dict) -> list[dict]:
    def row(metric, value):
        return make_row(network=net.name, method=net.method, seed=net.seed, layer=layer, metric=metric,
                        value=value, **extra)

    rows = [row(f"smoothness_{lap}", value)
            for lap, value in smoothness_metrics(graphs.knn, labels, name=layer).items()]
    rows.append(row("knn_accuracy", (graphs.votes == labels).mean()))
    rows.append(row("knn_agreement_own_output", (graphs.votes == final_predictions).mean()))
    return rows


def analyze_networks(teacher: Network, students: Sequence[Network], images: torch.Tensor, labels, *,
                     node_indices, mean, std, layers: Sequence[str] | None = None,
                     student_layers: Sequence[str] | None = None, k: int = 10,
                     num_eigenvectors: int = 10, linear_probe: bool = False, device="cpu",
                     batch_size: int = 500, node_set: str = "nodes", heatmap_per_class: int = 5,
                     graphs: Sequence = (),
                     on_network: Callable[[Network, list[dict]], None] | None = None,
                     progress: ProgressReporter | None = None, cache_dir=None, memory_budget: int | None = None,
                     store_dir=None, store_dtype: str = "float32", knn: str = "auto",
                     knn_shard=None) -> AnalysisResult:
    """All metrics, per sensing point, of ``teacher`` and every student, as tidy rows.

    Parameters
    ----------
    teacher, students : Network
    images : torch.Tensor
        ``(N, C, H, W)`` uint8 evaluation images (e.g. the whole test set); the output
        agreement uses all of them.
    labels : array-like of int, shape (N,)
    node_indices : array-like of int
        The node set (positions in ``images``) the graph metrics are measured on.
    mean, std : sequence of float
        The networks' input normalization.
    layers : sequence of str, optional
        The teacher's sensing points; default its ``sensing_points``.
    student_layers : sequence of str, optional
        The students' sensing points, compared with the teacher's by position (for
        students of another architecture); default the same names as ``layers``. Rows
        name a sensing point by the teacher's module name.
    k : int
        Neighbours of the cosine k-NN graphs.
    num_eigenvectors : int
        Teacher low-frequency eigenvectors carried to the student's graph.
    linear_probe : bool
        Also measure per-block consistency with a cross-validated linear probe (slower).
    node_set : str
        A label for the node set, stored in every row.
    heatmap_per_class : int
        Size per class of the batch whose GKD graphs are kept for heat maps (teacher and
        the first student of each method).
    graphs : sequence of GraphSpec or str
        Graph variants (names such as ``"cos-sym-k10-inter-p1"``) to measure every layer
        under too, each built on the node set as the GKD loss builds it (a student's graph
        takes the teacher's k-NN mask). Their rows carry the variant's name in ``graph``;
        the default analysis' rows name their own graph
        (:mod:`geokd.analysis.graph_names`) and are the same with or without variants.
    on_network : callable, optional
        Called as ``on_network(network, rows_so_far)`` when a network is done (to report
        progress or save partial results).
    progress : ProgressReporter, optional
        Times every stage of every network (and, given its ``write``, reports as it goes);
        default a silent one. The stage times come back in ``AnalysisResult.timings``.
    cache_dir : str or path, optional
        Keep the teacher's work (its rows, k-NN graphs, votes, GKD graphs, spectra,
        low-frequency bases, probe and decisions) in this folder, keyed by the node set, the
        settings and a hash of the teacher's weights (:mod:`geokd.analysis.teacher_cache`),
        and read it from there when it is already present: the teacher is then not run.
        ``None`` (default): no cache. Not used with graph ``variants``.
    memory_budget : int, optional
        Bytes of resident memory the whole process may hold (``geokd analyze`` default:
        4 GB); ``None``: unbounded. Decides whether the dense GKD graphs (aligned distance)
        fit and sizes the blocks the stored features are read in
        (:mod:`geokd.analysis.scale`); work that cannot fit is a ``MemoryBudgetError``.
    store_dir : str or path, optional
        Write every network's node features to an on-disk store in this folder (one
        sub-folder per network, removed when its metrics are done) and compute every
        metric from blocks of it, instead of holding them in memory.
    store_dtype : {"float32", "float16"}
        Precision of the stored features.
    knn : {"auto", "exact", "approximate"}
        The k-NN graphs: ``auto`` is exact up to 20,000 nodes, approximate above.
    knn_shard : geokd.graphs.dataset_knn.KnnShard, optional
        Build every k-NN graph that does not come from a dense similarity together with the
        other processes of a job (each calls this with the same networks and its own rank);
        every rank gets every graph (see :mod:`geokd.analysis.distributed_analysis`).

    Returns
    -------
    AnalysisResult
        ``rows`` with ``network, method, seed, layer, metric, value, node_set, k, graph``
        (and ``note`` where a value is left empty or a variant leaves nodes without
        edges), the heat-map graphs and the time per stage.
    """
    from geokd.graphs.spec_names import parse_graph_names

    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (images.shape[0],):
        raise ValueError(f"expected one label per image ({images.shape[0]}), got labels of shape {labels.shape}")
    nodes = np.asarray(node_indices, dtype=np.int64)
    node_labels = labels[nodes]
    # Checked before any network is loaded: a wrong name or a k too large fails at once.
    variants = parse_graph_names(graphs, where="graph variants") if len(graphs) else ()
    check_variants(variants, num_nodes=nodes.size)
    num_classes = int(labels.max()) + 1
    extra = {"node_set": node_set, "k": int(k)}
    batch = heatmap_batch(node_labels, per_class=heatmap_per_class)
    heatmaps: dict[str, np.ndarray] = {}

    progress = progress if progress is not None else ProgressReporter()
    if progress.num_networks is None:
        progress.num_networks = 1 + len(students)

    def keep_heatmaps(net: Network, acts: Activations) -> dict[str, np.ndarray]:
        kept = {}
        with progress.stage(net.name, "heatmaps"):
            for layer in acts.layers:
                kept[f"{net.name}/{layer}"] = gkd_adjacency(
                    rows_at(acts.features[layer], batch), device=device, name=f"{net.name} {layer}").cpu().numpy()
        heatmaps.update(kept)
        return kept
    collect_kw = dict(node_indices=nodes, mean=mean, std=std, batch_size=batch_size, device=device,
                      progress=progress)

    with progress.network(teacher.name) as teacher_timer:
        with progress.stage(teacher.name, "loading"):
            teacher_model = teacher.load(device)
        layers = tuple(layers or getattr(teacher_model, "sensing_points", ()) or ())
        if not layers:
            raise ValueError(f"teacher {teacher.name}: expected layer names (--layers) for a "
                             f"{type(teacher_model).__name__}, which has no sensing_points; "
                             "`geokd layers NETWORK` lists the names")
        student_layers = tuple(student_layers) if student_layers is not None else layers
        if len(student_layers) != len(layers):
            raise ValueError(f"expected as many student layers as teacher layers (compared by position), got "
                             f"{len(student_layers)} ({', '.join(student_layers)}) for {len(layers)} "
                             f"({', '.join(layers)})")
        plan = plan_scale(num_nodes=nodes.size, num_layers=len(layers), memory_budget=memory_budget,
                          store_dir=store_dir, store_dtype=store_dtype, knn=knn, shard=knn_shard)
        if not plan.dense and plan.dense_note and memory_budget is not None:
            progress.message(f"aligned distance left out: {plan.dense_note}")
        subset = spectral_subset(node_labels)
        spectral_extra = extra if subset is None else {**extra, "node_set": f"{node_set}/spectral-{subset.size}nodes"}
        settings = dict(layers=layers, k=k, num_eigenvectors=num_eigenvectors, linear_probe=linear_probe,
                        extra=extra, batch=batch, subset=subset, plan=plan)
        work, entry = None, None
        if cache_dir is not None and not variants:
            from geokd.analysis.teacher_cache import cache_entry, read_teacher_work

            with progress.stage(teacher.name, "teacher cache"):
                entry = cache_entry(cache_dir, teacher=teacher, model=teacher_model, images=images, labels=labels,
                                    nodes=nodes, mean=mean, std=std, batch_size=batch_size, device=device,
                                    heatmap_per_class=heatmap_per_class, **settings)
                work = read_teacher_work(entry, warn=progress.message)
            if work is not None:
                teacher_timer.typical = False   # its time says nothing of a student's
                progress.message(f"{teacher.name}: cached (features, k-NN graphs, spectra and rows read from "
                                 f"{entry.folder})")
        graph_store = plan.store_for(".teacher-graphs") if plan.teacher_graphs_on_disk else None
        if work is None:
            work = _teacher_work(teacher, teacher_model, images, labels, node_labels, collect_kw=collect_kw,
                                 num_classes=num_classes, variants=variants, progress=progress,
                                 keep_heatmaps=keep_heatmaps, graph_store=graph_store, **settings)
            if entry is not None:
                from geokd.analysis.teacher_cache import prune_cache, write_teacher_work

                with progress.stage(teacher.name, "teacher cache"):
                    write_teacher_work(entry, work)
                    for folder in prune_cache(cache_dir, keep=[entry.folder]):
                        progress.message(f"teacher cache: removed the least recently used entry {folder}")
        else:
            heatmaps.update(work.heatmaps)
            for layer, (graphs, *rest) in work.layers.items():   # the cached graphs, mapped from the cache
                work.layers[layer] = (_adjacency_moved(graphs, graph_store, layer, device=device), *rest)
        del teacher_model
    try:
        return _students_of(work, teacher, students, images, labels, layers, student_layers, nodes, node_labels,
                            collect_kw=collect_kw, k=k, num_classes=num_classes, linear_probe=linear_probe,
                            extra=extra, spectral_extra=spectral_extra, subset=subset, progress=progress, plan=plan,
                            keep_heatmaps=keep_heatmaps, heatmaps=heatmaps, batch=batch, on_network=on_network,
                            teacher_cached=entry is not None and work.cached)
    finally:
        if graph_store is not None:
            graph_store.remove()


def _adjacency_moved(graphs: LayerGraphs, store, layer: str, *, device) -> LayerGraphs:
    """``graphs`` with the teacher's dense graph moved to ``store`` (the aligned distance reads it
    back in row blocks: memory then holds no teacher graph), or to ``device`` when there is no store."""
    from dataclasses import replace

    adjacency = graphs.adjacency
    if adjacency is None or not isinstance(adjacency, (np.ndarray, torch.Tensor)):
        return graphs
    if store is None:
        return replace(graphs, adjacency=torch.as_tensor(np.array(adjacency) if isinstance(adjacency, np.ndarray)
                                                         else adjacency).to(device))
    n = adjacency.shape[0]
    writer = store.writer(layer, num_rows=n, width=n, label=f"teacher graph {layer}")
    for start in range(0, n, 1024):
        chunk = adjacency[start:start + 1024]
        chunk = chunk.cpu().numpy() if isinstance(chunk, torch.Tensor) else np.asarray(chunk)
        writer.write(np.arange(start, start + chunk.shape[0]), np.asarray(chunk, dtype=np.float32))
    return replace(graphs, adjacency=writer.finish())


def _students_of(work, teacher, students, images, labels, layers, student_layers, nodes, node_labels, *,
                 collect_kw, k, num_classes, linear_probe, extra, spectral_extra, subset, progress, plan,
                 keep_heatmaps, heatmaps, batch, on_network, teacher_cached) -> AnalysisResult:
    rows = list(work.rows)
    teacher_layers, t_all = work.layers, work.predictions
    if on_network:
        on_network(teacher, rows)

    methods_shown = set()
    for student in students:
        show = student.method not in methods_shown
        methods_shown.add(student.method)
        with progress.network(student.name):
            rows += _student_rows(student, images, labels, dict(zip(layers, student_layers)), teacher_layers, t_all,
                                  nodes, collect_kw=collect_kw, k=k, num_classes=num_classes,
                                  linear_probe=linear_probe, extra=extra, spectral_extra=spectral_extra,
                                  subset=subset, progress=progress, plan=plan,
                                  on_activations=keep_heatmaps if show else None)
        if on_network:
            on_network(student, rows)
    name_default_graphs(rows, k=k)
    return AnalysisResult(rows=rows, heatmaps=heatmaps, heatmap_labels=node_labels[batch],
                          timings=dict(progress.timings), teacher_cached=teacher_cached)


@dataclass
class TeacherWork:
    """The teacher's part of an analysis, computed once per node set (and cached on disk).

    ``layers`` maps each sensing point to ``(LayerGraphs, low-frequency basis, probe
    predictions or None, variants)``; ``predictions`` are the teacher's decisions on every
    input, ``rows`` its metric rows, ``heatmaps`` its heat-map graphs.
    """

    rows: list[dict]
    layers: dict[str, tuple]
    predictions: np.ndarray
    heatmaps: dict[str, np.ndarray]
    cached: bool = False


def _collect(net: Network, model, images, layers, collect_kw, progress: ProgressReporter, store=None) -> Activations:
    with progress.stage(net.name, "features", total=int(images.shape[0]), unit="images") as stage:
        return collect_activations(model, images, layers=layers, description=net.name, on_batch=stage.advance,
                                   store=store, **{**collect_kw, "progress": False})


def _teacher_work(teacher: Network, model, images, labels, node_labels, *, layers, k, num_eigenvectors,
                  linear_probe, extra, batch, subset, collect_kw, num_classes, variants, progress,
                  keep_heatmaps, plan: ScalePlan, graph_store=None) -> TeacherWork:
    store = plan.store_for(teacher.name)
    try:
        return _teacher_work_from(teacher, _collect(teacher, model, images, layers, collect_kw, progress, store),
                                  labels, node_labels, layers=layers, k=k, num_eigenvectors=num_eigenvectors,
                                  linear_probe=linear_probe, extra=extra, subset=subset, device=collect_kw["device"],
                                  num_classes=num_classes, variants=variants, progress=progress,
                                  keep_heatmaps=keep_heatmaps, plan=plan, graph_store=graph_store)
    finally:
        if store is not None:
            store.remove()   # its features are spent: the graphs hold what the students need


def _teacher_work_from(teacher: Network, t_acts: Activations, labels, node_labels, *, layers, k, num_eigenvectors,
                       linear_probe, extra, subset, device, num_classes, variants, progress, keep_heatmaps,
                       plan: ScalePlan, graph_store=None) -> TeacherWork:
    t_final = t_acts.node_predictions
    kept = keep_heatmaps(teacher, t_acts)
    rows = [make_row(network=teacher.name, method=teacher.method, seed=teacher.seed, layer="output",
                     metric="test_error", value=100.0 * (t_acts.predictions != labels).mean(), **extra)]
    teacher_layers: dict[str, tuple[LayerGraphs, np.ndarray, np.ndarray, dict]] = {}
    for index, layer in enumerate(layers):
        with progress.layer(teacher.name, layer, index=index, count=len(layers)):
            graphs = layer_graphs(t_acts.features[layer], node_labels, k=k, num_classes=num_classes,
                                  device=device, name=f"{teacher.name} {layer}", subset=subset,
                                  progress=progress, network=teacher.name, layer=layer, plan=plan)
            if graph_store is not None:
                graphs = _adjacency_moved(graphs, graph_store, layer, device=device)
            with progress.stage(teacher.name, "spectra", detail=layer):
                eigenvalues, basis = low_frequency_basis(graphs.knn, num_eigenvectors=num_eigenvectors, name=layer)
            probe = None
            if linear_probe:
                with progress.stage(teacher.name, "probe", detail=layer):
                    probe = linear_probe_predictions(plan.whole(t_acts.features[layer], what=f"{teacher.name} "
                                                                    f"{layer}: the linear probe"),
                                                     node_labels, name=layer)
            with progress.stage(teacher.name, "smoothness", detail=layer):
                rows += _network_layer_rows(teacher, layer, graphs, node_labels, t_final, extra)
            rows.append(make_row(network=teacher.name, method=teacher.method, seed=teacher.seed, layer=layer,
                                 metric="cross_graph_variation", value=eigenvalues.mean(), **extra))
            if probe is not None:
                rows.append(make_row(network=teacher.name, method=teacher.method, seed=teacher.seed, layer=layer,
                                     metric="probe_accuracy", value=(probe == node_labels).mean(), **extra))
            name_default_graphs(rows, k=k)
            t_variants = {}
            if variants:
                name = f"{teacher.name} {layer}"
                with progress.stage(teacher.name, "variants", detail=layer):
                    features = plan.whole(t_acts.features[layer], what=f"{name}: the graph variants")
                    for graph_name, graph in variant_graphs_of(features, node_labels, variants,
                                                               device=device, name=name).items():
                        t_variants[graph_name] = teacher_variant(graph, node_labels,
                                                                 num_eigenvectors=num_eigenvectors, name=name)
                        rows += _variant_rows(teacher, layer, graph_name, t_variants[graph_name].measures, rows,
                                              extra)
            teacher_layers[layer] = (graphs, basis, probe, t_variants)
    return TeacherWork(rows=rows, layers=teacher_layers, predictions=t_acts.predictions, heatmaps=kept)





def _student_rows(student, images, labels, layer_map, teacher_layers, teacher_all, nodes, *,
                  collect_kw, k, num_classes, linear_probe, extra, spectral_extra, subset, progress,
                  plan: ScalePlan, on_activations=None):
    """``layer_map``: the teacher's sensing point -> the student's module at that position."""
    store = plan.store_for(student.name)
    try:
        return _student_rows_in(student, images, labels, layer_map, teacher_layers, teacher_all, nodes,
                                collect_kw=collect_kw, k=k, num_classes=num_classes, linear_probe=linear_probe,
                                extra=extra, spectral_extra=spectral_extra, subset=subset, progress=progress,
                                plan=plan, store=store, on_activations=on_activations)
    finally:
        if store is not None:
            store.remove()


def _student_rows_in(student, images, labels, layer_map, teacher_layers, teacher_all, nodes, *,
                     collect_kw, k, num_classes, linear_probe, extra, spectral_extra, subset, progress,
                     plan: ScalePlan, store, on_activations=None):
    node_labels = labels[nodes]
    t_final = teacher_all[nodes]
    device = collect_kw["device"]
    with progress.stage(student.name, "loading"):
        model = student.load(device)
    own = _collect(student, model, images, tuple(layer_map.values()), collect_kw, progress, store)
    del model
    # Keyed by the teacher's names from here on: a sensing point is compared by position.
    layers = tuple(layer_map)
    acts = Activations(layers=layers, features={t: own.features[s] for t, s in layer_map.items()},
                       node_indices=own.node_indices, predictions=own.predictions)
    if on_activations:
        on_activations(student, acts)

    def row(layer, metric, value, columns=extra):
        return make_row(network=student.name, method=student.method, seed=student.seed, layer=layer,
                        metric=metric, value=value, **columns)

    with progress.stage(student.name, "consistency"):
        rows = [row("output", "test_error", 100.0 * (acts.predictions != labels).mean())]
        for metric, value in output_agreement(acts.predictions, teacher_all, labels, name=student.name).items():
            if metric in ("agreement", "agreement_teacher_right", "agreement_teacher_wrong"):
                rows.append(row("output", metric, value))
    for index, layer in enumerate(layers):
        with progress.layer(student.name, layer, index=index, count=len(layers)):
            rows += _student_layer_rows(student, layer, acts, teacher_layers[layer], row, node_labels, t_final,
                                        device=device, k=k, num_classes=num_classes, linear_probe=linear_probe,
                                        extra=extra, spectral_extra=spectral_extra, subset=subset,
                                        progress=progress, rows_so_far=rows, plan=plan)
    return rows


def _student_layer_rows(student, layer, acts, teacher_layer, row, node_labels, t_final, *, device, k, num_classes,
                        linear_probe, extra, spectral_extra, subset, progress, rows_so_far, plan: ScalePlan):
    t_graphs, t_basis, t_probe, t_variants = teacher_layer
    name = f"{student.name} {layer}"
    graphs = layer_graphs(acts.features[layer], node_labels, k=k, num_classes=num_classes,
                          device=device, name=name, subset=subset, progress=progress,
                          network=student.name, layer=layer, plan=plan)
    rows = []
    with progress.stage(student.name, "smoothness", detail=layer):
        rows += _network_layer_rows(student, layer, graphs, node_labels, acts.node_predictions, extra)
    with progress.stage(student.name, "consistency", detail=layer):
        rows.append(row(layer, "knn_agreement_teacher_block", (graphs.votes == t_graphs.votes).mean()))
        rows.append(row(layer, "knn_agreement_teacher_output", (graphs.votes == t_final).mean()))
    with progress.stage(student.name, "distances", detail=layer):
        if graphs.adjacency is not None:
            rows.append(row(layer, "aligned_distance",
                            aligned_distance(t_graphs.adjacency, graphs.adjacency, name=name)))
        rows.append(row(layer, "lambda_distance", lambda_distance(t_graphs.spectrum, graphs.spectrum, name=name),
                        spectral_extra))
        rows.append(row(layer, "heat_trace_distance",
                        heat_trace_distance(t_graphs.spectrum, graphs.spectrum, name=name), spectral_extra))
        rows.append(row(layer, "cross_graph_variation", signal_variation(t_basis, graphs.knn, name=name).mean()))
    if linear_probe:
        with progress.stage(student.name, "probe", detail=layer):
            probe = linear_probe_predictions(plan.whole(acts.features[layer], what=f"{name}: the linear probe"),
                                             node_labels, name=name)
            rows.append(row(layer, "probe_accuracy", (probe == node_labels).mean()))
            rows.append(row(layer, "probe_agreement_teacher_block", (probe == t_probe).mean()))
    name_default_graphs(rows, k=k)
    if t_variants:
        masks = {graph_name: tv.knn_mask for graph_name, tv in t_variants.items()}
        specs = [tv.spec for tv in t_variants.values()]
        with progress.stage(student.name, "variants", detail=layer):
            features = plan.whole(acts.features[layer], what=f"{name}: the graph variants")
            for graph_name, graph in variant_graphs_of(features, node_labels, specs, masks=masks,
                                                       device=device, name=name).items():
                measures = student_measures(graph, t_variants[graph_name], node_labels, name=name)
                rows += _variant_rows(student, layer, graph_name, measures, rows_so_far + rows, extra)
    return rows


def _variant_rows(net: Network, layer: str, graph_name: str, measures, rows_so_far: list[dict],
                  extra: dict) -> list[dict]:
    """Rows of one network's measures at ``layer`` under a variant; a measure the default
    analysis already made on the same graph (e.g. the aligned distance on the paper's graph)
    is not repeated."""
    done = {(r["layer"], r["metric"], r.get("graph")) for r in rows_so_far if r["network"] == net.name}
    out = []
    for measure in measures:
        if (layer, measure.metric, graph_name) in done:
            continue
        columns = dict(network=net.name, method=net.method, seed=net.seed, layer=layer, metric=measure.metric,
                       **extra, graph=graph_name)
        if measure.value is None:
            out.append(empty_row(**columns, note=measure.note))
        else:
            out.append({**make_row(value=measure.value, **columns), **({"note": measure.note} if measure.note else {})})
    return out
