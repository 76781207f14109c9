"""The weight initialisations of the CRD benchmark's networks (RepDistiller ``models/``).

The benchmark's numbers were trained from these starting points, so each family starts
from the same distributions as its reference rather than from PyTorch's defaults.

Examples
--------
>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 2))
>>> _ = torch.manual_seed(0)
>>> conv_fan_out_(net, linear="small_normal")
>>> float(net[1].weight.detach().min()), float(net[2].bias.detach().abs().max())
(1.0, 0.0)
"""

from __future__ import annotations

import math

from torch import nn

__all__ = ["conv_fan_out_"]

_LINEAR = ("default", "zero_bias", "small_normal")


def conv_fan_out_(model: nn.Module, *, linear: str = "default") -> None:
    """Initialise ``model`` in place as the reference networks do.

    Convolutions: ``N(0, 2 / (k·k·out_channels))`` (He, fan-out), biases zero; batch
    norms: weight 1, bias 0. ``linear`` picks the classifier's rule: ``"default"``
    (PyTorch's, as the CIFAR ResNets), ``"zero_bias"`` (PyTorch's weight, zero bias, as
    the WRNs) or ``"small_normal"`` (``N(0, 0.01²)``, zero bias, as VGG and MobileNetV2).
    """
    if linear not in _LINEAR:
        raise ValueError(f"conv_fan_out_: linear must be one of {_LINEAR}, got {linear!r}")
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and linear != "default":
            if linear == "small_normal":
                nn.init.normal_(module.weight, 0.0, 0.01)
            nn.init.zeros_(module.bias)
