"""Which cells a gene-level score is read on, and bootstrap intervals of the per-gene R^2."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy.stats import rankdata

from interscale._anndata import obs_column_codes, read_setup
from interscale._r2 import r2_from_sums
from interscale.evaluation._utils import _chunk_rows, _row_chunks
from interscale.names import HEADS

__all__ = [
    "MIN_SAMPLES_FOR_SAMPLE_BOOTSTRAP",
    "bootstrap_gene_r2",
    "draw_counts",
    "sample_units",
]

# Whole samples are resampled when the scored cells come from at least this many samples;
# with fewer, a resample of samples has too few distinct outcomes and cells are resampled.
MIN_SAMPLES_FOR_SAMPLE_BOOTSTRAP = 5

# Values held by one block of resamples: the count matrix of the cell bootstrap
# (resamples x cells, float32) and the summed statistics (resamples x statistics, float64).
_BOOT_BLOCK_VALUES = 1 << 24

# Statistics per gene and head: valid count, sum of shifted truth, sum of its squares and
# sum of squared residuals.
_N_STATS = 4


def sample_units(
    adata: AnnData, rows: np.ndarray | None, library_key: str | Sequence[str] | None, *, what: str
) -> tuple[np.ndarray | None, str | None]:
    """Sample code (0..n-1, in sorted label order) of every scored cell and the key used.

    The key is ``library_key`` (the caller's ``sample_key``) when given, else the sample
    key(s) recorded by the model setup in ``adata.uns["interscale"]["sample_key"]``, else
    ``"sample"`` when that obs column exists; without any, ``(None, None)``.
    """
    if library_key is not None:
        keys = [library_key] if isinstance(library_key, str) else [str(k) for k in library_key]
    else:
        recorded = (read_setup(adata) or {}).get("sample_key")
        if recorded is not None:
            keys = [recorded] if isinstance(recorded, str) else [str(k) for k in recorded]
        elif "sample" in adata.obs.columns:
            keys = ["sample"]
        else:
            return None, None
    if not keys:
        raise ValueError(f"{what}: sample_key names no obs column")
    values = None
    for key in keys:
        try:
            key_codes, names = obs_column_codes(adata, key, what=f"{what}: sample column")
        except KeyError as exc:
            raise KeyError(
                f"{exc.args[0]}; pass sample_key=<the column naming each sample>"
            ) from None
        # Units are numbered in sorted order of their labels as strings ("a|b" for two keys).
        labels = np.asarray(names, dtype=object)[key_codes]
        values = labels if values is None else values + "|" + labels
    codes, _ = pd.factorize(values if rows is None else values[rows], sort=True)
    return codes.astype(np.int64), ",".join(keys)


def draw_counts(rng: np.random.Generator, n_units: int, n_resamples: int) -> np.ndarray:
    """How often each unit is drawn, for ``n_resamples`` resamples of ``n_units`` units.

    Resample ``b`` is ``rng.integers(0, n_units, size=n_units)``, drawn one after another,
    so blocks of resamples drawn in turn give the same draws as one long run.
    """
    out = np.empty((n_resamples, n_units), dtype=np.float32)
    for b in range(n_resamples):
        draw = rng.integers(0, n_units, size=n_units)
        out[b] = np.bincount(draw, minlength=n_units)
    return out


def _shift_of(y: np.ndarray) -> np.ndarray:
    """Per-gene mean of the finite values of a block (0 where none): a centring constant."""
    finite = np.isfinite(y)
    total = np.where(finite, y, 0.0).sum(axis=0)
    count = finite.sum(axis=0)
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)


def _all_finite(x: Any) -> bool:
    """Whether every entry of ``x`` (dense or sparse) is finite, checked in chunks."""
    if sp.issparse(x):
        data = x.data
        step = 1 << 20
        return all(np.isfinite(data[s : s + step]).all() for s in range(0, len(data), step))
    x = np.asarray(x)
    if x.dtype.kind in "biu":
        return True
    step = _chunk_rows(x.shape[1])
    return all(np.isfinite(x[s : s + step]).all() for s in range(0, x.shape[0], step))


def _n_stats(n_heads: int, n_genes: int, compact: bool) -> int:
    return 1 + (2 + n_heads) * n_genes if compact else n_heads * _N_STATS * n_genes


def _block_stats(
    y: np.ndarray, preds: Sequence[np.ndarray], shift: np.ndarray, compact: bool
) -> np.ndarray:
    """Per-cell statistics whose count-weighted sums give each head's R^2 in a resample.

    ``compact`` (every entry finite): one count column, then the shifted truth, its square
    and each head's squared residual (1 + (2 + heads) * genes columns). Otherwise, per head,
    the valid-entry count, shifted truth, its square and squared residual, each over the
    entries where truth and that head's prediction are finite (heads * 4 * genes columns).
    """
    n_rows, n_genes = y.shape
    yc = y - shift
    with np.errstate(invalid="ignore", over="ignore"):
        if compact:
            out = np.empty((n_rows, 2 + len(preds), n_genes))
            out[:, 0] = yc
            out[:, 1] = yc * yc
            for h, p in enumerate(preds):
                out[:, 2 + h] = (y - p) ** 2
            return np.concatenate([np.ones((n_rows, 1)), out.reshape(n_rows, -1)], axis=1)
        out = np.empty((n_rows, len(preds), _N_STATS, n_genes))
        y_ok = np.isfinite(y)
        for h, p in enumerate(preds):
            valid = y_ok & np.isfinite(p)
            out[:, h, 0] = valid
            yv = np.where(valid, yc, 0.0)
            out[:, h, 1] = yv
            out[:, h, 2] = yv * yv
            out[:, h, 3] = np.where(valid, (y - p) ** 2, 0.0)
    return out.reshape(n_rows, -1)


def _r2_from_sums(
    sums: np.ndarray, n_heads: int, n_genes: int, compact: bool, shift: np.ndarray
) -> list[np.ndarray]:
    """Per-resample, per-gene R^2 of each head from summed statistics (resamples x stats).

    A gene constant within a resample gets NaN by the rule of every other R^2 of the package
    (:func:`interscale._r2.r2_from_sums`).
    """
    n_res = sums.shape[0]
    if compact:
        n = sums[:, :1]
        t = sums[:, 1:].reshape(n_res, 2 + n_heads, n_genes)
        parts = [(n, t[:, 0], t[:, 1], t[:, 2 + h]) for h in range(n_heads)]
    else:
        t = sums.reshape(n_res, n_heads, _N_STATS, n_genes)
        parts = [(t[:, h, 0], t[:, h, 1], t[:, h, 2], t[:, h, 3]) for h in range(n_heads)]
    return [r2_from_sums(n, sy, syy, sres, shift)[0] for n, sy, syy, sres in parts]


def _rank_nan_last_rows(r2: np.ndarray) -> np.ndarray:
    """Average ranks within each row (ascending); NaN shares the lowest ranks."""
    return rankdata(np.where(np.isnan(r2), -np.inf, r2), method="average", axis=1)


def _percentiles(values: np.ndarray, ci: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over the resamples (axis 0), NaN resamples left out."""
    alpha = 1.0 - ci
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
        lo, hi = np.nanquantile(values, [alpha / 2.0, 1.0 - alpha / 2.0], axis=0)
    return lo, hi


def bootstrap_gene_r2(
    y_true: Any,
    preds: Sequence[Any],
    rows: np.ndarray | None,
    units: np.ndarray | None,
    *,
    n_boot: int,
    seed: int | None,
    ci: float,
) -> dict[str, np.ndarray]:
    """Percentile intervals of each head's per-gene R^2 and of the Rank Difference.

    ``units`` gives the sample code of each scored cell (resample whole samples) or is None
    (resample cells). Every resample is a vector of draw counts per unit; the R^2 of a
    resample follows from count-weighted sums of per-unit statistics (n, sum and sum of
    squares of the truth, sum of squared residuals), SS_tot = sum y^2 - (sum y)^2 / n.
    """
    n_genes = y_true.shape[1]
    n_heads = len(preds)
    compact = all(_all_finite(x) for x in (y_true, *preds))
    n_stats = _n_stats(n_heads, n_genes, compact)
    n_cells = y_true.shape[0] if rows is None else len(rows)
    chunk = _chunk_rows(n_genes * (1 + n_heads + n_heads * _N_STATS))
    rng = np.random.default_rng(seed)

    def chunks() -> Any:
        return zip(
            _row_chunks(y_true, chunk, rows),
            *[_row_chunks(p, chunk, rows) for p in preds],
            strict=True,
        )

    shift: np.ndarray | None = None
    if units is not None:
        n_units = int(units.max()) + 1
        per_unit = np.zeros((n_units, n_stats))
        start = 0
        for y, *ps in chunks():
            if shift is None:
                shift = _shift_of(y)
            m = y.shape[0]
            code = units[start : start + m]
            onehot = sp.csr_matrix(
                (np.ones(m), (code, np.arange(m))), shape=(n_units, m), dtype=np.float64
            )
            per_unit += onehot @ _block_stats(y, ps, shift, compact)
            start += m
    else:
        n_units = n_cells
        per_unit = None

    block = max(1, min(n_boot, _BOOT_BLOCK_VALUES // max(n_units, n_stats)))
    r2_heads: list[list[np.ndarray]] = [[] for _ in preds]
    for b0 in range(0, n_boot, block):
        counts = draw_counts(rng, n_units, min(block, n_boot - b0))
        if per_unit is not None:
            sums = counts.astype(np.float64) @ per_unit
        else:
            sums = np.zeros((counts.shape[0], n_stats))
            start = 0
            for y, *ps in chunks():
                if shift is None:
                    shift = _shift_of(y)
                m = y.shape[0]
                stats = _block_stats(y, ps, shift, compact)
                sums += counts[:, start : start + m].astype(np.float64) @ stats
                start += m
        for h, r2 in enumerate(_r2_from_sums(sums, n_heads, n_genes, compact, shift)):
            r2_heads[h].append(r2)
    r2_all = [np.concatenate(parts, axis=0) for parts in r2_heads]
    out: dict[str, np.ndarray] = {}
    for name, r2 in zip(HEADS, r2_all, strict=True):
        out[f"r2_{name}_lo"], out[f"r2_{name}_hi"] = _percentiles(r2, ci)
    diff = _rank_nan_last_rows(r2_all[0]) - _rank_nan_last_rows(r2_all[1])
    out["rank_difference_lo"], out["rank_difference_hi"] = _percentiles(diff, ci)
    return out
