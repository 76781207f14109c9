"""Networks by name, and the taps that read their sensing points.

Examples
--------
>>> net = build_model("wrn", depth=16, widen_factor=0.5, num_classes=10)
>>> model_config(net)
{'name': 'wrn', 'depth': 16, 'widen_factor': 0.5, 'num_classes': 10, 'in_channels': 3}
>>> type(build_model(**model_config(net))).__name__
'WideResNet'
>>> model_config(build_model("resnet20"))["depth"]
20
"""

from __future__ import annotations

import difflib

from torch import nn

from geokd.models.crd import CRD_MODELS
from geokd.models.outputs import ModelOutputs
from geokd.models.resnet_cifar import CifarResNet
from geokd.models.small import MLP, SmallCNN
from geokd.models.specs import build_network, is_network_spec
from geokd.models.taps import FeatureTaps, forward_with_features
from geokd.models.wrn import WideResNet

__all__ = [
    "FeatureTaps",
    "forward_with_features",
    "MLP",
    "CifarResNet",
    "ModelOutputs",
    "SmallCNN",
    "WideResNet",
    "available_models",
    "build_model",
    "model_config",
    "register_model",
]

# name -> (class, fixed keyword arguments); aliases such as "resnet20" fix the depth.
_REGISTRY: dict[str, tuple[type[nn.Module], dict]] = {}


def register_model(name: str, cls: type[nn.Module], **fixed) -> None:
    """Register ``cls`` under ``name``; ``fixed`` keywords are implied by the name.

    The class must define ``config()`` returning the keywords that rebuild an instance.
    """
    if name in _REGISTRY and _REGISTRY[name] != (cls, fixed):
        raise ValueError(f"a model named {name!r} is already registered ({_REGISTRY[name][0].__qualname__})")
    if not callable(getattr(cls, "config", None)):
        raise ValueError(f"model class {cls.__qualname__} must define config() to be registered")
    _REGISTRY[name] = (cls, dict(fixed))


def available_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def build_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name`` with keyword hyper-parameters.

    Raises
    ------
    ValueError
        For an unknown name (close names are suggested) or a keyword the model does not take.

    ``name`` may also be a network spec ``torchvision:NAME[?k=v][@WEIGHTS]`` or
    ``MODULE:CALLABLE[...]`` (:mod:`geokd.models.specs`).
    """
    if is_network_spec(name):
        return build_network(name, **kwargs)
    try:
        cls, fixed = _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (available: {', '.join(available_models())})") from None
    clash = {key for key in kwargs if key in fixed and kwargs[key] != fixed[key]}
    if clash:
        raise ValueError(
            f"model {name!r} fixes {', '.join(f'{k}={fixed[k]!r}' for k in sorted(clash))}; "
            f"got {', '.join(f'{k}={kwargs[k]!r}' for k in sorted(clash))}"
        )
    try:
        return cls(**{**kwargs, **fixed})
    except TypeError as exc:
        raise ValueError(f"model {name!r} ({cls.__name__}): {exc}") from None


def _canonical_name(cls: type[nn.Module]) -> str:
    for name, (registered, fixed) in sorted(_REGISTRY.items()):
        if registered is cls and not fixed:
            return name
    raise ValueError(f"{cls.__qualname__} is not a registered geokd model")


def model_config(model: nn.Module) -> dict:
    """A dict ``{"name": …, **kwargs}`` with ``build_model(**model_config(m))`` rebuilding ``m``."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model_config: expected an nn.Module, got {type(model).__name__}")
    built_from = getattr(model, "geokd_model_config", None)
    if isinstance(built_from, dict):   # built from a torchvision / user source
        return dict(built_from)
    config = getattr(model, "config", None)
    if not callable(config):
        raise ValueError(
            f"model_config: {type(model).__qualname__} is not a geokd model (it has no config()); "
            "save its state dict with your own record of the architecture"
        )
    return {"name": _canonical_name(type(model)), **config()}


register_model("wrn", WideResNet)
register_model("resnet_cifar", CifarResNet)
for _depth in (8, 14, 20, 32, 44, 56, 110):
    register_model(f"resnet{_depth}", CifarResNet, depth=_depth)
register_model("mlp", MLP)
register_model("small_cnn", SmallCNN)
# The CRD benchmark's CIFAR-100 networks under its names (geokd/models/crd). Its resnet8 …
# resnet110 are the CifarResNet registered above (same layers and parameter count), so
# those names keep resolving to it; its "x4" ResNets have a narrower stem and are CRD's own.
for _name, (_cls, _fixed) in CRD_MODELS.items():
    register_model(_name, _cls, **_fixed)
del _depth, _name, _cls, _fixed
