"""Tidy result tables: one row per network x layer x metric, saved as CSV and JSON.

A row is a plain dict with at least the columns of ``COLUMNS``; ``value`` is a float,
``seed`` an int or ``None`` (the teacher has one seed), ``layer`` is ``"output"`` for
metrics of the final decision. Other columns (``node_set``, ``k``, ``graph``, ``note``, ...)
may be added and are kept by the writers. A metric that was not measured because it means
nothing there (the label smoothness of an intra-class graph) has ``value = None`` (an empty
CSV cell, JSON ``null``) and its reason in ``note`` (:func:`empty_row`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence

COLUMNS = ("network", "method", "seed", "layer", "metric", "value")


def make_row(*, network: str, method: str, seed: int | None, layer: str, metric: str, value: float,
             **extra) -> dict:
    """One tidy row; refuses a value that is not a finite number.

    Examples
    --------
    >>> make_row(network="gkd-0", method="gkd", seed=0, layer="pool", metric="ratio", value=0.25)
    {'network': 'gkd-0', 'method': 'gkd', 'seed': 0, 'layer': 'pool', 'metric': 'ratio', 'value': 0.25}
    """
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{network} / {layer} / {metric}: expected a finite value, got {value}")
    return {"network": network, "method": method, "seed": seed, "layer": layer, "metric": metric,
            "value": value, **extra}


def empty_row(*, network: str, method: str, seed: int | None, layer: str, metric: str, note: str,
              **extra) -> dict:
    """A row of a metric left unmeasured (``value = None``), with the reason in ``note``.

    Examples
    --------
    >>> empty_row(network="t", method="teacher", seed=None, layer="pool", metric="smoothness_ratio",
    ...           note="fixed by construction")["value"] is None
    True
    """
    if not isinstance(note, str) or not note:
        raise ValueError(f"{network} / {layer} / {metric}: expected the reason a value is left empty, got {note!r}")
    return {"network": network, "method": method, "seed": seed, "layer": layer, "metric": metric,
            "value": None, **extra, "note": note}


def measured(rows: Iterable[Mapping]) -> list[Mapping]:
    """The rows that hold a value (not :func:`empty_row`)."""
    return [row for row in rows if row.get("value") is not None]


def _columns(rows: list[Mapping]) -> list[str]:
    extra = []
    for row in rows:
        for key in row:
            if key not in COLUMNS and key not in extra:
                extra.append(key)
    return list(COLUMNS) + extra


def write_table(rows: Iterable[Mapping], path_stem: str) -> tuple[str, str]:
    """Write ``rows`` to ``<path_stem>.csv`` and ``<path_stem>.json``; return both paths."""
    rows = list(rows)
    for row in rows:
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise ValueError(f"expected every row to have the columns {COLUMNS}, a row lacks {missing}")
    os.makedirs(os.path.dirname(os.path.abspath(path_stem)), exist_ok=True)
    from geokd.train.state import atomic_write_bytes

    csv_path, json_path = f"{path_stem}.csv", f"{path_stem}.json"
    columns = _columns(rows)
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in columns})
    # Rewritten after every network (partial results): replaced whole, so a reader (a
    # report, a second process) sees the previous table or the new one, never half of one.
    atomic_write_bytes(csv_path, buffer.getvalue().encode())
    atomic_write_bytes(json_path, json.dumps(rows, indent=1).encode())
    return csv_path, json_path


def write_csv(rows: Iterable[Mapping], path: str, *, columns: Sequence[str]) -> str:
    """Write ``rows`` to the CSV file ``path`` with ``columns`` first (``None`` as an empty cell).

    Examples
    --------
    >>> import tempfile
    >>> path = write_csv([{"a": 1, "b": None}], os.path.join(tempfile.mkdtemp(), "t.csv"), columns=["a", "b"])
    >>> open(path).read().splitlines()
    ['a,b', '1,']
    """
    rows = list(rows)
    names = list(columns) + [key for row in rows for key in row if key not in columns]
    names = list(dict.fromkeys(names))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in names})
    return path


def read_table(path: str) -> list[dict]:
    """Read rows written by :func:`write_table` (from its ``.json`` or ``.csv``).

    Examples
    --------
    >>> import tempfile
    >>> stem = os.path.join(tempfile.mkdtemp(), "metrics")
    >>> _ = write_table([make_row(network="t", method="teacher", seed=None, layer="pool",
    ...                           metric="ratio", value=0.5)], stem)
    >>> read_table(stem + ".csv") == read_table(stem + ".json")
    True
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"expected a metrics table at {path}, found nothing")
    if path.endswith(".json"):
        with open(path) as handle:
            return json.load(handle)
    if not path.endswith(".csv"):
        raise ValueError(f"expected a .csv or .json metrics table, got {path}")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["value"] = float(row["value"]) if row["value"] not in ("", None) else None
        row["seed"] = int(row["seed"]) if row["seed"] not in ("", None) else None
        if row.get("note") == "":   # a CSV cell cannot tell "no note" from an empty one: as in the JSON
            del row["note"]
        for key, text in row.items():
            if key in COLUMNS or not isinstance(text, str):
                continue
            try:
                row[key] = int(text)
            except ValueError:
                pass
    return rows


def select(rows: Iterable[Mapping], **criteria) -> list[Mapping]:
    """The rows whose columns equal every ``criteria`` value.

    Examples
    --------
    >>> rows = [{"metric": "a", "value": 1.0}, {"metric": "b", "value": 2.0}]
    >>> select(rows, metric="b")
    [{'metric': 'b', 'value': 2.0}]
    """
    return [r for r in rows if all(r.get(k) == v for k, v in criteria.items())]
