"""AnnData -> per-sample graphs and batches, against a brute-force construction."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from interscale.graphs import GraphBatch, anndata_to_graphs, iterate_batches
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
