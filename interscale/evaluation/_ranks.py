"""Per-gene R^2 of the local and global heads, their ranks, and an AUROC of the difference."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy.stats import rankdata

from interscale._anndata import read_setup, select_cells
from interscale._compat import accepts_library_key
from interscale._r2 import R2Accumulator
from interscale.evaluation._claims import _print_top
from interscale.evaluation._resample import (
    MIN_SAMPLES_FOR_SAMPLE_BOOTSTRAP,
    bootstrap_gene_r2,
    sample_units,
)
from interscale.evaluation._utils import _chunk_rows, _get_matrix, _row_chunks
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
# What the bootstrap resampled ("samples" or "cells"), in every row of a table with intervals.
BOOTSTRAP_UNIT_COLUMN = "bootstrap_unit"


class BootstrapFallbackWarning(UserWarning):
    """The bootstrap resamples cells because the scored cells come from too few samples."""


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
    per head). R^2 is NaN for a gene with fewer than two usable cells or a constant truth
    (the rule of :class:`interscale._r2.R2Accumulator`, which sums the chunks). With ``rows``
    (integer indices) only those cells are scored, read chunk by chunk; the result equals
    that on ``y_true[rows]`` bit for bit, as the chunks are the same.
    """
    n_vars = y_true.shape[1]
    size = _chunk_rows(n_vars * (1 + len(preds)))
    acc = R2Accumulator(n_vars, len(preds))
    chunks = zip(
        _row_chunks(y_true, size, rows),
        *[_row_chunks(p, size, rows) for p in preds],
        strict=True,
    )
    for y, *ps in chunks:
        acc.add(y, ps)
    return acc.r2()


def _rank_nan_last(r2: np.ndarray) -> np.ndarray:
    """Average ranks, ascending (higher = better); NaN scores share the lowest ranks."""
    return rankdata(np.where(np.isnan(r2), -np.inf, r2), method="average")


def _check_int(value: Any, name: str, minimum: int, what: str = "calculate_gene_ranks") -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{what}: {name} must be an integer >= {minimum}, got {value!r}")


def gene_ranks_from_r2(
    r2_local: Sequence[float] | np.ndarray,
    r2_global: Sequence[float] | np.ndarray,
    genes: Sequence[str] | pd.Index,
    *,
    cells: str = "all",
    n_cells: int | None = None,
) -> pd.DataFrame:
    """The ranks table of :func:`calculate_gene_ranks` from each head's per-gene R^2.

    Genes are ranked per head with ``scipy.stats.rankdata(method="average")`` in ascending
    order (the best predicted gene gets the highest rank); NaN R^2 share the lowest ranks.
    :func:`calculate_gene_ranks` builds its table with this function, and
    :func:`gene_ranks_from_model` from R^2 summed up during inference.

    Parameters
    ----------
    r2_local, r2_global
        R^2 per gene of the local and the global head (NaN where undefined).
    genes
        Gene names, one per R^2.
    cells
        Description of the scored cells, recorded in ``df.attrs["cells"]``.
    n_cells
        Number of scored cells, recorded in ``df.attrs["n_cells"]`` when given.

    Returns
    -------
    pandas.DataFrame
        One row per gene, in the order given, with columns ``gene``, ``Local Rank``,
        ``Global Rank``, ``Rank Difference`` (= Local Rank - Global Rank), ``Avg Rank``,
        ``r2_local`` and ``r2_global``.

    Raises
    ------
    TypeError
        An R^2 is not numeric.
    ValueError
        An R^2 is not one value per gene.
    """
    what = "gene_ranks_from_r2"
    gene_col = np.asarray(genes, dtype=object)
    if gene_col.ndim != 1:
        raise ValueError(f"{what}: genes must be one-dimensional, got shape {gene_col.shape}")
    scores = []
    for name, values in (("r2_local", r2_local), ("r2_global", r2_global)):
        arr = np.asarray(values)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{what}: {name} must be numeric, got dtype {arr.dtype}")
        if arr.shape != gene_col.shape:
            raise ValueError(
                f"{what}: {name} has shape {arr.shape}, expected {gene_col.shape} (one R^2 "
                "per gene)"
            )
        scores.append(arr.astype(np.float64, copy=False))
    r2_local, r2_global = scores
    local_rank = _rank_nan_last(r2_local)
    global_rank = _rank_nan_last(r2_global)
    df = pd.DataFrame(
        {
            "gene": gene_col,
            "Local Rank": local_rank,
            "Global Rank": global_rank,
            "Rank Difference": local_rank - global_rank,
            "Avg Rank": (local_rank + global_rank) / 2.0,
            "r2_local": r2_local,
            "r2_global": r2_global,
        },
        columns=RANK_COLUMNS,
    )
    df.attrs["cells"] = cells
    if n_cells is not None:
        df.attrs["n_cells"] = int(n_cells)
    return df


def gene_ranks_from_model(
    model: Any,
    adata: AnnData | None = None,
    *,
    cells: str | Sequence[str] | np.ndarray | pd.Series | None = None,
    split_key: str | None = None,
    masked: bool = True,
    top_n: int | None = None,
    progress_bar: bool = False,
) -> pd.DataFrame:
    """The :func:`calculate_gene_ranks` table from R^2 summed up during inference.

    Calls ``model.gene_r2`` (the held-out inference of ``get_model_output``, same folds and
    seed, no prediction layer stored) and ranks its per-gene R^2 with
    :func:`gene_ranks_from_r2`. The result equals ``calculate_gene_ranks`` on the float32
    layers of ``get_model_output(adata)`` to float64 rounding (tested to 1e-6), with
    neither the layers' memory (4 bytes per cell, gene and head) nor their time: the way to
    score panels of thousands of genes over many cells. Bootstrap intervals need the stored
    layers (``calculate_gene_ranks(..., n_boot=...)``).

    Parameters
    ----------
    model
        A trained :class:`~interscale.model.CombinedModel` (both heads decoding).
    adata
        AnnData with the model's genes and training layer (default: the model's AnnData);
        it is not modified.
    cells
        Cells scored, as for :func:`calculate_gene_ranks`: None or ``"all"``, split names
        or a boolean mask.
    split_key
        obs column of the split names (default: the split key of the model's setup).
    masked
        Held-out predictions (default) or the unmasked reconstruction.
    top_n
        If given, print the claimed genes as :func:`calculate_gene_ranks` does.
    progress_bar
        Show progress over samples.

    Returns
    -------
    pandas.DataFrame
        The columns of :func:`calculate_gene_ranks` without bootstrap; ``df.attrs``:
        ``cells``, ``n_cells`` and ``masked``.

    Raises
    ------
    TypeError
        ``model`` has no ``gene_r2`` method, or ``cells`` is neither split names nor a mask.
    ValueError
        The model lacks a local or a global decoder (the ranks compare both heads; its
        ``gene_r2()`` scores the head it has), ``top_n`` < 1, the genes differ from the
        model's, or ``cells`` selects nothing.
    KeyError
        The training layer or the split column is missing, or a split name does not occur.
    """
    what = "gene_ranks_from_model"
    if top_n is not None:
        _check_int(top_n, "top_n", 1, what)
    gene_r2 = getattr(model, "gene_r2", None)
    if not callable(gene_r2):
        raise TypeError(
            f"{what}: model must be an interscale model with a gene_r2 method, got "
            f"{type(model).__name__}"
        )
    r2 = gene_r2(
        adata,
        cells=cells,
        split_key=split_key,
        masked=masked,
        progress_bar=progress_bar,
        heads=HEADS,
    )
    df = gene_ranks_from_r2(
        r2["r2_local"].to_numpy(),
        r2["r2_global"].to_numpy(),
        r2.index,
        cells=r2.attrs["cells"],
        n_cells=r2.attrs["n_cells"],
    )
    df.attrs["masked"] = bool(masked)
    if top_n is not None:
        n_obs = (model.adata if adata is None else adata).n_obs
        _print_top(df, top_n, n_obs=n_obs)
    return df


@accepts_library_key
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
    sample_key: str | Sequence[str] | None = None,
) -> pd.DataFrame:
    """Rank genes by how well the local and the global head predict them.

    For each gene and head, R^2 = 1 - SS_res / SS_tot of the prediction against the truth
    layer is computed (vectorised over genes, chunked over cells, so dense and sparse layers
    of any size work). Genes are ranked per head with ``scipy.stats.rankdata(method="average")``
    in ascending order, so the best predicted gene gets the highest rank.

    Gene-level claims should be read on held-out samples: pass ``cells=["test"]`` (the test
    samples, which neither training nor early stopping saw; the validation samples chose the
    best epoch, so they are not unseen) and ``n_boot`` > 0, then read the claims off
    :func:`driven_genes`. Without stored
    prediction layers (``get_model_output(..., predictions="none")`` on large panels),
    :func:`gene_ranks_from_model` gives the same table from R^2 summed up during inference.

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
        (``["test"]``, ``"val,test"``), or a boolean mask with one entry per cell.
        Only the selected rows of the layers are read, chunk by chunk: the AnnData is not
        copied, and the result equals that on ``adata[mask].copy()``.
    split_key
        obs column holding the split names (used when ``cells`` names splits).
    n_boot
        Number of bootstrap resamples (0: none). With the scored cells coming from at
        least 5 samples, whole samples are resampled (cells of one sample are not
        independent); otherwise cells are, with a :class:`BootstrapFallbackWarning`. In
        every resample both heads' per-gene R^2 and the ranks are recomputed, and the
        percentile intervals of R^2 and Rank Difference are added as columns.
    seed
        Seed of ``numpy.random.default_rng`` drawing the resamples.
    ci
        Coverage of the percentile intervals, in (0, 1): ``[(1 - ci) / 2, (1 + ci) / 2]``
        quantiles over the resamples.
    sample_key
        obs column(s) naming the sample of each cell, for the sample bootstrap. Default:
        the sample key(s) recorded in ``adata.uns["interscale"]["sample_key"]``, else
        ``"sample"`` if that column exists, else cells are resampled. (``library_key=``,
        squidpy's word, is accepted for it.)

    Returns
    -------
    pandas.DataFrame
        One row per gene, in ``adata.var_names`` order, with columns ``gene``, ``Local Rank``,
        ``Global Rank``, ``Rank Difference`` (= Local Rank - Global Rank), ``Avg Rank``,
        ``r2_local`` and ``r2_global``; with ``n_boot`` > 0 also ``r2_local_lo``,
        ``r2_local_hi``, ``r2_global_lo``, ``r2_global_hi``, ``rank_difference_lo``,
        ``rank_difference_hi`` and ``bootstrap_unit`` (``"samples"`` or ``"cells"``).
        ``df.attrs`` records the scored cells (``"cells"``: ``"all"``, the split names
        joined by commas or ``"mask (n cells)"``; ``"n_cells"``) and, with a
        bootstrap, ``"bootstrap"``: ``{"n_boot", "unit" ("samples" or "cells"), "n_units",
        "ci", "seed", "library_key"}`` (``library_key``: the sample column resampled).

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
        units, key = sample_units(adata, selection.rows, sample_key, what=what)
        n_samples = 0 if units is None else int(units.max()) + 1
        if n_samples < MIN_SAMPLES_FOR_SAMPLE_BOOTSTRAP:
            source = (
                "no sample column is known (pass sample_key=)"
                if units is None
                else f"the scored cells come from {n_samples} sample(s) of {key!r}, fewer "
                f"than {MIN_SAMPLES_FOR_SAMPLE_BOOTSTRAP}"
            )
            warnings.warn(
                f"{what}: {source}, so the bootstrap resamples cells; cells of one sample are "
                "not independent, so these intervals are narrower than a resampling of "
                f"samples would give (the table's {BOOTSTRAP_UNIT_COLUMN!r} column says "
                "'cells')",
                BootstrapFallbackWarning,
                stacklevel=2,
            )
            units = None

    rows = selection.rows
    r2_local, r2_global = r2_per_gene(y_true, [y_local, y_global], rows=rows)
    df = gene_ranks_from_r2(
        r2_local, r2_global, adata.var_names, cells=selection.label, n_cells=selection.n_cells
    )
    if n_boot > 0:
        boot = bootstrap_gene_r2(
            y_true, [y_local, y_global], rows, units, n_boot=int(n_boot), seed=seed, ci=ci
        )
        for col in BOOTSTRAP_COLUMNS:
            df[col] = boot[col]
        df[BOOTSTRAP_UNIT_COLUMN] = "cells" if units is None else "samples"
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
