"""Atomic file writes: a temp file in the target's folder, then ``os.replace``."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_file", "atomic_write_bytes", "atomic_write_text"]


@contextmanager
def _temp_beside(path: Path, suffix: str) -> Iterator[tuple[int, str]]:
    """Yield ``(fd, name)`` of a temp file next to ``path``; it replaces ``path`` on success.

    On any exception (KeyboardInterrupt included) the temp file is removed and ``path`` is left
    as it was, so a reader never sees a partial file under the final name.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        yield fd, tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


@contextmanager
def atomic_file(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temp file name for a writer that needs a path; it becomes ``path`` on success.

    Parameters
    ----------
    path
        Final destination; its folder must exist.
    suffix
        Suffix of the temp name, for writers that pick a format from the extension.
    """
    with _temp_beside(Path(path), suffix) as (fd, tmp):
        os.close(fd)
        yield tmp


def atomic_write_bytes(payload: bytes, path: str | os.PathLike[str], fsync: bool = False) -> None:
    """Write ``payload`` to ``path`` atomically; ``fsync`` flushes it to disk before the rename."""
    with _temp_beside(Path(path), ".tmp") as (fd, _):
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())


def atomic_write_text(text: str, path: str | os.PathLike[str]) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(text.encode("utf-8"), path)
