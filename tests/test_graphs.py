"""AnnData -> per-sample graphs and batches, against a brute-force construction."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from interscale.graphs import GraphBatch, anndata_to_graphs, iter_graphs, iterate_batches
from interscale.train import draw_mask, fold_masks


def _random_adata(rng, n_cells, n_genes, n_samples, sparse):
    samples = rng.integers(0, n_samples, n_cells)
    samples[:n_samples] = np.arange(n_samples)  # every sample present
    x = rng.poisson(1.0, (n_cells, n_genes)).astype(np.float32)
    layer = sp.csr_matrix(x) if sparse else x
    adj = sp.random(n_cells, n_cells, density=0.1, random_state=rng, format="csr")
    adj = ((adj + adj.T) > 0).astype(np.float32)
    adj.setdiag(0)
    adj.eliminate_zeros()
    adata = ad.AnnData(
        X=sp.csr_matrix(x),
        obs=pd.DataFrame(
            {
                "sample": pd.Categorical([f"s{s}" for s in samples]),
                "split": pd.Categorical(np.where(samples % 2 == 0, "train", "val")),
            },
            index=[f"c{i}" for i in range(n_cells)],
        ),
    )
    adata.layers["L"] = layer
    adata.obsp["spatial_connectivities"] = sp.csr_matrix(adj)
    return adata, samples, x, adj


@settings(max_examples=30, deadline=None)
@given(
    n_cells=st.integers(5, 60),
    n_samples=st.integers(1, 4),
    sparse=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_graphs_match_brute_force(n_cells, n_samples, sparse, seed):
    rng = np.random.default_rng(seed)
    n_samples = min(n_samples, n_cells)
    adata, samples, x, adj = _random_adata(rng, n_cells, 3, n_samples, sparse)
    graphs = anndata_to_graphs(adata, layer_key="L", sample_keys=["sample"])
    assert sum(g.n_cells for g in graphs) == n_cells
    seen = np.concatenate([g.cell_index.numpy() for g in graphs])
    assert sorted(seen.tolist()) == list(range(n_cells))
    dense = adj.toarray()
    for g in graphs:
        rows = g.cell_index.numpy()
        assert len(set(samples[rows])) == 1
        np.testing.assert_array_equal(g.x.numpy(), x[rows])
        assert g.x.dtype == torch.float32
        expected = {
            (int(j), int(i))
            for i in range(len(rows))
            for j in range(len(rows))
            if i != j and dense[rows[i], rows[j]] > 0
        }
        got = set(map(tuple, g.edge_index.T.tolist()))
        assert got == expected
        assert g.split == ("train" if samples[rows[0]] % 2 == 0 else "val")


def test_batches_concatenate_and_offset():
    rng = np.random.default_rng(0)
    adata, *_ = _random_adata(rng, 40, 2, 3, False)
    graphs = anndata_to_graphs(adata, layer_key="L", sample_keys=["sample"])
    batch = GraphBatch.collate(graphs)
    assert batch.ptr.tolist() == [0] + np.cumsum([g.n_cells for g in graphs]).tolist()
    assert batch.edge_index.max() < batch.n_cells
    for b, _g in enumerate(graphs):
        lo, hi = batch.ptr[b], batch.ptr[b + 1]
        inside = (batch.edge_index[1] >= lo) & (batch.edge_index[1] < hi)
        assert ((batch.edge_index[0][inside] >= lo) & (batch.edge_index[0][inside] < hi)).all()
    gen1 = torch.Generator().manual_seed(3)
    gen2 = torch.Generator().manual_seed(3)
    order1 = [b.names for b in iterate_batches(graphs, 2, shuffle=True, generator=gen1)]
    order2 = [b.names for b in iterate_batches(graphs, 2, shuffle=True, generator=gen2)]
    assert order1 == order2
    assert sum(len(n) for n in order1) == len(graphs)
    with pytest.raises(ValueError, match="batch_size"):
        list(iterate_batches(graphs, 0))


def test_missing_graph_and_layer_are_named():
    rng = np.random.default_rng(1)
    adata, *_ = _random_adata(rng, 10, 2, 2, False)
    with pytest.raises(KeyError, match="nope"):
        anndata_to_graphs(adata, layer_key="nope", sample_keys=["sample"])
    with pytest.raises(KeyError, match="batch"):
        anndata_to_graphs(adata, layer_key="L", sample_keys=["batch"])
    del adata.obsp["spatial_connectivities"]
    with pytest.raises(KeyError, match="spatial_neighbors"):
        anndata_to_graphs(adata, layer_key="L", sample_keys=["sample"])


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 50), min_size=1, max_size=5), pct=st.floats(0.05, 0.95))
def test_masks_are_proportional_per_graph_and_redrawn(sizes, pct):
    ptr = torch.tensor([0, *np.cumsum(sizes).tolist()])
    gen = torch.Generator().manual_seed(0)
    m1 = draw_mask(ptr, pct, gen)
    m2 = draw_mask(ptr, pct, gen)
    for b, size in enumerate(sizes):
        part = m1[ptr[b] : ptr[b + 1]]
        assert int(part.sum()) == min(size, max(1, round(pct * size)))
    if sum(sizes) > 20 and 0.2 < pct < 0.8:
        assert not torch.equal(m1, m2)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 200), pct=st.floats(0.05, 0.95))
def test_fold_masks_cover_every_cell_once(n, pct):
    masks = fold_masks(n, pct, torch.Generator().manual_seed(1))
    total = torch.stack(masks).sum(0)
    assert (total == 1).all()
    assert len(masks) == min(n, int(np.ceil(1 / pct - 1e-9)))


# ---------------------------------------------------------------------------------------- halo
def _halo_adata(rng, n_cells, n_tiles, p_halo, cross_split=False):
    """Random graph and layer; tiles as the sample key and a random halo membership.

    The halo holds cells of the tile's own split only, unless ``cross_split``.
    """
    adata, tiles, x, adj = _random_adata(rng, n_cells, 3, n_tiles, False)
    member = rng.random((n_cells, n_tiles)) < p_halo
    member[np.arange(n_cells), tiles] = False  # never in the own tile
    if not cross_split:
        member &= _same_split(tiles, n_tiles)
    adata.obsm["tile_halo"] = sp.csr_matrix(member)
    return adata, tiles, x, adj.toarray(), member


def _same_split(tiles, n_tiles):
    """``(n_cells, n_tiles)``: whether a cell has its split in common with the tile
    (``_random_adata`` gives even samples ``train``, odd ones ``val``)."""
    return (tiles[:, None] % 2) == (np.arange(n_tiles)[None, :] % 2)


@settings(max_examples=30, deadline=None)
@given(
    n_cells=st.integers(4, 50),
    n_tiles=st.integers(1, 4),
    p_halo=st.sampled_from([0.0, 0.2, 0.6]),
    seed=st.integers(0, 10_000),
    cross_split=st.booleans(),
)
def test_halo_graphs_hold_core_then_halo_with_all_their_edges(
    n_cells, n_tiles, p_halo, seed, cross_split
):
    rng = np.random.default_rng(seed)
    n_tiles = min(n_tiles, n_cells)
    adata, tiles, x, dense, member = _halo_adata(rng, n_cells, n_tiles, p_halo, cross_split)
    # halo cells of another split than their tile are left out, with a warning counting them
    foreign = member & ~_same_split(tiles, n_tiles)
    member = member & ~foreign
    kw = {"layer_key": "L", "sample_keys": ["sample"], "halo_key": "tile_halo"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graphs = anndata_to_graphs(adata, **kw)
        lazy = list(iter_graphs(adata, **kw))
    messages = [str(w.message) for w in caught if "another split" in str(w.message)]
    if foreign.any():
        assert len(messages) == 2  # one per plan
        assert all(m.startswith(f"{int(foreign.sum())} halo cell(s)") for m in messages)
    else:
        assert messages == []
    cats = list(adata.obs["sample"].cat.categories)
    core_seen = []
    for g, g2 in zip(graphs, lazy, strict=True):
        t = cats.index(g.name)
        nodes = g.cell_index.numpy()
        core = g.core.numpy()
        n_core = int((tiles == t).sum())
        # core cells (the tile's own, in obs order) first, then its halo cells
        assert core[:n_core].all() and not core[n_core:].any()
        np.testing.assert_array_equal(nodes[:n_core], np.flatnonzero(tiles == t))
        np.testing.assert_array_equal(nodes[n_core:], np.flatnonzero(member[:, t]))
        np.testing.assert_array_equal(g.x.numpy(), x[nodes])
        expected = {
            (j, i)
            for i in range(len(nodes))
            for j in range(len(nodes))
            if i != j and dense[nodes[i], nodes[j]] > 0
        }
        assert set(map(tuple, g.edge_index.T.tolist())) == expected
        for a, b in [(g.x, g2.x), (g.edge_index, g2.edge_index), (g.core, g2.core)]:
            assert torch.equal(a, b)
        core_seen.append(nodes[core])
    assert sorted(np.concatenate(core_seen).tolist()) == list(range(n_cells))
    batch = GraphBatch.collate(graphs)
    assert torch.equal(batch.core, torch.cat([g.core for g in graphs]))
    assert batch.to("cpu").core is not None
    # without a halo key nothing changes and no core flags appear
    plain = anndata_to_graphs(adata, layer_key="L", sample_keys=["sample"])
    assert all(g.core is None for g in plain) and GraphBatch.collate(plain).core is None


def test_halo_key_errors_are_named():
    rng = np.random.default_rng(5)
    adata, *_ = _halo_adata(rng, 30, 3, 0.3)
    kw = {"layer_key": "L"}
    with pytest.raises(KeyError, match="nope"):
        anndata_to_graphs(adata, sample_keys=["sample"], halo_key="nope", **kw)
    with pytest.raises(ValueError, match="one sample key"):
        iter_graphs(adata, sample_keys=["sample", "split"], halo_key="tile_halo", **kw)
    adata.obsm["wide"] = sp.csr_matrix((30, 4), dtype=bool)
    with pytest.raises(ValueError, match="n_tiles"):
        anndata_to_graphs(adata, sample_keys=["sample"], halo_key="wide", **kw)
    own = adata.obsm["tile_halo"].toarray()
    own[0, int(adata.obs["sample"].cat.codes.iloc[0])] = True
    adata.obsm["own"] = own  # dense boolean arrays are accepted too
    with pytest.raises(ValueError, match="own tile"):
        anndata_to_graphs(adata, sample_keys=["sample"], halo_key="own", **kw)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=4),
    pct=st.floats(0.05, 0.95),
    p_core=st.sampled_from([0.0, 0.3, 0.8, 1.0]),
    seed=st.integers(0, 1000),
)
def test_draw_mask_masks_only_eligible_cells(sizes, pct, p_core, seed):
    ptr = torch.tensor([0, *np.cumsum(sizes).tolist()])
    eligible = torch.from_numpy(np.random.default_rng(seed).random(int(ptr[-1])) < p_core)
    mask = draw_mask(ptr, pct, torch.Generator().manual_seed(seed), eligible=eligible)
    assert not (mask & ~eligible).any()
    for b in range(len(sizes)):
        n_e = int(eligible[ptr[b] : ptr[b + 1]].sum())
        expected = 0 if n_e == 0 else min(n_e, max(1, round(pct * n_e)))
        assert int(mask[ptr[b] : ptr[b + 1]].sum()) == expected
    # an all-true eligible draws exactly what eligible=None draws, from the same RNG state
    g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    all_true = torch.ones(int(ptr[-1]), dtype=torch.bool)
    assert torch.equal(draw_mask(ptr, pct, g1), draw_mask(ptr, pct, g2, eligible=all_true))
    assert torch.equal(g1.get_state(), g2.get_state())


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 120), pct=st.floats(0.05, 0.95), seed=st.integers(0, 1000))
def test_fold_masks_over_eligible_cells(n, pct, seed):
    eligible = torch.from_numpy(np.random.default_rng(seed).random(n) < 0.6)
    masks = fold_masks(n, pct, torch.Generator().manual_seed(seed), eligible=eligible)
    total = torch.stack(masks).sum(0)
    assert torch.equal(total, eligible.long())
    n_e = int(eligible.sum())
    assert len(masks) == max(1, min(n_e, int(np.ceil(1 / pct - 1e-9))))
    g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    plain = fold_masks(n, pct, g1)
    same = fold_masks(n, pct, g2, eligible=torch.ones(n, dtype=torch.bool))
    assert all(torch.equal(a, b) for a, b in zip(plain, same, strict=True))
    with pytest.raises(ValueError, match="shape"):
        fold_masks(n, pct, g1, eligible=torch.ones(n + 1, dtype=torch.bool))


class _ZeroPredictor(torch.nn.Module):
    """Predicts a learnable constant; the loss then reads the targets of the masked cells only."""

    def __init__(self, n_genes):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(n_genes))

    def forward(self, x, edge_index, ptr, mask=None, features=None):
        from interscale.model._module import ModuleOutput

        y = self.bias.expand_as(x)
        return ModuleOutput(None, None, y, y)


def test_halo_cells_never_enter_the_loss():
    from interscale.train import TrainSettings, evaluate_masked, fit

    rng = np.random.default_rng(2)
    # four tiles, two per split, so every tile has same-split halo cells
    adata, *_ = _halo_adata(rng, 80, 4, 0.5)
    graphs = anndata_to_graphs(adata, layer_key="L", sample_keys=["sample"], halo_key="tile_halo")
    for g in graphs:  # halo cells with huge targets would dominate any loss they entered
        g.x[~g.core] = 1e6
        assert (~g.core).any()
    module = _ZeroPredictor(graphs[0].x.shape[1])
    metrics = evaluate_masked(
        module, graphs, batch_size=2, pct_mask_nodes=0.5, seed=0, loss="MSELoss", device="cpu"
    )
    assert metrics["loss"] < 100
    settings_ = TrainSettings(
        max_epochs=2,
        batch_size=2,
        lr=1e-3,
        weight_decay=0.0,
        warmup_steps=0,
        loss="MSELoss",
        pct_mask_nodes=0.5,
        seed=0,
        early_stopping=False,
        progress_bar=False,
    )
    result = fit(module, graphs, graphs, settings_, torch.device("cpu"))
    assert (result.history["train_loss"] < 100).all()
    assert (result.history["val_loss"] < 100).all()


@settings(max_examples=20, deadline=None)
@given(
    n_cells=st.integers(4, 50),
    n_tiles=st.integers(1, 4),
    p_halo=st.sampled_from([0.0, 0.4]),
    sparse=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_deferred_graphs_equal_dense_graphs(n_cells, n_tiles, p_halo, sparse, seed):
    rng = np.random.default_rng(seed)
    n_tiles = min(n_tiles, n_cells)
    adata, *_ = _halo_adata(rng, n_cells, n_tiles, p_halo)
    if sparse:
        adata.layers["L"] = sp.csr_matrix(adata.layers["L"])
    for halo_key in (None, "tile_halo"):
        kw = {"layer_key": "L", "sample_keys": ["sample"], "halo_key": halo_key}
        dense = anndata_to_graphs(adata, defer_x=False, **kw)
        deferred = anndata_to_graphs(adata, defer_x=True, **kw)
        assert not any(g.deferred for g in dense) and all(g.deferred for g in deferred)
        for a, b in zip(dense, deferred, strict=True):
            assert (a.n_cells, a.n_genes) == (b.n_cells, b.n_genes) == tuple(a.x.shape)
            assert b.x.dtype == torch.float32 and torch.equal(a.x, b.x)
            assert torch.equal(a.edge_index, b.edge_index)
        batch_a, batch_b = GraphBatch.collate(dense), GraphBatch.collate(deferred[::-1])
        assert torch.equal(GraphBatch.collate(dense[::-1]).x, batch_b.x)
        assert torch.equal(batch_a.x, GraphBatch.collate(deferred).x)
        assert batch_b.x.shape == (sum(g.n_cells for g in dense), 3)


def test_plan_defers_expression_above_the_threshold(monkeypatch):
    import interscale.graphs._plan as plan

    rng = np.random.default_rng(4)
    adata, *_ = _random_adata(rng, 40, 3, 2, True)
    assert not any(
        g.deferred for g in anndata_to_graphs(adata, layer_key="L", sample_keys=["sample"])
    )
    monkeypatch.setattr(plan, "DEFER_DENSE_BYTES", 4 * 40 * 3 - 1)
    graphs = anndata_to_graphs(adata, layer_key="L", sample_keys=["sample"])
    assert all(g.deferred for g in graphs)
    assert "deferred=True" in repr(graphs[0])
    # a deferred graph keeps a reference to the layer, not a copy of its values
    assert graphs[0]._x.matrix is adata.layers["L"]
