"""Whole distillation systems as study rows: a registry of runners by name.

A loss term fits the one training loop; BYOT (exits trained together), Deep Mutual
Learning (two students, no teacher) and selective KD (a graph cut on the teacher's
embeddings picks the training inputs) do not. A study row names one with
``system = "byot"`` and its ``params``; :func:`run_system` trains it over the study's
run config (data, student model, optimiser, schedule, seed) into a run directory laid
out like any other run: ``config.json`` (with ``system`` and ``params``), ``meta.json``
(seed, versions, ``final_test_error``, ``system_results``), ``metrics.jsonl`` and
``model.pt`` (the row's network: BYOT's backbone, i.e. its deepest exit; DML's first
student; selective KD's student), so it is reused when finished and tabulated with the
same columns. :meth:`System.describe` turns the runs' ``system_results`` into the row's
note and an optional extra table.

Examples
--------
>>> available_systems()
['byot', 'dml', 'selective']
>>> get_system("byot").check_params({"alpha": 0.2}, where="methods[0]")["temperature"]
3.0
>>> get_system("byott")
Traceback (most recent call last):
...
geokd.errors.ConfigError: unknown system 'byott'; did you mean 'byot'? (known: byot, dml, selective)
"""

from __future__ import annotations

import difflib
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from geokd.errors import ConfigError

__all__ = ["System", "register_system", "get_system", "available_systems", "run_system", "median_sd"]

_SYSTEMS: dict[str, "System"] = {}


@dataclass(frozen=True)
class System:
    """A registered whole-system method.

    Attributes
    ----------
    name : str
        The ``system = "..."`` of a study row.
    run : callable
        ``run(config, params, *, run_dir, device, resume, on_epoch_end, progress)``; must
        leave a finished run directory (``model.pt`` and ``meta.json`` with status
        ``finished``, ``final_test_error`` and ``system_results``).
    describe : callable
        ``describe(method, results) -> (note, extra_markdown_lines)`` from the runs'
        ``system_results`` (one dict per seed).
    defaults : dict
        The parameters it takes, with their default values (types are checked against them).
    needs_teacher, takes_terms, takes_ce_weight : bool
        What else of a study row it uses.
    """

    name: str
    run: Callable[..., None]
    describe: Callable[[str, list[dict]], tuple[str, list[str]]]
    defaults: dict = field(default_factory=dict)
    needs_teacher: bool = False
    takes_terms: bool = False
    takes_ce_weight: bool = False

    def check_params(self, params: Any, *, where: str) -> dict:
        """``params`` completed with the defaults; unknown keys and wrong types raise ConfigError."""
        if not isinstance(params, dict):
            raise ConfigError(f"{where}.params: expected a table, got {type(params).__name__} {params!r}")
        out = dict(self.defaults)
        for key, value in params.items():
            if key not in self.defaults:
                close = difflib.get_close_matches(key, list(self.defaults), n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else f" (it takes: {', '.join(self.defaults) or 'nothing'})"
                raise ConfigError(f"{where}.params: system {self.name!r} has no parameter {key!r}{hint}")
            default = self.defaults[key]
            numeric = isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool)
            if not (type(value) is type(default) or numeric):
                raise ConfigError(f"{where}.params.{key}: expected {type(default).__name__} like {default!r}, "
                                  f"got {type(value).__name__} {value!r}")
            out[key] = float(value) if numeric else value
        return out


def register_system(system: System) -> System:
    if system.name in _SYSTEMS:
        raise ValueError(f"system {system.name!r} is already registered")
    _SYSTEMS[system.name] = system
    return system


def available_systems() -> list[str]:
    return sorted(_SYSTEMS)


def get_system(name: str) -> System:
    """The registered system ``name``; an unknown name raises ConfigError with a did-you-mean."""
    if name not in _SYSTEMS:
        close = difflib.get_close_matches(str(name), available_systems(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown system {name!r}{hint} (known: {', '.join(available_systems())})")
    return _SYSTEMS[name]


def run_system(name: str, config, params: dict, *, run_dir: str | Path, device="cpu", resume: bool = False,
               on_epoch_end: Callable[[dict], None] | None = None, progress: bool | None = None) -> None:
    """Train one system run with ``config.run.threads`` torch threads, as :func:`geokd.train.train` does."""
    import torch

    system = get_system(name)
    threads = torch.get_num_threads()
    if config.run.threads is not None:
        torch.set_num_threads(config.run.threads)
    try:
        system.run(config, system.check_params(params, where=name), run_dir=Path(run_dir), device=torch.device(device),
                   resume=resume, on_epoch_end=on_epoch_end, progress=progress)
    finally:
        torch.set_num_threads(threads)


def median_sd(values: list[float], digits: int = 2) -> str:
    """``"median ± sd"`` (sample sd; ``–`` for one value).

    >>> median_sd([1.0, 2.0, 4.0])
    '2.00 ± 1.53'
    >>> median_sd([3.0])
    '3.00 ± –'
    """
    sd = f"{statistics.stdev(values):.{digits}f}" if len(values) > 1 else "–"
    return f"{statistics.median(values):.{digits}f} ± {sd}"


from geokd.methods.systems import byot, dml, selective  # noqa: E402,F401  (registers them)
