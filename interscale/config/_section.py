"""The base of every config section: where it lives, its key aliases and nested sections."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar


class _Section:
    """Mixin: where the section lives, its aliases, nested sections and a pre-parse hook."""

    _PATH: ClassVar[str] = ""
    _ALIASES: ClassVar[dict[str, str]] = {}
    _NESTED: ClassVar[dict[str, Callable[[], type]]] = {}

    @classmethod
    def _prepare(cls, kwargs: dict[str, Any]) -> None:
        """Fill values that depend on which keys the user gave (before construction)."""
