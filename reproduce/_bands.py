"""The bands of the reproduction: read them, check metrics against them, print the comparison."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def load_expected(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Read and validate an expected-metrics file.

    Parameters
    ----------
    path
        JSON file mapping metric name to a spec: ``{"value": x, "rtol": r, "atol": a}`` (either
        tolerance optional, both default 0; a string or null ``value`` is compared exactly) or
        ``{"min": a, "max": b}`` (either bound optional), each with a one-line ``"reason"``
        and a ``"group"`` of :data:`reproduce._sabotage.GROUPS` (``model`` bands must each
        be missed by a sabotaged run). Keys starting with ``_`` are comments.

    Returns
    -------
    dict
        Metric name -> spec.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        A spec has neither ``value`` nor ``min``/``max``, or both, or no known ``group``.
    """
    from reproduce._sabotage import GROUPS

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected-metrics file not found: {path}")
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be an object of metric specs")
    specs = {}
    for name, spec in data.items():
        if name.startswith("_"):
            continue
        if not isinstance(spec, dict):
            raise ValueError(f"{path}: spec of {name!r} must be an object, got {spec!r}")
        has_value = "value" in spec
        has_range = "min" in spec or "max" in spec
        if has_value == has_range:
            raise ValueError(f"{path}: spec of {name!r} needs either 'value' or 'min'/'max'")
        if spec.get("group") not in GROUPS:
            raise ValueError(
                f"{path}: spec of {name!r} has group {spec.get('group')!r}; "
                f"each band needs a group of {sorted(GROUPS)}"
            )
        specs[name] = spec
    return specs


def _describe(spec: Mapping[str, Any]) -> str:
    if "value" in spec:
        tol = [f"{k}={spec[k]:g}" for k in ("rtol", "atol") if k in spec]
        return f"{spec['value']!r}" + (f" ({', '.join(tol)})" if tol else "")
    lo, hi = spec.get("min"), spec.get("max")
    return f"[{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}]"


def check_metrics(got: Any, spec: Mapping[str, Any]) -> bool:
    """Whether one metric value satisfies its spec (see :func:`load_expected`).

    Parameters
    ----------
    got
        The measured value (a number, a string or None).
    spec
        The expected spec.

    Returns
    -------
    bool
        True when the value is within the tolerance or the range. A non-finite number, or a
        missing value where a number is expected, never passes.
    """
    if "value" in spec:
        want = spec["value"]
        if isinstance(want, bool) or not isinstance(want, (int, float)):
            return got == want
        if isinstance(got, bool) or not isinstance(got, (int, float)) or not math.isfinite(got):
            return False
        tol = float(spec.get("atol", 0.0)) + float(spec.get("rtol", 0.0)) * abs(want)
        return abs(got - want) <= tol
    if isinstance(got, bool) or not isinstance(got, (int, float)) or not math.isfinite(got):
        return False
    lo, hi = spec.get("min"), spec.get("max")
    return (lo is None or got >= lo) and (hi is None or got <= hi)


def compare(
    metrics: Mapping[str, Any], expected: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Compare gathered metrics with the expected specs.

    Parameters
    ----------
    metrics
        Metric name -> measured value.
    expected
        Metric name -> spec (see :func:`load_expected`).

    Returns
    -------
    list of dict
        One row per expected metric (``metric``, ``group``, ``expected``, ``got``, ``ok``),
        then one per measured metric without an expectation (group ``reported``, ``ok``
        None). A missing metric fails.
    """
    rows = []
    for name, spec in expected.items():
        got = metrics.get(name, "MISSING")
        rows.append(
            {
                "metric": name,
                "group": spec.get("group", ""),
                "expected": _describe(spec),
                "got": got,
                "ok": name in metrics and check_metrics(got, spec),
            }
        )
    for name in sorted(set(metrics) - set(expected)):
        rows.append(
            {
                "metric": name,
                "group": "reported",
                "expected": "(not checked)",
                "got": metrics[name],
                "ok": None,
            }
        )
    return rows


def summary_line(rows: list[dict[str, Any]]) -> str:
    """How many metrics are checked, per group, and how many are only reported."""
    checked = [r for r in rows if r["ok"] is not None]
    groups = sorted({r["group"] for r in checked})
    per_group = ", ".join(f"{sum(r['group'] == g for r in checked)} {g}" for g in groups)
    reported = sum(r["ok"] is None for r in rows)
    return (
        f"{len(checked)} metrics checked ({per_group}), {reported} reported only (not checked); "
        f"{sum(r['ok'] is False for r in rows)} missed"
    )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The comparison rows as a fixed-width text table."""
    header = ("metric", "group", "expected", "got", "ok")
    body = [
        (
            r["metric"],
            r.get("group", ""),
            r["expected"],
            _fmt(r["got"]),
            {True: "ok", False: "MISS", None: "-"}[r["ok"]],
        )
        for r in rows
    ]
    widths = [max(len(str(x[i])) for x in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True))
        for line in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
