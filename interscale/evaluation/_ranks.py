"""Per-gene R^2 of the local and global heads, their ranks, and an AUROC of the difference."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy.stats import rankdata

from interscale._anndata import read_setup
from interscale.evaluation._resample import (
    MIN_SAMPLES_FOR_SAMPLE_BOOTSTRAP,
    bootstrap_gene_r2,
    sample_units,
    select_cells,
)
from interscale.evaluation._utils import _chunk_rows, _get_matrix, _Moments, _row_chunks
from interscale.names import HEADS

RANK_COLUMNS = [
    "gene",
    "Local Rank",
    "Global Rank",
    "Rank Difference",
    "Avg Rank",
    "r2_local",
    "r2_global",
]
BOOTSTRAP_COLUMNS = [
    "r2_local_lo",
    "r2_local_hi",
    "r2_global_lo",
    "r2_global_hi",
    "rank_difference_lo",
    "rank_difference_hi",
]


def _truth_layer(adata: AnnData, layer_true: str | None) -> str:
    if layer_true is not None:
        return layer_true
    key = (read_setup(adata) or {}).get("layer_key")
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


def r2_per_gene(y_true: Any, preds: list[Any], rows: np.ndarray | None = None) -> list[np.ndarray]:
    """R^2 per column of each prediction against ``y_true``, in one chunked pass.

    Entries where the truth or that prediction is not finite are left out (per gene and
    per head). R^2 is NaN for a gene with fewer than two usable cells or a constant truth.
    With ``rows`` (integer indices) only those cells are scored, read chunk by chunk; the
    result equals that on ``y_true[rows]`` bit for bit.
    """
    n_vars = y_true.shape[1]
    size = _chunk_rows(n_vars * (1 + len(preds)))
    moments = [_Moments(n_vars) for _ in preds]
    ss_res = [np.zeros(n_vars) for _ in preds]
    chunks = zip(
        _row_chunks(y_true, size, rows),
        *[_row_chunks(p, size, rows) for p in preds],
        strict=True,
    )
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


def _check_int(value: Any, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(
            f"calculate_gene_ranks: {name} must be an integer >= {minimum}, got {value!r}"
        )


def calculate_gene_ranks(
    adata: AnnData,
    *,
    layers_local_pred: str,
    layers_global_pred: str,
    layer_true: str | None = None,
    top_n: int | None = None,
    cells: str | Sequence[str] | np.ndarray | pd.Series | None = None,
    split_key: str = "split",
    n_boot: int = 0,
    seed: int | None = 0,
    ci: float = 0.9,
    library_key: str | Sequence[str] | None = None,
) -> pd.DataFrame:
    """Rank genes by how well the local and the global head predict them.

    For each gene and head, R^2 = 1 - SS_res / SS_tot of the prediction against the truth
    layer is computed (vectorised over genes, chunked over cells, so dense and sparse layers
    of any size work). Genes are ranked per head with ``scipy.stats.rankdata(method="average")``
    in ascending order, so the best predicted gene gets the highest rank.

    Gene-level claims should be read on held-out samples: pass ``cells=["val", "test"]``
    and ``n_boot`` > 0, then read the claims off :func:`driven_genes`.

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
        If given, print which cells were scored and the ``top_n`` claimed local-driven and
        global-driven genes (see :func:`driven_genes`, with its defaults), how many genes
        were dropped and why, and the ``top_n`` best predicted genes.
    cells
        Cells scored: None or ``"all"`` (every cell), split names (values of
        ``adata.obs[split_key]``) as a list, a tuple or one comma-separated string
        (``["val", "test"]``, ``"val,test"``), or a boolean mask with one entry per cell.
        Only the selected rows of the layers are read, chunk by chunk: the AnnData is not
        copied, and the result equals that on ``adata[mask].copy()``.
    split_key
        obs column holding the split names (used when ``cells`` names splits).
    n_boot
        Number of bootstrap resamples (0: none). With the scored cells coming from at
        least 5 samples, whole samples are resampled (cells of one sample are not
        independent); otherwise cells are. In every resample both heads' per-gene R^2 and the
        ranks are recomputed, and the percentile intervals of R^2 and Rank Difference are
        added as columns.
    seed
        Seed of ``numpy.random.default_rng`` drawing the resamples.
    ci
        Coverage of the percentile intervals, in (0, 1): ``[(1 - ci) / 2, (1 + ci) / 2]``
        quantiles over the resamples.
    library_key
        obs column(s) naming the sample of each cell, for the sample bootstrap. Default:
        the sample key(s) recorded in ``adata.uns["interscale"]["sample_key"]``, else
        ``"sample"`` if that column exists, else cells are resampled.

    Returns
    -------
    pandas.DataFrame
        One row per gene, in ``adata.var_names`` order, with columns ``gene``, ``Local Rank``,
        ``Global Rank``, ``Rank Difference`` (= Local Rank - Global Rank), ``Avg Rank``,
        ``r2_local`` and ``r2_global``; with ``n_boot`` > 0 also ``r2_local_lo``,
        ``r2_local_hi``, ``r2_global_lo``, ``r2_global_hi``, ``rank_difference_lo`` and
        ``rank_difference_hi``. ``df.attrs`` records the scored cells (``"cells"``: ``"all"``,
        the split names joined by commas or ``"mask (n cells)"``; ``"n_cells"``) and, with a
        bootstrap, ``"bootstrap"``: ``{"n_boot", "unit" ("samples" or "cells"), "n_units",
        "ci", "seed", "library_key"}``.

    Raises
    ------
    KeyError
        A named layer is missing, ``split_key`` or a sample column is not in ``adata.obs``,
        or a split name in ``cells`` does not occur (the message lists the available ones).
    ValueError
        No truth layer given nor recorded, a layer has the wrong shape, ``top_n`` < 1,
        ``n_boot`` < 0, ``ci`` outside (0, 1), or ``cells`` selects nothing or is a mask of
        the wrong length.
    TypeError
        A layer is not numeric, or ``cells`` is neither split names nor a boolean mask.

    Notes
    -----
    - **Local-driven** genes are those with the largest positive ``Rank Difference``: the
      local head predicts them relatively better than the global head. (The published
      implementation labelled the two lists the wrong way round; this is fixed here.)
    - Non-finite truth or prediction entries are ignored per gene and head. A gene with a
      constant truth (SS_tot = 0) or fewer than two usable cells has R^2 = NaN; such genes
      share the lowest (worst) ranks of their head, tied with one another. In a resample
      where a gene is constant its R^2 is NaN and left out of that gene's R^2 interval.
    - Resample ``b`` draws ``rng.integers(0, n_units, size=n_units)`` (units numbered in
      sorted order of their sample labels, or cells in obs order), one resample after the
      other. Percentile intervals need not contain the point estimate.
    """
    what = "calculate_gene_ranks"
    if top_n is not None:
        _check_int(top_n, "top_n", 1)
    _check_int(n_boot, "n_boot", 0)
    if isinstance(ci, bool) or not isinstance(ci, int | float) or not 0.0 < float(ci) < 1.0:
        raise ValueError(f"{what}: ci must be a number in (0, 1), got {ci!r}")
    y_local = _get_matrix(adata, layers_local_pred, what=what)
    y_global = _get_matrix(adata, layers_global_pred, what=what)
    y_true = _get_matrix(adata, _truth_layer(adata, layer_true), what=what)
    selection = select_cells(adata, cells, split_key, what=what)
    units = None
    key = None
    if n_boot > 0:
        units, key = sample_units(adata, selection.rows, library_key, what=what)
        n_samples = 0 if units is None else int(units.max()) + 1
        if n_samples < MIN_SAMPLES_FOR_SAMPLE_BOOTSTRAP:
            units = None

    rows = selection.rows
    r2_local, r2_global = r2_per_gene(y_true, [y_local, y_global], rows=rows)
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
    df.attrs["cells"] = selection.label
    df.attrs["n_cells"] = selection.n_cells
    if n_boot > 0:
        boot = bootstrap_gene_r2(
            y_true, [y_local, y_global], rows, units, n_boot=int(n_boot), seed=seed, ci=ci
        )
        for col in BOOTSTRAP_COLUMNS:
            df[col] = boot[col]
        df.attrs["bootstrap"] = {
            "n_boot": int(n_boot),
            "unit": "cells" if units is None else "samples",
            "n_units": selection.n_cells if units is None else int(units.max()) + 1,
            "ci": float(ci),
            "seed": seed,
            "library_key": None if units is None else key,
        }
    if top_n is not None:
        _print_top(df, top_n, n_obs=adata.n_obs)
    return df


def _claim_masks(
    df: pd.DataFrame, which: str, margin: float, require_interval: bool
) -> dict[str, Any]:
    """Masks behind :func:`driven_genes`: direction, R^2 floor and the interval condition."""
    diff = df["Rank Difference"].to_numpy(dtype=np.float64)
    sign = 1.0 if which == "local" else -1.0
    lo_col = f"r2_{which}_lo"
    with np.errstate(invalid="ignore"):
        direction = sign * diff > 0
        if lo_col in df.columns:
            floor = df[lo_col].to_numpy(dtype=np.float64) > 0
            floor_text = f"{lo_col} > 0"
        else:
            floor = df[f"r2_{which}"].to_numpy(dtype=np.float64) > margin
            floor_text = f"r2_{which} > {margin:g}"
        bound = "rank_difference_lo" if which == "local" else "rank_difference_hi"
        if require_interval and bound in df.columns:
            interval = sign * df[bound].to_numpy(dtype=np.float64) > 0
            interval_text = f"{bound} {'>' if which == 'local' else '<'} 0"
        else:
            interval = np.ones(len(df), dtype=bool)
            interval_text = None
    return {
        "direction": direction,
        "floor": floor,
        "interval": interval,
        "floor_text": floor_text,
        "interval_text": interval_text,
    }


def driven_genes(
    df: pd.DataFrame,
    *,
    which: str = "local",
    n: int | None = None,
    margin: float = 0.01,
    require_interval: bool = True,
) -> list[str]:
    """Genes that can be claimed as local-driven or global-driven, strongest first.

    A gene is claimed for a head when all of these hold:

    1. it lies on that head's side: ``Rank Difference`` > 0 for ``"local"``, < 0 for
       ``"global"``;
    2. the head clears the mean-predictor floor: its ``r2_<which>`` > ``margin``, or, when
       the table has bootstrap columns, the lower bound ``r2_<which>_lo`` > 0 (a head that
       does not beat predicting each gene's mean has learned nothing about the gene, so a
       rank gap on it means nothing);
    3. with bootstrap columns and ``require_interval``, the Rank Difference interval
       excludes 0 on that side: ``rank_difference_lo`` > 0 for ``"local"``,
       ``rank_difference_hi`` < 0 for ``"global"``.

    A NaN in any column used never passes.

    Parameters
    ----------
    df
        Output of :func:`calculate_gene_ranks` (with or without bootstrap columns).
    which
        ``"local"`` or ``"global"``.
    n
        Return at most this many genes (None: all claimed genes).
    margin
        R^2 floor used without bootstrap columns.
    require_interval
        Require the Rank Difference interval to exclude 0 (when the columns exist).

    Returns
    -------
    list of str
        Claimed genes sorted by ``Rank Difference``: descending for ``"local"``, ascending
        for ``"global"`` (ties keep the table order).

    Raises
    ------
    KeyError
        ``df`` lacks ``gene``, ``Rank Difference`` or ``r2_<which>``.
    ValueError
        ``which`` is not ``"local"``/``"global"``, ``n`` < 0 or ``margin`` is not finite.
    """
    what = "driven_genes"
    if which not in HEADS:
        raise ValueError(f"{what}: which must be 'local' or 'global', got {which!r}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0):
        raise ValueError(f"{what}: n must be None or an integer >= 0, got {n!r}")
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not np.isfinite(margin):
        raise ValueError(f"{what}: margin must be a finite number, got {margin!r}")
    for col in ("gene", "Rank Difference", f"r2_{which}"):
        if col not in df.columns:
            raise KeyError(f"{what}: df has no column {col!r}")
    masks = _claim_masks(df, which, float(margin), require_interval)
    keep = masks["direction"] & masks["floor"] & masks["interval"]
    sub = df.loc[keep, ["gene", "Rank Difference"]]
    sub = sub.sort_values("Rank Difference", ascending=which == "global", kind="mergesort")
    genes = [str(g) for g in sub["gene"]]
    return genes if n is None else genes[: int(n)]


def _claim_summary(df: pd.DataFrame, which: str, margin: float = 0.01) -> dict[str, Any]:
    """Counts of the genes on a head's side, claimed, and dropped by floor or interval."""
    masks = _claim_masks(df, which, margin, True)
    side = masks["direction"]
    below = side & ~masks["floor"]
    crossing = side & masks["floor"] & ~masks["interval"]
    return {
        "n_side": int(side.sum()),
        "n_claimed": int((side & masks["floor"] & masks["interval"]).sum()),
        "n_below_floor": int(below.sum()),
        "n_interval_includes_0": int(crossing.sum()),
        "floor": masks["floor_text"],
        "interval": masks["interval_text"],
    }


def _describe_cells(df: pd.DataFrame, n_obs: int | None = None) -> str:
    label = df.attrs.get("cells", "all")
    n_cells = df.attrs.get("n_cells")
    if n_cells is None:
        return str(label)
    total = f" of {n_obs}" if n_obs is not None else ""
    text = f"{label} ({n_cells}{total} cells)"
    boot = df.attrs.get("bootstrap")
    if boot:
        text += (
            f"; {boot['n_boot']} bootstrap resamples of {boot['n_units']} {boot['unit']}, "
            f"{100 * boot['ci']:g}% percentile intervals"
        )
    return text


def _print_top(df: pd.DataFrame, top_n: int, n_obs: int | None = None) -> None:
    print(f"Scored cells: {_describe_cells(df, n_obs)}")
    cols = ["gene", "Local Rank", "Global Rank", "Rank Difference", "r2_local", "r2_global"]
    cols += [c for c in ("rank_difference_lo", "rank_difference_hi") if c in df.columns]
    by_gene = df.drop_duplicates("gene").set_index("gene", drop=False)
    for which, title in (
        ("local", "Local-Driven Genes (Local Rank >> Global Rank)"),
        ("global", "Global-Driven Genes (Global Rank >> Local Rank)"),
    ):
        genes = driven_genes(df, which=which, n=top_n)
        info = _claim_summary(df, which)
        rule = info["floor"] + (f" and {info['interval']}" if info["interval"] else "")
        sign = ">" if which == "local" else "<"
        dropped = info["n_side"] - info["n_claimed"]
        reasons = f"{info['n_below_floor']} fail {info['floor']}: no better than the mean"
        if info["interval"]:
            reasons += f"; {info['n_interval_includes_0']} more fail {info['interval']}"
        print(f"\nTop {top_n} {title}:")
        print(
            f"claimed if {rule}. Of the {info['n_side']} genes with Rank Difference {sign} 0, "
            f"{info['n_claimed']} are claimed and {dropped} dropped ({reasons})."
        )
        if genes:
            print(by_gene.loc[genes, cols].reset_index(drop=True).to_string())
        else:
            print("(no gene claimed)")
    best = df.nlargest(top_n, "Avg Rank")
    print(f"\nTop {top_n} Best Predicted Genes (highest Avg Rank):\n{best[cols].to_string()}")


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
