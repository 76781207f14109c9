"""A registry of distillation losses by name.

Each loss family lives in its own module and registers its ``nn.Module`` wrapper with
:func:`register_loss`. Study configs then name a loss (``"gkd"``, ``"rkd_distance"``…)
and :func:`build_loss` constructs it with keyword-only hyper-parameters.

Every registered loss is called as ``loss(student, teacher, labels)`` where
``student`` and ``teacher`` are :class:`~geokd.models.taps.ModelOutputs` (logits and the
list of sensing-point features) and ``labels`` is a ``(B,)`` long tensor; it returns a
scalar tensor *without* its weight λ (the trainer multiplies by λ).

Examples
--------
>>> import torch
>>> @register_loss("_doc_zero")
... class ZeroLoss(torch.nn.Module):
...     def forward(self, student, teacher, labels):
...         return student.logits.sum() * 0
>>> "_doc_zero" in available_losses()
True
>>> type(build_loss("_doc_zero")).__name__
'ZeroLoss'
>>> _unregister_loss("_doc_zero")
"""

from __future__ import annotations

import difflib
from typing import Callable

from torch import nn

_REGISTRY: dict[str, type[nn.Module]] = {}


def register_loss(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator that registers a loss module under ``name``."""

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"a loss named {name!r} is already registered ({_REGISTRY[name].__qualname__})")
        _REGISTRY[name] = cls
        return cls

    return decorator


def _unregister_loss(name: str) -> None:
    _REGISTRY.pop(name, None)


def available_losses() -> list[str]:
    """Names of all registered losses, sorted."""
    _import_builtin_losses()
    return sorted(_REGISTRY)


def get_loss_class(name: str) -> type[nn.Module]:
    """The registered class for ``name``; a clear error with close names otherwise."""
    _import_builtin_losses()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"unknown loss {name!r}{hint} (registered: {', '.join(sorted(_REGISTRY))})"
        ) from None


def build_loss(name: str, /, **params) -> nn.Module:
    """Construct the registered loss ``name`` with keyword hyper-parameters."""
    return get_loss_class(name)(**params)


def _import_builtin_losses() -> None:
    # Importing the package registers every built-in family (each module calls
    # register_loss at import time).
    import geokd.losses  # noqa: F401
