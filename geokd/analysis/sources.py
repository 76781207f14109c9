"""Which networks an analysis compares, from paths: run directories or checkpoint files.

- a run directory of the trainer (``runs/<study>/<method>/seed<k>/`` with ``model.pt``):
  method = the parent folder's name, seed = ``k``;
- one of the GKD authors' released files: ``GKD_…_<k>.pth`` is method ``gkd``,
  ``RKD_…_<k>.pth`` is ``rkd-d``, ``WideResNet…`` is the ``teacher``;
- any other checkpoint file: method = its file name without extension, no seed;
- a network spec (``torchvision:resnet18?num_classes=10@w.pt``): method = the weights
  file's name without extension, else the builder's name; no seed.
"""

from __future__ import annotations

import os
import re

from geokd.analysis.pipeline import Network
from geokd.checkpoints.networks import RUN_MODEL_FILE
from geokd.checkpoints.released import expand_variables, glob_matches
from geokd.errors import ConfigError
from geokd.models.specs import is_network_spec, parse_network_spec

_SEED_DIR = re.compile(r"^seed(\d+)$")
_RELEASED = {"GKD": "gkd", "RKD": "rkd-d", "WideResNet": "teacher"}


def network_from_path(path: str, *, method: str | None = None) -> Network:
    """Describe the network at ``path`` (run directory or checkpoint file).

    Examples
    --------
    >>> network_from_path("graph_kd/RKD_28-1_teaches_28-0.5_0.0_0.0_25.0_False_7.pth", method=None).name
    'rkd-d-7'
    """
    path = os.fspath(path)
    if not os.path.exists(path) and is_network_spec(path):
        method = method or parse_network_spec(path).name
        return Network(name=method, method=method, seed=None, source=path)
    if os.path.isdir(path):
        model = os.path.join(path, RUN_MODEL_FILE)
        if not os.path.isfile(model):
            raise FileNotFoundError(f"expected a run directory with {RUN_MODEL_FILE} at {path}, found none "
                                    "(is the run finished?)")
        folder = os.path.basename(os.path.normpath(path))
        match = _SEED_DIR.match(folder)
        seed = int(match.group(1)) if match else None
        parent = os.path.basename(os.path.dirname(os.path.normpath(path)))
        method = method or (parent if match else folder)
        return Network(name=f"{method}-{seed}" if seed is not None else method, method=method, seed=seed,
                       source=model)
    base = os.path.basename(path)
    stem = os.path.splitext(base)[0]
    seed = None
    for prefix, released_method in _RELEASED.items():
        if stem.startswith(prefix + "_") or stem.startswith(prefix):
            method = method or released_method
            trailing = re.search(r"_(\d+)$", stem)
            seed = int(trailing.group(1)) if trailing else None
            break
    method = method or stem
    name = f"{method}-{seed}" if seed is not None else method
    return Network(name=name, method=method, seed=seed, source=path)


def expand_paths(patterns, *, base_dir: str = ".") -> list[str]:
    """Expand ``$VARS`` and globs in ``patterns``, relative to ``base_dir``, sorted naturally.

    ``$GEOKD_RELEASED_DIR`` is the released networks' folder
    (:func:`geokd.checkpoints.released.released_dir`, default included). A pattern that
    matches nothing is an error naming the folder looked in and whether it exists (a typo
    would silently drop networks); so is a variable that is not set.

    Examples
    --------
    >>> expand_paths(["/nowhere/shared/graph_kd/GKD_*.pth"])
    Traceback (most recent call last):
    ...
    geokd.errors.ConfigError: expected networks at '/nowhere/shared/graph_kd/GKD_*.pth': no file matches 'GKD_*.pth' in /nowhere/shared/graph_kd (that folder does not exist; set GEOKD_RELEASED_DIR or --released-dir)
    """
    found = []
    for pattern in patterns:
        try:
            expanded = os.path.expanduser(expand_variables(pattern))
        except ConfigError as exc:
            raise ConfigError(f"expected networks at {exc}") from None
        if not os.path.isabs(expanded):
            expanded = os.path.join(base_dir, expanded)
        try:
            found += glob_matches(pattern, expanded)
        except ConfigError as exc:
            raise ConfigError(f"expected networks at {pattern!r}: {exc}") from None
    return found


def expand_networks(patterns, *, base_dir: str = ".") -> list[str]:
    """:func:`expand_paths` for each pattern that is not a network spec; specs are kept as given.

    Examples
    --------
    >>> expand_networks(["torchvision:resnet18?num_classes=10"])
    ['torchvision:resnet18?num_classes=10']
    """
    found = []
    for pattern in patterns:
        is_path = os.path.exists(os.path.join(base_dir, os.path.expanduser(pattern)))
        found += [pattern] if is_network_spec(pattern) and not is_path else expand_paths([pattern], base_dir=base_dir)
    return found
