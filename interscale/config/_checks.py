"""Errors and value checks of the config; each check names the full dotted path in its message."""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["ConfigError", "ConfigTypeError"]


class ConfigError(ValueError):
    """An invalid configuration: unknown key, out-of-range value or inconsistent values."""


class ConfigTypeError(ConfigError, TypeError):
    """A configuration value of the wrong type (also a ``TypeError``)."""


# ---------------------------------------------------------------------------------------------
# Value checks. Each takes the full dotted path so that every message can name it.
# ---------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _kind(value: Any) -> str:
    return type(value).__name__


def _is_unset(value: Any, *, empty_is_unset: bool = False) -> bool:
    # "None" is what the published yacs loader turned into None via literal_eval.
    if value is None or (isinstance(value, str) and value == "None"):
        return True
    return empty_is_unset and isinstance(value, str) and value == ""


def _suggest(value: str, choices: Iterable[str]) -> str | None:
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    if value.lower() in lowered:
        return lowered[value.lower()]
    match = difflib.get_close_matches(value.lower(), list(lowered), n=1)
    return lowered[match[0]] if match else None


def _as_bool(value: Any, path: str) -> bool:
    if isinstance(value, bool):
        return value
    hint = " (write true or false without quotes)" if isinstance(value, str) else ""
    raise ConfigTypeError(f"{path} must be a boolean, got {_show(value)} ({_kind(value)}){hint}")


def _as_int(value: Any, path: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigTypeError(f"{path} must be an integer, got {_show(value)} ({_kind(value)})")
    if not isinstance(value, numbers.Integral):
        if not (math.isfinite(float(value)) and float(value).is_integer()):
            raise ConfigTypeError(f"{path} must be an integer, got {_show(value)}")
    out = int(value)
    if minimum is not None and out < minimum:
        what = {0: "a non-negative integer", 1: "a positive integer"}.get(
            minimum, f"an integer >= {minimum}"
        )
        raise ConfigError(f"{path} must be {what}, got {_show(value)}")
    return out


def _as_float(
    value: Any,
    path: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigTypeError(f"{path} must be a number, got {_show(value)} ({_kind(value)})")
    out = float(value)
    if not math.isfinite(out):
        raise ConfigError(f"{path} must be a finite number, got {_show(value)}")
    too_low = low is not None and (out <= low if low_open else out < low)
    too_high = high is not None and (out >= high if high_open else out > high)
    if too_low or too_high:
        if low == 0 and high is None:
            what = "a positive number" if low_open else "a non-negative number"
        elif high is None:
            what = f"a number {'>' if low_open else '>='} {low:g}"
        elif low is None:
            what = f"a number {'<' if high_open else '<='} {high:g}"
        else:
            left, right = ("(" if low_open else "["), (")" if high_open else "]")
            what = f"in {left}{low:g}, {high:g}{right}"
        raise ConfigError(f"{path} must be {what}, got {_show(value)}")
    return out


def _as_str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise ConfigTypeError(f"{path} must be a string, got {_show(value)} ({_kind(value)})")
    return value


def _as_opt_str(value: Any, path: str) -> str | None:
    return None if _is_unset(value, empty_is_unset=True) else _as_str(value, path)


def _as_choice(value: Any, path: str, choices: Iterable[str], *, note: str = "") -> str:
    choices = tuple(choices)
    if not isinstance(value, str):
        raise ConfigTypeError(
            f"{path} must be one of {', '.join(map(repr, choices))}, "
            f"got {_show(value)} ({_kind(value)})"
        )
    if value not in choices:
        hint = _suggest(value, choices)
        msg = f"{path} must be one of {', '.join(map(repr, choices))}, got {value!r}"
        if hint is not None:
            msg += f"; did you mean {hint!r}?"
        raise ConfigError(msg + note)
    return value


def _as_str_tuple(value: Any, path: str) -> tuple[str, ...]:
    # A lone string is the common shorthand for a one-element list (`sample_key: sample`).
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list | tuple):
        raise ConfigTypeError(
            f"{path} must be a list of strings, got {_show(value)} ({_kind(value)})"
        )
    for i, item in enumerate(value):
        _as_str(item, f"{path}[{i}]")
    return tuple(value)


def _as_int_tuple(value: Any, path: str, *, minimum: int) -> tuple[int, ...]:
    if not isinstance(value, list | tuple):
        raise ConfigTypeError(
            f"{path} must be a list of integers, got {_show(value)} ({_kind(value)})"
        )
    return tuple(_as_int(v, f"{path}[{i}]", minimum=minimum) for i, v in enumerate(value))


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | bool | int | float)


def _as_subset(value: Any, path: str) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    # Stored as pairs rather than a dict so that the frozen config stays hashable.
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, list | tuple):
        items = list(value)
        for item in items:
            if not (isinstance(item, list | tuple) and len(item) == 2):
                raise ConfigTypeError(
                    f"{path} must be a mapping of obs column -> list of values, got {_show(value)}"
                )
    else:
        raise ConfigTypeError(
            f"{path} must be a mapping of obs column -> list of values, "
            f"got {_show(value)} ({_kind(value)})"
        )
    out = []
    for key, vals in items:
        _as_str(key, f"{path} key")
        vals = tuple(vals) if isinstance(vals, list | tuple) else (vals,)
        for i, v in enumerate(vals):
            if not _is_scalar(v):
                raise ConfigTypeError(
                    f"{path}.{key}[{i}] must be a string, number or boolean, got {_kind(v)}"
                )
        out.append((key, vals))
    return tuple(out)


def _require(obj: Any, name: str, cls: type, path: str) -> None:
    value = getattr(obj, name)
    if not isinstance(value, cls):
        raise ConfigTypeError(
            f"{path}.{name} must be a {cls.__name__} (a mapping in YAML), got {_kind(value)}"
        )


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)
