import os

import pytest
import torch

# Not oversubscribed on the 2-core machines this runs on: under pytest-xdist (`-n 2`) each
# worker already has a core, and two threads per worker made small convolutions ~10x slower.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))

SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared"))


def shared_dir() -> str:
    """The read-only shared folder beside the checkout (present in CI too)."""
    path = os.environ.get("GEOKD_SHARED", SHARED)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"shared folder not found at {path}; set GEOKD_SHARED")
    return path


@pytest.fixture(scope="session")
def graph_kd_dir() -> str:
    return os.path.join(shared_dir(), "graph_kd")
