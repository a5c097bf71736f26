"""Local vs global gene-rank scatter plot."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from interscale.pl._utils import _finish, _new_axes, _require_columns


def gene_ranks(
    merged_df: pd.DataFrame,
    *,
    top_n: int = 5,
    ax: Any = None,
    figsize: tuple[float, float] = (6.5, 6.5),
    title: str | None = "Gene Prediction Rank: Local vs. Global",
    color_local: str = "#EE9B00",
    color_global: str = "#005F73",
    color_best: str = "#2A9D2F",
    fontsize: float = 10,
    save: str | os.PathLike[str] | None = None,
    save_dir: str | os.PathLike[str] | None = None,
    post_fix: str | None = None,
    dpi: int = 300,
    show: bool = False,
) -> Any:
    """Scatter of each gene's local rank against its global rank, top genes labelled.

    Higher rank = better R^2. Genes below the diagonal are predicted relatively better by
    the local head (local-driven, largest positive Rank Difference), genes above it by the
    global head. The ``top_n`` local-driven, global-driven and best predicted (highest
    Avg Rank) genes are highlighted and named.

    Parameters
    ----------
    merged_df
        Output of :func:`interscale.evaluation.calculate_gene_ranks`.
    top_n
        Genes highlighted per category (0: none).
    ax
        Axes to draw on (default: a new figure).
    figsize
        Size of a new figure.
    title
        Axes title (None: no title).
    color_local, color_global, color_best
        Colours of the three highlighted groups (hex with or without '#').
    fontsize
        Base font size (gene labels are 2 pt smaller).
    save
        Path to write the figure to (format from the extension; written atomically).
    save_dir, post_fix
        Published-style saving: ``{save_dir}/gene_rank_analysis_{post_fix}.png``.
    dpi
        Resolution of saved raster images.
    show
        Call ``matplotlib.pyplot.show()`` at the end.

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    KeyError
        A required column is missing.
    ValueError
        ``top_n`` is negative or the table is empty.
    """
    what = "pl.gene_ranks"
    cols = ["gene", "Local Rank", "Global Rank", "Rank Difference", "Avg Rank"]
    _require_columns(merged_df, cols, what=what)
    if not isinstance(top_n, int | np.integer) or top_n < 0:
        raise ValueError(f"{what}: top_n must be an integer >= 0, got {top_n!r}")
    if len(merged_df) == 0:
        raise ValueError(f"{what}: the table is empty")

    def _hex(c: str) -> str:
        return c if not isinstance(c, str) or c.startswith("#") or len(c) != 6 else f"#{c}"

    color_local, color_global, color_best = map(_hex, (color_local, color_global, color_best))
    fig, ax = _new_axes(ax, figsize)
    x, y = merged_df["Local Rank"], merged_df["Global Rank"]
    ax.scatter(x, y, s=16, alpha=0.6, color="gray", linewidths=0, label="All genes", zorder=2)

    top_local = merged_df.nlargest(top_n, "Rank Difference")
    top_global = merged_df.nsmallest(top_n, "Rank Difference")
    top_best = merged_df.nlargest(top_n, "Avg Rank")
    if top_n > 0:
        # Best predicted genes get a ring, so a gene that is also local- or global-driven
        # shows both memberships; every gene is named once.
        ax.scatter(
            top_best["Local Rank"],
            top_best["Global Rank"],
            s=90,
            facecolors="none",
            edgecolors=color_best,
            linewidths=1.6,
            label="Best predicted",
            zorder=3,
        )
        for label, sub, color in (
            ("Top local-driven", top_local, color_local),
            ("Top global-driven", top_global, color_global),
        ):
            ax.scatter(
                sub["Local Rank"],
                sub["Global Rank"],
                s=36,
                color=color,
                edgecolors="white",
                linewidths=0.5,
                label=label,
                zorder=4,
            )
        named: set[str] = set()
        for sub, color in (
            (top_local, color_local),
            (top_global, color_global),
            (top_best, color_best),
        ):
            points = zip(sub["Local Rank"], sub["Global Rank"], sub["gene"], strict=True)
            for gx, gy, name in points:
                if str(name) in named:
                    continue
                named.add(str(name))
                ax.annotate(
                    str(name),
                    (gx, gy),
                    xytext=(5, 4),
                    textcoords="offset points",
                    fontsize=fontsize - 2,
                    color=color,
                    zorder=5,
                )

    lo = float(np.nanmin([x.min(), y.min()]))
    hi = float(np.nanmax([x.max(), y.max()]))
    ax.plot([lo, hi], [lo, hi], "--", color="#C0392B", linewidth=1, label="Equal rank (y = x)")
    pad = 0.05 * (hi - lo if hi > lo else 1.0)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal", adjustable="box")
    # Faint region names in the two triangles, behind the data.
    for xy, text, color in (
        ((0.75, 0.22), "local-driven", color_local),
        ((0.25, 0.78), "global-driven", color_global),
    ):
        ax.text(
            *xy,
            text,
            transform=ax.transAxes,
            ha="center",
            va="center",
            rotation=45,
            fontsize=fontsize + 4,
            color=color,
            alpha=0.25,
            zorder=1,
        )
    ax.set_xlabel("Local head rank (higher = better R\u00b2)", fontsize=fontsize)
    ax.set_ylabel("Global head rank (higher = better R\u00b2)", fontsize=fontsize)
    if title:
        ax.set_title(title, fontsize=fontsize + 2, fontweight="bold")
    ax.tick_params(labelsize=fontsize - 1)
    ax.legend(
        fontsize=fontsize - 2,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.1),
        ncol=3,
        frameon=False,
    )
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)

    if save is None and save_dir is not None:
        save = Path(save_dir) / f"gene_rank_analysis_{post_fix}.png"
    _finish(fig, save=save, dpi=dpi, show=show)
    return ax
