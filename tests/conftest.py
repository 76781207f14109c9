import atexit
import os
import shutil
import tempfile

import pytest
import torch

from geokd.checkpoints.released import REQUIRE_RELEASED_ENV, released_dir, released_dir_problem

# The analysis' teacher cache (geokd.analysis.teacher_cache) goes to a folder of this run,
# not the user's ~/.cache/geokd/analysis. xdist workers and CLI subprocesses inherit the
# variable; only the process that made the folder removes it, at exit.
if not os.environ.get("GEOKD_ANALYSIS_CACHE"):
    os.environ["GEOKD_ANALYSIS_CACHE"] = tempfile.mkdtemp(prefix="geokd-analysis-cache-")
    atexit.register(shutil.rmtree, os.environ["GEOKD_ANALYSIS_CACHE"], ignore_errors=True)

# Not oversubscribed on the 2-core machines this runs on: under pytest-xdist (`-n 2`) each
# worker already has a core, and two threads per worker made small convolutions ~10x slower.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))


def released_required() -> bool:
    """Whether a missing released-networks folder fails the tests (``GEOKD_REQUIRE_RELEASED=1``, as in CI)."""
    return os.environ.get(REQUIRE_RELEASED_ENV, "").strip() not in ("", "0")


def released_dir_or_skip() -> str:
    """The GKD authors' released networks' folder (:func:`released_dir`), for tests that read them.

    When it is missing the test is skipped with the reason (the setting, the folder looked
    at, where the files come from); with ``GEOKD_REQUIRE_RELEASED=1`` it fails instead, so
    CI never silently skips them.
    """
    problem = released_dir_problem()
    if problem is None:
        return str(released_dir())
    if released_required():
        pytest.fail(f"{problem}. {REQUIRE_RELEASED_ENV}=1, so a missing folder is a failure here, not a skip",
                    pytrace=False)
    pytest.skip(f"{problem}. (Set {REQUIRE_RELEASED_ENV}=1 to make this a failure instead of a skip.)")


@pytest.fixture(scope="session")
def graph_kd_dir() -> str:
    """Every test that reads the released networks takes this fixture (see released_dir_or_skip)."""
    return released_dir_or_skip()
