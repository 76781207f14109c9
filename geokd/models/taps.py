"""Read intermediate activations of any ``nn.Module`` by module name.

``FeatureTaps(model, names)`` registers forward hooks on the named sub-modules for the
duration of one forward pass and returns :class:`~geokd.models.outputs.ModelOutputs`.
A name ending in ``":input"`` captures the module's (first) input instead of its output,
e.g. ``"layer1.0.relu2:input"`` is the pre-activation of the block output, as Activation
Boundary distillation needs.

Hooks never outlive a call (they are removed in a ``finally``), so a tapped model can be
used, saved or compiled as usual afterwards. Captured tensors are the very tensors of the
forward pass: under autograd they keep their graph, under ``no_grad``/``inference_mode``
they cost nothing extra.

Examples
--------
>>> import torch
>>> from geokd.models import build_model
>>> net = build_model("wrn", depth=10, widen_factor=0.5)
>>> out = forward_with_features(net, torch.randn(2, 3, 32, 32))
>>> [tuple(f.shape) for f in out.features]
[(2, 8, 32, 32), (2, 16, 16, 16), (2, 32)]
>>> taps = FeatureTaps(net, ["layer1.0.relu2:input", "pool"])
>>> pre = taps(torch.randn(2, 3, 32, 32)).features[0]
>>> bool((pre < 0).any())   # pre-ReLU responses take negative values
True
>>> FeatureTaps(net, ["layer4"])
Traceback (most recent call last):
...
ValueError: no module named 'layer4' in WideResNet; did you mean 'layer3', 'layer2', 'layer1'? (`geokd layers NETWORK` lists every tappable name)
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

from geokd.models.outputs import ModelOutputs

__all__ = ["FeatureTaps", "LogitsOnly", "TapRecorder", "forward_with_features", "parse_tap_name"]

INPUT_SUFFIX = ":input"


def parse_tap_name(name: str) -> tuple[str, bool]:
    """Split ``"module.path[:input]"`` into the module path and whether the input is wanted."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a tap name must be a non-empty string, got {name!r}")
    if name.endswith(INPUT_SUFFIX):
        return name[: -len(INPUT_SUFFIX)], True
    if ":" in name:
        raise ValueError(f"tap {name!r}: the only suffix understood is {INPUT_SUFFIX!r}")
    return name, False


def _logits_of(output) -> torch.Tensor:
    # Our models return logits; other code often returns (logits, extras) or ModelOutputs.
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, ModelOutputs):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ValueError(
        f"expected the model to return a logits tensor (or a tuple starting with one), got {type(output).__name__}"
    )


class FeatureTaps:
    """Callable that runs ``model`` and returns its logits with the named activations.

    Parameters
    ----------
    model : nn.Module
        Any module; names are those of ``model.named_modules()``.
    names : sequence of str
        Module paths, optionally suffixed ``":input"``. Order is kept in the output.

    Raises
    ------
    ValueError
        At construction, for a name that is not a sub-module (listing close valid names);
        at call time, if a tapped module did not run, ran more than once, or its captured
        output was modified in place later in the forward pass.
    """

    def __init__(self, model: nn.Module, names):
        if not isinstance(model, nn.Module):
            raise ValueError(f"FeatureTaps: expected an nn.Module, got {type(model).__name__}")
        if isinstance(names, str):
            raise ValueError(f"FeatureTaps: names must be a sequence of module names, got the string {names!r}")
        names = list(names)
        if not names:
            raise ValueError("FeatureTaps: expected at least one module name, got none")
        modules = dict(model.named_modules())
        self._targets: list[tuple[str, nn.Module, bool]] = []
        for name in names:
            path, want_input = parse_tap_name(name)
            if path == "" or path not in modules:
                valid = [n for n in modules if n]
                close = difflib.get_close_matches(path, valid, n=3, cutoff=0.6)
                hint = f"did you mean {', '.join(map(repr, close))}?" if close else (
                    f"top-level modules: {', '.join(repr(n) for n in valid if '.' not in n)}"
                )
                raise ValueError(f"no module named {path!r} in {type(model).__name__}; {hint} "
                                 "(`geokd layers NETWORK` lists every tappable name)")
            self._targets.append((name, modules[path], want_input))
        if len(set(names)) != len(names):
            raise ValueError(f"FeatureTaps: names repeat: {names}")
        self.model = model
        self.names = tuple(names)
        self._has_inplace = any(getattr(m, "inplace", False) is True for m in modules.values())

    def recorder(self, *, accept=None) -> "TapRecorder":
        """A :class:`TapRecorder` of these taps (for hooks that outlive one call, as
        :class:`geokd.distill.Distiller`'s do)."""
        return TapRecorder(self._targets, has_inplace=self._has_inplace, accept=accept)

    def __call__(self, x, *args, **kwargs) -> ModelOutputs:
        recorder = self.recorder()
        recorder.register()
        try:
            output = self.model(x, *args, **kwargs)
        finally:
            recorder.remove()
        return ModelOutputs(_logits_of(output), recorder.features())

    # A context manager for symmetry with other resources: hooks are only ever attached
    # during a call, so there is nothing left to remove on exit.
    def __enter__(self) -> "FeatureTaps":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def __repr__(self) -> str:
        return f"FeatureTaps({type(self.model).__name__}, {list(self.names)})"


class TapRecorder:
    """Hooks on tapped modules and what they saw since the last :meth:`reset`.

    One mechanism for the hooks of :class:`FeatureTaps` (attached for one call) and of
    :class:`geokd.distill.Distiller` (attached until it is closed). A problem seen inside
    the forward pass (a module that returned no tensor) is kept and raised by
    :meth:`features`, after the forward, rather than from inside the user's model.

    Parameters
    ----------
    targets : list of (name, module, want_input)
        What :class:`FeatureTaps` resolved from the names.
    has_inplace : bool
        The model has an in-place module: inference tensors (no version counter) are copied.
    accept : callable, optional
        ``accept() -> bool``, asked at every hook: ``False`` ignores that run of the
        module (the Distiller ignores the teacher's forward through shared modules).
    """

    def __init__(self, targets, *, has_inplace: bool, accept=None):
        self.targets = list(targets)
        self.has_inplace = has_inplace
        self.accept = accept
        self.handles: list = []
        self.reset()

    def reset(self) -> None:
        """Forget what was seen (a new forward pass starts)."""
        self.captured: dict[str, torch.Tensor] = {}
        self.versions: dict[str, int] = {}
        self.counts = {name: 0 for name, _, _ in self.targets}
        self.problems: list[str] = []

    def _keep(self, name: str, value, *, what: str) -> None:
        if self.accept is not None and not self.accept():
            return
        self.counts[name] += 1
        if not isinstance(value, torch.Tensor):
            self.problems.append(f"tap {name!r}: the module's first input is not a tensor" if what == "input" else
                                 f"tap {name!r}: the module returned a {type(value).__name__}, not a tensor; "
                                 "tap one of its children")
            return
        if value.is_inference():
            # Inference tensors have no version counter to detect a later in-place
            # overwrite: copy them when the model has any in-place module.
            self.captured[name] = value.clone() if self.has_inplace else value
            self.versions.pop(name, None)
        else:
            self.captured[name] = value
            self.versions[name] = value._version

    def register(self) -> None:
        """Attach the hooks (forward hooks; pre-hooks for ``":input"`` taps)."""
        for name, module, want_input in self.targets:
            if want_input:
                def pre_hook(mod, args, _name=name):
                    # Seen before an in-place module (ReLU(inplace=True)) overwrites it.
                    value = args[0] if args else None
                    if isinstance(value, torch.Tensor) and getattr(mod, "inplace", False):
                        value = value.clone()
                    self._keep(_name, value, what="input")

                self.handles.append(module.register_forward_pre_hook(pre_hook))
            else:
                self.handles.append(module.register_forward_hook(
                    lambda mod, args, output, _name=name: self._keep(_name, output, what="output")))

    def remove(self) -> None:
        """Detach every hook (idempotent)."""
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def features(self) -> list[torch.Tensor]:
        """Each tap's tensor, in order; ``ValueError`` if a tap did not run exactly once or
        its tensor was modified in place later in the forward pass."""
        if self.problems:
            raise ValueError(self.problems[0])
        for name, _, _ in self.targets:
            if self.counts[name] == 0:
                raise ValueError(f"tap {name!r}: the module did not run in the forward pass")
            if self.counts[name] > 1:
                raise ValueError(
                    f"tap {name!r}: the module ran {self.counts[name]} times in one forward pass "
                    "(a shared module); tap a module that runs once"
                )
            version = self.versions.get(name)
            if version is not None and self.captured[name]._version != version:
                raise ValueError(
                    f"tap {name!r}: its output was modified in place later in the forward pass "
                    "(e.g. by ReLU(inplace=True)); tap the in-place module's input (':input') "
                    "or its output instead"
                )
        return [self.captured[name] for name, _, _ in self.targets]


class LogitsOnly:
    """The taps of a network with no sensing points: its plain forward, no features.

    Examples
    --------
    >>> net = torch.nn.Linear(4, 3)
    >>> out = LogitsOnly(net)(torch.randn(2, 4))
    >>> tuple(out.logits.shape), out.features
    ((2, 3), [])
    """

    names: tuple[str, ...] = ()

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, x, *args, **kwargs) -> ModelOutputs:
        return ModelOutputs(_logits_of(self.model(x, *args, **kwargs)), [])

    def __repr__(self) -> str:
        return f"LogitsOnly({type(self.model).__name__})"


def forward_with_features(model: nn.Module, x, names=None) -> ModelOutputs:
    """One forward pass returning logits and features at ``names`` (default: the model's
    ``sensing_points``)."""
    if names is None:
        names = getattr(model, "sensing_points", None)
        if not names:
            raise ValueError(
                f"{type(model).__name__} has no sensing_points; pass names=[...] (module names to tap)"
            )
    return FeatureTaps(model, names)(x)
