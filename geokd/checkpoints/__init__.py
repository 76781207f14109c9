"""Checkpoints: geokd's own (plain state dicts, checksummed) and the GKD authors' pickles.

``save_checkpoint`` / ``load_checkpoint`` handle our runs; ``load_released_state_dict``
reads a whole-module pickle without running any of its code; ``load_any`` takes either.
``read_weights`` / ``load_weights`` read other code's state-dict files; ``load_network`` takes
any path or network spec (``torchvision:resnet18?num_classes=10@weights.pt``).
"""

from geokd.checkpoints.networks import load_network
from geokd.checkpoints.weights import load_weights, read_weights
from geokd.checkpoints.importing import import_released_checkpoint, parse_sha256sums, read_sha256sums
from geokd.checkpoints.released import infer_wrn_config, load_released_state_dict
from geokd.checkpoints.store import (
    file_sha256,
    load_any,
    load_checkpoint,
    load_state_dict_strict,
    save_checkpoint,
)

__all__ = [
    "file_sha256",
    "import_released_checkpoint",
    "parse_sha256sums",
    "read_sha256sums",
    "infer_wrn_config",
    "load_any",
    "load_checkpoint",
    "load_network",
    "load_released_state_dict",
    "load_weights",
    "read_weights",
    "load_state_dict_strict",
    "save_checkpoint",
]
