"""Input checks shared by the preprocessing functions (validate first, write later)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd


def check_not_view(adata: ad.AnnData, what: str) -> None:
    """Raise a TypeError for an AnnData view: writing into it would silently copy it."""
    if getattr(adata, "is_view", False):
        raise TypeError(
            f"{what}: adata is a view of another AnnData; results written into a view are lost "
            "(anndata turns it into a copy), so pass adata[mask].copy()"
        )


def check_counts(values: np.ndarray, where: str, what: str) -> None:
    """Raise a ValueError if count values are NaN, infinite or negative."""
    if values.size and not np.isfinite(values).all():
        raise ValueError(f"{what}: {where} contains NaN or infinite values")
    if values.size and values.min() < 0:
        raise ValueError(f"{what}: {where} contains negative values; {what} expects counts")


def get_coordinates(adata: ad.AnnData, spatial_key: str) -> np.ndarray:
    """Return ``adata.obsm[spatial_key]`` as a float64 ``(n_obs, d)`` array (never a view to write).

    Raises
    ------
    KeyError
        If ``spatial_key`` is not in ``adata.obsm``.
    ValueError
        If the array is not two-dimensional with at least one column.
    """
    if spatial_key not in adata.obsm:
        raise KeyError(
            f"spatial_key {spatial_key!r} not found in adata.obsm "
            f"(available keys: {sorted(adata.obsm.keys())})"
        )
    coords = np.asarray(adata.obsm[spatial_key], dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] < 1:
        raise ValueError(
            f"adata.obsm[{spatial_key!r}] must have shape (n_obs, n_dims), got {coords.shape}"
        )
    return coords


def check_finite_coordinates(coords: np.ndarray, spatial_key: str) -> None:
    """Raise a ValueError that points to ``pp.qc`` when coordinates are NaN or infinite."""
    bad = ~np.isfinite(coords).all(axis=1)
    if bad.any():
        raise ValueError(
            f"adata.obsm[{spatial_key!r}] has {int(bad.sum())} cell(s) with NaN or infinite "
            "coordinates; run interscale.pp.qc(adata) first to remove them"
        )


def get_library_codes(adata: ad.AnnData, library_key: str | None) -> tuple[np.ndarray, list[str]]:
    """Integer library code per cell and the library names, sorted (one library if key is None).

    Raises
    ------
    KeyError
        If ``library_key`` is not a column of ``adata.obs``.
    ValueError
        If the column has missing values.
    """
    if library_key is None:
        return np.zeros(adata.n_obs, dtype=np.int64), ["all"]
    if library_key not in adata.obs.columns:
        raise KeyError(
            f"library_key {library_key!r} not found in adata.obs "
            f"(available columns: {list(adata.obs.columns)})"
        )
    col = adata.obs[library_key]
    if col.isna().any():
        raise ValueError(f"adata.obs[{library_key!r}] has {int(col.isna().sum())} missing values")
    codes, uniques = pd.factorize(col, sort=True)
    return codes.astype(np.int64), [str(u) for u in uniques]


def check_positive_number(value: object, name: str) -> float:
    """Return ``value`` as a float if it is a finite number > 0, else raise."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)
