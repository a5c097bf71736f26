"""Where the synthetic organoids' cells sit, how large each section is, and planted defects."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

# Geometry: cells sit in small compact clusters (neural rosettes), 9-17 cells each, whose centres
# lie on a jittered hexagonal lattice. Within a rosette, cells are about 80-100 apart, so a radius
# of 200 gives about 10 +- 2.5 neighbours, as in the real data; between rosettes the gap is
# mostly wider than 200, so a cell's 2-hop neighbourhood is about its own rosette (~13 cells)
# and tissue-scale state can only be read from many rosettes.
_ROSETTE_SPACING = 470.0  # distance between neighbouring rosette centres
_ROSETTE_CELL_SPACING = 70.0  # scale of the sunflower packing of a rosette's cells
_ROSETTE_SIZE = (9, 14)  # cells per rosette (inclusive)
_ROSETTE_JITTER = 0.04  # of rosette centres, in units of the rosette spacing
_CELL_JITTER = 0.12  # of cells, in units of the cell spacing
_MEAN_SIZE_FRACTION = 0.35  # where the mean sample size sits between the bounds of the range


def _sample_sizes(n: int, lo: int, hi: int, rng: np.random.Generator) -> np.ndarray:
    """Sizes spanning exactly [lo, hi] with a right-skewed spread and a fixed mean."""
    if lo == hi or n == 1:
        return np.full(n, lo if n > 1 else int(round(lo + _MEAN_SIZE_FRACTION * (hi - lo))))
    u = np.sort(rng.beta(1.5, 2.5, size=n))
    u[0], u[-1] = 0.0, 1.0
    if n >= 3:
        # a power transform keeps the endpoints and moves the mean to the target fraction
        target = _MEAN_SIZE_FRACTION * n - 1.0  # what the interior must sum to
        inner = np.clip(u[1:-1], 1e-6, 1 - 1e-6)
        lo_p, hi_p = -6.0, 6.0
        for _ in range(60):
            mid = 0.5 * (lo_p + hi_p)
            if (inner ** np.exp(mid)).sum() > target:
                lo_p = mid
            else:
                hi_p = mid
        u[1:-1] = inner ** np.exp(0.5 * (lo_p + hi_p))
    sizes = np.round(lo + u * (hi - lo)).astype(np.int64)
    return rng.permutation(sizes)


def _organoid_section(n: int, rng: np.random.Generator) -> tuple[np.ndarray, float, float]:
    """Cell centres of one roughly elliptical section of rosettes, centred at 0, long axis x."""
    aspect = rng.uniform(0.75, 1.0)
    lo, hi = _ROSETTE_SIZE
    area_per_rosette = np.sqrt(3.0) / 2.0 * _ROSETTE_SPACING**2
    a = np.sqrt(n / (0.5 * (lo + hi)) * area_per_rosette / (np.pi * aspect))
    b = aspect * a
    half = 1.4 * a
    row_step = _ROSETTE_SPACING * np.sqrt(3.0) / 2.0
    ix, iy = np.meshgrid(
        np.arange(int(np.ceil(2 * half / _ROSETTE_SPACING)) + 3),
        np.arange(int(np.ceil(2 * half / row_step)) + 3),
    )
    centres = np.column_stack(
        [
            ((ix + 0.5 * (iy % 2)) * _ROSETTE_SPACING - half).ravel(),
            (iy * row_step - half).ravel(),
        ]
    )
    centres += rng.normal(0.0, _ROSETTE_JITTER * _ROSETTE_SPACING, centres.shape)
    sizes = rng.integers(lo, hi + 1, len(centres))
    # sunflower packing: the j-th cell at radius ~ sqrt(j), golden-angle turns
    j = np.concatenate([np.arange(k) for k in sizes])
    owner = np.repeat(np.arange(len(centres)), sizes)
    radius = 0.5 * _ROSETTE_CELL_SPACING * np.sqrt(j + 0.5)
    turn = j * np.pi * (3.0 - np.sqrt(5.0)) + rng.uniform(0.0, 2 * np.pi, len(centres))[owner]
    pts = centres[owner] + radius[:, None] * np.column_stack([np.cos(turn), np.sin(turn)])
    pts += rng.normal(0.0, _CELL_JITTER * _ROSETTE_CELL_SPACING, pts.shape)
    # keep the n cells nearest the centre in a wobbly elliptical norm -> exactly n cells
    theta = np.arctan2(pts[:, 1], pts[:, 0])
    wobble_phase = rng.uniform(0.0, 2 * np.pi, 2)
    wobble = (
        1 + 0.04 * np.sin(2 * theta + wobble_phase[0]) + 0.03 * np.sin(3 * theta + wobble_phase[1])
    )
    rho = np.hypot(pts[:, 0] / a, pts[:, 1] / b) / wobble
    keep = np.argsort(rho, kind="stable")[:n]
    return pts[keep], a, b


def _add_defects(adata: ad.AnnData, rng: np.random.Generator) -> None:
    """Corrupt a few cells: NaN coordinates, duplicated obs names, extra zero-count rows."""
    n = adata.n_obs
    k = max(3, n // 1000)
    chosen = rng.choice(n, size=3 * k, replace=False)
    nan_idx, dup_idx, zero_idx = (
        np.sort(chosen[:k]),
        np.sort(chosen[k : 2 * k]),
        np.sort(chosen[2 * k :]),
    )
    # NaN coordinates, consistently in obsm and obs
    adata.obsm["spatial"][nan_idx] = np.nan
    adata.obs.iloc[nan_idx, adata.obs.columns.get_indexer(["x", "y"])] = np.nan
    # duplicated names: these cells take the name of another (random) cell
    others = np.setdiff1d(np.arange(n), dup_idx)
    names = adata.obs_names.to_numpy().copy()
    names[dup_idx] = names[rng.choice(others, size=k, replace=False)]
    adata.obs_names = pd.Index(names)
    # extra zero-count cells (segmentation leftovers)
    keep = np.ones(n, dtype=bool)
    keep[zero_idx] = False
    scale = sp.diags(keep.astype(np.float32))
    for key in ("X", "raw"):
        mat = adata.X if key == "X" else adata.layers["raw"]
        mat = sp.csr_matrix(scale @ mat, dtype=np.float32)
        mat.eliminate_zeros()
        if key == "X":
            adata.X = mat
        else:
            adata.layers["raw"] = mat
    adata.uns["ground_truth"]["defects"] = {
        "nan_coordinates": [int(i) for i in nan_idx],
        "duplicated_names": [int(i) for i in dup_idx],
        "extra_zero_count": [int(i) for i in zero_idx],
    }
