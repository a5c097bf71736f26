"""Split large samples into spatially compact tiles that serve as graph units."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from interscale.pp._validate import check_finite_coordinates, get_coordinates, get_library_codes

__all__ = ["tile"]


def _kd_split(coords: np.ndarray, max_cells: int) -> np.ndarray:
    """Tile id per row: halve the longer side at the median until every tile fits."""
    labels = np.zeros(len(coords), dtype=np.int64)
    pending = [np.arange(len(coords))]
    done: list[np.ndarray] = []
    # The loop runs over tiles (about n / max_cells of them), never over cells.
    while pending:
        rows = pending.pop()
        if len(rows) <= max_cells:
            done.append(rows)
            continue
        pts = coords[rows]
        axis = int(np.argmax(pts.max(axis=0) - pts.min(axis=0)))
        order = rows[np.argsort(pts[:, axis], kind="stable")]
        half = len(order) // 2
        pending.extend([order[:half], order[half:]])
    # Number tiles by position (lower-left first) so labels do not depend on the split order.
    centres = np.array([coords[rows].mean(axis=0) for rows in done])
    rank = np.lexsort(centres.T[::-1])
    for tile_id, idx in enumerate(rank):
        labels[done[idx]] = tile_id
    return labels


def tile(
    adata: AnnData,
    max_cells: int,
    library_key: str = "sample",
    key_added: str = "tile",
    spatial_key: str = "spatial",
) -> pd.Series:
    """Split samples larger than ``max_cells`` into spatially compact tiles.

    Each sample is halved recursively along the longer side of its bounding box at the median
    coordinate (a k-d split) until every tile holds at most ``max_cells`` cells. Tiles of a sample
    have interior-disjoint bounding boxes and cover each of its cells exactly once, so they can
    replace the sample as graph unit: ``sample_key_list=[key_added]``. Samples that already fit
    keep a single tile. Note that edges between tiles are dropped when graphs are built per tile.

    Parameters
    ----------
    adata
        AnnData with coordinates in ``obsm[spatial_key]``.
    max_cells
        Largest tile, at least 1.
    library_key
        obs column with the sample of each cell.
    key_added
        obs column written with the tile label ``"<sample>/<k>"`` (categorical).
    spatial_key
        obsm key of the coordinates.

    Returns
    -------
    The tile label of every cell (also stored in ``adata.obs[key_added]``).

    Raises
    ------
    KeyError
        If the coordinates or the library column are missing.
    ValueError
        If ``max_cells`` < 1, coordinates are not finite or the library column has NaN.
    """
    if isinstance(max_cells, bool) or not isinstance(max_cells, int | np.integer) or max_cells < 1:
        raise ValueError(f"max_cells must be a positive integer, got {max_cells!r}")
    coords = get_coordinates(adata, spatial_key)
    check_finite_coordinates(coords, spatial_key)
    codes, names = get_library_codes(adata, library_key)
    labels = np.empty(adata.n_obs, dtype=object)
    for code, name in enumerate(names):
        rows = np.flatnonzero(codes == code)
        tiles = _kd_split(coords[rows], int(max_cells))
        labels[rows] = [f"{name}/{t}" for t in tiles] if tiles.max() > 0 else f"{name}/0"
    result = pd.Series(pd.Categorical(labels), index=adata.obs_names, name=key_added)
    adata.obs[key_added] = result.values
    return result
