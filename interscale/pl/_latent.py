"""Plots of latent dimensions: correlation clustermap, importance elbow, gene x dim heatmap."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from interscale._plotting import draw_gene_by_dim_heatmap, finish, new_axes
from interscale.evaluation import latent_correlation_matrix
from interscale.names import Key


def _leaf_order(c: np.ndarray, method: str, metric: str) -> tuple[np.ndarray | None, list[int]]:
    """Hierarchical clustering of the rows of ``c``; (linkage, leaf order)."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import pdist

    k = c.shape[0]
    if k < 2:
        return None, list(range(k))
    with np.errstate(all="ignore"):
        d = pdist(c, metric=metric)
    finite = np.isfinite(d)
    if not finite.all():
        # A constant row has no correlation distance; put it as far as the farthest pair.
        d[~finite] = d[finite].max() if finite.any() else 1.0
    link = linkage(np.clip(d, 0.0, None), method=method)
    return link, [int(i) for i in leaves_list(link)]


def latent_correlation(
    adata: AnnData,
    *,
    z_key: str = Key.obsm.embedding("global"),
    vmax: float = 1.0,
    cmap: str = "BrBG_r",
    figsize: tuple[float, float] = (6, 6),
    label_fontsize: float = 8,
    title: str | None = None,
    method: str = "average",
    metric: str = "correlation",
    save: str | os.PathLike[str] | None = None,
    dpi: int = 300,
    show: bool = False,
) -> Any:
    """Clustered heatmap of the correlation between the dimensions of an embedding.

    Rows and columns are reordered by hierarchical clustering of the correlation matrix
    (``scipy.cluster.hierarchy.linkage`` on the rows, as ``seaborn.clustermap`` does), with
    the dendrograms drawn on top and on the left.

    Parameters
    ----------
    adata
        AnnData with the embedding in ``obsm`` (non-finite rows are ignored).
    z_key
        ``obsm`` key of the embedding.
    vmax
        Colour range is [-vmax, vmax].
    cmap
        Diverging colormap.
    figsize
        Figure size.
    label_fontsize
        Font size of the dimension labels.
    title
        Figure title (default: ``"Correlation of {z_key}"``).
    method, metric
        Linkage method and distance metric (see ``scipy.cluster.hierarchy.linkage``).
    save
        Path to write the figure to (written atomically).
    dpi
        Resolution of saved raster images.
    show
        Call ``matplotlib.pyplot.show()`` at the end.

    Returns
    -------
    matplotlib.figure.Figure
        The figure; its axes are the heatmap (``fig.axes[0]``), the top and left
        dendrograms and the colorbar. The leaf order is in ``fig.axes[0].get_xticklabels()``.

    Raises
    ------
    KeyError
        ``z_key`` is missing.
    ValueError
        Fewer than 3 finite rows or ``vmax`` <= 0.
    """
    import matplotlib.pyplot as plt
    from scipy.cluster.hierarchy import dendrogram

    if not vmax > 0:
        raise ValueError(f"pl.latent_correlation: vmax must be > 0, got {vmax}")
    c = latent_correlation_matrix(adata, z_key=z_key)
    link, order = _leaf_order(c, method, metric)
    k = c.shape[0]

    fig = plt.figure(figsize=figsize, layout="constrained")
    gs = fig.add_gridspec(2, 3, width_ratios=[0.15, 1.0, 0.05], height_ratios=[0.15, 1.0])
    ax_heat = fig.add_subplot(gs[1, 1])
    ax_top = fig.add_subplot(gs[0, 1])
    ax_left = fig.add_subplot(gs[1, 0])
    ax_cbar = fig.add_subplot(gs[1, 2])

    im = ax_heat.imshow(
        c[np.ix_(order, order)],
        cmap=cmap,
        vmin=-vmax,
        vmax=vmax,
        aspect="auto",
        interpolation="nearest",
    )
    labels = [str(i) for i in order]
    ax_heat.set_xticks(np.arange(k), labels, rotation=90, fontsize=label_fontsize)
    ax_heat.set_yticks(np.arange(k), labels, fontsize=label_fontsize)
    ax_heat.yaxis.tick_right()
    ax_heat.yaxis.set_label_position("right")
    ax_heat.set_xlabel("latent dim", fontsize=label_fontsize + 1)
    ax_heat.set_ylabel("latent dim", fontsize=label_fontsize + 1)
    cb = fig.colorbar(im, cax=ax_cbar)
    cb.set_label("correlation", fontsize=label_fontsize + 1)
    cb.ax.tick_params(labelsize=label_fontsize)

    for ax_d, orient in ((ax_top, "top"), (ax_left, "left")):
        if link is not None:
            dendrogram(
                link,
                ax=ax_d,
                orientation=orient,
                no_labels=True,
                color_threshold=0,
                above_threshold_color="#444444",
            )
        ax_d.set_axis_off()
    # scipy puts leaf i at 5 + 10 i; match the heatmap cells (left dendrogram top-down).
    ax_top.set_xlim(0, 10 * k)
    ax_left.set_ylim(10 * k, 0)
    fig.suptitle(title if title is not None else f"Correlation of {z_key}", fontsize=11)
    finish(fig, save=save, dpi=dpi, show=show)
    return fig


_ELBOW_KEYS = ["y_plot", "dim_plot", "cutoff_x", "cutoff_idx", "cumulative_cutoff", "mode"]


def dim_importance_elbow(
    results: Mapping[str, Any],
    figsize: tuple[float, float] = (8, 4.5),
    fontsize: float = 12,
    title: str | None = None,
    show: bool = False,
    ax: Any = None,
    save: str | os.PathLike[str] | None = None,
    dpi: int = 300,
    verbose: bool = True,
) -> Any:
    """Elbow plot of dimension importance, with the cumulative cutoff marked.

    Parameters
    ----------
    results
        Dictionary returned by :func:`interscale.evaluation.calculate_dim_importance`.
    figsize
        Size of a new figure (ignored when ``ax`` is given).
    fontsize
        Base font size.
    title
        Axes title (default: ``"Dimension importance ({mode})"``).
    show
        Call ``matplotlib.pyplot.show()`` at the end.
    ax
        Axes to draw on (default: a new figure).
    save
        Path to write the figure to (written atomically).
    dpi
        Resolution of saved raster images.
    verbose
        Print how many (and which) dims reach the cumulative cutoff.

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    KeyError
        ``results`` lacks a key of the published dict.
    """
    missing = [k for k in _ELBOW_KEYS if k not in results]
    if missing:
        raise KeyError(f"pl.dim_importance_elbow: results lack key(s) {missing}")
    y = np.asarray(results["y_plot"], dtype=float)
    dims = np.asarray(results["dim_plot"])
    spacing = results.get("spacing", 2)
    use_ratio = results.get("use_ratio", True)
    cutoff_x, cutoff_idx = results["cutoff_x"], results["cutoff_idx"]
    cutoff = results["cumulative_cutoff"]
    x = np.arange(len(y)) * spacing

    fig, ax = new_axes(ax, figsize)
    ax.plot(x, y, marker="o", markersize=4, linewidth=1, color="#005F73")
    ax.set_xticks(x, [str(d) for d in dims], fontsize=fontsize - 2)
    if len(x) > 20:
        ax.tick_params(axis="x", labelrotation=90)
    if cutoff_x is not None and cutoff_idx is not None and cutoff_idx < len(y):
        ax.axvline(
            cutoff_x,
            linestyle="--",
            linewidth=1,
            color="#C0392B",
            label=f"{cutoff * 100:g}% cumulative ({cutoff_idx + 1} dims)",
        )
        ax.legend(fontsize=fontsize - 3, loc="upper right", frameon=False)
    ax.set_title(
        title if title is not None else f"Dimension importance ({results['mode']})",
        fontsize=fontsize + 1,
    )
    ax.set_xlabel("Embedding dim (sorted by importance)", fontsize=fontsize)
    ax.set_ylabel("Importance ratio" if use_ratio else "Importance", fontsize=fontsize)
    ax.tick_params(axis="y", labelsize=fontsize - 2)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if verbose and results.get("dims_left") is not None:
        print(
            f"{cutoff * 100:g}% cumulative importance reached with "
            f"{results['n_dims_left']} dimensions (sorted by importance): "
            f"{np.asarray(results['dims_left']).tolist()}"
        )
    finish(fig, save=save, dpi=dpi, show=show)
    return ax


def gene_by_dim_heatmap(
    df: pd.DataFrame,
    *,
    cmap: str = "BrBG_r",
    vmax: float | None = None,
    ax: Any = None,
    figsize: tuple[float, float] = (8, 6),
    title: str | None = None,
    xlabel: str = "latent dimension",
    ylabel: str = "gene",
    colorbar_label: str = "score",
    separators: bool = True,
    save: str | os.PathLike[str] | None = None,
    dpi: int = 300,
    show: bool = False,
) -> Any:
    """Heatmap of a gene x dim score table (e.g. from :func:`get_genes_dim`).

    Parameters
    ----------
    df
        Numeric table: index genes, columns dims.
    cmap
        Diverging colormap; the colour range is symmetric around 0.
    vmax
        Colour range [-vmax, vmax] (default: the largest |value|).
    ax
        Axes to draw on (default: a new figure).
    figsize
        Size of a new figure.
    title
        Axes title.
    xlabel, ylabel, colorbar_label
        Axis and colorbar labels.
    separators
        When rows are grouped by the dim of their largest |value| (as ``get_genes_dim``'s
        ``order_genes_by="winner"`` does), draw thin lines between the groups.
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
    TypeError
        ``df`` is not a numeric DataFrame.
    ValueError
        ``df`` is empty.
    """
    fig, ax = draw_gene_by_dim_heatmap(
        df,
        cmap=cmap,
        vmax=vmax,
        ax=ax,
        figsize=figsize,
        title=title,
        xlabel=xlabel,
        ylabel=ylabel,
        colorbar_label=colorbar_label,
        separators=separators,
        what="pl.gene_by_dim_heatmap",
    )
    finish(fig, save=save, dpi=dpi, show=show)
    return ax
