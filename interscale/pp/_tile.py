"""Split large samples into spatially compact tiles that serve as graph units."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy.spatial import cKDTree

from interscale._compat import accepts_library_key
from interscale.pp._validate import (
    check_finite_coordinates,
    check_not_view,
    get_coordinates,
    get_library_codes,
)

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


def _check_halo(halo: object) -> float:
    if isinstance(halo, bool) or not isinstance(halo, int | float | np.integer | np.floating):
        raise TypeError(f"halo must be a number (micrometres), got {type(halo).__name__}")
    if not np.isfinite(halo) or halo < 0:
        raise ValueError(f"halo must be a finite number >= 0, got {halo}")
    return float(halo)


def _halo_pairs(
    coords: np.ndarray, tiles: np.ndarray, halo: float
) -> tuple[np.ndarray, np.ndarray]:
    """(cell, tile) pairs of one sample: cells outside a tile within ``halo`` of one of its cells.

    ``coords`` and ``tiles`` are the sample's rows only; returned cells are local row indices.
    """
    cells, owners = [], []
    # Distances <= halo are kept: cKDTree's upper bound is exclusive, so query just above it.
    bound = np.nextafter(halo, np.inf)
    members = np.argsort(tiles, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(tiles))])
    # Cells sorted along the first axis: a tile's grown bounding box then selects a contiguous
    # slab, so each tile scans about n / sqrt(n_tiles) cells rather than all n.
    by_x = np.argsort(coords[:, 0], kind="stable")
    xs = coords[by_x, 0]
    # One pass per tile (never per cell): a bounding-box prefilter, then the exact nearest
    # distance to the tile's cells for the few candidates left.
    for t in range(len(starts) - 1):
        pts = coords[members[starts[t] : starts[t + 1]]]
        lo, hi = pts.min(axis=0) - halo, pts.max(axis=0) + halo
        slab = by_x[np.searchsorted(xs, lo[0], "left") : np.searchsorted(xs, hi[0], "right")]
        box = slab[(coords[slab] >= lo).all(axis=1) & (coords[slab] <= hi).all(axis=1)]
        cand = box[tiles[box] != t]
        if cand.size == 0:
            continue
        dist, _ = cKDTree(pts).query(coords[cand], k=1, distance_upper_bound=bound)
        near = np.sort(cand[dist <= halo])
        cells.append(near)
        owners.append(np.full(near.size, t, dtype=np.int64))
    if not cells:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(cells), np.concatenate(owners)


@accepts_library_key
def tile(
    adata: AnnData,
    max_cells: int,
    sample_key: str = "sample",
    key_added: str = "tile",
    spatial_key: str = "spatial",
    halo: float = 0.0,
) -> pd.Series:
    """Split samples larger than ``max_cells`` into spatially compact tiles.

    Each sample is halved recursively along the longer side of its bounding box at the median
    coordinate (a k-d split) until every tile holds at most ``max_cells`` cells. Tiles of a sample
    have interior-disjoint bounding boxes and cover each of its cells exactly once, so they can
    replace the sample as graph unit: ``sample_key_list=[key_added]``. Samples that already fit
    keep a single tile.

    Edges between tiles are lost when graphs are built per tile. A ``halo`` gives each tile
    context instead: the halo of a tile is every cell of the same sample, outside the tile, whose
    Euclidean distance to at least one cell of the tile is at most ``halo`` (same units as the
    coordinates, e.g. micrometres). Register it with
    ``setup_anndata(..., sample_key_list=[key_added], halo_key=f"{key_added}_halo")``: halo
    cells are then encoded with their tile but never masked, never in the loss and never written
    as outputs of that tile. A cell can be in the halo of several tiles, never in its own.

    Parameters
    ----------
    adata
        AnnData with coordinates in ``obsm[spatial_key]``.
    max_cells
        Largest tile, at least 1 (halo cells not counted).
    sample_key
        obs column with the sample of each cell.
        (``library_key=``, squidpy's word, is accepted for it.)
    key_added
        obs column written with the tile label ``"<sample>/<k>"`` (categorical).
    spatial_key
        obsm key of the coordinates.
    halo
        Context distance, >= 0; ``0`` gives empty halos.

    Returns
    -------
    The tile label of every cell (also stored in ``adata.obs[key_added]``).

    Writes ``obs[key_added]``; ``obsm[f"{key_added}_halo"]``, a boolean CSR matrix
    ``n_obs x n_tiles`` whose column ``j`` marks the halo of the ``j``-th category of
    ``obs[key_added]`` (all false when ``halo == 0``); and ``uns[key_added]`` with ``max_cells``,
    ``halo``, ``library_key`` (the sample column), ``spatial_key`` and ``tiles`` (the category
    order of the columns).

    Raises
    ------
    KeyError
        If the coordinates or the library column are missing.
    ValueError
        If ``max_cells`` < 1, ``halo`` is negative or not finite, coordinates are not finite or
        the library column has NaN.
    TypeError
        If ``adata`` is a view or ``halo`` is not a number.
    """
    check_not_view(adata, "tile")
    if isinstance(max_cells, bool) or not isinstance(max_cells, int | np.integer) or max_cells < 1:
        raise ValueError(f"max_cells must be a positive integer, got {max_cells!r}")
    halo = _check_halo(halo)
    coords = get_coordinates(adata, spatial_key)
    check_finite_coordinates(coords, spatial_key)
    codes, names = get_library_codes(adata, sample_key)

    # Integer tile per cell (numbered across samples), then categories sorted by label.
    tile_code = np.empty(adata.n_obs, dtype=np.int64)
    tile_names: list[str] = []
    sample_tiles: list[tuple[np.ndarray, np.ndarray, int]] = []
    for code, name in enumerate(names):
        rows = np.flatnonzero(codes == code)
        if rows.size == 0:
            continue
        local = _kd_split(coords[rows], int(max_cells))
        offset = len(tile_names)
        tile_code[rows] = local + offset
        tile_names.extend(f"{name}/{t}" for t in range(int(local.max()) + 1))
        sample_tiles.append((rows, local, offset))
    categories = sorted(tile_names)
    position = pd.Index(categories).get_indexer(tile_names)
    column = position[tile_code]
    labels = pd.Categorical.from_codes(column, categories=categories)

    halo_rows: list[np.ndarray] = []
    halo_cols: list[np.ndarray] = []
    if halo > 0:
        for rows, local, offset in sample_tiles:
            cells, owners = _halo_pairs(coords[rows], local, halo)
            halo_rows.append(rows[cells])
            halo_cols.append(position[owners + offset])
    hr = np.concatenate(halo_rows) if halo_rows else np.zeros(0, np.int64)
    hc = np.concatenate(halo_cols) if halo_cols else np.zeros(0, np.int64)
    membership = sp.csr_matrix(
        (np.ones(hr.size, dtype=bool), (hr, hc)), shape=(adata.n_obs, len(categories))
    )
    membership.sort_indices()

    result = pd.Series(labels, index=adata.obs_names, name=key_added)
    adata.obs[key_added] = result.values
    adata.obsm[f"{key_added}_halo"] = membership
    record = {
        "max_cells": int(max_cells),
        "halo": halo,
        "spatial_key": spatial_key,
        "tiles": list(categories),
    }
    if sample_key is not None:
        record["library_key"] = sample_key
    adata.uns[key_added] = record
    return result
