"""pp.tile: every cell in exactly one tile, tiles small and spatially compact."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import organoids, setup_model_anndata, tiny_config
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


# ---------------------------------------------------------------------------------------- halo
def _boxes(coords, codes, tiles):
    lo = np.array([coords[codes == t].min(0) for t in tiles])
    hi = np.array([coords[codes == t].max(0) for t in tiles])
    return lo, hi


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 300),
    max_cells=st.integers(3, 90),
    halo=st.sampled_from([0.0, 15.0, 60.0, 250.0]),
    seed=st.integers(0, 1000),
    n_samples=st.integers(1, 3),
)
def test_tiles_partition_cells_with_compact_boxes_and_exact_halos(
    n, max_cells, halo, seed, n_samples
):
    rng = np.random.default_rng(seed)
    # rounded coordinates give ties (duplicated points and equal medians)
    coords = np.round(rng.uniform(0, 400, (n, 2)) * np.array([1.0, rng.uniform(0.2, 3.0)]))
    samples = rng.choice([f"s{i}" for i in range(n_samples)], n)
    adata = _adata(coords, samples)
    labels = isc.pp.tile(adata, max_cells=max_cells, halo=halo)
    cats = list(adata.obs["tile"].cat.categories)
    codes = adata.obs["tile"].cat.codes.to_numpy()
    # every cell in exactly one tile, tiles small and within one sample
    assert (codes >= 0).all() and np.bincount(codes, minlength=len(cats)).sum() == n
    assert (np.bincount(codes, minlength=len(cats)) <= max_cells).all()
    assert (np.bincount(codes, minlength=len(cats)) >= 1).all()
    assert list(labels.cat.categories) == cats == adata.uns["tile"]["tiles"]
    tile_sample = pd.Series(samples).groupby(codes).nunique()
    assert (tile_sample == 1).all()
    for sample in np.unique(samples):
        in_s = samples == sample
        tiles = np.unique(codes[in_s])
        lo, hi = _boxes(coords, codes, tiles)
        # boxes inside the sample's box, interior-disjoint, so their total area fits in it
        s_lo, s_hi = coords[in_s].min(0), coords[in_s].max(0)
        assert (lo >= s_lo).all() and (hi <= s_hi).all()
        assert (hi - lo).prod(1).sum() <= (s_hi - s_lo).prod() + 1e-9
        # a cell lies in its own tile's box and in the interior of no other tile's box
        pts = coords[in_s]
        interior = ((pts[:, None] > lo[None]) & (pts[:, None] < hi[None])).all(-1)
        own = codes[in_s][:, None] == tiles[None]
        assert not (interior & ~own).any()
        mine = np.searchsorted(tiles, codes[in_s])
        assert ((pts >= lo[mine]) & (pts <= hi[mine])).all()
    # halo against a brute-force distance matrix: cells of the same sample, outside the tile,
    # within `halo` of at least one of its cells
    member = adata.obsm["tile_halo"]
    assert member.shape == (n, len(cats)) and member.dtype == bool and member.format == "csr"
    dist = np.sqrt(((coords[:, None] - coords[None]) ** 2).sum(-1))
    expected = np.zeros((n, len(cats)), dtype=bool)
    if halo > 0:
        for t in range(len(cats)):
            near = (dist[:, codes == t] <= halo).any(axis=1)
            same_sample = samples == samples[codes == t][0]
            expected[:, t] = near & same_sample & (codes != t)
    np.testing.assert_array_equal(member.toarray(), expected)
    assert not member.toarray()[np.arange(n), codes].any()
    assert adata.uns["tile"]["halo"] == halo and adata.uns["tile"]["max_cells"] == max_cells


def test_halo_errors_leave_adata_unchanged():
    rng = np.random.default_rng(0)
    adata = _adata(rng.uniform(0, 100, (50, 2)), ["a"] * 50)
    isc.pp.tile(adata, max_cells=10, halo=5.0)
    before = (adata.obs.copy(), adata.obsm["tile_halo"].copy(), dict(adata.uns["tile"]))
    for bad, exc in [(-1.0, ValueError), (np.nan, ValueError), (np.inf, ValueError)]:
        with pytest.raises(exc, match="halo"):
            isc.pp.tile(adata, max_cells=5, halo=bad)
    with pytest.raises(TypeError, match="halo"):
        isc.pp.tile(adata, max_cells=5, halo="10")
    with pytest.raises(TypeError, match="view"):
        isc.pp.tile(adata[:20], max_cells=5)
    pd.testing.assert_frame_equal(adata.obs, before[0])
    assert (adata.obsm["tile_halo"] != before[1]).nnz == 0
    assert adata.uns["tile"]["max_cells"] == before[2]["max_cells"] == 10


def test_halo_survives_h5ad(tmp_path):
    rng = np.random.default_rng(1)
    adata = _adata(rng.uniform(0, 100, (80, 2)), ["a"] * 40 + ["b"] * 40)
    isc.pp.tile(adata, max_cells=15, halo=10.0)
    adata.write_h5ad(tmp_path / "t.h5ad")
    back = ad.read_h5ad(tmp_path / "t.h5ad")
    assert (back.obsm["tile_halo"] != adata.obsm["tile_halo"]).nnz == 0
    assert list(back.uns["tile"]["tiles"]) == list(adata.obs["tile"].cat.categories)


# ------------------------------------------------------------------------------ end to end
def _tiled_organoids(halo):
    # the spatial graph of whole samples: tiles with a halo keep their boundary edges
    adata = organoids(3, (150, 190), 2)
    isc.pp.tile(adata, max_cells=50, halo=halo)
    return adata


def _tile_cfg():
    """One epoch, seed 3, no warm-up, batches of 4, width 16; default min_epochs and name."""
    return tiny_config(seed=3, lr_warmup=0, batch_size=4, min_epochs=None, name=None)


def test_model_with_halo_trains_and_writes_every_cell_once():
    from interscale.model import CombinedModel

    adata = _tiled_organoids(halo=250.0)
    assert adata.obsm["tile_halo"].nnz > 0
    setup_model_anndata(adata, sample_keys=["tile"], halo_key="tile_halo")
    assert adata.uns["interscale"]["setup"]["halo_key"] == "tile_halo"
    model = CombinedModel(adata, _tile_cfg())
    history = model.train(progress_bar=False)
    assert len(history) == 1 and np.isfinite(history["train_loss"]).all()
    model.get_model_output(adata)
    first = {k: adata.layers[k].copy() for k in ("_y_pred_local", "_y_pred_global")}
    for key in ("_y_pred_local", "_y_pred_global"):
        assert np.isfinite(adata.layers[key]).all()
    assert np.isfinite(adata.obsm["_global_emb"]).all()
    # top-k attention rows are the cells' own; columns may reach into the halo (other tiles)
    attn = adata.obsp["_attn_matrix"].tocoo()
    sample = adata.obs["sample"].to_numpy()
    tile = adata.obs["tile"].to_numpy()
    assert (sample[attn.row] == sample[attn.col]).all()
    assert (tile[attn.row] != tile[attn.col]).any()
    assert set(np.unique(attn.row)) == set(range(adata.n_obs))
    model.get_model_output(adata)
    for key, value in first.items():
        np.testing.assert_array_equal(adata.layers[key], value)

    # same weights without the halo: same keys and shapes, but other predictions (context)
    plain = _tiled_organoids(halo=250.0)
    setup_model_anndata(plain, sample_keys=["tile"])
    other = CombinedModel(plain, _tile_cfg())
    other.module.load_state_dict(model.module.state_dict())
    with pytest.warns(UserWarning, match="never trained"):
        other.get_model_output(plain)
    for store in ("obsm", "layers", "obsp"):
        mine, theirs = getattr(adata, store), getattr(plain, store)
        for key in mine:
            if key.startswith("_"):
                assert mine[key].shape == theirs[key].shape, key
    assert set(adata.layers) == set(plain.layers)
    changed = np.abs(adata.layers["_y_pred_global"] - plain.layers["_y_pred_global"]).max(1)
    assert (changed > 1e-6).mean() > 0.5


def test_setup_rejects_a_halo_that_does_not_fit():
    from interscale.model import CombinedModel

    adata = _tiled_organoids(halo=100.0)
    before = dict(adata.uns)
    with pytest.raises(KeyError, match="nope"):
        CombinedModel.setup_anndata(
            adata, layer_key="log1p_norm", sample_key_list=["tile"], halo_key="nope"
        )
    with pytest.raises(ValueError, match="one sample key"):
        CombinedModel.setup_anndata(
            adata,
            layer_key="log1p_norm",
            sample_key_list=["tile", "sample"],
            halo_key="tile_halo",
        )
    with pytest.raises(ValueError, match="n_tiles"):
        CombinedModel.setup_anndata(
            adata, layer_key="log1p_norm", sample_key_list=["sample"], halo_key="tile_halo"
        )
    assert "interscale" not in adata.uns and dict(adata.uns).keys() == before.keys()


# ------------------------------------------------------------- halos never cross a split
def _one_section_split_over_tiles(halo, seed=0):
    """One section cut into tiles with a halo, whole tiles then split train / val / test."""
    adata = organoids(1, 420, seed, n_genes=12)
    adata.obs = adata.obs.drop(columns="split")
    isc.pp.tile(adata, max_cells=35, halo=halo)
    isc.pp.split_samples(adata, library_key="tile", fractions=(0.5, 0.25, 0.25), seed=seed)
    return adata


def _plan(adata, halo_key="tile_halo"):
    from interscale.graphs import GraphPlan

    return GraphPlan(
        adata,
        layer_key="log1p_norm",
        sample_keys=["tile"],
        split_key="split",
        connectivity_key="spatial_connectivities",
        features=None,
        halo_key=halo_key,
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_halo_cells_of_another_split_are_dropped_with_a_counted_warning(seed):
    adata = _one_section_split_over_tiles(halo=120.0, seed=seed)
    split = adata.obs["split"].astype(str).to_numpy()
    tile = adata.obs["tile"].astype(str).to_numpy()
    assert len(set(split)) == 3
    # brute force over the halo matrix: (cell, tile) memberships whose splits differ
    member = adata.obsm["tile_halo"].tocoo()
    tiles = list(adata.obs["tile"].cat.categories)
    tile_split = {t: split[tile == t][0] for t in tiles}
    col_split = np.array([tile_split[t] for t in tiles])
    foreign = split[member.row] != col_split[member.col]
    assert foreign.any() and (~foreign).any()
    with pytest.warns(UserWarning, match="another split") as record:
        plan = _plan(adata)
    (warning,) = [w for w in record if "another split" in str(w.message)]
    message = str(warning.message)
    assert message.startswith(f"{int(foreign.sum())} halo cell(s)")
    assert f"({np.unique(member.row[foreign]).size} distinct cells" in message
    assert f"halos of {np.unique(member.col[foreign]).size} tile(s)" in message

    same_split_halo_used = 0
    for graph in plan:
        nodes = graph.cell_index.numpy()
        core = graph.core.numpy()
        # no graph holds a cell of another split, halo included
        assert (split[nodes] == graph.split).all(), graph.name
        assert (tile[nodes[core]] == graph.name).all()
        # the halo that is kept is exactly the same-split part of the tile's halo
        col = tiles.index(graph.name)
        in_halo = member.row[member.col == col]
        want = np.sort(in_halo[split[in_halo] == graph.split])
        np.testing.assert_array_equal(np.sort(nodes[~core]), want)
        same_split_halo_used += want.size
        # edges only between the graph's nodes (indices into them)
        assert graph.edge_index.numel() == 0 or int(graph.edge_index.max()) < nodes.size
    assert same_split_halo_used > 0


def test_halo_within_one_split_is_kept_without_warning():
    import warnings

    adata = _one_section_split_over_tiles(halo=120.0)
    adata.obs["split"] = pd.Categorical(["train"] * adata.n_obs)
    n_halo = adata.obsm["tile_halo"].nnz
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = _plan(adata)
    assert sum(int((~g.core).sum()) for g in plan) == n_halo
