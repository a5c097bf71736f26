"""Plots of gene-set enrichment tables (gseapy ``enrichr`` output)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from interscale._plotting import finish, new_axes, require_columns, shorten

_DEFAULT_GROUP_COLORS = {"local": "#EE9B00", "global": "#005F73"}


def _neglog10(p: pd.Series, what: str) -> np.ndarray:
    p = pd.to_numeric(p, errors="coerce").to_numpy(dtype=float)
    if np.any((p < 0) | (p > 1)):
        raise ValueError(f"{what}: p-values must lie in [0, 1]")
    # An adjusted p of exactly 0 (underflow) would be infinite on the plot.
    return -np.log10(np.clip(p, 1e-300, 1.0))


def _gene_ratio(overlap: pd.Series, what: str) -> np.ndarray:
    """k/n from gseapy's ``Overlap`` strings such as ``"3/25"``."""
    parts = overlap.astype(str).str.split("/", n=1, expand=True)
    if parts.shape[1] != 2:
        raise ValueError(f"{what}: Overlap must look like 'k/n', got e.g. {overlap.iloc[0]!r}")
    k = pd.to_numeric(parts[0], errors="coerce").to_numpy(dtype=float)
    n = pd.to_numeric(parts[1], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(k) | ~np.isfinite(n) | (n <= 0)
    if bad.any():
        raise ValueError(
            f"{what}: Overlap must look like 'k/n', got {overlap.iloc[int(np.argmax(bad))]!r}"
        )
    return k / n


def _top_terms(df: pd.DataFrame, top_n: int, term_col: str, p_col: str) -> pd.DataFrame:
    """Best (smallest p) row per term, then the ``top_n`` best terms."""
    d = df.dropna(subset=[p_col]).sort_values(p_col, kind="stable")
    return d.drop_duplicates(subset=[term_col]).head(top_n)


def _check_top_n(top_n: Any, what: str) -> None:
    if not isinstance(top_n, int | np.integer) or top_n < 1:
        raise ValueError(f"{what}: top_n must be a positive integer, got {top_n!r}")


def enrichment_bars(
    results: Mapping[str, pd.DataFrame] | pd.DataFrame,
    *,
    top_n: int = 10,
    group_col: str = "group",
    term_col: str = "Term",
    pval_col: str = "Adjusted P-value",
    colors: Mapping[str, str] | Sequence[str] | None = None,
    alpha: float | None = 0.05,
    max_term_len: int | None = 50,
    ax: Any = None,
    figsize: tuple[float, float] | None = None,
    title: str | None = "Gene set enrichment",
    save: str | os.PathLike[str] | None = None,
    dpi: int = 300,
    show: bool = False,
) -> Any:
    """Grouped horizontal bars of -log10(adjusted p) per term, one colour per gene group.

    The ``top_n`` terms of each group (smallest adjusted p) are pooled; every pooled term
    gets one bar per group that has it, terms sorted by their best score.

    Parameters
    ----------
    results
        ``{group: enrichr table}`` (e.g. ``{"local": df_local, "global": df_global}``) or one
        table with a ``group_col`` column.
    top_n
        Terms taken per group.
    group_col, term_col, pval_col
        Column names (gseapy's ``Term`` and ``Adjusted P-value`` by default).
    colors
        Colour per group (mapping or sequence in group order). Default: local orange,
        global teal, other groups from the tab10 cycle.
    alpha
        Draw a dashed line at -log10(alpha) (None: no line).
    max_term_len
        Truncate term names to this many characters (None: keep them whole).
    ax
        Axes to draw on (default: a new figure sized to the number of terms).
    figsize
        Size of a new figure.
    title
        Axes title.
    save
        Path to write the figure to (written atomically).
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
        No terms to plot, bad ``top_n`` or p-values outside [0, 1].
    """
    import matplotlib as mpl

    what = "pl.enrichment_bars"
    _check_top_n(top_n, what)
    if isinstance(results, Mapping):
        frames = []
        for name, df in results.items():
            require_columns(df, [term_col, pval_col], what=f"{what} ({name!r})")
            frames.append(df.assign(**{group_col: str(name)}))
        if not frames:
            raise ValueError(f"{what}: results is empty")
        table = pd.concat(frames, ignore_index=True)
    else:
        require_columns(results, [group_col, term_col, pval_col], what=what)
        table = results.assign(**{group_col: results[group_col].astype(str)})
    groups = list(dict.fromkeys(table[group_col]))
    best = {g: _top_terms(table[table[group_col] == g], top_n, term_col, pval_col) for g in groups}
    best = {g: d for g, d in best.items() if len(d)}
    if not best:
        raise ValueError(f"{what}: no term with a p-value to plot")
    groups = list(best)
    scores = pd.DataFrame(
        {
            g: pd.Series(_neglog10(d[pval_col], what), index=d[term_col].astype(str).to_numpy())
            for g, d in best.items()
        }
    )
    scores = scores.loc[scores.max(axis=1).sort_values(ascending=True, kind="stable").index]

    if colors is None:
        cycle = mpl.colormaps["tab10"].colors
        palette = {
            g: _DEFAULT_GROUP_COLORS.get(g.lower(), cycle[i % len(cycle)])
            for i, g in enumerate(groups)
        }
    elif isinstance(colors, Mapping):
        palette = {g: colors.get(g, "gray") for g in groups}
    else:
        palette = {g: list(colors)[i % len(colors)] for i, g in enumerate(groups)}

    n_terms = len(scores)
    if figsize is None:
        figsize = (7.0, max(2.5, 0.3 * n_terms * max(1, len(groups) * 0.7) + 1.2))
    fig, ax = new_axes(ax, figsize)
    height = 0.8 / len(groups)
    pos = np.arange(n_terms)
    for i, g in enumerate(groups):
        vals = scores[g].to_numpy()
        has = np.isfinite(vals)
        off = (i - (len(groups) - 1) / 2) * height
        ax.barh(
            pos[has] - off,
            vals[has],
            height=height,
            color=palette[g],
            label=g,
            edgecolor="white",
            linewidth=0.5,
        )
    ax.set_yticks(pos, shorten(scores.index, max_term_len), fontsize=9)
    if alpha is not None:
        ax.axvline(
            -np.log10(alpha),
            color="gray",
            linestyle="--",
            linewidth=0.8,
            label=f"adj. p = {alpha:g}",
        )
    ax.set_xlabel("-log10(adjusted p)")
    ax.set_ylim(-0.6, n_terms - 0.4)
    ax.legend(
        title=group_col if isinstance(results, pd.DataFrame) else None,
        fontsize=8,
        loc="lower right",
        frameon=False,
    )
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if title:
        ax.set_title(title)
    finish(fig, save=save, dpi=dpi, show=show)
    return ax


def enrichment_diverging(
    local_df: pd.DataFrame,
    global_df: pd.DataFrame,
    *,
    top_n: int = 10,
    term_col: str = "Term",
    pval_col: str = "Adjusted P-value",
    overlap_col: str = "Overlap",
    labels: tuple[str, str] = ("Local", "Global"),
    cmap: str = "viridis",
    alpha: float | None = 0.05,
    max_term_len: int | None = 50,
    ax: Any = None,
    figsize: tuple[float, float] | None = None,
    title: str | None = "Enrichment: local vs. global genes",
    save: str | os.PathLike[str] | None = None,
    dpi: int = 300,
    show: bool = False,
) -> Any:
    """Diverging bars: local-gene enrichment to the left, global-gene enrichment to the right.

    The ``top_n`` terms of each side (smallest adjusted p) are pooled. For each pooled term
    the bar length is -log10(adjusted p) of that side (drawn when the term is in that side's
    table), coloured by the gene ratio k/n from ``Overlap``. Terms are ordered from the
    most local-specific (top) to the most global-specific (bottom).

    Parameters
    ----------
    local_df, global_df
        gseapy ``enrichr`` tables of the local-driven and global-driven genes.
    top_n
        Terms taken per side.
    term_col, pval_col, overlap_col
        Column names (gseapy's by default).
    labels
        Names of the two sides.
    cmap
        Colormap of the gene ratio.
    alpha
        Draw dashed lines at +-(-log10(alpha)) (None: no lines).
    max_term_len
        Truncate term names to this many characters (None: keep them whole).
    ax
        Axes to draw on (default: a new figure sized to the number of terms).
    figsize
        Size of a new figure.
    title
        Axes title.
    save
        Path to write the figure to (written atomically).
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
        No term to plot, bad ``top_n``, p-values outside [0, 1] or malformed ``Overlap``.
    """
    import matplotlib as mpl
    from matplotlib.ticker import FuncFormatter

    what = "pl.enrichment_diverging"
    _check_top_n(top_n, what)
    sides = {}
    for name, df in zip(labels, (local_df, global_df), strict=True):
        require_columns(df, [term_col, pval_col, overlap_col], what=f"{what} ({name})")
        d = df.dropna(subset=[pval_col]).sort_values(pval_col, kind="stable")
        d = d.drop_duplicates(subset=[term_col])
        sides[name] = pd.DataFrame(
            {"score": _neglog10(d[pval_col], what), "ratio": _gene_ratio(d[overlap_col], what)},
            index=d[term_col].astype(str).to_numpy(),
        )
    terms = list(
        dict.fromkeys([t for s in sides.values() for t in s.index[:top_n]])
    )  # union of the top terms, first-seen order
    if not terms:
        raise ValueError(f"{what}: no term with a p-value to plot")
    left, right = (sides[n].reindex(terms) for n in labels)
    balance = left["score"].fillna(0.0).to_numpy() - right["score"].fillna(0.0).to_numpy()
    order = np.argsort(balance, kind="stable")  # most global-specific first = bottom row
    left, right = left.iloc[order], right.iloc[order]
    terms = [terms[i] for i in order]

    ratios = np.concatenate([left["ratio"].to_numpy(), right["ratio"].to_numpy()])
    ratios = ratios[np.isfinite(ratios)]
    norm = mpl.colors.Normalize(vmin=float(ratios.min()), vmax=float(ratios.max()))
    if norm.vmin == norm.vmax:
        norm = mpl.colors.Normalize(vmin=norm.vmin - 0.01, vmax=norm.vmax + 0.01)
    cm = mpl.colormaps[cmap]

    n_terms = len(terms)
    if figsize is None:
        figsize = (8.0, max(2.5, 0.32 * n_terms + 1.5))
    fig, ax = new_axes(ax, figsize)
    pos = np.arange(n_terms)
    for side, sign in ((left, -1.0), (right, 1.0)):
        has = side["score"].notna().to_numpy()
        ax.barh(
            pos[has],
            sign * side["score"].to_numpy()[has],
            height=0.7,
            color=cm(norm(side["ratio"].to_numpy()[has])),
            edgecolor="white",
            linewidth=0.5,
        )
    ax.axvline(0.0, color="black", linewidth=0.8)
    if alpha is not None:
        for sign in (-1.0, 1.0):
            ax.axvline(sign * -np.log10(alpha), color="gray", linestyle="--", linewidth=0.8)
    lim = float(np.nanmax(np.concatenate([left["score"], right["score"]]))) * 1.08
    lim = lim if np.isfinite(lim) and lim > 0 else 1.0
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-0.6, n_terms - 0.4)
    ax.set_yticks(pos, shorten(terms, max_term_len), fontsize=9)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{abs(v):g}"))
    ax.set_xlabel(f"-log10(adjusted p)      \u2190 {labels[0]}  |  {labels[1]} \u2192")
    ax.text(
        0.02,
        1.0,
        labels[0],
        transform=ax.transAxes,
        ha="left",
        va="bottom",
        fontweight="bold",
        color=_DEFAULT_GROUP_COLORS["local"],
    )
    ax.text(
        0.98,
        1.0,
        labels[1],
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        fontweight="bold",
        color=_DEFAULT_GROUP_COLORS["global"],
    )
    cb = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cm), ax=ax, fraction=0.05, pad=0.02)
    cb.set_label("gene ratio (k/n)")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if title:
        ax.set_title(title, pad=16)
    finish(fig, save=save, dpi=dpi, show=show)
    return ax
