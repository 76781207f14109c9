"""geokd's own checkpoints: plain state dicts with their model config, checksummed.

A checkpoint file is ``torch.save`` of a dict of tensors and plain values only, so it
loads with ``torch.load(weights_only=True)``::

    {"format": "geokd.checkpoint", "version": 1,
     "model_config": {"name": "wrn", "depth": 28, ...},
     "state_dict": {...}, "extra": {...}}

Beside it, ``<file>.sha256`` holds its checksum in ``sha256sum`` format (so
``sha256sum -c`` verifies it too); loading verifies it when present. Writes are atomic:
a temporary file in the same folder, flushed and fsynced, then ``os.replace``.

Examples
--------
>>> import tempfile, os
>>> from geokd.models import build_model, model_config
>>> net = build_model("small_cnn", in_channels=1, widths=(4, 8, 8))
>>> folder = tempfile.mkdtemp()
>>> digest = save_checkpoint(os.path.join(folder, "net.pt"), net, model_config=model_config(net))
>>> again, info = load_checkpoint(os.path.join(folder, "net.pt"))
>>> info["sha256"] == digest, info["model_config"]["name"]
(True, 'small_cnn')
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import tempfile
import zipfile

import torch
from torch import nn

from geokd.checkpoints.released import infer_wrn_config, load_released_state_dict
from geokd.errors import CheckpointError

__all__ = ["file_sha256", "load_any", "load_checkpoint", "load_state_dict_strict", "save_checkpoint"]

FORMAT = "geokd.checkpoint"
VERSION = 1


def file_sha256(path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_plain(value, where: str) -> None:
    # Only what torch.load(weights_only=True) accepts back: plain containers, scalars, tensors.
    if value is None or isinstance(value, (bool, int, str, torch.Tensor)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            return  # inf/nan are valid floats for the weights-only unpickler
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise ValueError(f"{where}: keys must be str or int, got {type(key).__name__}")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise ValueError(
        f"{where}: expected plain values (None, bool, int, float, str, tensor, list, dict), got {type(value).__name__}"
    )


def _atomic_write(path: str, data: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def save_checkpoint(path, model: nn.Module, *, model_config: dict, extra: dict | None = None) -> str:
    """Write ``model``'s state dict with its config, atomically; return the file's sha256.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file; ``<path>.sha256`` is written beside it.
    model : nn.Module
        The network; tensors are saved detached, on the CPU.
    model_config : dict
        ``{"name": …, **kwargs}`` that rebuilds the architecture with
        :func:`geokd.models.build_model` (see :func:`geokd.models.model_config`).
    extra : dict, optional
        Plain values to keep beside the weights (epoch, metrics, seed…).
    """
    path = os.fspath(path)
    if not isinstance(model, nn.Module):
        raise ValueError(f"save_checkpoint: expected an nn.Module, got {type(model).__name__}")
    if not isinstance(model_config, dict) or not isinstance(model_config.get("name"), str):
        raise ValueError(f"save_checkpoint: model_config must be a dict with a 'name', got {model_config!r}")
    _check_plain(model_config, "model_config")
    extra = {} if extra is None else extra
    if not isinstance(extra, dict):
        raise ValueError(f"save_checkpoint: extra must be a dict, got {type(extra).__name__}")
    _check_plain(extra, "extra")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": dict(model_config),
        "state_dict": {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()},
        "extra": extra,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    _atomic_write(path, data)
    _atomic_write(path + ".sha256", f"{digest}  {os.path.basename(path)}\n".encode())
    return digest


def _recorded_sha256(path: str) -> str | None:
    sidecar = path + ".sha256"
    if not os.path.exists(sidecar):
        return None
    with open(sidecar, encoding="utf-8") as f:
        text = f.read().split()
    if not text or len(text[0]) != 64:
        raise CheckpointError(f"{sidecar}: expected '<sha256>  <file name>', got {' '.join(text)[:80]!r}")
    return text[0].lower()


def load_state_dict_strict(model: nn.Module, state_dict, *, source: str = "checkpoint") -> None:
    """Load ``state_dict`` into ``model`` only if names and shapes match exactly.

    Raises
    ------
    geokd.errors.CheckpointError
        Listing the missing, unexpected and mis-shaped parameters.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [
        f"{k} (checkpoint {tuple(state_dict[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or misshaped:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                shown = ", ".join(items[:12]) + (f", … ({len(items)} in all)" if len(items) > 12 else "")
                parts.append(f"{label}: {shown}")
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__}: " + "; ".join(parts)
        )
    model.load_state_dict(state_dict, strict=True)


def _torch_load_plain(path: str, device) -> object:
    try:
        return torch.load(path, map_location=device, weights_only=True)
    # torch's weights-only unpickler runs no code, but garbage input surfaces as whatever
    # the opcode decoder trips on (KeyError for a memo opcode, IndexError, struct.error…):
    # any failure to parse is a damaged file, never a crash.
    except Exception as exc:  # noqa: BLE001
        text = str(exc)
        refused = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", text)
        if refused:  # the file names code to run: say which, not torch's advice to trust it
            raise CheckpointError(
                f"{path}: refused: the file is a pickle that would import {refused.group(1)} to load "
                "(code or a whole module, not plain tensors); save model.state_dict() instead, or, "
                "for the GKD authors' networks, use `geokd import-checkpoint`"
            ) from None
        first_line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: cannot read it as a plain (weights-only) torch file: {first_line[:300]} "
            "(truncated, damaged, or a whole-module pickle: use load_any or `geokd import-checkpoint`)"
        ) from None


def load_checkpoint(path, *, device="cpu"):
    """Load a geokd checkpoint: rebuild the model from its config and load its weights.

    Returns
    -------
    model : nn.Module
        On ``device``, in eval mode.
    info : dict
        ``model_config``, ``extra``, ``sha256`` (of the file), ``path``.

    Raises
    ------
    geokd.errors.CheckpointError
        For a missing, truncated or tampered file (checksum mismatch), a file that is not a
        geokd checkpoint, or weights that do not fit the recorded architecture.
    """
    from geokd.models import build_model
    from geokd.models.specs import check_source_trusted

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    actual = file_sha256(path)
    recorded = _recorded_sha256(path)
    if recorded is not None and recorded != actual:
        raise CheckpointError(
            f"{path}: sha256 mismatch: recorded {recorded} in {path}.sha256, file has {actual} "
            "(modified or truncated since it was written)"
        )
    payload = _torch_load_plain(path, device)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a geokd checkpoint (expected a dict with format={FORMAT!r}); "
            "for other files use geokd.checkpoints.load_any"
        )
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: unsupported geokd checkpoint version {payload.get('version')!r} (expected {VERSION})")
    config = payload.get("model_config")
    state = payload.get("state_dict")
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise CheckpointError(f"{path}: damaged checkpoint: model_config or state_dict is missing")
    try:
        check_source_trusted(config.get("name"), where=path)
        model = build_model(**config)
    except ValueError as exc:
        raise CheckpointError(f"{path}: cannot rebuild the recorded model {config!r}: {exc}") from None
    load_state_dict_strict(model, state, source=path)
    model.to(device).eval()
    return model, {"model_config": config, "extra": payload.get("extra", {}), "sha256": actual, "path": path}


def _is_geokd_checkpoint(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
            return len(pickles) == 1 and FORMAT.encode() in archive.read(pickles[0])
    except (zipfile.BadZipFile, OSError):
        return False


def load_any(path, *, device="cpu") -> nn.Module:
    """Load a geokd checkpoint or a released whole-module WRN pickle, safely, in eval mode.

    The released pickles go through the restricted unpickler of
    :func:`~geokd.checkpoints.load_released_state_dict`; their architecture is inferred
    from the parameter shapes and the weights must fit it exactly.
    """
    from geokd.models import build_model

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if _is_geokd_checkpoint(path):
        return load_checkpoint(path, device=device)[0]
    state, _ = load_released_state_dict(path)
    try:
        config = infer_wrn_config(state)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    model = build_model(**config)
    load_state_dict_strict(model, state, source=path)
    return model.to(device).eval()
