"""Per-gene R^2 of the local and global heads, their ranks, and an AUROC of the difference."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy.stats import rankdata

from interscale.evaluation._utils import _chunk_rows, _get_matrix, _Moments, _row_chunks

RANK_COLUMNS = [
    "gene",
    "Local Rank",
    "Global Rank",
    "Rank Difference",
    "Avg Rank",
    "r2_local",
    "r2_global",
]


def _truth_layer(adata: AnnData, layer_true: str | None) -> str:
    if layer_true is not None:
        return layer_true
    info = adata.uns.get("interscale")
    key = info.get("layer_key") if isinstance(info, Mapping) else None
    if key is None:
        raise ValueError(
            "calculate_gene_ranks: no truth layer. Pass layer_true=<the layer the model was "
            "trained on> (e.g. 'log1p_norm'), or set up the model so that "
            "adata.uns['interscale']['layer_key'] records it. adata.X is never used "
            "implicitly, because it often holds raw counts while predictions are on the "
            "training-layer scale."
        )
    if not isinstance(key, str):
        raise TypeError(
            f"calculate_gene_ranks: adata.uns['interscale']['layer_key'] must be a string, "
            f"got {type(key).__name__}"
        )
    return key


def _r2_per_gene(y_true: Any, preds: list[Any]) -> list[np.ndarray]:
    """R^2 per column of each prediction against ``y_true``, in one chunked pass.

    Entries where the truth or that prediction is not finite are left out (per gene and
    per head). R^2 is NaN for a gene with fewer than two usable cells or a constant truth.
    """
    n_obs, n_vars = y_true.shape
    rows = _chunk_rows(n_vars * (1 + len(preds)))
    moments = [_Moments(n_vars) for _ in preds]
    ss_res = [np.zeros(n_vars) for _ in preds]
    chunks = zip(_row_chunks(y_true, rows), *[_row_chunks(p, rows) for p in preds], strict=True)
    for y, *ps in chunks:
        y_ok = np.isfinite(y)
        y_stats = None  # truth moments of the chunk, shared by heads without missing values
        for i, p in enumerate(ps):
            valid = y_ok & np.isfinite(p)
            if valid.all():
                if y_stats is None:
                    y_stats = _Moments.chunk_stats(y)
                moments[i].merge(*y_stats)
                ss_res[i] += ((y - p) ** 2).sum(axis=0)
            else:
                moments[i].update(y, valid)
                ss_res[i] += np.where(valid, (y - p) ** 2, 0.0).sum(axis=0)
    out = []
    for mom, res in zip(moments, ss_res, strict=True):
        ok = (mom.n >= 2) & ~mom.constant()
        r2 = np.full(n_vars, np.nan)
        r2[ok] = 1.0 - res[ok] / mom.m2[ok]
        out.append(r2)
    return out


def _rank_nan_last(r2: np.ndarray) -> np.ndarray:
    """Average ranks, ascending (higher = better); NaN scores share the lowest ranks."""
    return rankdata(np.where(np.isnan(r2), -np.inf, r2), method="average")


def calculate_gene_ranks(
    adata: AnnData,
    *,
    layers_local_pred: str,
    layers_global_pred: str,
    layer_true: str | None = None,
    top_n: int | None = None,
) -> pd.DataFrame:
    """Rank genes by how well the local and the global head predict them.

    For each gene and head, R^2 = 1 - SS_res / SS_tot of the prediction against the truth
    layer is computed (vectorised over genes, chunked over cells, so dense and sparse layers
    of any size work). Genes are ranked per head with ``scipy.stats.rankdata(method="average")``
    in ascending order, so the best predicted gene gets the highest rank.

    Parameters
    ----------
    adata
        AnnData with the prediction layers and the truth layer.
    layers_local_pred
        Layer with the local-head predictions (e.g. ``"_y_pred_local"``).
    layers_global_pred
        Layer with the global-head predictions (e.g. ``"_y_pred_global"``).
    layer_true
        Layer holding the values the model predicts. Default: the layer the model was set up
        with, ``adata.uns["interscale"]["layer_key"]``. ``adata.X`` is never used implicitly
        (it often holds raw counts while predictions are on the training-layer scale).
    top_n
        If given, print the ``top_n`` local-driven, global-driven and best predicted genes.

    Returns
    -------
    pandas.DataFrame
        One row per gene, in ``adata.var_names`` order, with columns ``gene``, ``Local Rank``,
        ``Global Rank``, ``Rank Difference`` (= Local Rank - Global Rank), ``Avg Rank``,
        ``r2_local`` and ``r2_global``.

    Raises
    ------
    KeyError
        A named layer is missing.
    ValueError
        No truth layer given nor recorded, a layer has the wrong shape, or ``top_n`` < 1.
    TypeError
        A layer is not numeric.

    Notes
    -----
    - **Local-driven** genes are those with the largest positive ``Rank Difference``: the
      local head predicts them relatively better than the global head. (The published
      implementation labelled the two lists the wrong way round; this is fixed here.)
    - Non-finite truth or prediction entries are ignored per gene and head. A gene with a
      constant truth (SS_tot = 0) or fewer than two usable cells has R^2 = NaN; such genes
      share the lowest (worst) ranks of their head, tied with one another.
    """
    if top_n is not None and (not isinstance(top_n, int | np.integer) or top_n < 1):
        raise ValueError(f"calculate_gene_ranks: top_n must be a positive integer, got {top_n!r}")
    what = "calculate_gene_ranks"
    y_local = _get_matrix(adata, layers_local_pred, what=what)
    y_global = _get_matrix(adata, layers_global_pred, what=what)
    y_true = _get_matrix(adata, _truth_layer(adata, layer_true), what=what)

    r2_local, r2_global = _r2_per_gene(y_true, [y_local, y_global])
    local_rank = _rank_nan_last(r2_local)
    global_rank = _rank_nan_last(r2_global)
    df = pd.DataFrame(
        {
            "gene": np.asarray(adata.var_names, dtype=object),
            "Local Rank": local_rank,
            "Global Rank": global_rank,
            "Rank Difference": local_rank - global_rank,
            "Avg Rank": (local_rank + global_rank) / 2.0,
            "r2_local": r2_local,
            "r2_global": r2_global,
        },
        columns=RANK_COLUMNS,
    )
    if top_n is not None:
        cols = ["gene", "Local Rank", "Global Rank", "r2_local", "r2_global"]
        lists = {
            "Local-Driven Genes (Local Rank >> Global Rank)": df.nlargest(top_n, "Rank Difference"),
            "Global-Driven Genes (Global Rank >> Local Rank)": df.nsmallest(
                top_n, "Rank Difference"
            ),
            "Best Predicted Genes (highest Avg Rank)": df.nlargest(top_n, "Avg Rank"),
        }
        for name, sub in lists.items():
            print(f"\nTop {top_n} {name}:\n{sub[cols].to_string()}")
    return df


def auroc_rank_difference(
    df: pd.DataFrame,
    programs: pd.Series,
    positive: str = "local",
    negative: str = "global",
) -> float:
    """AUROC of ``Rank Difference`` separating ``positive`` from ``negative`` program genes.

    With the default labels this is the probability that a randomly drawn planted local gene
    has a larger Rank Difference (is more local-driven) than a randomly drawn planted global
    gene, ties counting one half (Mann-Whitney U / (n_pos * n_neg)).

    Parameters
    ----------
    df
        Output of :func:`calculate_gene_ranks` (columns ``gene`` and ``Rank Difference``).
    programs
        Program label per gene, indexed by gene name. Genes whose label is neither
        ``positive`` nor ``negative`` (or that are missing from ``programs``) are ignored.
    positive
        Label of the genes expected to have a large Rank Difference.
    negative
        Label of the genes expected to have a small Rank Difference.

    Returns
    -------
    float
        AUROC in [0, 1]; 0.5 means no separation.

    Raises
    ------
    KeyError
        ``df`` lacks a required column.
    TypeError
        ``programs`` is not a pandas Series.
    ValueError
        No gene of ``df`` carries the positive or the negative label, or a Rank Difference
        used is not finite.
    """
    for col in ("gene", "Rank Difference"):
        if col not in df.columns:
            raise KeyError(f"auroc_rank_difference: df has no column {col!r}")
    if not isinstance(programs, pd.Series):
        raise TypeError(
            f"auroc_rank_difference: programs must be a pandas Series indexed by gene, "
            f"got {type(programs).__name__}"
        )
    if positive == negative:
        raise ValueError("auroc_rank_difference: positive and negative labels must differ")
    if not programs.index.is_unique:
        raise ValueError("auroc_rank_difference: programs has duplicated gene names")
    labels = programs.reindex(pd.Index(df["gene"].astype(str))).to_numpy()
    score = df["Rank Difference"].to_numpy(dtype=np.float64)
    pos, neg = labels == positive, labels == negative
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"auroc_rank_difference: need genes of both classes, found {n_pos} labelled "
            f"{positive!r} and {n_neg} labelled {negative!r} among df['gene']"
        )
    pooled = np.concatenate([score[pos], score[neg]])
    if not np.isfinite(pooled).all():
        raise ValueError("auroc_rank_difference: Rank Difference has non-finite values")
    ranks = rankdata(pooled, method="average")
    u = ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))
