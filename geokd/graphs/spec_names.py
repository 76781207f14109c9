"""Graph-variant names (``cos-sym-k10-inter-p1``): their form, and the nearest valid name.

A :class:`~geokd.graphs.spec.GraphSpec` name is ``KERNEL-NORM-SIZE-TASK-pPOWER`` with
optional ``-sSIGMA``, ``-renorm`` and ``-relu`` suffixes. A user types these on the command
line and in study files, so a wrong one is answered with the form and the valid name
nearest to what was typed (each part corrected on its own: ``iner`` -> ``inter``,
``cosine`` -> ``cos``, a missing power -> ``p1``).

Examples
--------
>>> nearest_graph_name("cos-sym-k10-iner-p1")
'cos-sym-k10-inter-p1'
>>> nearest_graph_name("cosine-k16-intra")
'cos-sym-k16-intra-p1'
>>> [s.name for s in parse_graph_names(["cos-sym-full-all-p1", "cos-sym-full-all-p2"])]
['cos-sym-full-all-p1', 'cos-sym-full-all-p2']
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from geokd.errors import ConfigError

#: The form of a name, as error messages show it.
NAME_FORM = ("KERNEL-NORM-SIZE-TASK-pPOWER[-sSIGMA][-renorm][-relu] with KERNEL cos|gauss|dot, "
             "NORM sym|rw|none, SIZE full|k<int>, TASK all|intra|inter, POWER an int >= 1 "
             "(SIGMA only with gauss)")

_WORDS = {  # a word of the vocabulary -> (slot, value)
    "cos": ("kernel", "cosine"), "cosine": ("kernel", "cosine"), "gauss": ("kernel", "gaussian"),
    "gaussian": ("kernel", "gaussian"), "rbf": ("kernel", "gaussian"), "dot": ("kernel", "dot"),
    "sym": ("normalization", "sym"), "rw": ("normalization", "rw"), "none": ("normalization", "none"),
    "full": ("k", None), "all": ("task", "all"), "intra": ("task", "intra"), "inter": ("task", "inter"),
    "renorm": ("renormalize", True), "relu": ("clamp_negative", True),
}


def _read_token(token: str):
    """``(slot, value)`` of one ``-``-separated part of a name, or ``None``."""
    if token in _WORDS:
        return _WORDS[token]
    number = re.fullmatch(r"(k|knn|p|s)(\d+(?:\.\d*)?(?:e[+-]?\d+)?)", token)
    if number:
        letter, value = number.groups()
        if letter == "s":
            return ("sigma", float(value)) if float(value) > 0 else None
        return ("k" if letter.startswith("k") else "power", max(1, int(float(value))))
    close = difflib.get_close_matches(token, list(_WORDS), n=1, cutoff=0.5)
    return _WORDS[close[0]] if close else None


def nearest_graph_name(name) -> str:
    """The valid graph-variant name nearest to ``name`` (what an error suggests).

    Each ``-``-separated part is read on its own (misspelt words go to the closest word of
    the vocabulary); parts that are missing take the paper's defaults (``cos``, ``sym``,
    ``full``, ``all``, ``p1``).

    Examples
    --------
    >>> nearest_graph_name("cos-sym-k0-all-p1")
    'cos-sym-k1-all-p1'
    >>> nearest_graph_name("gaus-rw-full-all-p2-s0.5")
    'gauss-rw-full-all-p2-s0.5'
    >>> nearest_graph_name(None)
    'cos-sym-full-all-p1'
    """
    from geokd.graphs.spec import GraphSpec

    fields = {}
    tokens = re.split(r"[-_\s]+", name.strip().lower()) if isinstance(name, str) else []
    for token in tokens:
        read = _read_token(token) if token else None
        if read is not None and read[0] not in fields:
            fields[read[0]] = read[1]
    if fields.get("kernel", "cosine") != "gaussian":
        fields.pop("sigma", None)
    try:
        return GraphSpec(**fields).name
    except ConfigError:  # pragma: no cover - every field read above is valid on its own
        return GraphSpec().name


def name_error(name, *, reason: str | None = None, where: str | None = None) -> ConfigError:
    """The error for a wrong graph-variant name: what came, the form, the nearest valid name."""
    prefix = f"{where}: " if where else ""
    because = f" ({reason})" if reason else ""
    return ConfigError(f"{prefix}expected a graph variant name of the form {NAME_FORM}, got {name!r}{because}; "
                       f"the nearest valid name is {nearest_graph_name(name)!r}")


def parse_graph_names(names: Iterable, *, where: str | None = None):
    """The :class:`~geokd.graphs.spec.GraphSpec` of each name, in order (a spec is kept as it is).

    Raises :class:`~geokd.errors.ConfigError` on a wrong name (showing the form and the
    nearest valid name), on a name given twice and on an empty list.

    Examples
    --------
    >>> parse_graph_names(["cos-sym-full-all-p1", "cos-sym-ful-all-p1"])
    Traceback (most recent call last):
    ...
    geokd.errors.ConfigError: expected a graph variant name of the form KERNEL-NORM-SIZE-TASK-pPOWER[-sSIGMA][-renorm][-relu] with KERNEL cos|gauss|dot, NORM sym|rw|none, SIZE full|k<int>, TASK all|intra|inter, POWER an int >= 1 (SIGMA only with gauss), got 'cos-sym-ful-all-p1'; the nearest valid name is 'cos-sym-full-all-p1'
    """
    from geokd.graphs.spec import GraphSpec

    if isinstance(names, (str, GraphSpec)):
        names = [names]
    specs = []
    for name in names:
        spec = name if isinstance(name, GraphSpec) else GraphSpec.from_name(name, where=where)
        if spec in specs:
            prefix = f"{where}: " if where else ""
            raise ConfigError(f"{prefix}expected each graph variant once, got {spec.name!r} twice")
        specs.append(spec)
    if not specs:
        prefix = f"{where}: " if where else ""
        raise ConfigError(f"{prefix}expected at least one graph variant name, got none")
    return tuple(specs)
