"""Training configuration: nested dataclasses loaded from TOML, overridden, validated.

A config is plain data. :func:`config_from_dict` turns a nested ``dict`` (e.g. parsed
TOML) into a :class:`TrainConfig`, rejecting unknown keys (with a "did you mean"),
wrong types and impossible values with :class:`geokd.errors.ConfigError` before any
training starts. :func:`apply_overrides` applies command-line ``section.key=value``
assignments (values parsed as TOML, so ``optim.lr=0.05`` is a float and
``schedule.milestones=[10, 20]`` a list).

The default values are the GKD paper's CIFAR-10 recipe (REFERENCE §3).

Examples
--------
>>> cfg = config_from_dict({"optim": {"lr": 0.05}})
>>> cfg.optim.lr, cfg.schedule.milestones, cfg.data.batch_size
(0.05, (60, 120, 160), 128)
>>> apply_overrides(cfg, ["schedule.epochs=3", "data.name=digits"]).schedule.epochs
3
>>> config_from_dict({"optim": {"lr": 0.1, "momentun": 0.9}})
Traceback (most recent call last):
...
geokd.errors.ConfigError: optim: unknown key 'momentun'; did you mean 'momentum'?
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geokd.errors import ConfigError

__all__ = [
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TermConfig",
    "RunConfig",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "load_config_text",
    "validate_config",
    "apply_overrides",
    "parse_override",
    "resolve_channels_last",
    "with_resolved_layout",
]


@dataclass
class DataConfig:
    """Which data and how it is batched (the paper: CIFAR-10, batch 128, crop + flip)."""

    name: str = "cifar10"  # a dataset name, imagefolder:PATH or MODULE:CALLABLE (geokd.data.load_dataset)
    root: str | None = None
    image_size: int | None = None  # imagefolder / MODULE:CALLABLE: resize + centre-crop to this side
    download: bool = True
    fraction: float | None = None
    fraction_seed: int = 0
    batch_size: int = 128
    eval_batch_size: int = 1000
    augment: bool = True
    drop_last: bool = False
    # imagefolder:PATH too large for memory (ImageNet): decode batch by batch in `workers`
    # processes with torchvision's ImageNet recipe (geokd.data.stream); needs mean and std.
    stream: bool = False
    workers: int = 4
    mean: tuple[float, ...] | None = None  # normalization constants instead of the measured ones
    std: tuple[float, ...] | None = None


@dataclass
class ModelConfig:
    """A network by registry name with its constructor keywords.

    ``sensing_points`` overrides the model's own ``sensing_points`` (module names).
    Without ``params``, the default network (``wrn``) is the paper's WRN-28-1; any other
    name gets no keywords (its own defaults), not the WRN's.

    >>> ModelConfig().params, ModelConfig(name="resnet56").params
    ({'depth': 28, 'widen_factor': 1.0}, {})
    """

    name: str = "wrn"
    params: dict[str, Any] | None = None
    sensing_points: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.params is None:
            self.params = {"depth": 28, "widen_factor": 1.0} if self.name == "wrn" else {}


@dataclass
class OptimConfig:
    """SGD as in the paper: lr 0.1, momentum 0.9, weight decay 5e-4."""

    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False


@dataclass
class ScheduleConfig:
    """Epochs and the multi-step decay: lr x gamma at each milestone epoch."""

    epochs: int = 200
    milestones: tuple[int, ...] = (60, 120, 160)
    gamma: float = 0.2


@dataclass
class TermConfig:
    """One weighted distillation term: ``weight * build_loss(loss, **params)``."""

    loss: str = "gkd"
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    """Execution options that do not change the maths (except ``seed``)."""

    seed: int = 0
    amp: str | None = None  # None, "bf16" or "fp16" (CUDA only)
    # None: channels-last on a CPU, where oneDNN's convolutions of these narrow networks are
    # faster in it (2026-12-03, 2 threads: a WRN-28-0.5 training step ~1.2x with geokd's
    # BatchNorm2d, a WRN-28-1 teacher forward 1.3x), channels-first elsewhere.
    channels_last: bool | None = None
    skip_nonfinite_steps: bool = False
    tensorboard: bool = False
    global_batch_graph: bool = False  # DDP: one graph over the all-gathered global batch
    checkpoint_every: int = 1
    threads: int | None = None  # torch CPU threads during the run (None: leave torch's setting)


@dataclass
class TrainConfig:
    """Everything that defines one training run.

    ``teacher`` is ``None`` to train a network from labels alone (cross-entropy), or a
    run directory / checkpoint path / network spec (``torchvision:resnet18?num_classes=10@t.pt``)
    of the frozen teacher; ``teacher_sensing_points`` names its taps when it does not declare
    its own (any network not of geokd's registry). ``terms`` are the weighted distillation
    terms added to the cross-entropy; empty means no distillation.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: str | None = None
    teacher_sensing_points: tuple[str, ...] | None = None
    ce_weight: float = 1.0  # weight of the cross-entropy term (Hinton KD: 1 - alpha)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    terms: tuple[TermConfig, ...] = ()
    run: RunConfig = field(default_factory=RunConfig)


# ----------------------------------------------------------------------------- parsing

def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert lists to tuples, ints to floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {type(value).__name__} {value!r}")
        return _build(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        item_tp = args[0]
        return tuple(_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {type(value).__name__} {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{where}: cannot check a value of type {_type_name(tp)}")  # pragma: no cover


def _build(cls: type, table: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in table.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f" (known keys: {', '.join(names)})"
            prefix = f"{where}: " if where else ""
            raise ConfigError(f"{prefix}unknown key {key!r}{hint}")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}" if where else key)
    return cls(**kwargs)


def config_from_dict(table: dict, *, validate: bool = True) -> TrainConfig:
    """Build a :class:`TrainConfig` from a nested dict; missing keys take defaults."""
    if not isinstance(table, dict):
        raise ConfigError(f"expected a table of config sections, got {type(table).__name__}")
    config = _build(TrainConfig, table, "")
    if validate:
        validate_config(config)
    return config


def config_to_dict(config: TrainConfig) -> dict:
    """The resolved config as plain JSON/TOML-able data (tuples become lists)."""

    def plain(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj):
            return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, (list, tuple)):
            return [plain(v) for v in obj]
        if isinstance(obj, dict):
            return {k: plain(v) for k, v in obj.items()}
        return obj

    return plain(config)


def load_config(path: str | Path, *, overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """Read a TOML config file, apply ``section.key=value`` overrides, validate."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    return load_config_text(path.read_text(), overrides=overrides, source=str(path))


def load_config_text(text: str, *, overrides: typing.Sequence[str] = (), source: str = "config") -> TrainConfig:
    """Like :func:`load_config` for TOML text."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    for assignment in overrides:
        key, value = parse_override(assignment)
        _set_path(table, key, value)
    return config_from_dict(table)


def parse_override(assignment: str) -> tuple[str, Any]:
    """Split ``"optim.lr=0.05"`` into ``("optim.lr", 0.05)``; the value is read as TOML.

    A value that is not valid TOML is taken as a bare string (``data.name=digits``).

    >>> parse_override("schedule.milestones=[10, 20]")
    ('schedule.milestones', [10, 20])
    >>> parse_override("data.name=digits")
    ('data.name', 'digits')
    """
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r}: expected KEY=VALUE such as optim.lr=0.05")
    key, raw = assignment.split("=", 1)
    key, raw = key.strip(), raw.strip()
    if not key:
        raise ConfigError(f"override {assignment!r}: empty key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def _set_path(table: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = table
    for part in parts[:-1]:
        if part.isdigit() and isinstance(node, list):
            index = int(part)
            if index >= len(node):
                raise ConfigError(f"override {dotted!r}: index {index} out of range ({len(node)} items)")
            node = node[index]
            continue
        node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"override {dotted!r}: {part!r} is a value, not a table")
    node[parts[-1]] = value


def apply_overrides(config: TrainConfig, assignments: typing.Sequence[str]) -> TrainConfig:
    """A new validated config with ``section.key=value`` assignments applied.

    ``terms.0.weight=10`` addresses the first term; ``null`` is not TOML, so to unset an
    optional value write it in the file instead.
    """
    table = config_to_dict(config)
    for assignment in assignments:
        key, value = parse_override(assignment)
        _set_path(table, key, value)
    return config_from_dict(table)


# ----------------------------------------------------------------------------- validation

_AMP_MODES = (None, "bf16", "fp16")
_OPTIMIZERS = ("sgd", "adam", "adamw")


def resolve_channels_last(run: RunConfig, device) -> bool:
    """``run.channels_last``, its default (``None``) resolved for ``device``.

    Examples
    --------
    >>> resolve_channels_last(RunConfig(), "cpu"), resolve_channels_last(RunConfig(), "cuda")
    (True, False)
    >>> resolve_channels_last(RunConfig(channels_last=False), "cpu")
    False
    """
    if run.channels_last is not None:
        return run.channels_last
    return str(device).split(":")[0] == "cpu"


def with_resolved_layout(config: TrainConfig, device) -> TrainConfig:
    """``config`` with ``run.channels_last`` resolved for ``device``: the layout a run
    trains in and records (the same config trains channels-last on a CPU and
    channels-first on a GPU).

    Examples
    --------
    >>> with_resolved_layout(TrainConfig(), "cpu").run.channels_last
    True
    """
    return dataclasses.replace(config, run=dataclasses.replace(
        config.run, channels_last=resolve_channels_last(config.run, device)))


def validate_config(config: TrainConfig) -> None:
    """Reject impossible values with a :class:`ConfigError` naming the key and the value.

    Checks that need the data or the models (class count, sensing point names) happen
    in the trainer, still before the first step.
    """
    d, o, s, r = config.data, config.optim, config.schedule, config.run
    if d.batch_size < 2:
        raise ConfigError(f"data.batch_size: expected at least 2 (graphs need pairs), got {d.batch_size}")
    if d.eval_batch_size < 1:
        raise ConfigError(f"data.eval_batch_size: expected a positive integer, got {d.eval_batch_size}")
    if d.fraction is not None and not 0.0 < d.fraction <= 1.0:
        raise ConfigError(f"data.fraction: expected a value in (0, 1], got {d.fraction}")
    if (d.mean is None) != (d.std is None):
        raise ConfigError(f"data.mean, data.std: expected both or neither, got mean={d.mean} and std={d.std}")
    if d.mean is not None and (len(d.mean) != len(d.std) or not d.mean or min(d.std) <= 0):
        raise ConfigError(f"data.mean, data.std: expected one value per channel, std > 0, got mean={list(d.mean)} "
                          f"and std={list(d.std)}")
    if d.workers < 0:
        raise ConfigError(f"data.workers: expected a number of decoding processes >= 0, got {d.workers}")
    if d.stream:
        if not d.name.startswith("imagefolder:"):
            raise ConfigError(f"data.stream: streams read image folders; expected data.name = 'imagefolder:PATH', "
                              f"got {d.name!r}")
        if d.image_size is None or d.mean is None:
            raise ConfigError("data.stream: expected data.image_size (the crop side, e.g. 224) and data.mean / "
                              "data.std (ImageNet: [0.485, 0.456, 0.406] and [0.229, 0.224, 0.225]); got "
                              f"image_size={d.image_size}, mean={d.mean}")
        if d.fraction is not None:
            raise ConfigError(f"data.fraction: a streamed folder is read whole; expected no fraction, got {d.fraction}")
    if o.name not in _OPTIMIZERS:
        close = difflib.get_close_matches(o.name, _OPTIMIZERS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"optim.name: expected one of {', '.join(_OPTIMIZERS)}, got {o.name!r}{hint}")
    if not o.lr > 0:
        raise ConfigError(f"optim.lr: expected a positive learning rate, got {o.lr}")
    if o.momentum < 0 or o.weight_decay < 0:
        raise ConfigError(
            f"optim: expected momentum and weight_decay >= 0, got {o.momentum} and {o.weight_decay}"
        )
    if s.epochs < 1:
        raise ConfigError(f"schedule.epochs: expected at least 1, got {s.epochs}")
    if list(s.milestones) != sorted(set(s.milestones)) or any(m < 1 for m in s.milestones):
        raise ConfigError(f"schedule.milestones: expected increasing positive epochs, got {list(s.milestones)}")
    if not 0 < s.gamma <= 1:
        raise ConfigError(f"schedule.gamma: expected a factor in (0, 1], got {s.gamma}")
    if r.amp not in _AMP_MODES:
        raise ConfigError(f"run.amp: expected none, 'bf16' or 'fp16', got {r.amp!r}")
    if r.threads is not None and r.threads < 1:
        raise ConfigError(f"run.threads: expected a positive number of threads, got {r.threads}")
    if r.checkpoint_every < 1:
        raise ConfigError(f"run.checkpoint_every: expected at least 1, got {r.checkpoint_every}")
    if isinstance(config.ce_weight, bool) or not isinstance(config.ce_weight, (int, float)) or not config.ce_weight >= 0:
        raise ConfigError(f"ce_weight: expected a non-negative weight for the cross-entropy, got {config.ce_weight!r}")
    for i, term in enumerate(config.terms):
        where = f"terms[{i}] ({term.loss})"
        if not term.weight >= 0:
            raise ConfigError(f"{where}.weight: expected a non-negative weight lambda, got {term.weight}")
        k = term.params.get("k")
        if k is not None:
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ConfigError(f"{where}.params.k: expected a positive integer, got {k!r}")
            if k >= d.batch_size:
                raise ConfigError(
                    f"{where}.params.k: expected fewer neighbours than the batch size {d.batch_size}, "
                    f"got k={k} (omit k for the full graph)"
                )
        power = term.params.get("power")
        if power is not None and (isinstance(power, bool) or not isinstance(power, int) or power < 1):
            raise ConfigError(f"{where}.params.power: expected an integer p >= 1, got {power!r}")
