"""Errors, value checks and the base of every section; each message names the full dotted path.

A section is a frozen dataclass whose fields are declared with :func:`_value`: the default and the
check that validates and normalises a given value. :class:`_Section` runs the checks in field
order, then the section's rules that tie several fields together (``_validate``).
"""

from __future__ import annotations

import difflib
import functools
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import field, fields
from typing import Any, ClassVar

__all__ = ["ConfigError", "ConfigTypeError"]

#: A field's check: ``check(value, dotted_path)`` returns the value to store or raises.
Check = Callable[[Any, str], Any]


class ConfigError(ValueError):
    """An invalid configuration: unknown key, out-of-range value or inconsistent values."""


class ConfigTypeError(ConfigError, TypeError):
    """A configuration value of the wrong type (also a ``TypeError``)."""


# ---------------------------------------------------------------------------------------------
# Value checks: check(value, path) -> stored value.
# ---------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _kind(value: Any) -> str:
    return type(value).__name__


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _is_unset(value: Any, *, empty_is_unset: bool = False) -> bool:
    # "None" is what the published yacs loader turned into None via literal_eval.
    if value is None or (isinstance(value, str) and value == "None"):
        return True
    return empty_is_unset and isinstance(value, str) and value == ""


def _suggest(value: str, choices: Iterable[str]) -> str | None:
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


def _as_choice(
    value: Any, path: str, choices: tuple[str, ...], notes: Mapping[str, str] | None = None
) -> str:
    listed = ", ".join(map(repr, choices))
    if not isinstance(value, str):
        raise ConfigTypeError(
            f"{path} must be one of {listed}, got {_show(value)} ({_kind(value)})"
        )
    if value not in choices:
        msg = f"{path} must be one of {listed}, got {value!r}"
        hint = _suggest(value, choices)
        if hint is not None:
            msg += f"; did you mean {hint!r}?"
        raise ConfigError(msg + (notes or {}).get(value, ""))
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


def _as_subset(value: Any, path: str) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    # Stored as pairs rather than a dict so that the frozen config stays hashable.
    what = f"{path} must be a mapping of obs column -> list of values, got {_show(value)}"
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, list | tuple):
        items = list(value)
        if not all(isinstance(item, list | tuple) and len(item) == 2 for item in items):
            raise ConfigTypeError(what)
    else:
        raise ConfigTypeError(f"{what} ({_kind(value)})")
    out = []
    for key, vals in items:
        _as_str(key, f"{path} key")
        vals = tuple(vals) if isinstance(vals, list | tuple) else (vals,)
        for i, v in enumerate(vals):
            if not (v is None or isinstance(v, str | bool | int | float)):
                raise ConfigTypeError(
                    f"{path}.{key}[{i}] must be a string, number or boolean, got {_kind(v)}"
                )
        out.append((key, vals))
    return tuple(out)


# Factories of the checks that take settings, so that a field declaration reads in one line.


def _int(*, minimum: int | None = None) -> Check:
    return lambda value, path: _as_int(value, path, minimum=minimum)


def _float(**bounds: Any) -> Check:
    return lambda value, path: _as_float(value, path, **bounds)


def _choice(choices: tuple[str, ...], notes: Mapping[str, str] | None = None) -> Check:
    return lambda value, path: _as_choice(value, path, choices, notes)


def _optional(check: Check, *, empty: bool = False, unset: Any = None) -> Check:
    """``check``, except that an unset value (``None``, ``"None"``, ``""`` if ``empty``) is
    stored as ``unset``."""
    return lambda value, path: (
        unset if _is_unset(value, empty_is_unset=empty) else check(value, path)
    )


def _nonempty(hint: str = "") -> Check:
    def check(value: Any, path: str) -> str:
        if not _as_str(value, path):
            raise ConfigError(f"{path} must not be empty{hint}")
        return value

    return check


#: Dropout rates.
_DROPOUT = _float(low=0, high=1, high_open=True)
#: Optional names and paths: unset and ``""`` are stored as ``None``.
_OPT_STR = _optional(_as_str, empty=True)


def _value(default: Any, check: Check, plain: Callable[[Any], Any] | None = None) -> Any:
    """A section field: its default, the check that validates and normalises a given value and,
    where the stored form is not plain data, how :meth:`Config.to_dict` writes it."""
    return field(default=default, metadata={"check": check, "plain": plain})


# ---------------------------------------------------------------------------------------------
# The base of every section.
# ---------------------------------------------------------------------------------------------


class _Section:
    """Base of the sections: checks each field with its full dotted path, then ``_validate``.

    A subclass names its place in the file and its published key aliases as class keywords,
    ``class OptimConfig(_Section, path="optim", aliases={"wd": "weight_decay"})``; a field whose
    default factory is a section class is a nested section.
    """

    _PATH: ClassVar[str] = ""
    _ALIASES: ClassVar[Mapping[str, str]] = {}

    def __init_subclass__(cls, path: str = "", aliases: Mapping[str, str] | None = None) -> None:
        super().__init_subclass__()
        cls._PATH, cls._ALIASES = path, dict(aliases or {})

    def __post_init__(self) -> None:
        nested = _sections(type(self))
        for f in fields(self):
            value, where = getattr(self, f.name), _join(self._PATH, f.name)
            if f.name in nested:
                if not isinstance(value, nested[f.name]):
                    where = where if self._PATH else f"section '{f.name}'"
                    raise ConfigTypeError(
                        f"{where} must be a {nested[f.name].__name__} (a mapping in YAML), "
                        f"got {_kind(value)}"
                    )
            else:
                # Frozen: the normalised value (int from 2.0, tuple from a list) goes in directly.
                object.__setattr__(self, f.name, f.metadata["check"](value, where))
        self._validate()

    def _validate(self) -> None:
        """Check the rules that tie several fields together (after every field's own check)."""

    @classmethod
    def _prepare(cls, kwargs: dict[str, Any], given: set[str]) -> None:
        """Adjust the values to build from before construction, by which keys were ``given``.

        ``kwargs`` holds the given values (a file) or the old ones updated with the given ones
        (overrides); only parsing calls this, so direct construction takes values as they are.
        """


@functools.cache
def _sections(cls: type) -> dict[str, type[_Section]]:
    """The nested sections of a section class: field name -> section class."""
    return {
        f.name: f.default_factory
        for f in fields(cls)
        if isinstance(f.default_factory, type) and issubclass(f.default_factory, _Section)
    }
