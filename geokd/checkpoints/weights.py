"""State-dict files from other code: other trainers, DDP runs, ``safetensors`` exports.

:func:`read_weights` reads a file with torch's weights-only unpickler (nothing in it is run)
or, for ``.safetensors``, with the ``safetensors`` package, and returns a plain
``{name: tensor}`` dict:

- a wrapper dict is opened: ``{"state_dict": ...}``, ``{"model": ...}``,
  ``{"model_state_dict": ...}`` (Lightning, timm, torchvision reference scripts), and a
  geokd checkpoint's own ``state_dict``;
- a prefix every key shares is dropped when it is ``module.`` (``DataParallel`` /
  ``DistributedDataParallel``) or ``_orig_mod.`` (``torch.compile``).

:func:`load_weights` puts them into a network only if names and shapes match exactly
(missing / unexpected keys are listed: never a silent partial load).

Examples
--------
>>> import os, tempfile, torch
>>> net = torch.nn.Linear(2, 3)
>>> path = os.path.join(tempfile.mkdtemp(), "ddp.pt")
>>> torch.save({"epoch": 9, "state_dict": {"module." + k: v for k, v in net.state_dict().items()}}, path)
>>> sorted(read_weights(path))
['bias', 'weight']
>>> load_weights(torch.nn.Linear(2, 3), path).weight.shape
torch.Size([3, 2])
"""

from __future__ import annotations

import os

import torch
from torch import nn

from geokd.errors import CheckpointError

__all__ = ["WRAPPER_KEYS", "STRIPPED_PREFIXES", "load_weights", "read_weights"]

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
STRIPPED_PREFIXES = ("module.", "_orig_mod.")


def _read_file(path: str):
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(f"{path}: reading .safetensors needs the safetensors package "
                                  "(pip install safetensors)") from None
        try:
            return load_file(path, device="cpu")
        except Exception as exc:  # noqa: BLE001 - any parse failure is a damaged file
            raise CheckpointError(f"{path}: cannot read it as a safetensors file: {str(exc)[:300]}") from None
    from geokd.checkpoints.store import _torch_load_plain

    return _torch_load_plain(path, "cpu")


def _unwrap(payload, path: str) -> dict:
    for _ in range(3):  # {"model": {"state_dict": ...}} nests at most this deep in practice
        if not isinstance(payload, dict):
            break
        if payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
            return payload
        inner = next((payload[k] for k in WRAPPER_KEYS if isinstance(payload.get(k), dict)), None)
        if inner is None:
            break
        payload = inner
    if isinstance(payload, dict):
        shown = ", ".join(repr(k) for k in list(payload)[:8])
        raise CheckpointError(
            f"{path}: expected a state dict (names to tensors) or a dict wrapping one under "
            f"{' / '.join(WRAPPER_KEYS)}, got a dict with keys {shown or 'none'}"
        )
    raise CheckpointError(f"{path}: expected a state dict (names to tensors), got a {type(payload).__name__}")


def read_weights(path) -> dict[str, torch.Tensor]:
    """The ``{name: tensor}`` state dict stored in ``path`` (see the module docstring).

    Raises
    ------
    geokd.errors.CheckpointError
        For a missing, truncated or damaged file, a pickle that would run code, or a file
        holding no state dict.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"weights file not found: {path}")
    state = _unwrap(_read_file(path), path)
    bad = [k for k in state if not isinstance(k, str)]
    if bad:
        raise CheckpointError(f"{path}: expected parameter names as strings, got {bad[:3]!r}")
    for prefix in STRIPPED_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path) -> nn.Module:
    """Load the state dict of ``path`` into ``model`` (exact names and shapes); return ``model``."""
    from geokd.checkpoints.store import load_state_dict_strict

    load_state_dict_strict(model, read_weights(path), source=os.fspath(path))
    return model
