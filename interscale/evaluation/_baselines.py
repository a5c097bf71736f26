"""Linear floors for every gene: ridge regressions on neighbourhood and sample averages.

A deep model's per-gene R^2 means little on its own. These baselines say how much of each gene
a plain linear model already explains from what the model sees (never the cell itself): the
mean expression of the cell's k-hop spatial neighbourhood and the mean of the rest of its
sample. They are fitted on the training samples and scored on the held-out ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from interscale._anndata import check_not_view, obs_column_codes
from interscale._compat import accepts_library_key
from interscale._components import (
    EXACT_PCA_MAX_GENES,
    ComponentScale,
    auto_components,
    principal_axes,
)
from interscale._ridge import RidgePath, RidgeStats, group_folds
from interscale._ridge import cv_r2 as ridge_cv_r2
from interscale.evaluation._utils import _get_matrix, _Moments
from interscale.names import Key

# Rows of features processed at once hold about this many float64 values (32 MiB).
_FEATURE_CHUNK_VALUES = 1 << 22


# Default penalties, as multiples of the number of training cells (features are standardised,
# so each has a sum of squares equal to that number): from almost none to very strong.
_ALPHA_GRID = tuple(10.0 ** np.arange(-6, 1))
# A sample's leave-one-out mean varies inside the sample only by -x_i / (n - 1): an almost
# unpenalised ridge turns that into a copy of the target on the training cells, which is
# why the penalty is chosen on whole held-out training samples, never on cells.
_MAX_FOLDS = 5
# Principal axes from the exact covariance up to this many genes, else randomized.
_EXACT_PCA_MAX_GENES = EXACT_PCA_MAX_GENES


def _folds(train_codes: np.ndarray, cross_validate: bool) -> np.ndarray:
    """Fold of every training cell: whole samples, assigned in turn by sorted sample code."""
    if not cross_validate:
        return np.zeros(train_codes.size, dtype=np.int64)
    n_samples = np.unique(train_codes).size
    if n_samples < 2:
        raise ValueError(
            "linear_baselines: choosing alpha by cross-validation needs at least 2 training "
            f"samples, found {n_samples}; pass a fixed alpha=<float> instead"
        )
    return group_folds(train_codes, _MAX_FOLDS)


def _check_components(n_components: Any, n_vars: int) -> int | None:
    """Number of principal components to average, or None for the genes themselves."""
    if isinstance(n_components, str):
        if n_components != "auto":
            raise ValueError(
                f"linear_baselines: n_components must be 'auto', None or an int >= 1, got "
                f"{n_components!r}"
            )
        return auto_components(n_vars)  # the rule the model's linear part follows too
    if n_components is None:
        return None
    if isinstance(n_components, bool) or not isinstance(n_components, int | np.integer):
        raise TypeError(
            f"linear_baselines: n_components must be 'auto', None or an int, got {n_components!r}"
        )
    if n_components < 1:
        raise ValueError(f"linear_baselines: n_components must be >= 1, got {n_components}")
    # As many components as genes span the same space: the exact path gives the same ridge.
    return None if n_components >= n_vars else int(n_components)


def _dense_rows(x: Any, idx: np.ndarray, shift: np.ndarray) -> np.ndarray:
    return _dense(x[idx]) - shift


def _check_alpha(alpha: Any) -> list[float] | None:
    """None for a fixed penalty; otherwise the grid to choose from by cross-validation."""
    what = "linear_baselines"
    if alpha is None:
        return list(_ALPHA_GRID)
    number = int | float | np.integer | np.floating
    single = not isinstance(alpha, str) and not hasattr(alpha, "__iter__")
    values = [alpha] if single else list(alpha)
    if not values:
        raise ValueError(f"{what}: alpha must be a number, a non-empty sequence or None")
    for a in values:
        if isinstance(a, bool) or not isinstance(a, number):
            raise TypeError(f"{what}: alpha must be a number or numbers, got {a!r}")
        if not np.isfinite(a) or a <= 0:
            raise ValueError(f"{what}: alpha must be finite and > 0, got {a}")
    return None if single else [float(a) for a in values]


def _check_hops(hops: Any) -> tuple[int, ...]:
    if isinstance(hops, int | np.integer) and not isinstance(hops, bool):
        hops = (hops,)
    try:
        values = tuple(hops)
    except TypeError:
        raise TypeError(
            f"linear_baselines: hops must be a sequence of ints, got {hops!r}"
        ) from None
    if not values:
        raise ValueError("linear_baselines: hops must name at least one hop count, got ()")
    for h in values:
        if isinstance(h, bool) or not isinstance(h, int | np.integer):
            raise TypeError(f"linear_baselines: hops must be ints, got {h!r}")
        if h < 1:
            raise ValueError(f"linear_baselines: every hop count must be >= 1, got {h}")
    return tuple(sorted({int(h) for h in values}))


def _reachability(adjacency: sp.csr_matrix, max_hop: int) -> list[sp.csr_matrix]:
    """Binary CSR matrices of the cells within 1..max_hop hops (cumulative), self excluded."""
    out = []
    reach = adjacency
    for hop in range(1, max_hop + 1):
        if hop > 1:
            reach = reach + reach @ adjacency
        reach = sp.csr_matrix(reach, dtype=np.float64)
        reach.setdiag(0.0)
        reach.eliminate_zeros()
        reach.data[:] = 1.0
        reach.sort_indices()
        out.append(reach)
    return out


def _row_mean_operator(reach: sp.csr_matrix) -> tuple[sp.csr_matrix, np.ndarray]:
    """Row-normalised copy of ``reach`` and the mask of rows without any neighbour."""
    degree = np.asarray(reach.sum(axis=1)).ravel()
    empty = degree == 0
    scale = np.divide(1.0, degree, out=np.zeros_like(degree), where=~empty)
    return sp.csr_matrix(sp.diags(scale) @ reach), empty


class _Features:
    """Feature blocks of chosen rows: k-hop neighbourhood means, leave-one-out sample mean.

    ``source`` is what is averaged: the layer itself, or its principal-component scores
    (averages of components are components of averages, every operator being linear).
    """

    def __init__(self, source: Any, operators, codes: np.ndarray, fill: np.ndarray) -> None:
        self.source = source
        self.operators = operators  # list of (row-mean operator, empty-row mask)
        self.codes = codes
        self.fill = fill  # what a cell with an empty neighbourhood / a lone sample gets
        n_groups = int(codes.max()) + 1 if codes.size else 0
        indicator = sp.csr_matrix(
            (np.ones(codes.size), (codes, np.arange(codes.size))), shape=(n_groups, codes.size)
        )
        self.group_sum = _dense(indicator @ source)
        self.group_size = np.bincount(codes, minlength=n_groups).astype(np.float64)
        self.n_blocks = len(operators) + 1
        self.width = source.shape[1]

    def rows(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(features, ``source`` rows) of rows ``idx``: ``n_blocks`` blocks of ``width``."""
        own = _dense(self.source[idx])
        blocks = []
        for op, empty in self.operators:
            mean = _dense(op[idx] @ self.source)
            lonely = empty[idx]
            if lonely.any():
                mean[lonely] = self.fill
            blocks.append(mean)
        code = self.codes[idx]
        others = self.group_size[code] - 1.0
        loo = (self.group_sum[code] - own) / np.where(others > 0, others, 1.0)[:, None]
        loo[others == 0] = self.fill
        blocks.append(loo)
        return np.hstack(blocks), own


def _dense(x: Any) -> np.ndarray:
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)


def _chunks(idx: np.ndarray, n_cols: int):
    step = max(1, _FEATURE_CHUNK_VALUES // max(n_cols, 1))
    for start in range(0, idx.size, step):
        yield idx[start : start + step]


def _split_rows(adata: AnnData, split_key: str, train: str, heldout: Sequence[str]):
    if split_key not in adata.obs.columns:
        raise KeyError(
            f"linear_baselines: split_key {split_key!r} not found in adata.obs "
            f"(available columns: {list(adata.obs.columns)}); make a split with whole samples "
            "in 'train' and held-out samples in 'val' / 'test'"
        )
    split = adata.obs[split_key].astype(str).to_numpy()
    train_idx = np.flatnonzero(split == train)
    held_idx = np.flatnonzero(np.isin(split, list(heldout)))
    found = sorted(set(split))
    if train_idx.size < 2:
        raise ValueError(
            f"linear_baselines: {train_idx.size} cell(s) with adata.obs[{split_key!r}] == "
            f"{train!r}; need at least 2 training cells (values present: {found})"
        )
    if held_idx.size < 2:
        raise ValueError(
            f"linear_baselines: {held_idx.size} cell(s) with adata.obs[{split_key!r}] in "
            f"{list(heldout)}; need at least 2 held-out cells (values present: {found})"
        )
    return train_idx, held_idx


def _adjacency(adata: AnnData, connectivity_key: str, codes: np.ndarray, library_key: str):
    if connectivity_key not in adata.obsp:
        raise KeyError(
            f"linear_baselines: {connectivity_key!r} not found in adata.obsp (available: "
            f"{sorted(adata.obsp.keys())}); build the spatial graph first with "
            "interscale.pp.spatial_neighbors(adata, radius=..., sample_key=...)"
        )
    adjacency = sp.csr_matrix(adata.obsp[connectivity_key], dtype=np.float64)
    adjacency.data[:] = 1.0  # explicit zeros too (e.g. coincident cells in a distance graph)
    rows, cols = adjacency.nonzero()
    crossing = int(np.count_nonzero(codes[rows] != codes[cols]))
    if crossing:
        raise ValueError(
            f"linear_baselines: adata.obsp[{connectivity_key!r}] has {crossing} edge(s) between "
            f"cells of different {library_key!r} values; build the graph per sample "
            f"(interscale.pp.spatial_neighbors(..., sample_key={library_key!r}))"
        )
    return adjacency


@accepts_library_key
def linear_baselines(
    adata: AnnData,
    layer_key: str = "log1p_norm",
    sample_key: str = "sample",
    split_key: str = "split",
    hops: Sequence[int] = (1, 2),
    alpha: float | Sequence[float] | None = None,
    connectivity_key: str = Key.obsp.spatial_connectivities(),
    *,
    train: str = "train",
    heldout: Sequence[str] = ("test",),
    n_components: int | str | None = "auto",
    seed: int = 0,
    key_added: str | None = "linear_baselines",
) -> pd.DataFrame:
    """Held-out R^2 of ridge regressions on neighbourhood and sample averages, per gene.

    Each baseline predicts all genes of a cell from averages that exclude the cell itself:

    - ``mean``: the per-gene mean over the training cells (no features; the floor a model
      must beat to have learned anything);
    - ``hop{k}`` for each ``k`` in ``hops``: the mean expression (all genes) over the cells
      within ``k`` hops of the spatial graph, for every requested hop count up to ``k``
      (so ``hop2`` sees the 1-hop and the cumulative 2-hop means, and is never worse than
      ``hop1`` on the training cells);
    - ``sample``: the leave-one-out mean of the cell's sample (all its other cells);
    - ``hop{K}_sample`` (``K = max(hops)``): the features of ``hop{K}`` and ``sample``.

    The regressions are ridge with an intercept, fitted on the cells whose ``split_key`` is
    ``train`` and scored on the ``heldout`` cells with the per-gene R^2 of
    :func:`interscale.evaluation.calculate_gene_ranks` (against the held-out mean). A cell
    without neighbours at some hop count, or alone in its sample, gets the training mean
    expression as that average.

    The fit never forms a design matrix of all cells: the sufficient statistics (Gram matrix
    and cross products) are accumulated over row chunks, and one eigendecomposition of the
    standardised Gram matrix per baseline and cross-validation fold gives the ridge for every
    alpha of the grid (:mod:`interscale._ridge`). It is finite however many features there
    are per training cell (a singular Gram matrix is fine: every alpha is > 0).

    **Large panels.** With ``n_vars`` genes a design has up to ``(len(hops) + 1) * n_vars``
    features; at 5,000 genes that is a 15,000-wide Gram matrix (1.8 GB) and an
    eigendecomposition of many minutes. Above ``n_components`` genes the averages are
    therefore summarised: the top-``r`` principal axes ``V`` of the layer are fitted on the
    training cells (centred at the training mean ``m``), every cell's scores ``(x - m) @ V``
    are averaged instead of its genes, and the ridge is the one on the standardised *gene*
    averages restricted to that subspace (their sd and the penalty are those of the genes,
    ``m + avg @ V^T``). Averaging is linear, so averages of components are components of
    averages: when ``V`` spans the layer (``r`` at least its rank) the result equals the
    exact one; otherwise it is the ridge on the averages' projection onto the top ``r``
    components, whose share of the training variance is recorded. The targets are always all
    genes.

    Parameters
    ----------
    adata
        AnnData with the layer, the spatial graph and the split.
    layer_key
        Layer of values to predict and average (dense or sparse), e.g. ``"log1p_norm"``;
        ``None`` uses ``adata.X``.
    sample_key
        Column of ``adata.obs`` naming each cell's sample; graph edges must not cross samples.
        (``library_key=``, squidpy's word, is accepted for it.)
    split_key
        Column of ``adata.obs`` with the whole-sample split.
    hops
        Neighbourhood sizes in graph hops (positive ints).
    alpha
        Ridge penalty on the coefficients of the features standardised over the training
        cells (summed squared error + ``alpha * ||w||^2``: ``sklearn.linear_model.Ridge(alpha)``
        after a ``StandardScaler`` fitted on the training cells). A number is used as is. A
        sequence is a grid, and each baseline takes the value with the best R^2 in
        cross-validation over whole training samples (up to 5 folds, samples assigned in
        turn). ``None`` (default) uses the grid ``n_train * 10**[-6, ..., 0]``. Choosing on
        whole samples matters: the leave-one-out sample mean varies within a sample only
        through the cell's own value, which a weakly penalised ridge would learn to copy.
    connectivity_key
        Key of ``adata.obsp`` holding the spatial graph; any stored entry is an edge.
    train
        Split value of the cells the ridges are fitted on.
    heldout
        Split values of the cells they are scored on. The default, ``("test",)``, scores only
        cells that neither training nor early stopping saw (a model's validation samples
        choose its best epoch, so they are not held out from it).
    n_components
        What is averaged. ``"auto"`` (default): the genes themselves up to 256 genes, else
        the top 256 principal components of the layer. 256 genes give designs of at most
        768 features at ``hops=(1, 2)``, an eigendecomposition of about a second per fold;
        256 components keep that cost at any panel size, and keep what a 256-gene panel
        would. An int ``r``: ``r`` components (the genes when ``r >= n_vars``, the same
        ridge); ``None``: always the genes (exact, but cubic in the number of genes).
        Components are computed exactly from the covariance up to 1,024 genes, above by a
        randomized range finder.
    seed
        Seed of the randomized range finder (used only above 1,024 genes with components).
    key_added
        Where the table is stored: ``adata.varm[key_added]`` (a DataFrame, one column per
        baseline) and ``adata.uns[key_added]`` (the parameters, cell counts, chosen alphas
        and, under ``"features"``, what was averaged: ``"genes"`` or ``"components"``,
        ``"n_components"`` and ``"explained_variance"``). ``None`` stores nothing. Nothing
        is written when the call fails.

    Returns
    -------
    pandas.DataFrame
        Indexed by gene (``adata.var_names``), columns ``mean``, ``hop{k}`` ..., ``sample``,
        ``hop{K}_sample``: held-out R^2 (NaN for a gene constant on the held-out cells).

    Raises
    ------
    KeyError
        The layer, a column of ``adata.obs`` or the graph is missing.
    ValueError
        Too few training or held-out cells, graph edges between samples, non-finite values
        in the layer, a bad ``hops`` / ``alpha`` / ``n_components``, or (when choosing
        alpha) fewer than 2 training samples or no gene varying within them.
    TypeError
        ``hops``, ``alpha``, ``n_components`` or ``seed`` has the wrong type, or ``adata``
        is a view of another AnnData and ``key_added`` is set (as every function that
        writes into an AnnData does).
    """
    what = "linear_baselines"
    if key_added is not None:
        try:
            check_not_view(adata, what)
        except TypeError as exc:
            raise TypeError(f"{exc}, or key_added=None to only return the table") from None
    hop_list = _check_hops(hops)
    grid = _check_alpha(alpha)
    r = _check_components(n_components, adata.n_vars)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"{what}: seed must be an int, got {seed!r}")
    if isinstance(heldout, str):
        heldout = (heldout,)
    x = _get_matrix(adata, layer_key, what=what)
    x = sp.csr_matrix(x, dtype=np.float64) if sp.issparse(x) else np.asarray(x, np.float64)
    values = x.data if sp.issparse(x) else x
    if not np.isfinite(values).all():
        raise ValueError(f"{what}: layer {layer_key!r} holds NaN or infinite values")
    codes, _ = obs_column_codes(adata, sample_key, what=f"{what}: sample_key")
    train_idx, held_idx = _split_rows(adata, split_key, train, heldout)
    adjacency = _adjacency(adata, connectivity_key, codes, sample_key)

    n_vars = adata.n_vars
    fill = _dense(x[train_idx].mean(axis=0)).ravel()
    reach = _reachability(adjacency, max(hop_list))
    operators = [_row_mean_operator(reach[h - 1]) for h in hop_list]
    scale = None  # StandardScaler on the gene averages
    if r is None:
        features = _Features(x, operators, codes, fill)
        f_fill, share, method = fill, 1.0, None
    else:
        basis, share, method = principal_axes(
            lambda: (_dense(x[idx]) for idx in _chunks(train_idx, n_vars)),
            fill,
            r,
            int(seed),
            _EXACT_PCA_MAX_GENES,
        )
        scores = np.empty((adata.n_obs, r))
        all_rows = np.arange(adata.n_obs)
        for idx in _chunks(all_rows, n_vars):
            scores[idx] = _dense_rows(x, idx, fill) @ basis
        # the training mean's scores are 0: the fill of an empty neighbourhood / lone sample
        features = _Features(scores, operators, codes, np.zeros(r))
        f_fill = np.zeros(r)
        scale = ComponentScale(basis, fill)
    width = features.width
    n_feat = features.n_blocks * width

    def rows(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f, own = features.rows(idx)
        return f, (own if r is None else _dense(x[idx]))

    # Sufficient statistics of each cross-validation fold (whole training samples); the
    # training statistics are their sum, so no pass over the cells is repeated per alpha.
    fold_of_cell = _folds(codes[train_idx], grid is not None)
    if grid is not None and alpha is None:
        grid = [a * train_idx.size for a in grid]
    f_shift = np.tile(f_fill, features.n_blocks)  # every feature is an average of the source
    folds = [RidgeStats(n_feat, n_vars, f_shift, fill) for _ in range(int(fold_of_cell.max()) + 1)]
    for k, fold in enumerate(folds):
        for idx in _chunks(train_idx[fold_of_cell == k], n_feat + n_vars):
            fold.add(*rows(idx))
    total = RidgeStats.total(folds)

    def block_columns(blocks: list[int]) -> np.ndarray:
        return np.concatenate([np.arange(b * width, (b + 1) * width) for b in blocks])

    sample_block = len(hop_list)
    designs = {f"hop{h}": block_columns(list(range(i + 1))) for i, h in enumerate(hop_list)}
    designs["sample"] = block_columns([sample_block])
    designs[f"hop{hop_list[-1]}_sample"] = block_columns([*range(len(hop_list)), sample_block])

    chosen: dict[str, float] = {}
    cv_r2: dict[str, list[float]] = {}
    for name, cols in designs.items():
        if grid is None:
            chosen[name] = float(alpha)
            continue
        scores_cv = ridge_cv_r2(folds, grid, cols, scale)
        if np.isnan(scores_cv).all():
            raise ValueError(
                f"{what}: every gene is constant within the training folds, so "
                "cross-validation cannot choose alpha; pass a fixed alpha=<float>"
            )
        cv_r2[name] = [float(v) for v in scores_cv]
        chosen[name] = float(grid[int(np.nanargmax(scores_cv))])
    y_mean = total.y_sum / total.n + total.y_shift

    # Held-out errors from the held-out cells' statistics: one pass for every baseline.
    names = ["mean", *designs]
    truth = _Moments(n_vars)
    held = RidgeStats(n_feat, n_vars, f_shift, fill)
    ss_mean = np.zeros(n_vars)
    for idx in _chunks(held_idx, n_feat + 2 * n_vars):
        f, y = rows(idx)
        truth.update(y)
        ss_mean += ((y - y_mean) ** 2).sum(axis=0)
        held.add(f, y)
    ss_res = {"mean": ss_mean}
    for name, cols in designs.items():
        ss_res[name] = RidgePath(total, cols, scale).sse(held, [chosen[name]])[0]
    scored = ~truth.constant()
    m2 = np.where(scored, truth.m2, 1.0)
    table = {name: np.where(scored, 1.0 - ss_res[name] / m2, np.nan) for name in names}
    out = pd.DataFrame(table, index=pd.Index(adata.var_names.copy(), name="gene"))

    if key_added is not None:
        adata.varm[key_added] = out.set_axis(adata.var_names, axis=0)
        adata.uns[key_added] = {
            "params": {
                "layer_key": "X" if layer_key is None else str(layer_key),
                "library_key": str(sample_key),
                "split_key": str(split_key),
                "hops": [int(h) for h in hop_list],
                "alpha": "default grid" if alpha is None else np.atleast_1d(alpha).tolist(),
                "connectivity_key": str(connectivity_key),
                "train": str(train),
                "heldout": [str(h) for h in heldout],
                "n_components": n_components
                if n_components in (None, "auto")
                else int(n_components),
                "seed": int(seed),
            },
            "columns": list(names),
            "n_train_cells": int(train_idx.size),
            "n_scored_cells": int(held_idx.size),
            "alpha_chosen": dict(chosen),
            "cv_r2": {k: list(v) for k, v in cv_r2.items()},
            "alpha_grid": [] if grid is None else [float(a) for a in grid],
            "features": {
                "averaged": "genes" if r is None else "components",
                "n_components": int(n_vars if r is None else r),
                "explained_variance": float(share),
                "pca": "none" if method is None else method,
            },
        }
    return out
