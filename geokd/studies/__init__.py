"""Studies: a dataset, a teacher, a student, the methods to compare and the seeds.

A study is a TOML file (see ``geokd/studies/digits.toml``, the embedded default)::

    [study]                  name, description, seeds, teacher_seed, extends, estimate,
                             notes (printed under the table)
    [base.<section>]         TrainConfig sections shared by every run (data, optim…)
    [teacher]                model = {name, params}, or path = run dir / checkpoint /
                             released network; overrides = {section: {...}}
    [student]                model = {name, params, sensing_points}; overrides
    [[methods]]              name, terms = [{loss, weight, params}], ce_weight (the
                             cross-entropy's weight, default 1; Hinton KD: 1 - alpha);
                             or system = "byot" / "dml" / "selective" with params = {...}
                             (see geokd.methods.systems; selective also takes terms)

``extends = "<study>"`` starts from another study (shipped or a path) and deep-merges
this file over it. :func:`load_study` validates everything, including every run's
:class:`~geokd.train.config.TrainConfig`, before anything trains.

Examples
--------
>>> study = load_study("digits")
>>> study.name, len(study.methods), study.seeds
('digits', 7, (0, 1, 2))
>>> [m.name for m in study.methods][:3]
['baseline', 'rkd-d', 'gkd']
>>> study.student_config("gkd", seed=1).terms[0].weight
25.0
>>> study.method("gkd").recipe()
'CE + 25·gkd'
>>> load_study("digits-methods").method("byot").recipe()
'system byot (alpha=0.1, temperature=3.0, beta=1e-06)'
>>> "digits-reduced" in available_studies()
True
"""

from __future__ import annotations

import copy
import difflib
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from geokd.errors import ConfigError
from geokd.train.config import TrainConfig, config_from_dict

__all__ = ["Study", "Method", "load_study", "available_studies", "DEFAULT_STUDY"]

DEFAULT_STUDY = "digits"

_STUDY_KEYS = ("name", "description", "seeds", "teacher_seed", "extends", "estimate", "notes")
_TOP_KEYS = ("study", "base", "teacher", "student", "methods")
_TEACHER_KEYS = ("model", "path", "overrides")
_STUDENT_KEYS = ("model", "overrides")
_METHOD_KEYS = ("name", "terms", "ce_weight", "system", "params")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class Method:
    """One row of the study's table: a name and its weighted terms (empty = no distillation),
    or a whole system (``system``, with its completed ``params``) run instead of the trainer."""

    name: str
    terms: tuple[dict, ...]
    ce_weight: float = 1.0
    system: str | None = None
    params: dict = field(default_factory=dict)

    def recipe(self) -> str:
        """The row's objective in one line, weights included (printed under the table)."""
        def num(v) -> str:
            if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
                return f"<{len(v)} modules>"  # taps: names, not weights
            return f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)

        parts = [] if self.system is None else [
            f"system {self.system} (" + ", ".join(f"{k}={v}" for k, v in self.params.items()) + ")"]
        if self.system is None or self.terms or self.ce_weight != 1:
            parts.append("CE" if self.ce_weight == 1 else f"{num(self.ce_weight)}·CE")
        for t in self.terms:
            opts = ", ".join(f"{k}={num(v)}" for k, v in t.get("params", {}).items())
            parts.append(f"{num(t.get('weight', 1.0))}·{t.get('loss')}" + (f"({opts})" if opts else ""))
        if self.system is not None and len(parts) > 1:
            return f"{parts[0]}: " + " + ".join(parts[1:])
        return " + ".join(parts)


@dataclass(frozen=True)
class Study:
    """A validated study; build each run's config with :meth:`teacher_config` / :meth:`student_config`."""

    name: str
    description: str
    seeds: tuple[int, ...]
    teacher_seed: int
    methods: tuple[Method, ...]
    table: dict  # the merged TOML table
    source: str

    @property
    def teacher_path(self) -> str | None:
        """An existing teacher to use instead of training one."""
        return self.table.get("teacher", {}).get("path")

    @property
    def estimate(self) -> bool:
        """Whether ``geokd reproduce`` should estimate and print the time before training."""
        return bool(self.table["study"].get("estimate", False))

    def method(self, name: str) -> Method:
        for method in self.methods:
            if method.name == name:
                return method
        raise ConfigError(f"study {self.name!r} has no method {name!r} (has {', '.join(m.name for m in self.methods)})")

    def teacher_config(self) -> TrainConfig:
        if self.teacher_path is not None:
            raise ConfigError(f"study {self.name!r} uses the existing teacher {self.teacher_path}; nothing to train")
        t = self.table["teacher"]
        table = _merge(_merge(self.table.get("base", {}), t.get("overrides", {})),
                       {"model": t["model"], "run": {"seed": self.teacher_seed}, "terms": []})
        return config_from_dict(table)

    def student_config(self, method: str, *, seed: int, teacher: str | None = None) -> TrainConfig:
        """The config of one student run; ``teacher`` is the teacher's run dir or checkpoint."""
        s = self.table["student"]
        m = self.method(method)
        table = _merge(_merge(self.table.get("base", {}), s.get("overrides", {})),
                       {"model": s["model"], "run": {"seed": seed}})
        table["terms"] = [dict(t) for t in m.terms]
        table["ce_weight"] = m.ce_weight
        if m.system is None or _system(m.system).needs_teacher:
            table["teacher"] = teacher if teacher is not None else (self.teacher_path or "<teacher run>")
        return config_from_dict(table)

    @property
    def notes(self) -> str:
        return str(self.table["study"].get("notes", ""))


def _merge(base: dict, over: dict) -> dict:
    """Deep merge of tables: ``over`` wins; lists are replaced, not concatenated."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _check_keys(table: dict, allowed: tuple[str, ...], where: str) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {type(table).__name__}")
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(allowed)})"
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")


def available_studies() -> list[str]:
    """Names of the studies shipped with geokd (``geokd reproduce NAME``)."""
    names = []
    for entry in resources.files(__name__).iterdir():
        if entry.name.endswith(".toml"):
            table = tomllib.loads(entry.read_text())
            names.append(table.get("study", {}).get("name", entry.name[:-5]))
    return sorted(names)


def _shipped_text(name: str) -> tuple[str, str] | None:
    for entry in resources.files(__name__).iterdir():
        if not entry.name.endswith(".toml"):
            continue
        text = entry.read_text()
        if entry.name[:-5] == name or tomllib.loads(text).get("study", {}).get("name") == name:
            return text, f"geokd/studies/{entry.name}"
    return None


def _read_table(name_or_path: str, seen: tuple[str, ...] = ()) -> tuple[dict, str]:
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"study file not found: {path}")
        text, source = path.read_text(), str(path)
    else:
        found = _shipped_text(name_or_path)
        if found is None:
            close = difflib.get_close_matches(name_or_path, available_studies(), n=2)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ConfigError(
                f"unknown study {name_or_path!r}{hint} (shipped: {', '.join(available_studies())}; "
                "or give a path to a .toml file)"
            )
        text, source = found
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    parent = table.get("study", {}).get("extends")
    if parent:
        if parent in seen:
            raise ConfigError(f"{source}: study inheritance loops through {parent!r}")
        base_table, _ = _read_table(parent if not (path.parent / parent).is_file() else str(path.parent / parent),
                                    seen + (name_or_path,))
        base_table["study"].pop("extends", None)
        if "methods" in table:
            base_table.pop("methods", None)
        table = _merge(base_table, table)
        table["study"].pop("extends", None)
    return table, source


def load_study(name_or_path: str = DEFAULT_STUDY) -> Study:
    """A shipped study by name (``"digits"``) or a study TOML file, validated."""
    table, source = _read_table(str(name_or_path))
    _check_keys(table, _TOP_KEYS, source)
    info = table.get("study")
    if info is None:
        raise ConfigError(f"{source}: expected a [study] table with name and seeds")
    _check_keys(info, _STUDY_KEYS, f"{source} [study]")
    name = info.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{source} [study].name: expected a folder-safe name, got {name!r}")
    seeds = info.get("seeds", [0])
    if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise ConfigError(f"{source} [study].seeds: expected a list of distinct non-negative integers, got {seeds!r}")
    teacher_seed = info.get("teacher_seed", 0)
    if not isinstance(teacher_seed, int) or isinstance(teacher_seed, bool) or teacher_seed < 0:
        raise ConfigError(f"{source} [study].teacher_seed: expected a non-negative integer, got {teacher_seed!r}")
    teacher = table.get("teacher", {})
    _check_keys(teacher, _TEACHER_KEYS, f"{source} [teacher]")
    if ("model" in teacher) == ("path" in teacher):
        raise ConfigError(f"{source} [teacher]: expected exactly one of model (train it) or path (use it)")
    student = table.get("student", {})
    _check_keys(student, _STUDENT_KEYS, f"{source} [student]")
    if "model" not in student:
        raise ConfigError(f"{source} [student]: expected a model = {{name = ..., params = {{...}}}}")
    methods_table = table.get("methods", [])
    if not isinstance(methods_table, list) or not methods_table:
        raise ConfigError(f"{source}: expected at least one [[methods]] entry")
    methods = []
    for i, m in enumerate(methods_table):
        _check_keys(m, _METHOD_KEYS, f"{source} methods[{i}]")
        mname = m.get("name")
        if not isinstance(mname, str) or not _NAME.match(mname) or mname == "teacher":
            raise ConfigError(f"{source} methods[{i}].name: expected a folder-safe name other than 'teacher', got {mname!r}")
        if mname in [x.name for x in methods]:
            raise ConfigError(f"{source}: method name {mname!r} appears twice")
        terms = m.get("terms", [])
        if not isinstance(terms, list):
            raise ConfigError(f"{source} methods[{i}] ({mname}).terms: expected a list of tables, got {terms!r}")
        system, params = _method_system(m, f"{source} methods[{i}] ({mname})")
        methods.append(Method(mname, tuple(terms), m.get("ce_weight", 1.0), system, params))
    study = Study(name=name, description=str(info.get("description", "")), seeds=tuple(seeds),
                  teacher_seed=teacher_seed, methods=tuple(methods), table=table, source=source)
    # Build every run's config now: a typo in the last method fails before the first run.
    if study.teacher_path is None:
        _where(study.teacher_config, f"{source} [teacher]")
    for method in study.methods:
        _where(lambda: study.student_config(method.name, seed=study.seeds[0]), f"{source} method {method.name!r}")
    return study


def _system(name: str):
    from geokd.methods.systems import get_system

    return get_system(name)


def _method_system(m: dict, where: str) -> tuple[str | None, dict]:
    """The row's system name and completed params (None, {} for a row of terms)."""
    if "system" not in m:
        if "params" in m:
            raise ConfigError(f"{where}: params belong to a system row; put term parameters in terms = [{{..., params}}]")
        return None, {}
    try:
        system = _system(m["system"])
    except ConfigError as exc:
        raise ConfigError(f"{where}.system: {exc}") from None
    if m.get("terms") and not system.takes_terms:
        raise ConfigError(f"{where}: system {system.name!r} trains its own objective; expected no terms, "
                          f"got {len(m['terms'])}")
    if "ce_weight" in m and not system.takes_ce_weight:
        raise ConfigError(f"{where}: system {system.name!r} weights its own cross-entropy; remove ce_weight")
    return system.name, system.check_params(m.get("params", {}), where=where)


def _where(build, where: str) -> Any:
    try:
        return build()
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
