"""pp.tile: every cell in exactly one tile, tiles small and spatially compact."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import interscale as isc


def _adata(coords, samples):
    adata = ad.AnnData(
        X=np.zeros((len(coords), 1), np.float32),
        obs=pd.DataFrame(
            {"sample": pd.Categorical(samples)}, index=[f"c{i}" for i in range(len(coords))]
        ),
    )
    adata.obsm["spatial"] = coords
    return adata


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 400), max_cells=st.integers(5, 120), seed=st.integers(0, 1000))
def test_tiles_cover_every_cell_once_and_are_compact(n, max_cells, seed):
    rng = np.random.default_rng(seed)
    coords = rng.uniform(0, 1000, (n, 2)) * np.array([1.0, rng.uniform(0.2, 3.0)])
    samples = rng.choice(["a", "b"], n)
    adata = _adata(coords, samples)
    labels = isc.pp.tile(adata, max_cells=max_cells)
    assert len(labels) == n and labels.notna().all()
    sizes = labels.value_counts()
    assert (sizes <= max_cells).all()
    # a tile never mixes samples
    mixed = adata.obs.groupby("tile", observed=True)["sample"].nunique()
    assert (mixed == 1).all()
    # bounding boxes of the tiles of one sample overlap at most on their boundaries
    for sample in np.unique(samples):
        names = labels[samples == sample].unique()
        lo = np.array([coords[labels.to_numpy() == t].min(0) for t in names])
        hi = np.array([coords[labels.to_numpy() == t].max(0) for t in names])
        inter = np.clip(
            np.minimum(hi[:, None], hi[None]) - np.maximum(lo[:, None], lo[None]), 0, None
        ).prod(-1)
        np.fill_diagonal(inter, 0.0)
        assert inter.max() == pytest.approx(0.0, abs=1e-9)
    # the number of tiles stays within a factor of two of the minimum
    for sample in np.unique(samples):
        count = (samples == sample).sum()
        n_tiles = labels[samples == sample].nunique()
        assert n_tiles <= max(1, 2 * int(np.ceil(count / max_cells)))


def test_tiles_are_graph_units_for_the_model():
    adata = isc.datasets.synthetic_organoids(n_samples=3, cells_per_sample=(200, 260), seed=1)
    isc.pp.tile(adata, max_cells=100)
    assert adata.obs["tile"].nunique() >= 6
    isc.pp.normalize(adata)
    isc.pp.spatial_neighbors(adata, radius=200, library_key="tile")
    from interscale.graphs import anndata_to_graphs

    graphs = anndata_to_graphs(adata, layer_key="log1p_norm", sample_keys=["tile"])
    assert max(g.n_cells for g in graphs) <= 100
    assert sum(g.n_cells for g in graphs) == adata.n_obs


def test_tile_errors_leave_adata_unchanged():
    adata = _adata(np.zeros((5, 2)), ["a"] * 5)
    with pytest.raises(ValueError, match="max_cells"):
        isc.pp.tile(adata, max_cells=0)
    with pytest.raises(KeyError, match="batch"):
        isc.pp.tile(adata, max_cells=2, library_key="batch")
    adata.obsm["spatial"][0, 0] = np.nan
    with pytest.raises(ValueError, match="qc"):
        isc.pp.tile(adata, max_cells=2)
    assert "tile" not in adata.obs
