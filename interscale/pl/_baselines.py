"""Model R^2 against the linear baselines, gene by gene: local and global head side by side."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from interscale._plotting import finish, require_columns
from interscale.evaluation import floor_of

_WHAT = "pl.baselines"
_SINGLE_COLOR = "#005F73"
_DIAGONAL_COLOR = "#C0392B"


def _default_floor(columns: Sequence[Any], which: str, arg: str) -> str:
    """The floor of ``which`` head that the claims use (:func:`interscale.evaluation.floor_of`)."""
    try:
        return floor_of(columns, which)
    except KeyError as exc:
        raise KeyError(f"{_WHAT}: {exc.args[0]}; pass {arg}=<column> to choose one") from None


def _describe(column: str) -> str:
    """Words for a column of :func:`interscale.evaluation.linear_baselines`."""
    if m := re.fullmatch(r"hop(\d+)", column):
        return f"{m.group(1)}-hop neighbourhood means"
    if m := re.fullmatch(r"hop(\d+)_sample", column):
        return f"{m.group(1)}-hop + sample means"
    if column == "sample":
        return "leave-one-out sample mean"
    if column == "mean":
        return "nothing (training mean)"
    return column


def _pair_of_axes(ax: Any, figsize: tuple[float, float]) -> tuple[Any, list[Any]]:
    """(figure, [left, right]): the two given axes, or a new two-panel figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, axes = plt.subplots(1, 2, figsize=figsize, layout="constrained")
        return fig, list(axes)
    axes = list(np.ravel(np.asarray(ax, dtype=object)))
    if len(axes) != 2 or not all(hasattr(a, "scatter") for a in axes):
        raise ValueError(f"{_WHAT}: ax must be a pair of matplotlib Axes, got {ax!r}")
    return axes[0].figure, axes


def _programs(adata: AnnData | None, program_key: str, genes: pd.Index) -> pd.Series | None:
    """Program label of every gene (as strings, ``"unassigned"`` for missing), or None."""
    if adata is None:
        return None
    if not isinstance(adata, AnnData):
        raise TypeError(f"{_WHAT}: adata must be an AnnData or None, got {type(adata).__name__}")
    if program_key not in adata.var.columns:
        return None
    var_names = pd.Index(adata.var_names.astype(str))
    missing = genes[~genes.isin(var_names)]
    if len(missing):
        raise KeyError(
            f"{_WHAT}: {len(missing)} gene(s) of df_ranks are not in adata.var_names: "
            f"{list(missing[:10])}"
        )
    column = adata.var[program_key]
    labels = pd.Series(column.to_numpy(), index=var_names).loc[genes]
    if isinstance(column.dtype, pd.CategoricalDtype):
        order = [str(c) for c in column.cat.categories if (labels == c).any()]
    else:
        order = sorted({str(v) for v in labels.dropna()})
    out = labels.map(lambda v: "unassigned" if pd.isna(v) else str(v))
    if (out == "unassigned").any() and "unassigned" not in order:
        order.append("unassigned")
    return pd.Series(pd.Categorical(out, categories=order), index=genes)


def _palette(n: int) -> list[Any]:
    import matplotlib

    if n <= 10:
        return list(matplotlib.colormaps["tab10"].colors[:n])
    if n <= 20:
        return list(matplotlib.colormaps["tab20"].colors[:n])
    return list(matplotlib.colormaps["turbo"](np.linspace(0.05, 0.95, n)))


def _panel(
    ax: Any,
    x: np.ndarray,
    y: np.ndarray,
    groups: pd.Series | None,
    colors: list[Any],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
) -> None:
    ok = np.isfinite(x) & np.isfinite(y)
    if groups is None:
        ax.scatter(x[ok], y[ok], s=18, alpha=0.75, color=_SINGLE_COLOR, linewidths=0, zorder=3)
    else:
        codes = groups.cat.codes.to_numpy()
        for k, (name, color) in enumerate(zip(groups.cat.categories, colors, strict=True)):
            sel = ok & (codes == k)
            ax.scatter(
                x[sel], y[sel], s=18, alpha=0.8, color=color, linewidths=0, label=name, zorder=3
            )
    if ok.any():
        lo = float(min(x[ok].min(), y[ok].min()))
        hi = float(max(x[ok].max(), y[ok].max()))
    else:
        lo, hi = 0.0, 1.0
    pad = 0.05 * (hi - lo) if hi > lo else 0.05
    lo, hi = lo - pad, hi + pad
    ax.plot([lo, hi], [lo, hi], "--", color=_DIAGONAL_COLOR, linewidth=1, zorder=2)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal", adjustable="box")
    above = int(np.count_nonzero(y[ok] > x[ok]))
    ax.text(
        0.03,
        0.97,
        f"model above baseline: {above}/{int(ok.sum())} genes",
        transform=ax.transAxes,
        ha="left",
        va="top",
        fontsize=8,
        color="#333333",
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def baselines(
    df_ranks: pd.DataFrame,
    df_baselines: pd.DataFrame,
    *,
    adata: AnnData | None = None,
    program_key: str = "program",
    local_baseline: str | None = None,
    global_baseline: str | None = None,
    ax: Any = None,
    figsize: tuple[float, float] = (11, 5),
    title: str | None = "Model vs linear baselines (held-out R\u00b2 per gene)",
    save: str | os.PathLike[str] | None = None,
    dpi: int = 300,
    show: bool = False,
) -> Any:
    """Each head's R^2 against the best linear baseline of its scale, one point per gene.

    Left: the local head's R^2 (``r2_local``) against a neighbourhood baseline (default: the
    ``hop{k}`` column with the largest ``k``); right: the global head's R^2 (``r2_global``)
    against a neighbourhood + sample baseline (default: the largest ``hop{k}_sample``). Points
    above the dashed diagonal y = x are genes the model predicts better than a ridge
    regression on the averages it sees; each panel states how many. Both axes of a panel share
    their limits (all finite values, 5 % padding). Genes with a non-finite value in a panel
    are left out of that panel.

    Parameters
    ----------
    df_ranks
        Output of :func:`interscale.evaluation.calculate_gene_ranks` (columns ``gene``,
        ``r2_local``, ``r2_global``).
    df_baselines
        Output of :func:`interscale.evaluation.linear_baselines` (indexed by gene), or
        ``adata.varm["linear_baselines"]``. Genes are matched by name.
    adata
        AnnData whose ``var[program_key]`` colours the genes (with a legend); without it, or
        without that column, all points have one colour.
    program_key
        Column of ``adata.var`` with a program (category) per gene.
    local_baseline, global_baseline
        Columns of ``df_baselines`` on the x axes (defaults above).
    ax
        A pair of Axes to draw on (default: a new figure with two panels).
    figsize
        Size of a new figure.
    title
        Figure title (``fig.suptitle``; None: no title).
    save
        Path to write the figure to (format from the extension; written atomically).
    dpi
        Resolution of saved raster images.
    show
        Call ``matplotlib.pyplot.show()`` at the end.

    Returns
    -------
    matplotlib.figure.Figure
        The figure; the two panels are its first two axes (or the given pair).

    Raises
    ------
    TypeError
        ``df_ranks`` or ``df_baselines`` is not a DataFrame, or ``adata`` not an AnnData.
    KeyError
        A required column is missing, or genes of ``df_ranks`` are missing from
        ``df_baselines`` (or from ``adata.var_names`` when colouring by program).
    ValueError
        ``df_ranks`` is empty, ``df_baselines`` has duplicate genes, or ``ax`` is not a pair.
    """
    require_columns(df_ranks, ["gene", "r2_local", "r2_global"], what=_WHAT)
    if not isinstance(df_baselines, pd.DataFrame):
        raise TypeError(
            f"{_WHAT}: df_baselines must be a pandas DataFrame, got {type(df_baselines).__name__}"
        )
    if len(df_ranks) == 0:
        raise ValueError(f"{_WHAT}: df_ranks is empty")
    if local_baseline is None:
        local_baseline = _default_floor(df_baselines.columns, "local", "local_baseline")
    if global_baseline is None:
        global_baseline = _default_floor(df_baselines.columns, "global", "global_baseline")
    require_columns(df_baselines, [local_baseline, global_baseline], what=_WHAT)

    table = df_baselines.set_axis(df_baselines.index.astype(str), axis=0)
    if table.index.has_duplicates:
        dup = table.index[table.index.duplicated()].unique()
        raise ValueError(f"{_WHAT}: df_baselines has duplicate genes: {list(dup[:10])}")
    genes = pd.Index(df_ranks["gene"].astype(str))
    missing = genes[~genes.isin(table.index)].unique()
    if len(missing):
        raise KeyError(
            f"{_WHAT}: {len(missing)} gene(s) of df_ranks are not in df_baselines: "
            f"{list(missing[:10])}"
        )
    groups = _programs(adata, program_key, genes)
    colors = _palette(len(groups.cat.categories)) if groups is not None else []

    fig, (ax_local, ax_global) = _pair_of_axes(ax, figsize)
    for axis, head, column in (
        (ax_local, "local", local_baseline),
        (ax_global, "global", global_baseline),
    ):
        _panel(
            axis,
            pd.to_numeric(table[column], errors="coerce").loc[genes].to_numpy(dtype=float),
            pd.to_numeric(df_ranks[f"r2_{head}"], errors="coerce").to_numpy(dtype=float),
            groups,
            colors,
            xlabel=f"held-out R\u00b2, ridge on {_describe(str(column))}",
            ylabel=f"R\u00b2, {head} head",
            title=f"{head.capitalize()} head vs {column}",
        )
    if groups is not None and len(groups.cat.categories):
        ax_global.legend(
            title=program_key,
            loc="center left",
            bbox_to_anchor=(1.02, 0.5),
            frameon=False,
            fontsize=8,
            title_fontsize=9,
            ncol=1 if len(groups.cat.categories) <= 15 else 2,
        )
    if title:
        fig.suptitle(title, fontsize=12, fontweight="bold")
    finish(fig, save=save, dpi=dpi, show=show)
    return fig
