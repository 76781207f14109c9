"""Convert the GKD authors' pickles into geokd checkpoints, optionally hash-checked first.

Examples
--------
>>> parse_sha256sums("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  empty.pth\\n")
{'empty.pth': 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'}
"""

from __future__ import annotations

import os
import re

from geokd.checkpoints.released import infer_wrn_config, load_released_state_dict
from geokd.checkpoints.store import file_sha256, load_state_dict_strict, save_checkpoint
from geokd.errors import CheckpointError, DataIntegrityError

__all__ = ["import_released_checkpoint", "parse_sha256sums", "read_sha256sums"]

_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


def parse_sha256sums(text: str) -> dict[str, str]:
    """``{file name: sha256}`` from ``sha256sum`` output (names reduced to their base name)."""
    sums = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        match = _LINE.match(line.rstrip("\n"))
        if not match:
            raise ValueError(f"line {number}: expected '<64 hex digits>  <file name>', got {line[:80]!r}")
        sums[os.path.basename(match.group(2).strip())] = match.group(1).lower()
    return sums


def read_sha256sums(path) -> dict[str, str]:
    """Parse a ``SHA256SUMS`` file."""
    with open(path, encoding="utf-8") as f:
        try:
            return parse_sha256sums(f.read())
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None


def import_released_checkpoint(source, destination, *, expected_sha256: str | None = None) -> dict:
    """Read a released whole-module WRN pickle safely and save it as a geokd checkpoint.

    Parameters
    ----------
    source : path-like
        The authors' file (never unpickled with code execution).
    destination : path-like
        Where the geokd checkpoint goes (``<destination>.sha256`` beside it).
    expected_sha256 : str, optional
        Refuse the source (DataIntegrityError) unless its sha256 is this.

    Returns
    -------
    dict
        ``source``, ``destination``, ``source_sha256``, ``sha256`` (of the new file), ``model_config``.
    """
    from geokd.models import build_model

    source, destination = os.fspath(source), os.fspath(destination)
    if not os.path.isfile(source):
        raise CheckpointError(f"checkpoint not found: {source}")
    source_sha256 = file_sha256(source)
    if expected_sha256 is not None and source_sha256 != expected_sha256.lower():
        raise DataIntegrityError(f"{source}: sha256 is {source_sha256}, expected {expected_sha256.lower()}")
    state, info = load_released_state_dict(source)
    try:
        config = infer_wrn_config(state)
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    model = build_model(**config)
    load_state_dict_strict(model, state, source=source)
    digest = save_checkpoint(
        destination,
        model,
        model_config=config,
        extra={
            "imported_from": os.path.basename(source),
            "source_sha256": source_sha256,
            "source_format": info["format"],
            "source_extras": info["extras"],
        },
    )
    return {
        "source": source,
        "destination": destination,
        "source_sha256": source_sha256,
        "sha256": digest,
        "model_config": config,
    }
