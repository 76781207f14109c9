"""An analysis study file (TOML): which networks, which data, which node set and graphs.

Example (``analysis/released_checkpoints.toml``)::

    [networks]
    teacher = "$GEOKD_RELEASED_DIR/WideResNet28-1_0.pth"
    students = ["$GEOKD_RELEASED_DIR/GKD_*.pth", "$GEOKD_RELEASED_DIR/RKD_*.pth"]
    [data]
    dataset = "cifar10"
    split = "test"
    mean = [0.4914, 0.4822, 0.4465]
    std = [0.2023, 0.1994, 0.2010]
    [nodes]
    per_class = 100   # or 0 for the whole split
    seed = 0
    output_on = "all" # output agreement on the whole split, or "nodes" (faster)
    [graph]
    k = 10
    num_eigenvectors = 10
    variants = ["cos-sym-full-all-p1", "cos-sym-k10-inter-p1"]  # optional: GraphSpec names

Relative paths are relative to the study file; ``$VARS`` are expanded, and one that is not
set is an error naming it. ``$GEOKD_RELEASED_DIR`` is the folder of the GKD authors' released
networks (:func:`geokd.checkpoints.released.released_dir`: the variable, ``geokd
--released-dir DIR``, or ``../shared/graph_kd`` beside the checkout when that exists).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from geokd.checkpoints.released import RELEASED_DIR_ENV, expand_variables
from geokd.errors import ConfigError
from geokd.models.specs import is_network_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_ALLOWED = {
    "networks": {"teacher", "students"},
    "data": {"dataset", "split", "mean", "std", "image_size"},
    "nodes": {"per_class", "seed", "output_on"},
    "graph": {"k", "num_eigenvectors", "layers", "student_layers", "linear_probe", "variants"},
}


@dataclass
class Study:
    """Settings of one analysis; every field has the command line's default."""

    teacher: str | None = None
    students: list[str] = field(default_factory=list)
    dataset: str = "cifar10"
    split: str = "test"
    mean: list[float] | None = None
    std: list[float] | None = None
    image_size: int | None = None
    per_class: int = 100
    node_seed: int = 0
    output_on: str = "all"
    k: int = 10
    num_eigenvectors: int = 10
    layers: list[str] | None = None
    student_layers: list[str] | None = None
    linear_probe: bool = False
    variants: list[str] = field(default_factory=list)


def _dataset_from(name, *, base: str):
    """``imagefolder:PATH`` relative to the study's folder, as its networks' paths are."""
    prefix = "imagefolder:"
    if isinstance(name, str) and name.startswith(prefix):
        path = os.path.expanduser(name[len(prefix):])
        return prefix + (path if os.path.isabs(path) else os.path.normpath(os.path.join(base, path)))
    return name


def load_study(path: str) -> Study:
    """Read and validate a study TOML file (unknown sections or keys are errors)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"expected a study file at {path}, found nothing")
    with open(path, "rb") as handle:
        try:
            raw = tomllib.load(handle)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for section, values in raw.items():
        if section not in _ALLOWED or not isinstance(values, dict):
            raise ConfigError(f"{path}: unknown section [{section}] (expected {sorted(_ALLOWED)})")
        unknown = set(values) - _ALLOWED[section]
        if unknown:
            raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)} in [{section}] "
                              f"(expected {sorted(_ALLOWED[section])})")
    base = os.path.dirname(os.path.abspath(path))
    networks, data, nodes, graph = (raw.get(s, {}) for s in ("networks", "data", "nodes", "graph"))

    def resolve(p: str) -> str:
        # A spec (torchvision:resnet18@w.pt) names a builder, not a file: only its
        # weights part is a path relative to the study.
        try:  # $GEOKD_RELEASED_DIR: the released networks' folder, default included
            p = os.path.expanduser(expand_variables(p))
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: {p!r} needs ${RELEASED_DIR_ENV}: {exc}") from None
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if is_network_spec(p):
            source, at, weights = p.partition("@")
            return source + at + (resolve(weights) if at else "")
        return p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p))

    study = Study(
        teacher=resolve(networks["teacher"]) if "teacher" in networks else None,
        students=[resolve(p) for p in networks.get("students", [])],
        dataset=_dataset_from(data.get("dataset", "cifar10"), base=base),
        split=data.get("split", "test"),
        mean=data.get("mean"),
        std=data.get("std"),
        image_size=data.get("image_size"),
        per_class=nodes.get("per_class", 100),
        node_seed=nodes.get("seed", 0),
        output_on=nodes.get("output_on", "all"),
        k=graph.get("k", 10),
        num_eigenvectors=graph.get("num_eigenvectors", 10),
        layers=graph.get("layers"),
        student_layers=graph.get("student_layers"),
        linear_probe=graph.get("linear_probe", False),
        variants=graph.get("variants", []),
    )
    for key in ("per_class", "node_seed", "k", "num_eigenvectors"):
        value = getattr(study, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{path}: expected {key} as a nonnegative integer, got {value!r}")
    if study.image_size is not None and (not isinstance(study.image_size, int) or isinstance(study.image_size, bool)
                                         or study.image_size < 1):
        raise ConfigError(f"{path}: expected image_size as a positive integer, got {study.image_size!r}")
    if study.output_on not in ("all", "nodes"):
        raise ConfigError(f"{path}: expected output_on = 'all' or 'nodes', got {study.output_on!r}")
    if not isinstance(study.variants, list) or not all(isinstance(v, str) for v in study.variants):
        raise ConfigError(f"{path}: expected [graph] variants as a list of graph names such as "
                          f"'cos-sym-k10-inter-p1', got {study.variants!r}")
    if study.variants:   # checked here, so that a typo names the file before any work
        from geokd.graphs.spec_names import parse_graph_names

        parse_graph_names(study.variants, where=f"{path}: [graph] variants")
    return study
