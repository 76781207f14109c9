"""Shared pieces of the reliability suite: hostile tensors, outcome checks, case counts.

The fuzz tests draw a *recipe* (dtype, shape, value regime, seed) with hypothesis and
build the tensor with NumPy from it, so every case is reproducible from its recipe and
hypothesis can still shrink the shape and the regime.

Case counts are written to pytest's cache (``.pytest_cache``) under
``geokd/reliability/<case>@<xdist worker>`` so RELIABILITY.md can be refreshed after a
run with ``python -m tests._fault_helpers`` (prints the counts summed over workers; delete
``.pytest_cache/v/geokd/reliability`` first so older runs are not added in).
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

DTYPES = (torch.float16, torch.float32, torch.float64, torch.bfloat16)

# "finite" regimes must never produce NaN/Inf; the others must be refused (or yield finite values).
FINITE_REGIMES = ("normal", "zeros", "moderate", "small", "constant", "huge", "tiny", "mixed_finite")
NONFINITE_REGIMES = ("nan", "inf", "mixed_nonfinite")
REGIMES = FINITE_REGIMES + NONFINITE_REGIMES
# Values at the edge of the dtype's range (near max, subnormal, mixes of both).
HARSH_REGIMES = ("huge", "tiny", "mixed_finite")

# Bounded, reproducible fuzzing: the same cases on every CI run.
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Per registered loss (ten of them, ~0.1 s a case on a loaded 2-core box): fewer cases
# each keeps the suite inside its CI budget; the functional forms get the full 200.
FUZZ_LOSS = settings(FUZZ, max_examples=50)

CASES: Counter = Counter()


def count_case(name: str) -> None:
    """Count one executed case under ``name`` (flushed to the pytest cache by the tests)."""
    CASES[name] += 1


def flush_counts(config, names=None) -> None:
    """Write this process's counts to the pytest cache (one key per case name)."""
    cache = getattr(config, "cache", None)
    if cache is None:  # run with -p no:cacheprovider
        return
    # One key per xdist worker: workers share the cache folder and run parts of a module.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    for name, n in CASES.items():
        if names is None or name in names:
            cache.set(f"geokd/reliability/{name}@{worker}", int(n))


def _finfo(dtype: torch.dtype):
    return torch.finfo(dtype)


def make_values(shape: tuple[int, ...], dtype: torch.dtype, regime: str, seed: int) -> torch.Tensor:
    """A tensor of ``shape``/``dtype`` whose values follow ``regime`` (reproducible from ``seed``)."""
    rng = np.random.default_rng(seed)
    info = _finfo(dtype)
    big, tiny = float(info.max), float(info.tiny)
    n = int(np.prod(shape)) if shape else 1
    if regime == "normal":
        v = rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 3)
    elif regime == "moderate":
        # Magnitudes 1e-2..1e2 with random signs: what real activations look like.
        v = rng.choice([-1.0, 1.0], n) * 10.0 ** rng.uniform(-2, 2, n)
    elif regime == "small":
        # Small but far from underflow in every dtype's squares (1e-3..1e-1).
        v = rng.choice([-1.0, 1.0], n) * 10.0 ** rng.uniform(-3, -1, n)
    elif regime == "zeros":
        v = np.zeros(n)
    elif regime == "huge":
        # Within a factor 1000 of the largest finite value of the dtype, random signs.
        v = rng.choice([-1.0, 1.0], n) * big * 10.0 ** rng.uniform(-3, 0, n)
    elif regime == "tiny":
        # Normal-but-tiny and subnormal magnitudes (and exact zeros).
        v = rng.choice([-1.0, 0.0, 1.0], n) * tiny * 10.0 ** rng.uniform(-2, 2, n)
    elif regime == "constant":
        v = np.full(n, rng.standard_normal())
    elif regime == "mixed_finite":
        pool = np.array([0.0, -0.0, 1.0, -1.0, big / 4, -big / 4, tiny, -tiny, 1e-3, 3.5])
        v = rng.choice(pool, n) * rng.choice([1.0, rng.uniform(0.5, 2.0)], n)
        v = np.clip(v, -big, big)
    elif regime == "nan":
        v = rng.standard_normal(n)
        if n:
            v[rng.integers(0, n)] = np.nan
    elif regime == "inf":
        v = rng.standard_normal(n)
        if n:
            v[rng.integers(0, n)] = rng.choice([np.inf, -np.inf])
    elif regime == "mixed_nonfinite":
        v = rng.choice(np.array([0.0, 1.0, -1.0, np.nan, np.inf, -np.inf, big, tiny]), n)
        if n:
            v[rng.integers(0, n)] = np.nan
    else:  # pragma: no cover - a typo in a test
        raise AssertionError(f"unknown regime {regime!r}")
    t = torch.from_numpy(np.asarray(v, dtype=np.float64).reshape(shape)).to(dtype)
    if regime in FINITE_REGIMES:
        # Rounding to the dtype must not have produced an overflow: the case would lie.
        assert bool(torch.isfinite(t).all()), (regime, dtype)
    return t


@dataclass(frozen=True)
class Recipe:
    """How one fuzzed tensor was made (shown by hypothesis on failure)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    regime: str
    seed: int

    def build(self) -> torch.Tensor:
        return make_values(self.shape, self.dtype, self.regime, self.seed)

    @property
    def finite(self) -> bool:
        """Whether every value is finite (an empty tensor of a NaN regime is finite)."""
        return bool(torch.isfinite(self.build()).all())


@st.composite
def recipes(draw, *, min_batch: int = 0, max_batch: int = 10, feature_shapes: str = "any",
            dtype: torch.dtype | None = None, regime: str | None = None, batch: int | None = None,
            dtypes: tuple = DTYPES, regimes: tuple = REGIMES):
    """A :class:`Recipe` for a ``(B, ...)`` activation tensor.

    ``feature_shapes``: ``"flat"`` -> ``(B, D)``; ``"maps"`` -> ``(B, C, H, W)``;
    ``"any"`` -> also ``(B,)`` and ``(B, D, E)`` and zero-size dimensions.
    """
    b = batch if batch is not None else draw(st.integers(min_batch, max_batch))
    if feature_shapes == "flat":
        rest = (draw(st.integers(1, 6)),)
    elif feature_shapes == "maps":
        rest = (draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    else:
        rest = draw(st.sampled_from([(), (1,), (3,), (5,), (0,), (2, 3), (2, 2, 2)]))
    dt = dtype if dtype is not None else draw(st.sampled_from(dtypes))
    rg = regime if regime is not None else draw(st.sampled_from(regimes))
    seed = draw(st.integers(0, 2**16))
    return Recipe((b, *rest), dt, rg, seed)


class Outcome:
    """Result of calling a function under test on fuzzed input."""

    REFUSED = "refused"
    FINITE = "finite"


def _leaves(result):
    """Every numeric leaf of a result (tensor, array, sparse matrix, float, tuple, dict)."""
    import scipy.sparse as sp

    if result is None:
        return []
    if isinstance(result, torch.Tensor):
        return [result.detach().to("cpu", torch.float64).numpy() if result.is_floating_point()
                else result.detach().cpu().numpy()]
    if sp.issparse(result):
        return [np.asarray(result.data, dtype=np.float64)]
    if isinstance(result, np.ndarray):
        return [result.astype(np.float64) if result.dtype.kind in "fiub" else result]
    if isinstance(result, (bool, int, float, np.floating, np.integer)):
        return [np.asarray(float(result))]
    if isinstance(result, dict):
        return [leaf for v in result.values() for leaf in _leaves(v)]
    if isinstance(result, (tuple, list)):
        return [leaf for v in result for leaf in _leaves(v)]
    raise AssertionError(f"unexpected result type {type(result).__name__}")


def outcome_of(fn, *, name: str) -> str:
    """Run ``fn()``; ValueError -> REFUSED; a result with only finite numbers -> FINITE.

    Any other exception, or a result containing NaN/Inf, fails the calling test with a
    message naming ``name``.
    """
    count_case(name)
    try:
        result = fn()
    except ValueError as exc:
        assert str(exc), f"{name}: ValueError without a message"
        return Outcome.REFUSED
    bad = [leaf for leaf in _leaves(result) if leaf.dtype.kind == "f" and not np.all(np.isfinite(leaf))]
    assert not bad, f"{name}: returned non-finite values instead of raising ValueError: {bad[0]}"
    return Outcome.FINITE


def assert_contract(fn, recipe_finite: bool, *, name: str, must_refuse_nonfinite: bool = True) -> str:
    """The fuzz contract: finite-or-ValueError always; non-finite input is refused."""
    out = outcome_of(fn, name=name)
    if not recipe_finite and must_refuse_nonfinite:
        assert out == Outcome.REFUSED, f"{name}: accepted NaN/Inf input and returned a value"
    return out


def recorded_counts(cache_dir: str = ".pytest_cache") -> dict[str, int]:
    """Counts stored by the last run (``pytest`` cache, one JSON file per key)."""
    root = os.path.join(cache_dir, "v", "geokd", "reliability")
    out: Counter = Counter()
    if os.path.isdir(root):
        for key in sorted(os.listdir(root)):
            with open(os.path.join(root, key)) as fh:
                out[key.split("@")[0]] += int(json.load(fh))
    return dict(sorted(out.items()))


if __name__ == "__main__":  # pragma: no cover
    counts = recorded_counts()
    for key, n in counts.items():
        print(f"{key}\t{n}")
    print(f"total\t{sum(counts.values())}", file=sys.stdout)
