"""Networks from anywhere: ``torchvision:NAME`` and ``MODULE:CALLABLE`` builders, by spec.

A *network spec* is ``SOURCE[?KEY=VALUE&...][@WEIGHTS]``:

- ``torchvision:resnet18?num_classes=10``: any classification builder of
  ``torchvision.models`` (``torchvision.models.list_models(module=torchvision.models)``);
- ``geokd:wrn?depth=16&widen_factor=0.5``: a model of geokd's own registry;
- ``mypackage.nets:make_student?width=0.5``: a factory (any callable returning an
  ``nn.Module``) in the user's importable code;
- ``...@weights.pt``: a state-dict file loaded into the built network
  (:func:`geokd.checkpoints.load_weights`: weights-only, ``.safetensors`` if installed).

Keyword values are Python literals (``10``, ``0.5``, ``None``, ``'a'``, ``(1, 2)``); anything
else is taken as a string, so ``?weights=IMAGENET1K_V1`` reaches torchvision as a string.
A network built from a spec remembers it, so :func:`geokd.models.model_config` (and so a
geokd checkpoint of it) rebuilds it: ``build_model(**model_config(net))``.

Examples
--------
>>> spec = parse_network_spec("torchvision:resnet18?num_classes=10@runs/teacher.pt")
>>> spec.source, spec.kwargs, spec.weights
('torchvision:resnet18', {'num_classes': 10}, 'runs/teacher.pt')
>>> net = build_from_source("torchvision:resnet18", num_classes=3)
>>> net.fc.out_features, net.geokd_model_config
(3, {'name': 'torchvision:resnet18', 'num_classes': 3})
>>> build_from_source("torchvision:resnet81")
Traceback (most recent call last):
...
ValueError: torchvision:resnet81: torchvision.models has no classification builder 'resnet81'; did you mean 'resnet18', 'resnet152', 'resnet101'?
"""

from __future__ import annotations

import ast
import difflib
import importlib
import inspect
import re
from dataclasses import dataclass, field

from torch import nn

__all__ = ["NetworkSpec", "build_from_source", "build_network", "check_source_trusted", "import_callable",
           "is_network_spec", "parse_keywords", "parse_network_spec"]

TORCHVISION = "torchvision"
GEOKD = "geokd"  # geokd:NAME is a model of geokd's own registry (geokd.models.build_model)
# MODULE:CALLABLE, both dotted Python names; "?" keywords and "@" weights may follow.
_SOURCE = re.compile(r"^(?P<module>[A-Za-z_][\w.]*):(?P<attr>[A-Za-z_][\w.]*)$")


@dataclass(frozen=True)
class NetworkSpec:
    """A parsed network spec (see the module docstring)."""

    source: str
    kwargs: dict = field(default_factory=dict)
    weights: str | None = None

    @property
    def name(self) -> str:
        """A short name: the weights file's stem, else the builder's name."""
        import os

        if self.weights:
            return os.path.splitext(os.path.basename(self.weights))[0]
        return self.source.split(":", 1)[1].rsplit(".", 1)[-1]


def parse_keywords(query: str, *, where: str = "spec") -> dict:
    """``"a=1&b=x"`` to ``{"a": 1, "b": "x"}`` (values as Python literals, else strings).

    Examples
    --------
    >>> parse_keywords("num_classes=10&width_mult=0.5&weights=None&act=relu")
    {'num_classes': 10, 'width_mult': 0.5, 'weights': None, 'act': 'relu'}
    """
    kwargs: dict = {}
    if not query:
        return kwargs
    for part in query.split("&"):
        key, sep, text = part.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"{where}: expected keywords as KEY=VALUE joined by '&', got {part!r}")
        if key in kwargs:
            raise ValueError(f"{where}: keyword {key!r} given twice")
        try:
            kwargs[key] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            kwargs[key] = text.strip()
    return kwargs


def is_network_spec(text) -> bool:
    """Whether ``text`` has the form of a network spec (it may still name no real builder).

    Examples
    --------
    >>> is_network_spec("torchvision:mobilenet_v2?num_classes=10"), is_network_spec("runs/gkd/seed0")
    (True, False)
    """
    if not isinstance(text, str):
        return False
    source = text.split("@", 1)[0].split("?", 1)[0]
    return bool(_SOURCE.match(source))


def parse_network_spec(text: str) -> NetworkSpec:
    """Split ``SOURCE[?KEY=VALUE&...][@WEIGHTS]`` into its parts (nothing is imported)."""
    if not is_network_spec(text):
        raise ValueError(
            f"expected a network spec 'torchvision:NAME[?k=v&...][@WEIGHTS]' or 'MODULE:CALLABLE[...]', "
            f"or an existing run directory or checkpoint file, got {text!r}"
        )
    head, _, weights = text.partition("@")
    source, _, query = head.partition("?")
    if "@" in text and not weights:
        raise ValueError(f"{text}: expected a weights file after '@', got nothing")
    return NetworkSpec(source=source, kwargs=parse_keywords(query, where=text), weights=weights or None)


def build_network(text: str, **overrides) -> nn.Module:
    """Build the network of a whole spec ``SOURCE[?k=v&...][@WEIGHTS]``.

    ``overrides`` add keywords; one that contradicts the spec's own is an error rather
    than a silent choice between them.

    Examples
    --------
    >>> build_network("torchvision:resnet18?num_classes=4", num_classes=4).fc.out_features
    4
    >>> build_network("torchvision:resnet18?num_classes=4", num_classes=10)
    Traceback (most recent call last):
    ...
    ValueError: torchvision:resnet18?num_classes=4: the spec gives num_classes=4, but 10 was asked for
    """
    spec = parse_network_spec(text)
    for key, value in overrides.items():
        if key in spec.kwargs and spec.kwargs[key] != value:
            raise ValueError(f"{text}: the spec gives {key}={spec.kwargs[key]!r}, but {value!r} was asked for")
    model = build_from_source(spec.source, **{**spec.kwargs, **overrides})
    if spec.weights is not None:
        from geokd.checkpoints.weights import load_weights

        load_weights(model, spec.weights)
    return model


TRUSTED_MODULES_ENV = "GEOKD_TRUSTED_MODULES"


def check_source_trusted(source: str, *, where: str) -> None:
    """Refuse to import user code that a *file* names (a checkpoint's recorded builder).

    A spec typed by the user is their choice; a ``MODULE:CALLABLE`` read from a checkpoint
    would let whoever wrote the file run any importable callable (``os:system``). Such a
    source is rebuilt only when its module, or a package above it, is listed in
    ``$GEOKD_TRUSTED_MODULES`` (comma-separated); torchvision and geokd sources always are.

    Examples
    --------
    >>> check_source_trusted("torchvision:resnet18", where="ckpt.pt")
    >>> check_source_trusted("os:system", where="ckpt.pt")
    Traceback (most recent call last):
    ...
    ValueError: ckpt.pt records its network as built by 'os:system'; geokd does not import code named in a file unless told to: set GEOKD_TRUSTED_MODULES=os if you trust it, or load the weights into a network you name: 'os:system@ckpt.pt'
    """
    import os

    match = _SOURCE.match(source) if isinstance(source, str) else None
    if not match or match.group("module") in (TORCHVISION, GEOKD):
        return
    module = match.group("module")
    trusted = {m.strip() for m in os.environ.get(TRUSTED_MODULES_ENV, "").split(",") if m.strip()}
    parts = module.split(".")
    if any(".".join(parts[:i]) in trusted for i in range(1, len(parts) + 1)):
        return
    raise ValueError(
        f"{where} records its network as built by {source!r}; geokd does not import code named in a "
        f"file unless told to: set {TRUSTED_MODULES_ENV}={module} if you trust it, or load the weights "
        f"into a network you name: '{source}@{where}'"
    )


def _classification_builders() -> list[str]:
    import torchvision.models

    return torchvision.models.list_models(module=torchvision.models)


def _torchvision_builder(name: str, source: str):
    import torchvision.models

    builders = _classification_builders()
    if name not in builders:
        if name in torchvision.models.list_models():
            raise ValueError(f"{source}: {name!r} is a torchvision model but not a classification builder "
                             "(geokd taps classifiers that return logits)")
        close = difflib.get_close_matches(name, builders, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else f" (available: {', '.join(builders)})"
        raise ValueError(f"{source}: torchvision.models has no classification builder {name!r}{hint}")
    return torchvision.models.get_model_builder(name)


def import_callable(module_name: str, attr: str, *, where: str, returns: str):
    """``module_name.attr`` (a dotted attribute path) imported, checked callable.

    Errors start with ``where`` (the spec as the user wrote it), say what could not be
    imported or which attribute is missing (with the nearest names), and name what the
    callable should have returned (``returns``).

    Examples
    --------
    >>> import_callable("math", "hypot", where="math:hypot", returns="a number")(3, 4)
    5.0
    >>> import_callable("math", "hypto", where="math:hypto", returns="a number")
    Traceback (most recent call last):
    ...
    ValueError: math:hypto: 'math' has no attribute 'hypto'; did you mean 'hypot', 'pow'?
    """
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{where}: cannot import module {module_name!r} ({exc}); "
                         "is it installed or on PYTHONPATH?") from None
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            names = [n for n in dir(target) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"{where}: {getattr(target, '__name__', module_name)!r} has no attribute {part!r}{hint}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{where}: expected a callable returning {returns}, got a {type(target).__name__}")
    return target


def build_from_source(source: str, **kwargs) -> nn.Module:
    """Build the network of ``source`` (``torchvision:NAME`` or ``MODULE:CALLABLE``) with ``kwargs``.

    The network is returned in training mode with the builder's initialisation; it carries
    ``geokd_model_config = {"name": source, **kwargs}``.
    """
    match = _SOURCE.match(source) if isinstance(source, str) else None
    if not match:
        raise ValueError(f"expected a source 'torchvision:NAME' or 'MODULE:CALLABLE', got {source!r}")
    module_name, attr = match.group("module"), match.group("attr")
    if module_name == GEOKD:
        from geokd.models import build_model

        return build_model(attr, **kwargs)   # geokd's own models record their config themselves
    builder = (_torchvision_builder(attr, source) if module_name == TORCHVISION
               else import_callable(module_name, attr, where=source, returns="an nn.Module"))
    try:
        inspect.signature(builder).bind(**kwargs)
    except TypeError as exc:
        raise ValueError(f"{source}: the builder does not take {sorted(kwargs)}: {exc}") from None
    except ValueError:  # builtins without a signature: let the call say it
        pass
    try:
        model = builder(**kwargs)
    except TypeError as exc:  # torchvision's builders take **kwargs: a wrong keyword shows here
        raise ValueError(f"{source}: the builder does not take {sorted(kwargs)}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"{source}: expected the builder to return an nn.Module, got {type(model).__name__}")
    model.geokd_model_config = {"name": source, **kwargs}
    return model
