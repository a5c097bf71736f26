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
import scipy.linalg
import scipy.sparse as sp
from anndata import AnnData

from interscale._anndata import CONSTANT_RTOL, check_not_view, obs_column_codes
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


class _Stats:
    """Sufficient statistics of a ridge with intercept: sums, Gram and cross products.

    The sums are of the features minus ``f_shift`` and the targets minus ``y_shift`` (values
    near their means): ``Gram - n * mu mu^T`` of raw values loses all precision on a feature
    whose sd is tiny next to its mean (a constant gene's averages then looked non-constant
    and broke the Cholesky factorisation).
    """

    def __init__(self, n_feat: int, n_vars: int, f_shift: np.ndarray, y_shift: np.ndarray) -> None:
        self.f_shift = f_shift
        self.y_shift = y_shift
        self.n = 0.0
        self.f_sum = np.zeros(n_feat)
        self.y_sum = np.zeros(n_vars)
        self.ff = np.zeros((n_feat, n_feat))
        self.fy = np.zeros((n_feat, n_vars))
        self.yy = np.zeros(n_vars)

    def add(self, f: np.ndarray, y: np.ndarray) -> None:
        f = f - self.f_shift
        y = y - self.y_shift
        self.n += f.shape[0]
        self.f_sum += f.sum(axis=0)
        self.y_sum += y.sum(axis=0)
        self.ff += f.T @ f
        self.fy += f.T @ y
        self.yy += (y * y).sum(axis=0)

    @classmethod
    def combine(cls, parts: list[_Stats], signs: list[float]) -> _Stats:
        first = parts[0]
        out = cls(first.f_sum.size, first.y_sum.size, first.f_shift, first.y_shift)
        for part, sign in zip(parts, signs, strict=True):
            for name in ("n", "f_sum", "y_sum", "ff", "fy", "yy"):
                setattr(out, name, getattr(out, name) + sign * getattr(part, name))
        return out

    def fit(self, cols: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """Ridge weights (in the original feature units) and intercepts of all genes.

        The penalty ``alpha * ||w||^2`` applies to the features standardised by their sd over
        these cells; the intercept is not penalised. The intercepts are those of the shifted
        features and targets (see :meth:`predict`).
        """
        n = self.n
        mu = self.f_sum[cols] / n
        y_bar = self.y_sum / n
        gram = self.ff[np.ix_(cols, cols)] - n * np.outer(mu, mu)
        cross = self.fy[cols] - n * np.outer(mu, y_bar)
        sd = np.sqrt(np.clip(np.diag(gram), 0.0, None) / n)
        # Constant (to rounding) features: sd 1, so they stay centred zeros, as in StandardScaler.
        level = np.maximum(
            1e-12 * max(1.0, float(sd.max(initial=0.0))),
            CONSTANT_RTOL * np.abs(mu + self.f_shift[cols]),
        )
        sd = np.where(sd > level, sd, 1.0)
        lhs = gram / np.outer(sd, sd)
        lhs[np.diag_indices_from(lhs)] += alpha
        factor = scipy.linalg.cho_factor(lhs, lower=True, check_finite=False)
        weights = scipy.linalg.cho_solve(factor, cross / sd[:, None], check_finite=False)
        weights /= sd[:, None]
        return weights, y_bar - mu @ weights

    def predict(
        self, f: np.ndarray, cols: np.ndarray, weights: np.ndarray, intercept: np.ndarray
    ) -> np.ndarray:
        """Predictions for raw features ``f`` (all columns) of a fit on these statistics."""
        return (f[:, cols] - self.f_shift[cols]) @ weights + (intercept + self.y_shift)

    def sse(self, cols: np.ndarray, weights: np.ndarray, intercept: np.ndarray) -> np.ndarray:
        """Per-gene sum of squared errors of ``f[:, cols] @ weights + intercept`` on these cells."""
        fw = (self.ff[np.ix_(cols, cols)] @ weights * weights).sum(axis=0)
        fy = (self.fy[cols] * weights).sum(axis=0)
        fs = self.f_sum[cols] @ weights
        return (
            self.yy
            - 2.0 * intercept * self.y_sum
            - 2.0 * fy
            + self.n * intercept**2
            + 2.0 * intercept * fs
            + fw
        )

    def sst(self) -> np.ndarray:
        return self.yy - self.y_sum**2 / self.n


def _folds(train_codes: np.ndarray, cross_validate: bool) -> np.ndarray:
    """Fold of every training cell: whole samples, assigned in turn by sorted sample code."""
    samples = np.unique(train_codes)
    if not cross_validate:
        return np.zeros(train_codes.size, dtype=np.int64)
    if samples.size < 2:
        raise ValueError(
            "linear_baselines: choosing alpha by cross-validation needs at least 2 training "
            f"samples, found {samples.size}; pass a fixed alpha=<float> instead"
        )
    n_folds = min(_MAX_FOLDS, samples.size)
    fold_of_sample = np.arange(samples.size) % n_folds
    return fold_of_sample[np.searchsorted(samples, train_codes)]


def _cv_score(folds: list[_Stats], total: _Stats, cols: np.ndarray, alpha: float) -> float:
    """Mean over genes of the R^2 pooled over folds, each fold predicted by the others."""
    sse = np.zeros(total.y_sum.size)
    sst = np.zeros(total.y_sum.size)
    for fold in folds:
        rest = _Stats.combine([total, fold], [1.0, -1.0])
        weights, intercept = rest.fit(cols, alpha)
        sse += fold.sse(cols, weights, intercept)
        sst += fold.sst()
    ok = sst > 1e-12 * max(1.0, float(sst.max(initial=0.0)))
    return float(np.mean(1.0 - sse[ok] / sst[ok])) if ok.any() else float("nan")


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
    """Feature blocks of chosen rows: k-hop neighbourhood means, leave-one-out sample mean."""

    def __init__(self, x: Any, operators, codes: np.ndarray, fill: np.ndarray) -> None:
        self.x = x
        self.operators = operators  # list of (row-mean operator, empty-row mask)
        self.codes = codes
        self.fill = fill  # what a cell with an empty neighbourhood / a lone sample gets
        n_groups = int(codes.max()) + 1 if codes.size else 0
        indicator = sp.csr_matrix(
            (np.ones(codes.size), (codes, np.arange(codes.size))), shape=(n_groups, codes.size)
        )
        self.group_sum = _dense(indicator @ x)
        self.group_size = np.bincount(codes, minlength=n_groups).astype(np.float64)
        self.n_blocks = len(operators) + 1

    def rows(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(features, targets) of rows ``idx``: ``n_blocks`` blocks of ``n_vars`` columns."""
        x_rows = _dense(self.x[idx])
        blocks = []
        for op, empty in self.operators:
            mean = _dense(op[idx] @ self.x)
            lonely = empty[idx]
            if lonely.any():
                mean[lonely] = self.fill
            blocks.append(mean)
        code = self.codes[idx]
        others = self.group_size[code] - 1.0
        loo = (self.group_sum[code] - x_rows) / np.where(others > 0, others, 1.0)[:, None]
        loo[others == 0] = self.fill
        blocks.append(loo)
        return np.hstack(blocks), x_rows


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
            "interscale.pp.spatial_neighbors(adata, radius=..., library_key=...)"
        )
    adjacency = sp.csr_matrix(adata.obsp[connectivity_key], dtype=np.float64)
    adjacency.data[:] = 1.0  # explicit zeros too (e.g. coincident cells in a distance graph)
    rows, cols = adjacency.nonzero()
    crossing = int(np.count_nonzero(codes[rows] != codes[cols]))
    if crossing:
        raise ValueError(
            f"linear_baselines: adata.obsp[{connectivity_key!r}] has {crossing} edge(s) between "
            f"cells of different {library_key!r} values; build the graph per sample "
            f"(interscale.pp.spatial_neighbors(..., library_key={library_key!r}))"
        )
    return adjacency


def linear_baselines(
    adata: AnnData,
    layer_key: str = "log1p_norm",
    library_key: str = "sample",
    split_key: str = "split",
    hops: Sequence[int] = (1, 2),
    alpha: float | Sequence[float] | None = None,
    connectivity_key: str = Key.obsp.spatial_connectivities(),
    *,
    train: str = "train",
    heldout: Sequence[str] = ("val", "test"),
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
    ``train`` with one Cholesky solve per baseline for all genes at once (the normal equations
    are accumulated over row chunks, so memory stays at a few feature chunks plus the Gram
    matrix), and scored on the ``heldout`` cells with the per-gene R^2 of
    :func:`interscale.evaluation.calculate_gene_ranks` (against the held-out mean). A cell
    without neighbours at some hop count, or alone in its sample, gets the training mean
    expression as that average.

    Parameters
    ----------
    adata
        AnnData with the layer, the spatial graph and the split.
    layer_key
        Layer of values to predict and average (dense or sparse), e.g. ``"log1p_norm"``;
        ``None`` uses ``adata.X``.
    library_key
        Column of ``adata.obs`` naming each cell's sample; graph edges must not cross samples.
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
        Split values of the cells they are scored on.
    key_added
        Where the table is stored: ``adata.varm[key_added]`` (a DataFrame, one column per
        baseline) and ``adata.uns[key_added]`` (the parameters and cell counts). ``None``
        stores nothing. Nothing is written when the call fails.

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
        in the layer, a bad ``hops`` / ``alpha``, or (when choosing alpha) fewer than 2
        training samples or no gene varying within them.
    TypeError
        ``hops`` or ``alpha`` has the wrong type, or ``adata`` is a view of another AnnData
        and ``key_added`` is set (as every function that writes into an AnnData does).
    """
    what = "linear_baselines"
    if key_added is not None:
        try:
            check_not_view(adata, what)
        except TypeError as exc:
            raise TypeError(f"{exc}, or key_added=None to only return the table") from None
    hop_list = _check_hops(hops)
    grid = _check_alpha(alpha)
    if isinstance(heldout, str):
        heldout = (heldout,)
    x = _get_matrix(adata, layer_key, what=what)
    x = sp.csr_matrix(x, dtype=np.float64) if sp.issparse(x) else np.asarray(x, np.float64)
    values = x.data if sp.issparse(x) else x
    if not np.isfinite(values).all():
        raise ValueError(f"{what}: layer {layer_key!r} holds NaN or infinite values")
    codes, _ = obs_column_codes(adata, library_key, what=f"{what}: library_key")
    train_idx, held_idx = _split_rows(adata, split_key, train, heldout)
    adjacency = _adjacency(adata, connectivity_key, codes, library_key)

    n_vars = adata.n_vars
    fill = _dense(x[train_idx].mean(axis=0)).ravel()
    reach = _reachability(adjacency, max(hop_list))
    operators = [_row_mean_operator(reach[h - 1]) for h in hop_list]
    features = _Features(x, operators, codes, fill)
    n_feat = features.n_blocks * n_vars

    # Sufficient statistics of each cross-validation fold (whole training samples); the
    # training statistics are their sum, so no pass over the cells is repeated per alpha.
    fold_of_cell = _folds(codes[train_idx], grid is not None)
    if grid is not None and alpha is None:
        grid = [a * train_idx.size for a in grid]
    f_shift = np.tile(fill, features.n_blocks)  # every feature is an average of the layer
    folds = [_Stats(n_feat, n_vars, f_shift, fill) for _ in range(int(fold_of_cell.max()) + 1)]
    for k, fold in enumerate(folds):
        for idx in _chunks(train_idx[fold_of_cell == k], n_feat + n_vars):
            fold.add(*features.rows(idx))
    total = _Stats.combine(folds, [1.0] * len(folds))

    def block_columns(blocks: list[int]) -> np.ndarray:
        return np.concatenate([np.arange(b * n_vars, (b + 1) * n_vars) for b in blocks])

    sample_block = len(hop_list)
    designs: dict[str, np.ndarray] = {}
    for i, h in enumerate(hop_list):
        designs[f"hop{h}"] = block_columns(list(range(i + 1)))
    designs["sample"] = block_columns([sample_block])
    designs[f"hop{hop_list[-1]}_sample"] = block_columns([*range(len(hop_list)), sample_block])

    chosen: dict[str, float] = {}
    cv_r2: dict[str, list[float]] = {}
    for name, cols in designs.items():
        if grid is None:
            chosen[name] = float(alpha)
            continue
        scores = [_cv_score(folds, total, cols, a) for a in grid]
        if np.isnan(scores).all():
            raise ValueError(
                f"{what}: every gene is constant within the training folds, so "
                "cross-validation cannot choose alpha; pass a fixed alpha=<float>"
            )
        cv_r2[name] = [float(v) for v in scores]
        chosen[name] = float(grid[int(np.nanargmax(scores))])
    fits = {name: total.fit(cols, chosen[name]) for name, cols in designs.items()}
    y_mean = total.y_sum / total.n + total.y_shift

    names = ["mean", *designs]
    truth = _Moments(n_vars)
    ss_res = {name: np.zeros(n_vars) for name in names}
    for idx in _chunks(held_idx, n_feat + n_vars * (len(names) + 1)):
        f, y = features.rows(idx)
        truth.update(y)
        ss_res["mean"] += ((y - y_mean) ** 2).sum(axis=0)
        for name, cols in designs.items():
            weights, intercept = fits[name]
            pred = total.predict(f, cols, weights, intercept)
            ss_res[name] += ((y - pred) ** 2).sum(axis=0)
    scored = ~truth.constant()
    table = {}
    for name in names:
        r2 = np.full(n_vars, np.nan)
        r2[scored] = 1.0 - ss_res[name][scored] / truth.m2[scored]
        table[name] = r2
    out = pd.DataFrame(table, index=pd.Index(adata.var_names.copy(), name="gene"))

    if key_added is not None:
        adata.varm[key_added] = out.set_axis(adata.var_names, axis=0)
        adata.uns[key_added] = {
            "params": {
                "layer_key": "X" if layer_key is None else str(layer_key),
                "library_key": str(library_key),
                "split_key": str(split_key),
                "hops": [int(h) for h in hop_list],
                "alpha": "default grid" if alpha is None else np.atleast_1d(alpha).tolist(),
                "connectivity_key": str(connectivity_key),
                "train": str(train),
                "heldout": [str(h) for h in heldout],
            },
            "columns": list(names),
            "n_train_cells": int(train_idx.size),
            "n_scored_cells": int(held_idx.size),
            "alpha_chosen": dict(chosen),
            "cv_r2": {k: list(v) for k, v in cv_r2.items()},
            "alpha_grid": [] if grid is None else [float(a) for a in grid],
        }
    return out
