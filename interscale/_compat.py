"""Keyword spellings accepted beside InterScale's own (README, "Compatibility")."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["accepts_library_key"]

F = TypeVar("F", bound=Callable[..., Any])
_UNSET: Any = object()


def accepts_library_key(func: F) -> F:
    """Let ``func`` take squidpy's ``library_key=`` for its ``sample_key`` parameter.

    The signature and the docstring stay ``func``'s own (``sample_key``); ``library_key=`` is a
    keyword-only spelling of the same argument.

    Raises
    ------
    TypeError
        (from the wrapped call) Both ``sample_key`` and ``library_key`` are given.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, library_key: Any = _UNSET, **kwargs: Any) -> Any:
        if library_key is not _UNSET:
            if "sample_key" in kwargs:
                raise TypeError(
                    f"{func.__name__}: give the sample column once, as sample_key= (or its "
                    "squidpy spelling library_key=), not both"
                )
            kwargs["sample_key"] = library_key
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
