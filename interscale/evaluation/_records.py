"""Key numbers of an analysis as small JSON files, written by notebooks and read back by runs.

A tutorial notebook records its key numbers with :func:`write_metrics` (one file per notebook,
``metrics_<name>.json``); :func:`read_metrics` collects every such file of a folder into one flat
mapping, which is what ``python -m reproduce`` compares with its expected values.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from interscale._io import atomic_write_text

__all__ = ["read_metrics", "write_metrics"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_SCALARS = (bool, int, float, str, type(None))


def write_metrics(
    metrics: Mapping[str, Any], folder: str | os.PathLike[str], name: str | int
) -> Path:
    """Write ``metrics`` atomically to ``<folder>/metrics_<name>.json``.

    Parameters
    ----------
    metrics
        Metric name -> a JSON scalar (number, string, boolean or None; NaN is kept as ``NaN``,
        which :func:`read_metrics` and Python's ``json`` read back).
    folder
        Destination folder; created when missing.
    name
        What the file is named after, e.g. the notebook's number (``0`` -> ``metrics_0.json``).

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    TypeError
        A metric name is not a string or a value is not a JSON scalar (numpy scalars are
        converted; arrays, lists and mappings are refused).
    ValueError
        ``name`` is empty or holds characters other than letters, digits, ``_`` and ``-``.
    """
    name = str(name)
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"write_metrics: name must be letters, digits, '_' or '-' (it names "
            f"metrics_<name>.json), got {name!r}"
        )
    clean = {}
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise TypeError(f"write_metrics: metric names must be strings, got {key!r}")
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            value = value.item()  # numpy scalar -> Python scalar
        if not isinstance(value, _SCALARS):
            raise TypeError(
                f"write_metrics: metric {key!r} must be a number, string, boolean or None, "
                f"got {type(value).__name__}"
            )
        clean[key] = value
    path = Path(folder) / f"metrics_{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(clean, indent=2, sort_keys=True), path)
    return path


def read_metrics(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Every ``metrics_<name>.json`` of ``folder`` as one mapping ``"<name>.<metric>" -> value``.

    Parameters
    ----------
    folder
        Folder the files were written to by :func:`write_metrics`.

    Returns
    -------
    dict
        Sorted by file name, then by metric name; empty when the folder holds no such file.
        ``NaN`` values come back as ``float("nan")``.

    Raises
    ------
    ValueError
        A file is not valid JSON or does not hold a JSON object (the file is named).
    NotADirectoryError
        ``folder`` exists and is not a folder.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"read_metrics: {folder} is not a folder")
    out: dict[str, Any] = {}
    for path in sorted(folder.glob("metrics_*.json")):
        name = path.stem.split("_", 1)[1]
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"read_metrics: {path} is not valid JSON: {exc}") from None
        if not isinstance(values, dict):
            raise ValueError(f"read_metrics: {path} must hold a JSON object of metrics")
        for metric in sorted(values):
            out[f"{name}.{metric}"] = values[metric]
    return out
