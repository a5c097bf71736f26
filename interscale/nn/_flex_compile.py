"""The compiled FlexAttention call on CUDA: its recompile budget and a loud fallback.

``torch.compile(flex_attention, dynamic=False)`` compiles one kernel per padded length
(:func:`interscale.nn._flex.bucket_length`), neighbour-table width (``long_range``) and grad mode
(training and evaluation are separate graphs).  torch._dynamo keeps at most
``torch._dynamo.config.recompile_limit`` graphs per function (8 by default) and, past it, silently
runs the function eagerly: eager FlexAttention computes the whole score matrix.  Here the limit is
raised to :data:`RECOMPILE_LIMIT` for this one call (``torch._dynamo.config.patch`` around it, the
global setting is left alone), and reaching it raises inside dynamo
(``fail_on_recompile_limit_hit``) so that :func:`call_compiled` can say so.

:func:`call_compiled` runs the compiled function and, where it cannot be used, the eager one, with
a :class:`FlexFallbackWarning` (once per reason and process) that names the reason and the cost:

* the recompile limit is hit: this call runs eagerly, later calls whose graph is already compiled
  still run compiled;
* compiling fails (an inductor or Triton error, an unsupported PyTorch): the compiled path is off
  for the rest of the process (recompiling on every step would cost as much as the fallback).

A recompilation refused on purpose (``torch._dynamo.config.error_on_recompile``, used by tests) and
out-of-memory errors are raised, not hidden.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import cache
from typing import Any

import torch

__all__ = [
    "RECOMPILE_LIMIT",
    "FlexFallbackWarning",
    "call_compiled",
    "fallback_reasons",
    "flex_available",
    "quiet_eager",
]

#: Graphs torch._dynamo may compile for the FlexAttention call (its default for any function is 8).
#: The main dataset (one sample per step, 1,640-4,318 cells) spans 7 length buckets, i.e. 14 graphs
#: with training and evaluation; 64 leaves room for ``long_range`` table widths and batches of
#: several samples, and still bounds the compile time.
RECOMPILE_LIMIT = 64

_EAGER_WARNING = "flex_attention called without torch.compile"
# PyTorch shows that warning once per process, keyed by this id (torch.nn.attention.flex_attention)
_EAGER_WARNING_ID = "flex_attention_performance"
_WHY = {
    "limit": (
        "torch._dynamo's recompile limit for it ({limit} graphs) was reached; calls of a new "
        "padded length run eagerly, lengths already compiled still run compiled"
    ),
    "error": "compiling it failed; the compiled path is off for the rest of this process",
}
_warned: list[str] = []
_broken: list[str] = []


@cache
def _flex_module():
    try:
        from torch.nn.attention import flex_attention as module
    except ImportError:  # PyTorch < 2.5
        return None
    return module


def flex_available() -> bool:
    """Tell whether this PyTorch ships ``torch.nn.attention.flex_attention``.

    Returns
    -------
    bool
        True when FlexAttention can be imported.
    """
    return _flex_module() is not None


def quiet_eager(*args: Any, **kwargs: Any) -> Any:
    """Eager ``flex_attention`` without PyTorch's "without torch.compile" warning (the CPU path).

    PyTorch's warn-once record is left as it was, so that a later eager call on CUDA (the
    fallback of :func:`call_compiled`) still shows that warning.

    Parameters
    ----------
    *args, **kwargs
        Passed to ``torch.nn.attention.flex_attention.flex_attention``.

    Returns
    -------
    Any
        Its result.
    """
    flex = _flex_module()
    shown = getattr(flex, "_WARNINGS_SHOWN", None)
    had = shown is None or _EAGER_WARNING_ID in shown
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_EAGER_WARNING)
        try:
            return flex.flex_attention(*args, **kwargs)
        finally:
            if not had:
                shown.discard(_EAGER_WARNING_ID)


class FlexFallbackWarning(RuntimeWarning):
    """The compiled FlexAttention kernel could not be used; eager FlexAttention ran instead."""


def fallback_reasons() -> list[str]:
    """The kinds of fallback warned about in this process so far, in order.

    Returns
    -------
    list of str
        ``"limit"`` (recompile limit reached) and/or ``"error"`` (compiling failed).
    """
    return list(_warned)


def _warn(kind: str, exc: BaseException) -> None:
    if kind in _warned:
        return
    _warned.append(kind)
    warnings.warn(
        f"FlexAttention falls back to its eager implementation: "
        f"{_WHY[kind].format(limit=RECOMPILE_LIMIT)} "
        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Eager "
        "FlexAttention materialises the whole score matrix of the packed sequence (slow, "
        "O(length^2) memory); use kernel='math' (the blocked path) to avoid it, or see "
        "interscale.nn._flex_compile for the limits",
        FlexFallbackWarning,
        stacklevel=4,
    )


def _reraise(exc: BaseException) -> bool:
    """Errors that must surface: memory, and recompilations refused on purpose."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    recompile_error = getattr(torch._dynamo.exc, "RecompileError", None)
    return recompile_error is not None and isinstance(exc, recompile_error)


def _limits() -> dict[str, Any]:
    """The dynamo settings of the call, those that this PyTorch knows."""
    wanted = {"recompile_limit": RECOMPILE_LIMIT, "fail_on_recompile_limit_hit": True}
    return {key: value for key, value in wanted.items() if hasattr(torch._dynamo.config, key)}


def call_compiled(compiled: Callable, eager: Callable, *args: Any, **kwargs: Any) -> Any:
    """``compiled(*args, **kwargs)`` under :data:`RECOMPILE_LIMIT`, else ``eager(...)``, loudly.

    Parameters
    ----------
    compiled
        The ``torch.compile``-d function.
    eager
        The same function uncompiled; it runs (without filtering its own warnings) where the
        compiled one cannot.
    *args, **kwargs
        Passed to either.

    Returns
    -------
    Any
        The function's result.

    Warns
    -----
    FlexFallbackWarning
        Once per kind of fallback (recompile limit, compile error) and process.
    """
    if not _broken:
        failure = getattr(torch._dynamo.exc, "FailOnRecompileLimitHit", None)
        try:
            with torch._dynamo.config.patch(**_limits()):
                return compiled(*args, **kwargs)
        except Exception as exc:
            if _reraise(exc):
                raise
            if failure is not None and isinstance(exc, failure):
                _warn("limit", exc)
            else:
                _broken.append(f"{type(exc).__name__}: {exc}")
                _warn("error", exc)
    return eager(*args, **kwargs)
