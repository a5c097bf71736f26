"""Which latent dimensions matter, and which genes load on them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from interscale._plotting import draw_gene_by_dim_heatmap, finish
from interscale.evaluation._utils import _column_stats, _embedding, _get_matrix, _safe_corr
from interscale.names import Key


def _loadings(adata: AnnData, s_key: str, *, what: str) -> np.ndarray:
    if not isinstance(s_key, str):
        raise TypeError(f"{what}: s_key must be a string, got {type(s_key).__name__}")
    if s_key not in adata.varm:
        raise KeyError(
            f"{what}: {s_key!r} not found in adata.varm (available: {sorted(adata.varm.keys())}); "
            "run gene_loadings first"
        )
    s = np.asarray(adata.varm[s_key], dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"{what}: adata.varm[{s_key!r}] must be 2-D, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError(f"{what}: adata.varm[{s_key!r}] has non-finite values")
    return s


def calculate_dim_importance(
    adata: AnnData,
    s_key: str = "_global_std_gene_loadings",
    z_key: str = Key.obsm.embedding("global"),
    mode: Literal["full", "diag"] = "full",
    use_ratio: bool = True,
    cumulative_cutoff: float | None = 0.90,
    spacing: int | float = 2,
    n_top: int | None = None,
) -> dict[str, Any]:
    """Importance of each latent dimension for the standardised expression of all genes.

    With standardised loadings S (genes x dims) and the correlation matrix C of the
    embedding, the variance of the standardised expression explained by the decoder is
    ``sum_g sum_kl S_gk S_gl C_kl``. Dimension k's share is the column sum of the symmetric
    matrix ``A = (S^T S) * C`` (``mode="full"``), or ``sum_g S_gk^2`` when the dimensions are
    taken as uncorrelated (``mode="diag"``). In full mode a dimension's score can be
    negative when it is anti-correlated with dimensions loading the same genes.

    Parameters
    ----------
    adata
        AnnData with the loadings in ``varm`` and the embedding in ``obsm``.
    s_key
        ``varm`` key of the standardised loadings (see :func:`gene_loadings`).
    z_key
        ``obsm`` key of the embedding (only used by ``mode="full"``, always validated).
    mode
        ``"full"`` or ``"diag"``.
    use_ratio
        Divide the scores by their sum so that they add up to 1 (all zeros if the sum is not
        positive).
    cumulative_cutoff
        With ``use_ratio``, the smallest number of top dimensions whose cumulative ratio
        reaches this value is reported (``dims_left``). None disables it.
    spacing
        Distance between consecutive dimensions on the elbow plot's x axis.
    n_top
        Keep only the ``n_top`` most important dimensions in ``y_plot`` / ``dim_plot``.

    Returns
    -------
    dict
        ``y_plot``, ``dim_plot`` (the plotted subset), ``y_sorted``, ``dim_sorted`` (all dims,
        decreasing importance, ties by dim index), ``cutoff_x``, ``cutoff_idx``,
        ``n_dims_left``, ``dims_left`` (None without a cutoff), ``cumulative_cutoff``,
        ``mode``, ``s_key``, ``z_key``, ``use_ratio``, ``spacing``.

    Raises
    ------
    KeyError
        A key is missing.
    ValueError
        Bad ``mode``, ``cumulative_cutoff``, ``n_top`` or ``spacing``, shapes disagree, or
        fewer than 3 finite embedding rows.
    """
    what = "calculate_dim_importance"
    if mode not in ("full", "diag"):
        raise ValueError(f"{what}: mode must be 'full' or 'diag', got {mode!r}")
    if cumulative_cutoff is not None and not (0.0 < float(cumulative_cutoff) <= 1.0):
        raise ValueError(f"{what}: cumulative_cutoff must be in (0, 1], got {cumulative_cutoff}")
    if n_top is not None and (not isinstance(n_top, int | np.integer) or n_top < 1):
        raise ValueError(f"{what}: n_top must be a positive integer, got {n_top!r}")
    if not np.isfinite(spacing) or spacing <= 0:
        raise ValueError(f"{what}: spacing must be > 0, got {spacing!r}")
    s = _loadings(adata, s_key, what=what)
    z = _embedding(adata, z_key, min_rows=3, what=what)
    if s.shape[1] != z.shape[1]:
        raise ValueError(
            f"{what}: adata.varm[{s_key!r}] has {s.shape[1]} dims, "
            f"adata.obsm[{z_key!r}] has {z.shape[1]}"
        )

    if mode == "diag":
        score = (s * s).sum(axis=0)
    else:
        a = (s.T @ s) * _safe_corr(z)
        score = (0.5 * (a + a.T)).sum(axis=0)

    if use_ratio:
        total = float(score.sum())
        y = score / total if total > 0 else np.zeros_like(score)
    else:
        y = score

    order = np.argsort(-y, kind="stable")
    y_sorted, dim_sorted = y[order], order

    cutoff_x = cutoff_idx = n_dims_left = dims_left = None
    if use_ratio and cumulative_cutoff is not None and y.sum() > 0:
        cum = np.cumsum(y_sorted)
        # Rounding can leave cum[-1] a hair below 1: never point past the last dim.
        cutoff_idx = min(int(np.searchsorted(cum, cumulative_cutoff, side="left")), len(y) - 1)
        cutoff_x = cutoff_idx * spacing
        n_dims_left = cutoff_idx + 1
        dims_left = dim_sorted[:n_dims_left]

    k = len(y_sorted) if n_top is None else min(int(n_top), len(y_sorted))
    return {
        "y_plot": y_sorted[:k],
        "dim_plot": dim_sorted[:k],
        "y_sorted": y_sorted,
        "dim_sorted": dim_sorted,
        "cutoff_x": cutoff_x,
        "cutoff_idx": cutoff_idx,
        "n_dims_left": n_dims_left,
        "dims_left": dims_left,
        "cumulative_cutoff": cumulative_cutoff,
        "mode": mode,
        "s_key": s_key,
        "z_key": z_key,
        "use_ratio": use_ratio,
        "spacing": spacing,
    }


def _uniqueness(z: np.ndarray, dims: Sequence[int]) -> np.ndarray:
    """sd of the residual of z_k regressed on all other dims, over sd(z_k), for k in dims.

    Computed from the covariance matrix (Schur complement with a pseudo-inverse, which gives
    the least-squares residual even when the other dims are collinear), so the cost does
    not grow with the number of cells beyond one Gram matrix.
    """
    zc = z - z.mean(axis=0)
    cov = zc.T @ zc
    n_dims = cov.shape[0]
    out = np.zeros(len(dims))
    for i, k in enumerate(dims):  # loop over a handful of latent dims, not cells or genes
        var_k = cov[k, k]
        if not var_k > 0:
            continue
        others = np.delete(np.arange(n_dims), k)
        if others.size == 0:
            out[i] = 1.0
            continue
        c_ok = cov[others, k]
        explained = c_ok @ np.linalg.pinv(cov[np.ix_(others, others)], hermitian=True) @ c_ok
        out[i] = np.sqrt(np.clip(var_k - explained, 0.0, None) / var_k)
    return out


def _check_dims(dims: Any, n_dims: int, *, what: str) -> list[int]:
    if isinstance(dims, int | np.integer):
        dims = [dims]
    try:
        dims = list(dims)
    except TypeError as err:
        raise TypeError(f"{what}: dims must be a sequence of integers, got {dims!r}") from err
    if len(dims) == 0:
        raise ValueError(f"{what}: dims must be non-empty")
    if not all(isinstance(d, int | np.integer) and not isinstance(d, bool) for d in dims):
        raise TypeError(f"{what}: dims must be integers (0-based latent dims), got {dims!r}")
    dims = [int(d) for d in dims]
    bad = [d for d in dims if d < 0 or d >= n_dims]
    if bad:
        raise ValueError(f"{what}: dims {bad} out of range [0, {n_dims - 1}]")
    if len(set(dims)) != len(dims):
        raise ValueError(f"{what}: dims has duplicates: {dims}")
    return dims


def get_genes_dim(
    adata: AnnData,
    dims: Sequence[int],
    *,
    which: Literal["global", "local"] = "global",
    n_top: int = 20,
    s_key: str | None = None,
    z_key: str | None = None,
    X_layer: str | None = None,  # noqa: N803 (published argument name)
    min_frac: float = 0.05,
    min_sd: float | None = None,
    rank_by: Literal["loading", "loading_x_sd"] = "loading",
    residualize: bool = False,
    enforce_specificity: bool = False,
    specificity_mode: Literal["ratio", "diff"] = "ratio",
    specificity_min: float = 1.5,
    order_genes_by: Literal["winner", "max_abs"] | None = "winner",
    plot: bool = False,
    figsize: tuple[float, float] = (8, 6),
    cmap: str = "BrBG_r",
    title: str | None = None,
    show: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, Any]:
    """Top genes of chosen latent dimensions, as a signed gene x dim score table.

    The score of gene g on dim k is its standardised loading ``S_gk``, optionally multiplied
    by the dim's uniqueness (``residualize``) and by sd(x_g) (``rank_by="loading_x_sd"``).
    Among genes passing the expression filters (and the specificity filter), the ``n_top``
    genes with the largest |score| are taken for each dim, and their union is returned.

    Parameters
    ----------
    adata
        AnnData with loadings in ``varm`` (see :func:`gene_loadings`).
    dims
        0-based latent dimensions (distinct).
    which
        ``"global"`` or ``"local"``: picks the defaults ``s_key="_{which}_std_gene_loadings"``
        and ``z_key="_{which}_emb"``.
    n_top
        Genes kept per dim.
    s_key, z_key
        Override the loadings (``varm``) and embedding (``obsm``) keys. ``z_key`` is only
        used with ``residualize=True``.
    X_layer
        Expression layer for the filters and the sd weighting (None: ``adata.X``). Only
        column statistics are computed; sparse layers are never densified.
    min_frac
        Keep genes with a value > 0 in at least this fraction of cells.
    min_sd
        Keep genes with sd (ddof=1) at least this large (None: no sd filter).
    rank_by
        ``"loading"`` or ``"loading_x_sd"`` (multiply the score by sd(x_g), keeping its sign).
    residualize
        Multiply each dim's scores by sd(residual of z_k regressed on all other dims) /
        sd(z_k), down-weighting dims that are largely linear combinations of others.
    enforce_specificity
        With two or more dims, keep only genes whose largest |score| across ``dims`` is at
        least ``specificity_min`` times (``"ratio"``) or ``specificity_min`` above
        (``"diff"``) their second largest.
    specificity_mode, specificity_min
        See ``enforce_specificity``.
    order_genes_by
        ``"winner"``: group genes by the dim of their largest |score| (in ``dims`` order),
        strongest first within a group; ``"max_abs"``: by decreasing largest |score|;
        None: ``adata.var_names`` order.
    plot
        Also draw a gene x dim heatmap (:func:`interscale.pl.gene_by_dim_heatmap`).
    figsize, cmap, title, show
        Heatmap options.

    Returns
    -------
    pandas.DataFrame or (pandas.DataFrame, matplotlib.axes.Axes)
        Index: selected genes; columns: ``str(dim)`` for each dim; values: signed scores.
        With ``plot=True`` the heatmap Axes is returned too.

    Raises
    ------
    KeyError
        A key or layer is missing.
    ValueError
        Bad option values, dims out of range, or no gene passes the filters.
    TypeError
        dims are not integers.
    """
    what = "get_genes_dim"
    if s_key is None or (residualize and z_key is None):
        if which not in ("global", "local"):
            raise ValueError(
                f"{what}: which must be 'global' or 'local' (or pass s_key/z_key), got {which!r}"
            )
    s_key = f"_{which}_std_gene_loadings" if s_key is None else s_key
    z_key = f"_{which}_emb" if z_key is None else z_key
    if rank_by not in ("loading", "loading_x_sd"):
        raise ValueError(f"{what}: rank_by must be 'loading' or 'loading_x_sd', got {rank_by!r}")
    if specificity_mode not in ("ratio", "diff"):
        raise ValueError(
            f"{what}: specificity_mode must be 'ratio' or 'diff', got {specificity_mode!r}"
        )
    if order_genes_by not in ("winner", "max_abs", None):
        raise ValueError(
            f"{what}: order_genes_by must be 'winner', 'max_abs' or None, got {order_genes_by!r}"
        )
    if not isinstance(n_top, int | np.integer) or n_top < 1:
        raise ValueError(f"{what}: n_top must be a positive integer, got {n_top!r}")

    s = _loadings(adata, s_key, what=what)
    if s.shape[0] != adata.n_vars:
        raise ValueError(
            f"{what}: adata.varm[{s_key!r}] has {s.shape[0]} rows, adata has {adata.n_vars} genes"
        )
    dims = _check_dims(dims, s.shape[1], what=what)
    score = s[:, dims]

    if residualize:
        z = _embedding(adata, z_key, min_rows=3, what=what)
        if z.shape[1] != s.shape[1]:
            raise ValueError(
                f"{what}: adata.obsm[{z_key!r}] has {z.shape[1]} dims, "
                f"adata.varm[{s_key!r}] has {s.shape[1]}"
            )
        score = score * _uniqueness(z, dims)[None, :]

    stats = _column_stats(_get_matrix(adata, X_layer, what=what), ddof=1)
    sd_g = stats["sd"]
    mask = np.isfinite(sd_g) & (stats["frac_pos"] >= min_frac)
    if min_sd is not None:
        mask &= sd_g >= min_sd
    valid = np.flatnonzero(mask)
    if valid.size == 0:
        raise ValueError(
            f"{what}: no gene passed the filters (min_frac={min_frac}, min_sd={min_sd}); "
            f"relax them or check X_layer={X_layer!r}"
        )
    if rank_by == "loading_x_sd":
        score = score * np.where(np.isfinite(sd_g), sd_g, 0.0)[:, None]

    absval = np.abs(score)
    if enforce_specificity and len(dims) >= 2:
        a = absval[valid]
        top2 = -np.sort(-a, axis=1)[:, :2]
        if specificity_mode == "ratio":
            keep = top2[:, 0] / (top2[:, 1] + 1e-12) >= specificity_min
        else:
            keep = top2[:, 0] - top2[:, 1] >= specificity_min
        valid = valid[keep]
        if valid.size == 0:
            raise ValueError(
                f"{what}: no gene passed the specificity filter ({specificity_mode} >= "
                f"{specificity_min}); lower specificity_min or disable it"
            )

    # Top n_top per dim among the valid genes; stable sort breaks ties by gene order.
    order = np.argsort(-absval[valid], axis=0, kind="stable")[:n_top]
    selected = np.unique(valid[order.ravel()])
    mat = score[selected]
    genes = np.asarray(adata.var_names)[selected]

    if order_genes_by is not None and len(selected) > 0:
        a = np.abs(mat)
        if order_genes_by == "winner":
            winner = np.argmax(a, axis=1)
            perm = np.lexsort((-a.max(axis=1), winner))
        else:
            perm = np.argsort(-a.max(axis=1), kind="stable")
        mat, genes = mat[perm], genes[perm]

    df = pd.DataFrame(mat, index=pd.Index(genes, name="gene"), columns=[str(d) for d in dims])
    if not plot:
        return df

    # The heatmap of interscale.pl.gene_by_dim_heatmap, drawn from the shared plotting floor:
    # evaluation sits below pl and never imports it.
    fig, ax = draw_gene_by_dim_heatmap(
        df,
        cmap=cmap,
        vmax=None,
        ax=None,
        figsize=figsize,
        title=title if title is not None else f"{which.capitalize()} embedding: top genes",
        xlabel="latent dimension",
        ylabel="gene",
        colorbar_label="score" if residualize or rank_by != "loading" else "std. loading",
        separators=True,
        what="get_genes_dim",
    )
    finish(fig, save=None, dpi=300, show=show)
    return df, ax
