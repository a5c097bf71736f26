"""Plot plumbing every package that draws shares (the lowest floor; matplotlib loads lazily).

Axes creation, the atomic save, the optional ``plt.show()``, and the gene x dim heatmap, which
``interscale.pl.gene_by_dim_heatmap`` and ``interscale.evaluation.get_genes_dim(plot=True)``
both draw: kept here so that evaluation never has to import ``interscale.pl``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from interscale._io import atomic_file

__all__ = [
    "draw_gene_by_dim_heatmap",
    "finish",
    "new_axes",
    "require_columns",
    "save_figure",
    "shorten",
    "tick_fontsize",
]


def new_axes(ax: Any, figsize: tuple[float, float]) -> tuple[Any, Any]:
    """Return (figure, axes): the given axes, or a new figure with constrained layout."""
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax


def save_figure(fig: Any, save: str | os.PathLike[str], dpi: int = 300) -> Path:
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


def finish(fig: Any, *, save: Any, dpi: int, show: bool) -> None:
    """Save ``fig`` when ``save`` is a path, then call ``plt.show()`` when ``show``."""
    if save is not None:
        save_figure(fig, save, dpi=dpi)
    if show:
        import matplotlib.pyplot as plt

        plt.show()


def require_columns(df: pd.DataFrame, cols: list[str], *, what: str) -> None:
    """Raise unless ``df`` is a DataFrame holding every column of ``cols``."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise KeyError(f"{what}: missing column(s) {missing}; got {list(df.columns)}")


def shorten(labels: Any, max_len: int | None) -> list[str]:
    """Labels as strings, each cut to ``max_len`` characters with an ellipsis (None: as is)."""
    out = [str(s) for s in labels]
    if max_len is None:
        return out
    return [s if len(s) <= max_len else s[: max(max_len - 1, 1)] + "\u2026" for s in out]


def tick_fontsize(n_labels: int, inches: float, base: float = 10.0) -> float:
    """A font size that lets ``n_labels`` tick labels fit along ``inches`` of axis."""
    if n_labels <= 0:
        return base
    return float(np.clip(0.8 * 72.0 * inches / n_labels, 4.0, base))


def draw_gene_by_dim_heatmap(
    df: pd.DataFrame,
    *,
    cmap: str,
    vmax: float | None,
    ax: Any,
    figsize: tuple[float, float],
    title: str | None,
    xlabel: str,
    ylabel: str,
    colorbar_label: str,
    separators: bool,
    what: str,
) -> tuple[Any, Any]:
    """Draw a gene x dim score table as a heatmap; return (figure, axes), nothing saved.

    The checks and the drawing behind ``interscale.pl.gene_by_dim_heatmap`` (whose docstring
    describes the options); ``what`` starts the error messages.
    """
    require_columns(df, [], what=what)
    if df.shape[0] == 0 or df.shape[1] == 0:
        raise ValueError(f"{what}: the table is empty")
    try:
        values = df.to_numpy(dtype=float)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what}: df must be numeric") from err
    if vmax is None:
        finite = values[np.isfinite(values)]
        vmax = float(np.abs(finite).max()) if finite.size else 1.0
        vmax = vmax if vmax > 0 else 1.0

    fig, ax = new_axes(ax, figsize)
    im = ax.imshow(values, aspect="auto", cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest")
    cb = fig.colorbar(im, ax=ax, fraction=0.08, pad=0.03)
    cb.set_label(colorbar_label)
    n_genes, n_dims = values.shape
    height = ax.get_position().height * fig.get_figheight()
    ax.set_xticks(np.arange(n_dims), [str(c) for c in df.columns])
    ax.set_yticks(
        np.arange(n_genes), [str(g) for g in df.index], fontsize=tick_fontsize(n_genes, height)
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if separators and n_dims > 1:
        winner = np.argmax(np.nan_to_num(np.abs(values), nan=-1.0), axis=1)
        if np.all(np.diff(winner) >= 0):
            for cut in np.flatnonzero(np.diff(winner)):
                ax.axhline(cut + 0.5, color="white", linewidth=2)
    if title:
        ax.set_title(title)
    return fig, ax
