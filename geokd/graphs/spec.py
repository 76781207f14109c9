"""A declarative, validated description of a batch-graph variant.

A spec names a whole recipe (kernel, normalization, masks, power...) so that a study
config can say ``graph = "cos-sym-k16-inter-p2"`` and compare it with another variant.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from geokd.errors import ConfigError
from geokd.graphs.kernels import KERNELS
from geokd.graphs.masks import TASKS
from geokd.graphs.normalize import NORMALIZATIONS

_KERNEL_ABBREV = {"cosine": "cos", "gaussian": "gauss", "dot": "dot"}
_ABBREV_KERNEL = {v: k for k, v in _KERNEL_ABBREV.items()}


@dataclasses.dataclass(frozen=True)
class GraphSpec:
    """How to turn a layer's batch of activations into a graph.

    The defaults are the GKD paper's graph: cosine similarity, zero diagonal, symmetric
    normalization with degrees of the full graph, no task mask, no k-NN mask, power 1.

    Attributes
    ----------
    kernel : {"cosine", "gaussian", "dot"}
    normalization : {"sym", "rw", "none"}
    k : int or None
        k-NN mask (computed on the teacher's graph); ``None`` keeps the full graph.
    task : {"all", "intra", "inter"}
        Class mask (needs labels unless ``"all"``).
    power : int
        ``A^p`` by repeated product, ``p >= 1``.
    renormalize : bool
        ``False`` (paper): degrees come from the unmasked graph. ``True``: normalize the
        masked graph by its own degrees.
    sigma : float or None
        Gaussian width (only with ``kernel="gaussian"``); ``None``: mean pairwise distance.
    clamp_negative : bool
        Set negative similarities to 0 before normalizing (the paper keeps them).

    Examples
    --------
    >>> spec = GraphSpec(k=16, task="inter", power=2)
    >>> spec.name
    'cos-sym-k16-inter-p2'
    >>> GraphSpec.from_name(spec.name) == spec
    True
    >>> GraphSpec.from_dict(spec.to_dict()) == spec
    True
    >>> GraphSpec(kernel="euclid")
    Traceback (most recent call last):
    ...
    geokd.errors.ConfigError: GraphSpec.kernel: expected one of ('cosine', 'gaussian', 'dot'), got 'euclid'
    """

    kernel: str = "cosine"
    normalization: str = "sym"
    k: int | None = None
    task: str = "all"
    power: int = 1
    renormalize: bool = False
    sigma: float | None = None
    clamp_negative: bool = False

    def __post_init__(self) -> None:
        def fail(field: str, expected: str, got: Any) -> None:
            raise ConfigError(f"GraphSpec.{field}: expected {expected}, got {got!r}")

        for field, choices in (("kernel", KERNELS), ("normalization", NORMALIZATIONS), ("task", TASKS)):
            if getattr(self, field) not in choices:
                fail(field, f"one of {choices}", getattr(self, field))
        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1):
            fail("k", "None (full graph) or an int >= 1", self.k)
        if isinstance(self.power, bool) or not isinstance(self.power, int) or self.power < 1:
            fail("power", "an int >= 1", self.power)
        for field in ("renormalize", "clamp_negative"):
            if not isinstance(getattr(self, field), bool):
                fail(field, "a bool", getattr(self, field))
        if self.sigma is not None:
            if self.kernel != "gaussian":
                fail("sigma", "None unless kernel='gaussian'", self.sigma)
            if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)) \
                    or not math.isfinite(self.sigma) or self.sigma <= 0:
                fail("sigma", "None or a positive finite float", self.sigma)
            object.__setattr__(self, "sigma", float(self.sigma))

    @property
    def name(self) -> str:
        """Short stable name, e.g. ``"cos-sym-full-all-p1"`` or ``"cos-sym-k16-inter-p2"``."""
        parts = [_KERNEL_ABBREV[self.kernel], self.normalization,
                 "full" if self.k is None else f"k{self.k}", self.task, f"p{self.power}"]
        if self.sigma is not None:
            parts.append(f"s{self.sigma:g}")
        if self.renormalize:
            parts.append("renorm")
        if self.clamp_negative:
            parts.append("relu")
        return "-".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (TOML/JSON friendly except ``None`` values)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GraphSpec":
        """Build from a dict; unknown keys are a :class:`~geokd.errors.ConfigError`."""
        if not isinstance(data, dict):
            raise ConfigError(f"GraphSpec.from_dict: expected a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"GraphSpec: unknown field(s) {unknown}; expected a subset of {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_name(cls, name: str, *, where: str | None = None) -> "GraphSpec":
        """Parse a name produced by :attr:`name` back into a spec.

        A wrong name raises :class:`~geokd.errors.ConfigError` showing the form of a name
        and the valid name nearest to the one given (:mod:`geokd.graphs.spec_names`);
        ``where`` prefixes the message (e.g. ``"--graphs"``).

        Examples
        --------
        >>> GraphSpec.from_name("cos-sym-k10-iner-p1")
        Traceback (most recent call last):
        ...
        geokd.errors.ConfigError: expected a graph variant name of the form KERNEL-NORM-SIZE-TASK-pPOWER[-sSIGMA][-renorm][-relu] with KERNEL cos|gauss|dot, NORM sym|rw|none, SIZE full|k<int>, TASK all|intra|inter, POWER an int >= 1 (SIGMA only with gauss), got 'cos-sym-k10-iner-p1'; the nearest valid name is 'cos-sym-k10-inter-p1'
        """
        from geokd.graphs.spec_names import name_error

        pattern = (r"(?P<kernel>[a-z]+)-(?P<normalization>sym|rw|none)-(?:full|k(?P<k>\d+))"
                   r"-(?P<task>all|intra|inter)-p(?P<power>\d+)(?:-s(?P<sigma>[0-9.eE+-]+?))?"
                   r"(?P<renorm>-renorm)?(?P<relu>-relu)?")
        match = re.fullmatch(pattern, name) if isinstance(name, str) else None
        if match is None or match["kernel"] not in _ABBREV_KERNEL:
            raise name_error(name, where=where)
        try:
            return cls(kernel=_ABBREV_KERNEL[match["kernel"]], normalization=match["normalization"],
                       k=None if match["k"] is None else int(match["k"]), task=match["task"],
                       power=int(match["power"]), renormalize=match["renorm"] is not None,
                       sigma=None if match["sigma"] is None else float(match["sigma"]),
                       clamp_negative=match["relu"] is not None)
        except (ConfigError, ValueError) as error:  # k0, p0, a sigma without gauss, ...
            raise name_error(name, reason=str(error), where=where) from None
