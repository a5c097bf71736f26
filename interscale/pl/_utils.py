"""Plot plumbing shared by the plotting functions: axes creation, atomic save, show."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from interscale._io import atomic_file


def _new_axes(ax: Any, figsize: tuple[float, float]) -> tuple[Any, Any]:
    """Return (figure, axes): the given axes, or a new figure with constrained layout."""
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax


def _save_figure(fig: Any, save: str | os.PathLike[str], dpi: int = 300) -> Path:
    """Write ``fig`` to ``save`` atomically (temp file in the same folder, then os.replace).

    The format follows the file extension (PNG when there is none).
    """
    path = Path(save)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot save figure: folder {str(path.parent)!r} does not exist")
    fmt = path.suffix[1:].lower() or "png"
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
    return path


def _finish(fig: Any, *, save: Any, dpi: int, show: bool) -> None:
    if save is not None:
        _save_figure(fig, save, dpi=dpi)
    if show:
        import matplotlib.pyplot as plt

        plt.show()


def _require_columns(df: pd.DataFrame, cols: list[str], *, what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise KeyError(f"{what}: missing column(s) {missing}; got {list(df.columns)}")


def _shorten(labels: Any, max_len: int | None) -> list[str]:
    out = [str(s) for s in labels]
    if max_len is None:
        return out
    return [s if len(s) <= max_len else s[: max(max_len - 1, 1)] + "\u2026" for s in out]


def _tick_fontsize(n_labels: int, inches: float, base: float = 10.0) -> float:
    """A font size that lets ``n_labels`` tick labels fit along ``inches`` of axis."""
    if n_labels <= 0:
        return base
    return float(np.clip(0.8 * 72.0 * inches / n_labels, 4.0, base))
