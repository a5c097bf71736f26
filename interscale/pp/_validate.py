"""Input checks shared by the preprocessing functions (validate first, write later)."""

from __future__ import annotations

import anndata as ad
import numpy as np

from interscale._anndata import check_not_view, layer_matrix, obs_column_codes

__all__ = [
    "check_counts",
    "check_finite_coordinates",
    "check_not_view",
    "check_positive_number",
    "get_coordinates",
    "get_layer",
    "get_library_codes",
    "resolve_counts_layer",
]

#: Where ``layer="auto"`` looks for counts, in this order (then ``adata.X``).
COUNT_LAYERS = ("counts", "raw")


def resolve_counts_layer(adata: ad.AnnData, layer: str | None) -> tuple[str | None, str]:
    """The layer holding counts (``None`` for ``X``) and how to name it in messages.

    ``"auto"`` takes ``layers["counts"]`` (scanpy's habit), else ``layers["raw"]``, else
    ``adata.X``; any other string must be a layer; ``"X"`` and ``None`` mean ``adata.X``.
    """
    if layer == "auto":
        layer = next((name for name in COUNT_LAYERS if name in adata.layers), None)
    elif layer == "X":
        layer = None
    return layer, "adata.X" if layer is None else f"adata.layers[{layer!r}]"


def check_integer_counts(values: np.ndarray, where: str, what: str) -> None:
    """Raise a ValueError naming ``check_counts=False`` when values are not whole numbers."""
    if values.size and not np.array_equal(values, np.round(values)):
        frac = values[values != np.round(values)]
        raise ValueError(
            f"{what}: {where} does not look like counts ({frac.size} non-integer values, e.g. "
            f"{float(frac[0]):.4g}); pass the layer holding raw counts (layer=...), or "
            "check_counts=False if these values are meant to be normalised as they are"
        )


def get_layer(adata: ad.AnnData, layer: str | None):
    """Return the counts ``adata.layers[layer]`` (``adata.X`` for ``None``).

    Raises
    ------
    KeyError
        If ``layer`` is not in ``adata.layers`` (the message lists the available ones).
    ValueError
        If ``layer`` is None and ``adata.X`` is None.
    """
    matrix = layer_matrix(adata, layer)
    if matrix is None:
        raise ValueError("adata.X is None; pass the layer holding the counts")
    return matrix


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
    return obs_column_codes(adata, library_key, what="library_key")


def check_positive_number(value: object, name: str) -> float:
    """Return ``value`` as a float if it is a finite number > 0, else raise."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)
