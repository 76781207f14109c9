"""The teacher's work of an analysis, kept on disk and read back for the next students.

What a teacher contributes to an analysis (its metric rows, per sensing point its checked
k-NN graph, k-NN votes, dense GKD graph, spectrum, low-frequency basis and probe, its
decisions on every input and its heat-map graphs) depends only on the teacher's weights,
the inputs, the node set and the settings. :func:`cache_entry` names a folder for it,
``<cache_dir>/teacher-<key>``, where ``key`` is the sha256 of:

- the teacher's weights (every state-dict entry's name, dtype, shape and bytes) and class;
- the images, labels and node indices (their bytes), the input normalization;
- ``k``, ``num_eigenvectors``, the layers, the linear probe, the heat-map batch, the spectral
  subset, the node-set label and the teacher's name (both are written in its rows), the
  batch size and device (the forward pass's rounding), the analysis' size limits and
  :data:`CACHE_FORMAT`.

The folder is written as the dataset cache is (:func:`geokd.data.cache.write_arrays`: ``.npy``
arrays plus a ``manifest.json`` with each file's sha256 and size, staged under a temporary name
and renamed into place). Reading re-checks every file: a missing, truncated or edited entry is
never used, the reader is told why (``warn``) and the work is computed again, then rewritten.

The default folder is ``$GEOKD_ANALYSIS_CACHE`` if set, else ``<cache>/analysis``
(``<cache>``: ``$GEOKD_CACHE`` or ``~/.cache/geokd``); the test suite points
``$GEOKD_ANALYSIS_CACHE`` at a temporary folder so that it never fills a user's cache.

Examples
--------
>>> isinstance(default_cache_dir(), Path)
True
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

CACHE_FORMAT = 1
MANIFEST = "manifest.json"


ANALYSIS_CACHE_ENV = "GEOKD_ANALYSIS_CACHE"


def default_cache_dir() -> Path:
    """``$GEOKD_ANALYSIS_CACHE``, else ``<cache>/analysis`` (``<cache>``: ``$GEOKD_CACHE`` or ``~/.cache/geokd``)."""
    from geokd.data.cache import cache_root

    env = os.environ.get(ANALYSIS_CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else cache_root() / "analysis"


def weights_digest(state_dict) -> str:
    """sha256 of a state dict: every entry's name, dtype, shape and bytes, in order.

    Examples
    --------
    >>> a = {"w": torch.ones(3)}
    >>> b = {"w": torch.tensor([1.0, 1.0, 1.0 + 1e-6])}
    >>> weights_digest(a) == weights_digest({"w": torch.ones(3)}), weights_digest(a) == weights_digest(b)
    (True, False)
    """
    h = hashlib.sha256()
    for name, tensor in state_dict.items():
        tensor = torch.as_tensor(tensor).detach().cpu().contiguous()
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _array_digest(array) -> str:
    array = np.ascontiguousarray(array.numpy() if isinstance(array, torch.Tensor) else np.asarray(array))
    h = hashlib.sha256(f"{array.dtype}|{array.shape}|".encode())
    h.update(memoryview(array).cast("B"))
    return h.hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    """Where one teacher's work lives (``folder``) and what it was keyed by (``key``, ``settings``)."""

    folder: Path
    key: str
    settings: dict


def cache_entry(cache_dir, *, teacher, model, images, labels, nodes, mean, std, layers, k, num_eigenvectors,
                linear_probe, extra, batch, subset, batch_size, device, heatmap_per_class, plan) -> CacheEntry:
    """The cache folder of this teacher on this node set with these settings (see the module)."""
    from geokd.analysis import pipeline, scale

    settings = {
        "format": CACHE_FORMAT,
        "teacher": {"name": teacher.name, "method": teacher.method, "seed": teacher.seed,
                    "class": f"{type(model).__module__}.{type(model).__qualname__}",
                    "weights_sha256": weights_digest(model.state_dict())},
        "images_sha256": _array_digest(images), "labels_sha256": _array_digest(np.asarray(labels, dtype=np.int64)),
        "nodes_sha256": _array_digest(np.asarray(nodes, dtype=np.int64)), "num_nodes": int(np.asarray(nodes).size),
        "mean": [float(v) for v in mean], "std": [float(v) for v in std],
        "layers": list(layers), "k": int(k), "num_eigenvectors": int(num_eigenvectors),
        "linear_probe": bool(linear_probe), "extra": {key: extra[key] for key in sorted(extra)},
        "heatmap_batch_sha256": _array_digest(np.asarray(batch, dtype=np.int64)),
        "heatmap_per_class": int(heatmap_per_class),
        "subset_sha256": None if subset is None else _array_digest(np.asarray(subset, dtype=np.int64)),
        "batch_size": int(batch_size), "device": str(torch.device(device)),
        "limits": [scale.DENSE_LIMIT, pipeline.EXACT_SPECTRUM_LIMIT, pipeline.SPECTRUM_PER_CLASS],
        "scale": plan.key(),
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return CacheEntry(folder=Path(cache_dir) / f"teacher-{key[:32]}", key=key, settings=settings)


def _arrays_of(work) -> tuple[dict[str, np.ndarray], dict]:
    arrays = {"predictions": np.asarray(work.predictions)}
    layout = {"layers": [], "heatmaps": list(work.heatmaps)}
    for i, name in enumerate(work.heatmaps):
        arrays[f"heatmap{i}"] = work.heatmaps[name]
    for i, (layer, (graphs, basis, probe, variants)) in enumerate(work.layers.items()):
        if variants:
            raise ValueError(f"teacher cache: expected no graph variants, got {len(variants)} at {layer!r}")
        knn = graphs.knn.matrix
        arrays.update({f"l{i}_knn_data": knn.data, f"l{i}_knn_indices": knn.indices,
                       f"l{i}_knn_indptr": knn.indptr, f"l{i}_votes": graphs.votes,
                       f"l{i}_spectrum": graphs.spectrum, f"l{i}_basis": basis})
        if graphs.adjacency is not None:   # in memory, or stored rows (geokd.analysis.activation_store)
            adjacency = graphs.adjacency
            arrays[f"l{i}_adjacency"] = adjacency if hasattr(adjacency, "to_array") else adjacency.cpu().numpy()
        if probe is not None:
            arrays[f"l{i}_probe"] = probe
        layout["layers"].append({"name": layer, "num_nodes": int(knn.shape[0]),
                                 "adjacency": graphs.adjacency is not None, "probe": probe is not None})
    return arrays, layout


class _OneAtATime(dict):
    """Arrays handed to ``write_arrays`` one at a time: stored rows (a teacher graph on disk) are
    read into memory only while they are being saved, not all layers' at once."""

    def items(self):
        for key, value in super().items():
            yield key, value.to_array() if hasattr(value, "to_array") else value


def write_teacher_work(entry: CacheEntry, work) -> Path:
    """Store ``work`` (a ``pipeline.TeacherWork``) in ``entry.folder``, atomically; replaces a bad entry."""
    from geokd.data.cache import write_arrays

    arrays, layout = _arrays_of(work)
    if entry.folder.exists() and _problem(entry) is not None:
        shutil.rmtree(entry.folder, ignore_errors=True)
    write_arrays(entry.folder, "teacher cache", _OneAtATime(arrays),
                 info={"key": entry.key, "settings": entry.settings, "layout": layout, "rows": work.rows})
    return entry.folder


def _problem(entry: CacheEntry) -> str | None:
    """Why ``entry`` cannot be used (``None``: its manifest and every file check out)."""
    from geokd.data.cache import MANIFEST_FORMAT, file_digest

    path = entry.folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return f"{path} is missing"
    except (OSError, ValueError) as exc:
        return f"{path} is not valid JSON ({exc})"
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or manifest.get("key") != entry.key:
        return f"{path} is not a teacher cache manifest with key {entry.key[:12]}"
    for filename, recorded in manifest.get("files", {}).items():
        file = entry.folder / filename
        if not file.is_file():
            return f"{file} is missing"
        if file.stat().st_size != recorded["size"]:
            return f"{file} has {file.stat().st_size} bytes, the manifest recorded {recorded['size']}"
        digest = file_digest(file)
        if digest != recorded["sha256"]:
            return f"{file} has sha256 {digest[:12]}, the manifest recorded {recorded['sha256'][:12]} (checksum mismatch)"
    return None


def read_teacher_work(entry: CacheEntry, *, warn=None):
    """The cached ``pipeline.TeacherWork`` of ``entry``, or ``None`` (absent, or bad: ``warn(reason)``)."""
    from geokd.analysis._validate import check_graph
    from geokd.analysis.pipeline import LayerGraphs, TeacherWork

    if not entry.folder.exists():
        return None
    problem = _problem(entry)
    if problem is not None:
        if warn is not None:
            warn(f"warning: teacher cache entry {entry.folder} not used: {problem}; computing the teacher's work again")
        return None
    manifest = json.loads((entry.folder / MANIFEST).read_text())

    def load(key, mmap_mode=None):
        return np.load(entry.folder / f"{key}.npy", allow_pickle=False, mmap_mode=mmap_mode)

    layout = manifest["layout"]
    layers = {}
    for i, layer in enumerate(layout["layers"]):
        n = layer["num_nodes"]
        knn = sp.csr_matrix((load(f"l{i}_knn_data"), load(f"l{i}_knn_indices"), load(f"l{i}_knn_indptr")), shape=(n, n))
        # Mapped, not read: the pipeline moves it to memory or to its store one layer at a time.
        adjacency = load(f"l{i}_adjacency", mmap_mode="r") if layer["adjacency"] else None
        graphs = LayerGraphs(knn=check_graph(knn, name=layer["name"]), votes=load(f"l{i}_votes"),
                             adjacency=adjacency, spectrum=load(f"l{i}_spectrum"))
        layers[layer["name"]] = (graphs, load(f"l{i}_basis"), load(f"l{i}_probe") if layer["probe"] else None, {})
    heatmaps = {name: load(f"heatmap{i}") for i, name in enumerate(layout["heatmaps"])}
    os.utime(entry.folder / MANIFEST)   # used now: the last entry prune_cache would remove
    return TeacherWork(rows=manifest["rows"], layers=layers, predictions=load("predictions"), heatmaps=heatmaps,
                       cached=True)


#: Default size of the teacher cache (``$GEOKD_ANALYSIS_CACHE_MAX``, e.g. ``50GB``, overrides it).
CACHE_MAX_BYTES = 20 * 2 ** 30
CACHE_MAX_ENV = "GEOKD_ANALYSIS_CACHE_MAX"


def prune_cache(cache_dir, *, max_bytes: int | None = None, keep=()) -> list[Path]:
    """Remove the least recently used teacher entries of ``cache_dir`` until it holds at most
    ``max_bytes`` (default ``$GEOKD_ANALYSIS_CACHE_MAX``, else 20 GB); entries in ``keep``
    stay. One entry is 1.2 GB at 10,000 nodes, so without this the cache only grows.

    Returns the folders removed, oldest first.

    Examples
    --------
    >>> import tempfile
    >>> prune_cache(tempfile.mkdtemp(), max_bytes=0)
    []
    """
    from geokd.analysis.memory_budget import parse_bytes

    if max_bytes is None:
        env = os.environ.get(CACHE_MAX_ENV, "").strip()
        max_bytes = parse_bytes(env) if env else CACHE_MAX_BYTES
    entries = []
    for folder in Path(cache_dir).glob("teacher-*"):
        manifest = folder / MANIFEST
        if folder.is_dir() and manifest.is_file():
            size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
            entries.append((manifest.stat().st_mtime, folder, size))
    entries.sort()
    total = sum(size for _, _, size in entries)
    kept = {Path(k).resolve() for k in keep}
    removed = []
    for _, folder, size in entries:
        if total <= max_bytes:
            break
        if folder.resolve() in kept:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        total -= size
        removed.append(folder)
    return removed
