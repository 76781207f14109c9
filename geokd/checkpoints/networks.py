"""One entry point for every way a network can be named on geokd's command lines.

:func:`load_network` takes, in this order:

1. an existing path: a trainer's run directory (its ``model.pt``), a geokd checkpoint or one
   of the GKD authors' released pickles (:func:`geokd.checkpoints.load_any`);
2. a network spec ``SOURCE[?k=v&...][@WEIGHTS]`` (:mod:`geokd.models.specs`): the network
   is built from ``torchvision:NAME`` or ``MODULE:CALLABLE`` and, after ``@``, given the
   weights of a state-dict file (:func:`geokd.checkpoints.load_weights`).

Examples
--------
>>> net = load_network("torchvision:mobilenet_v2?num_classes=10")
>>> type(net).__name__, net.training
('MobileNetV2', False)
>>> load_network("runs/nothing-here")
Traceback (most recent call last):
...
geokd.errors.CheckpointError: network not found: 'runs/nothing-here' is no file or directory (its folder runs exists: False), and not a spec such as 'torchvision:resnet18?num_classes=10[@weights.pt]' or 'package.module:factory'
"""

from __future__ import annotations

import os

from torch import nn

from geokd.errors import CheckpointError

__all__ = ["load_network", "RUN_MODEL_FILE"]

RUN_MODEL_FILE = "model.pt"


def load_network(text, *, device="cpu") -> nn.Module:
    """The network named by ``text`` (path or spec), on ``device``, in eval mode."""
    from geokd.checkpoints.store import load_any
    from geokd.models.specs import build_network, is_network_spec

    text = os.fspath(text)
    if os.path.isdir(text):
        model_file = os.path.join(text, RUN_MODEL_FILE)
        if not os.path.isfile(model_file):
            raise CheckpointError(f"expected a run directory with {RUN_MODEL_FILE} at {text}, found none "
                                  "(is the run finished?)")
        return load_any(model_file, device=device)
    if os.path.exists(text):
        return load_any(text, device=device)
    if not is_network_spec(text):
        folder = os.path.dirname(text) or "."
        raise CheckpointError(
            f"network not found: {text!r} is no file or directory (its folder {folder} exists: "
            f"{os.path.isdir(folder)}), and not a spec such as "
            "'torchvision:resnet18?num_classes=10[@weights.pt]' or 'package.module:factory'"
        )
    try:
        model = build_network(text)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    return model.to(device).eval()
