"""Local vs global gene-rank scatter plot."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from interscale._plotting import finish, new_axes, require_columns
from interscale.evaluation import driven_genes
from interscale.names import HEADS

_INTERVAL_COLUMNS = ("rank_difference_lo", "rank_difference_hi")


def _rows_of(df: pd.DataFrame, genes: list[str]) -> pd.DataFrame:
    """Rows of ``df`` for ``genes``, in that order (first row of a repeated name)."""
    first = df.drop_duplicates("gene")
    first = first.set_index(first["gene"].astype(str).to_numpy())
    return first.loc[genes].reset_index(drop=True)


def _interval_segments(df: pd.DataFrame) -> np.ndarray | None:
    """Per gene, the bar (2 points) of its Rank Difference interval, or None without one.

    The bar runs perpendicular to y = x through (Local Rank, Global Rank): moving by t/2
    along (1, -1) changes the Rank Difference by t and leaves Avg Rank as it is.
    """
    if not all(c in df.columns for c in _INTERVAL_COLUMNS):
        return None
    x = df["Local Rank"].to_numpy(dtype=np.float64)
    y = df["Global Rank"].to_numpy(dtype=np.float64)
    d = x - y
    ends = []
    for col in _INTERVAL_COLUMNS:
        t = df[col].to_numpy(dtype=np.float64) - d
        ends.append(np.column_stack([x + t / 2.0, y - t / 2.0]))
    return np.stack(ends, axis=1)  # genes x 2 points x (x, y)


def _interval_label(df: pd.DataFrame) -> str:
    boot = df.attrs.get("bootstrap") or {}
    ci = boot.get("ci")
    level = f"{100 * float(ci):g}% " if ci is not None else ""
    return f"{level}bootstrap interval of Rank Difference (crosses y = x: includes 0)"


def _draw_intervals(
    ax: Any,
    df: pd.DataFrame,
    segments: np.ndarray,
    *,
    intervals: str,
    groups: Any,
    label: str,
) -> None:
    from matplotlib.collections import LineCollection

    ok = np.isfinite(segments).all(axis=(1, 2))
    if intervals == "all":
        ax.add_collection(
            LineCollection(
                segments[ok], colors="gray", linewidths=0.8, alpha=0.35, zorder=1.5, label=label
            )
        )
    else:  # a neutral legend entry for the coloured bars
        ax.plot([], [], color="dimgray", linewidth=1.4, label=label)
    index = {str(g): i for i, g in reversed(list(enumerate(df["gene"])))}
    for sub, color in groups:
        rows = [i for i in (index[str(g)] for g in sub["gene"]) if ok[i]]
        if rows:
            ax.add_collection(
                LineCollection(segments[rows], colors=color, linewidths=1.4, zorder=3.5)
            )


def _label_rows(*groups: tuple[pd.DataFrame, str]) -> list[tuple[float, float, str, str]]:
    """(x, y, gene, colour) of every gene to name, each once (first group that has it)."""
    named: set[str] = set()
    rows = []
    for sub, color in groups:
        for gx, gy, name in zip(sub["Local Rank"], sub["Global Rank"], sub["gene"], strict=True):
            if str(name) not in named:
                named.add(str(name))
                rows.append((float(gx), float(gy), str(name), color))
    return rows


def _renderer(fig: Any) -> Any:
    """The figure's renderer after a layout pass (positions are final for this content)."""
    fig.draw_without_rendering()
    return fig.canvas.get_renderer()


def _legend_below_axis(ax: Any, fontsize: float) -> None:
    """Legend under the x label and tick labels, however the layout later sizes the axes.

    The distance from the bottom spine to the lowest x-axis text is fixed in points (tick
    length, padding, font sizes), so the legend is anchored that many points below the
    spine rather than at a fraction of the axes height (which overlapped the x label).
    """
    from matplotlib.transforms import ScaledTranslation

    fig = ax.figure
    renderer = _renderer(fig)
    spine = ax.get_window_extent(renderer).y0
    lowest = min(
        [spine]
        + [t.get_window_extent(renderer).y0 for t in (ax.xaxis.label,) if t.get_text()]
        + [t.get_window_extent(renderer).y0 for t in ax.get_xticklabels() if t.get_text()]
    )
    drop = (spine - lowest) / fig.dpi + fontsize / 72.0  # inches, plus one text line of air
    # the interval entry is long: two columns of it would be wider than the axes
    entries = ax.get_legend_handles_labels()[1]
    ax.legend(
        fontsize=fontsize,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        bbox_transform=ax.transAxes + ScaledTranslation(0.0, -drop, fig.dpi_scale_trans),
        ncol=1 if max(map(len, entries), default=0) > 40 else 2,
        frameon=False,
    )


def _spread(targets: np.ndarray, gap: float) -> np.ndarray:
    """Positions in [gap/2, 1 - gap/2], in the order of ``targets``, at least ``gap`` apart,
    each as close to its target as the others allow (targets sorted ascending)."""
    pos = np.clip(targets, gap / 2.0, 1.0 - gap / 2.0)
    # push up from the bottom, then down from the top: a fixed number of passes, no search
    pos = np.maximum.accumulate(pos - gap * np.arange(pos.size)) + gap * np.arange(pos.size)
    top = 1.0 - gap / 2.0 - gap * np.arange(pos.size)[::-1]
    pos = np.minimum(pos, top)
    return pos


def _label_column(ax: Any, labels: list[tuple[float, float, str, str]], fontsize: float) -> None:
    """Name genes in a column right of the axes, at their points' heights where there is
    room, each joined to its point by a thin leader line.

    Labels next to their points stacked on top of each other where the best predicted genes
    crowd the upper right. In the column, labels are kept one line and a quarter apart (the
    font shrinks, down to 5 pt, when the axes are too short for that); placed again after
    each layout pass until the spacing holds at the final axes height.
    """
    from matplotlib.text import Text

    order = sorted(range(len(labels)), key=lambda i: (labels[i][1], labels[i][0], labels[i][2]))
    texts = []
    for i in order:
        gx, gy, name, color = labels[i]
        texts.append(
            ax.annotate(
                name,
                (gx, gy),
                xytext=(1.03, 0.5),
                textcoords="axes fraction",
                ha="left",
                va="center",
                fontsize=fontsize,
                color=color,
                zorder=5,
                annotation_clip=False,
                arrowprops={
                    "arrowstyle": "-",
                    "color": color,
                    "linewidth": 0.6,
                    "alpha": 0.6,
                    "shrinkA": 1,
                    "shrinkB": 3,
                },
            )
        )
    heights = np.array([labels[i][1] for i in order])
    fig = ax.figure

    def text_box(t: Any) -> Any:  # the text alone; an Annotation's own extent adds its line
        return Text.get_window_extent(t, renderer)

    for _ in range(3):
        renderer = _renderer(fig)
        box = ax.get_window_extent(renderer)
        line = max(text_box(t).height for t in texts)
        size = texts[0].get_fontsize()
        if len(texts) * 1.25 * line > box.height:  # too many names for one column at this size
            size = max(5.0, size * box.height / (len(texts) * 1.25 * line))
            for t in texts:
                t.set_fontsize(size)
            line = max(text_box(t).height for t in texts)
        ymin, ymax = ax.get_ylim()
        wanted = (heights - ymin) / (ymax - ymin) if ymax > ymin else np.full(len(texts), 0.5)
        gap = 1.25 * line / box.height
        pos = _spread(wanted, gap)
        moved = [abs(t.xyann[1] - p) > 1e-9 for t, p in zip(texts, pos, strict=True)]
        for t, p in zip(texts, pos, strict=True):
            t.xyann = (1.03, float(p))
        if not any(moved):
            break


def gene_ranks(
    merged_df: pd.DataFrame,
    *,
    top_n: int = 5,
    show_all: bool = False,
    margin: float = 0.01,
    require_interval: bool = True,
    intervals: str = "all",
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
    """Scatter of each gene's local rank against its global rank, driven genes labelled.

    Higher rank = better R^2. Genes below the diagonal are predicted relatively better by
    the local head (local-driven, positive Rank Difference), genes above it by the global
    head. By default only genes that can be claimed (:func:`interscale.evaluation.driven_genes`:
    the head beats the mean predictor and, with bootstrap columns, the Rank Difference
    interval excludes 0) are highlighted and named, at most ``top_n`` per head;
    ``show_all=True`` highlights the ``top_n`` largest and smallest Rank Differences
    regardless. The ``top_n`` best predicted genes (highest Avg Rank) get a green ring.

    When the table has bootstrap columns (``rank_difference_lo``/``_hi``), each gene's
    Rank Difference interval is drawn as a short bar perpendicular to the y = x line through
    the gene's point: along the bar Avg Rank stays fixed and the Rank Difference runs from
    the lower to the upper bound, so **a bar that crosses the dashed y = x line is a gene
    whose interval includes 0**. (Percentile intervals need not contain the point itself.)

    Parameters
    ----------
    merged_df
        Output of :func:`interscale.evaluation.calculate_gene_ranks`.
    top_n
        Genes highlighted per category (0: none).
    show_all
        Highlight the top ``top_n`` genes of each side whether or not they can be claimed.
    margin, require_interval
        Passed to :func:`interscale.evaluation.driven_genes` (when ``show_all`` is False).
    intervals
        Which bootstrap intervals to draw, when the columns exist: ``"all"`` (faint grey for
        every gene, coloured for highlighted ones), ``"highlighted"`` or ``"none"``.
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
        A required column is missing (``r2_local``/``r2_global`` are needed unless
        ``show_all``).
    ValueError
        ``top_n`` is negative, ``intervals`` is unknown or the table is empty.
    """
    what = "pl.gene_ranks"
    cols = ["gene", "Local Rank", "Global Rank", "Rank Difference", "Avg Rank"]
    require_columns(merged_df, cols, what=what)
    if not isinstance(top_n, int | np.integer) or top_n < 0:
        raise ValueError(f"{what}: top_n must be an integer >= 0, got {top_n!r}")
    if intervals not in ("all", "highlighted", "none"):
        raise ValueError(
            f"{what}: intervals must be 'all', 'highlighted' or 'none', got {intervals!r}"
        )
    if not show_all:
        require_columns(merged_df, ["r2_local", "r2_global"], what=what)
    if len(merged_df) == 0:
        raise ValueError(f"{what}: the table is empty")

    def _hex(c: str) -> str:
        return c if not isinstance(c, str) or c.startswith("#") or len(c) != 6 else f"#{c}"

    color_local, color_global, color_best = map(_hex, (color_local, color_global, color_best))
    fig, ax = new_axes(ax, figsize)
    x, y = merged_df["Local Rank"], merged_df["Global Rank"]
    ax.scatter(x, y, s=16, alpha=0.6, color="gray", linewidths=0, label="All genes", zorder=2)

    if show_all:
        top_local = merged_df.nlargest(top_n, "Rank Difference")
        top_global = merged_df.nsmallest(top_n, "Rank Difference")
        names = ("Top local-driven", "Top global-driven")
    else:
        claim = {"n": top_n, "margin": margin, "require_interval": require_interval}
        top_local, top_global = (
            _rows_of(merged_df, driven_genes(merged_df, which=which, **claim)) for which in HEADS
        )
        names = tuple(
            f"Claimed {which}-driven" + ("" if len(sub) else ": none")
            for which, sub in (("local", top_local), ("global", top_global))
        )
    top_best = merged_df.nlargest(top_n, "Avg Rank")
    labels: list[tuple[float, float, str, str]] = []
    segments = _interval_segments(merged_df) if intervals != "none" else None
    if segments is not None:
        _draw_intervals(
            ax,
            merged_df,
            segments,
            intervals=intervals,
            groups=((top_local, color_local), (top_global, color_global)) if top_n else (),
            label=_interval_label(merged_df),
        )
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
            (names[0], top_local, color_local),
            (names[1], top_global, color_global),
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
        labels = _label_rows(
            (top_local, color_local), (top_global, color_global), (top_best, color_best)
        )
    lo = float(np.nanmin([x.min(), y.min()]))
    hi = float(np.nanmax([x.max(), y.max()]))
    if segments is not None and intervals == "all":
        ends = segments[np.isfinite(segments).all(axis=(1, 2))]
        if len(ends):
            lo, hi = min(lo, float(ends.min())), max(hi, float(ends.max()))
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
        # padded so that the title clears the top tick label and the y label's end
        ax.set_title(title, fontsize=fontsize + 2, fontweight="bold", pad=2 * fontsize)
    ax.tick_params(labelsize=fontsize - 1)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    _legend_below_axis(ax, fontsize - 2)
    if labels:
        _label_column(ax, labels, fontsize - 2)

    if save is None and save_dir is not None:
        save = Path(save_dir) / f"gene_rank_analysis_{post_fix}.png"
    finish(fig, save=save, dpi=dpi, show=show)
    return ax
