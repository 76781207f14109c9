"""Studies: a dataset, a teacher, a student, the methods to compare and the seeds.

A study is a TOML file (see ``geokd/studies/digits.toml``, the embedded default)::

    [study]                  name, description, seeds, teacher_seed, extends, estimate,
                             notes (printed under the table), train_size (what the time
                             estimate assumes when the training set cannot be counted)
    [base.<section>]         TrainConfig sections shared by every run (data, optim…)
    [teacher]                model = {name, params}, or path = run dir / checkpoint /
                             released network / network spec; overrides = {section: {...}}
    [student]                model = {name, params, sensing_points}; overrides
    [[methods]]              name, terms = [{loss, weight, params}], ce_weight (the
                             cross-entropy's weight, default 1; Hinton KD: 1 - alpha),
                             overrides = {section: {...}} (this row's config, e.g. a longer
                             schedule for an initialization stage);
                             or system = "byot" / "dml" / "selective" with params = {...}
                             (see geokd.methods.systems; selective also takes terms)
    [[pairs]]                instead of [teacher] and [student]: several teacher-student
                             pairs under one recipe (a benchmark table), each with name,
                             teacher = {model | path, overrides}, student = {model,
                             overrides}, skip = [methods that do not apply to the pair],
                             methods = {<method> = {terms, ce_weight, overrides}} (the
                             pair's own version of a row: layers and weights that depend
                             on its networks' shapes) and published = {teacher = 75.61,
                             <method> = 74.92, ...} (the accuracies, %, a run is compared with)

``extends = "<study>"`` starts from another study (shipped or a path) and deep-merges
this file over it. :func:`load_study` validates everything, including every run's
:class:`~geokd.train.config.TrainConfig`, before anything trains.

A study with ``[[pairs]]`` loads as a :class:`Study` whose :attr:`Study.pairs` are one
ordinary single-pair study per pair, named ``<study>/<pair>`` (so their runs go to
``<out>/<study>/<pair>/<method>/seed<k>``); pairs with the same teacher network share its
run (``<out>/<study>/teachers/<teacher>/seed<t>``), as the benchmark's pairs share teachers.

``$VARS`` (and ``~``) in the paths of a study (``teacher.path``, ``data.name`` such as
``imagefolder:$GEOKD_IMAGENET_DIR``, ``data.root``) are expanded when it loads; one that
is not set is a :class:`~geokd.errors.ConfigError` naming it.

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
import os
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

_STUDY_KEYS = ("name", "description", "seeds", "teacher_seed", "extends", "estimate", "notes", "train_size")
_TOP_KEYS = ("study", "base", "teacher", "student", "methods", "pairs")
_TEACHER_KEYS = ("model", "path", "overrides")
_STUDENT_KEYS = ("model", "overrides")
_METHOD_KEYS = ("name", "terms", "ce_weight", "system", "params", "overrides")
_PAIR_KEYS = ("name", "teacher", "student", "skip", "methods", "published")
_PAIR_METHOD_KEYS = ("terms", "ce_weight", "overrides")
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
    overrides: dict = field(default_factory=dict)  # this row's config sections (e.g. its schedule)

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
        own = ", ".join(f"{section}.{k}={num(v)}" for section, table in self.overrides.items() for k, v in table.items())
        if self.system is not None and len(parts) > 1:
            return f"{parts[0]}: " + " + ".join(parts[1:]) + (f" [{own}]" if own else "")
        return " + ".join(parts) + (f" [{own}]" if own else "")


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
    pairs: tuple["Study", ...] = ()  # a [[pairs]] study: one single-pair study per pair
    pair: str | None = None  # the pair's name, for a study that is one pair of another
    teacher_dir: str | None = None  # the teacher's runs under the output root (default <name>/teacher)
    published: dict = field(default_factory=dict)  # {"teacher" | method: accuracy %} to compare with
    skipped: tuple[str, ...] = ()  # the parent's methods this pair leaves out

    @property
    def teacher_path(self) -> str | None:
        """An existing teacher to use instead of training one."""
        return self.table.get("teacher", {}).get("path")

    @property
    def train_size(self) -> int | None:
        """The training-set size the time estimate assumes when it cannot count the data."""
        return self.table["study"].get("train_size")

    def pair_study(self, name: str) -> "Study":
        """The single-pair study of pair ``name`` (a study with ``[[pairs]]``)."""
        for pair in self.pairs:
            if pair.pair == name:
                return pair
        known = ", ".join(p.pair for p in self.pairs) or "none: it is a single-pair study"
        close = difflib.get_close_matches(name, [p.pair for p in self.pairs], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"study {self.name!r} has no pair {name!r}{hint} (pairs: {known})")

    def _single(self, what: str) -> None:
        if self.pairs:
            raise ConfigError(f"study {self.name!r} has {len(self.pairs)} pairs; {what} belongs to one of them "
                              f"(study.pair_study(NAME), NAME one of {', '.join(p.pair for p in self.pairs)})")

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
        self._single("a teacher config")
        if self.teacher_path is not None:
            raise ConfigError(f"study {self.name!r} uses the existing teacher {self.teacher_path}; nothing to train")
        t = self.table["teacher"]
        table = _merge(_merge(self.table.get("base", {}), t.get("overrides", {})),
                       {"model": t["model"], "run": {"seed": self.teacher_seed}, "terms": []})
        return config_from_dict(table)

    def student_config(self, method: str, *, seed: int, teacher: str | None = None) -> TrainConfig:
        """The config of one student run; ``teacher`` is the teacher's run dir or checkpoint."""
        self._single("a student config")
        s = self.table["student"]
        m = self.method(method)
        table = _merge(_merge(_merge(self.table.get("base", {}), s.get("overrides", {})), m.overrides),
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
    """A shipped study by name (``"digits"``) or a study TOML file, validated.

    Raises
    ------
    ConfigError
        For anything the study cannot run with, naming the file and the entry: an unknown
        key, a bad seed list, a method or pair entry that does not build, a ``$VARIABLE``
        that is not set, or any run's :class:`~geokd.train.config.TrainConfig` that does
        not validate.
    """
    table, source = _read_table(str(name_or_path))
    _check_keys(table, _TOP_KEYS, source)
    info = table.get("study")
    if info is None:
        raise ConfigError(f"{source}: expected a [study] table with name and seeds")
    _check_keys(info, _STUDY_KEYS, f"{source} [study]")
    _expand_paths(table, source)
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
    train_size = info.get("train_size")
    if train_size is not None and (not isinstance(train_size, int) or isinstance(train_size, bool) or train_size < 1):
        raise ConfigError(f"{source} [study].train_size: expected a positive number of training inputs, got {train_size!r}")
    methods = _methods(table, source)
    common = dict(description=str(info.get("description", "")), seeds=tuple(seeds), teacher_seed=teacher_seed,
                  source=source)
    if "pairs" in table:
        return _paired_study(table, name=name, methods=methods, **common)
    _check_roles(table, source)
    study = Study(name=name, methods=tuple(methods), table=table, **common)
    _validate_runs(study, source)
    return study


def _check_roles(table: dict, where: str) -> None:
    """The ``teacher`` and ``student`` tables of one pair (top level or a ``[[pairs]]`` entry)."""
    teacher = table.get("teacher", {})
    _check_keys(teacher, _TEACHER_KEYS, f"{where} [teacher]")
    if ("model" in teacher) == ("path" in teacher):
        raise ConfigError(f"{where} [teacher]: expected exactly one of model (train it) or path (use it)")
    if "path" in teacher and not isinstance(teacher["path"], str):
        raise ConfigError(f"{where} [teacher].path: expected a string, got {teacher['path']!r}")
    student = table.get("student", {})
    _check_keys(student, _STUDENT_KEYS, f"{where} [student]")
    if "model" not in student:
        raise ConfigError(f"{where} [student]: expected a model = {{name = ..., params = {{...}}}}")


def _methods(table: dict, source: str) -> list[Method]:
    methods_table = table.get("methods", [])
    if not isinstance(methods_table, list) or not methods_table:
        raise ConfigError(f"{source}: expected at least one [[methods]] entry")
    methods: list[Method] = []
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
        overrides = m.get("overrides", {})
        _check_overrides(overrides, f"{source} methods[{i}] ({mname}).overrides")
        system, params = _method_system(m, f"{source} methods[{i}] ({mname})")
        methods.append(Method(mname, tuple(terms), m.get("ce_weight", 1.0), system, params, overrides))
    return methods


def _check_overrides(overrides, where: str) -> None:
    if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
        raise ConfigError(f"{where}: expected a table of config sections, e.g. "
                          f"{{ schedule = {{ epochs = 270 }} }}, got {overrides!r}")


def _validate_runs(study: Study, where: str) -> None:
    # Build every run's config now: a typo in the last method fails before the first run.
    if study.teacher_path is None:
        _where(study.teacher_config, f"{where} [teacher]")
    for method in study.methods:
        _where(lambda: study.student_config(method.name, seed=study.seeds[0]), f"{where} method {method.name!r}")


def _role_name(role: dict) -> str:
    """A short name of a pair's teacher or student: its model's name, else the path's."""
    if "model" in role:
        model = role["model"]
        return str(model.get("name", "?")) if isinstance(model, dict) else str(model)
    return Path(str(role["path"]).split("@")[-1]).name or str(role["path"])


def _paired_study(table: dict, *, name: str, methods: list[Method], description: str, seeds: tuple,
                  teacher_seed: int, source: str) -> Study:
    """A ``[[pairs]]`` study and its single-pair studies."""
    for role in ("teacher", "student"):
        if role in table:
            raise ConfigError(f"{source}: a study with [[pairs]] names the {role} in each pair "
                              f"(pairs[i].{role}); remove the top-level [{role}]")
    entries = table["pairs"]
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{source}: expected [[pairs]] entries (name, teacher, student), got {entries!r}")
    method_names = [m.name for m in methods]
    base = {key: value for key, value in table.items() if key != "pairs"}
    pairs, names, teachers = [], set(), {}
    for i, entry in enumerate(entries):
        _check_keys(entry, _PAIR_KEYS, f"{source} pairs[{i}]")
        pname = entry.get("name")
        if not isinstance(pname, str) or not _NAME.match(pname) or pname == "teachers":
            raise ConfigError(f"{source} pairs[{i}].name: expected a folder-safe name other than 'teachers', "
                              f"got {pname!r}")
        if pname in names:
            raise ConfigError(f"{source}: pair name {pname!r} appears twice")
        names.add(pname)
        where = f"{source} pairs[{i}] ({pname})"
        for role in ("teacher", "student"):
            if not isinstance(entry.get(role), dict):
                raise ConfigError(f"{where}.{role}: expected a table such as {{ model = {{ name = \"resnet56\" }} }}, "
                                  f"got {entry.get(role)!r}")
        _check_roles(entry, where)
        skip = entry.get("skip", [])
        if not isinstance(skip, list) or not all(isinstance(s, str) for s in skip):
            raise ConfigError(f"{where}.skip: expected a list of method names, got {skip!r}")
        _known_methods(skip, method_names, f"{where}.skip")
        if len(set(skip)) == len(method_names):
            raise ConfigError(f"{where}.skip: every method is skipped; remove the pair instead")
        own = entry.get("methods", {})
        if not isinstance(own, dict):
            raise ConfigError(f"{where}.methods: expected a table {{ <method> = {{ terms = [...] }} }}, got {own!r}")
        _known_methods(list(own), method_names, f"{where}.methods")
        for mname, spec in own.items():
            _check_keys(spec, _PAIR_METHOD_KEYS, f"{where}.methods.{mname}")
            if mname in skip:
                raise ConfigError(f"{where}.methods.{mname}: the method is skipped for this pair; "
                                  "remove it from skip or drop its entry")
            if "terms" in spec and not isinstance(spec["terms"], list):
                raise ConfigError(f"{where}.methods.{mname}.terms: expected a list of tables, got {spec['terms']!r}")
            _check_overrides(spec.get("overrides", {}), f"{where}.methods.{mname}.overrides")
        published = entry.get("published", {})
        _check_published(published, method_names, f"{where}.published")
        pair_methods = []
        for m in methods:
            if m.name in skip:
                continue
            spec = own.get(m.name, {})
            pair_methods.append(Method(m.name, tuple(spec.get("terms", m.terms)), spec.get("ce_weight", m.ce_weight),
                                       m.system, m.params, _merge(m.overrides, spec.get("overrides", {}))))
        teacher_dir = None
        if "model" in entry["teacher"]:
            key = _role_name(entry["teacher"])
            if not _NAME.match(key):
                raise ConfigError(f"{where}.teacher: the model name {key!r} is not folder-safe")
            if key in teachers and teachers[key][1] != entry["teacher"]:
                raise ConfigError(
                    f"{where}.teacher: pairs {teachers[key][0]!r} and {pname!r} both name the teacher {key!r} but "
                    "with different settings; pairs with the same teacher share its run, so give both the same table")
            teachers.setdefault(key, (pname, entry["teacher"]))
            teacher_dir = f"{name}/teachers/{key}"
        sub_table = _merge(base, {"teacher": entry["teacher"], "student": entry["student"]})
        sub_table["study"] = {**sub_table["study"], "name": f"{name}/{pname}"}
        sub = Study(
            name=f"{name}/{pname}",
            description=f"{description}: {_role_name(entry['teacher'])} teaches {_role_name(entry['student'])}",
            seeds=seeds, teacher_seed=teacher_seed, methods=tuple(pair_methods), table=sub_table, source=source,
            pair=pname, teacher_dir=teacher_dir, published=dict(published), skipped=tuple(skip))
        _validate_runs(sub, where)
        pairs.append(sub)
    return Study(name=name, description=description, seeds=seeds, teacher_seed=teacher_seed,
                 methods=tuple(methods), table=table, source=source, pairs=tuple(pairs))


def _known_methods(names: list, known: list[str], where: str) -> None:
    for mname in names:
        if mname not in known:
            close = difflib.get_close_matches(str(mname), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (methods: {', '.join(known)})"
            raise ConfigError(f"{where}: unknown method {mname!r}{hint}")


def _check_published(published, method_names: list[str], where: str) -> None:
    if not isinstance(published, dict):
        raise ConfigError(f"{where}: expected a table {{ teacher = 75.61, <method> = 74.92 }}, got {published!r}")
    _known_methods([k for k in published if k != "teacher"], method_names, where)
    for key, value in published.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
            raise ConfigError(f"{where}.{key}: expected an accuracy in % (0 to 100), got {value!r}")


#: Where a study names files or folders: (..., "teacher", "path"), (..., "data", "name" | "root").
def _is_path_key(keys: tuple) -> bool:
    return keys[-2:] == ("teacher", "path") or (len(keys) >= 2 and keys[-2] == "data" and keys[-1] in ("name", "root"))


def _expand_paths(table: dict, source: str) -> None:
    """Expand ``$VARS`` and ``~`` in the study's paths in place; an unset variable is an error."""
    from geokd.checkpoints.released import expand_variables

    def expand(text: str, where: str) -> str:
        if "$" not in text and "~" not in text:
            return text
        try:  # $GEOKD_RELEASED_DIR has a default folder (the released networks')
            expanded = expand_variables(text)
        except (FileNotFoundError, ConfigError) as exc:
            raise ConfigError(f"{source} {where}: {exc}") from None
        head, sep, rest = expanded.rpartition("@") if "@" in expanded else ("", "", expanded)
        prefix, colon, path = rest.partition(":") if rest.startswith("imagefolder:") else ("", "", rest)
        return head + sep + prefix + colon + os.path.expanduser(path)

    def walk(node, keys: tuple) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in list(items):
            here = keys + (key,)
            if isinstance(value, str) and _is_path_key(here):
                node[key] = expand(value, ".".join(str(k) for k in here))
            elif isinstance(value, (dict, list)):
                walk(value, here)

    walk(table, ())


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
