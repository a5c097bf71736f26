"""Loadings, latent rank, dim importance and genes per dimension at 5,000 genes.

These functions need genes x n_embed and n_embed x n_embed matrices only: at G = 5,000 a
single genes x genes float64 matrix would be 200 MB, so the peak of numpy's traced
allocations must stay far below it (and below a dense float64 copy of a large layer).
"""

from __future__ import annotations

import tracemalloc

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from interscale.evaluation import (
    calculate_dim_importance,
    gene_loadings,
    get_genes_dim,
    latent_correlation_matrix,
    latent_rank_report,
)

N_GENES = 5_000
N_CELLS = 300
N_EMBED = 16
#: A tenth of one genes x genes float64 matrix (20 MB).
PEAK_LIMIT = N_GENES * N_GENES * 8 // 10


class _Decoders(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.local_decoder = torch.nn.Linear(N_EMBED, N_GENES)
        self.global_decoder = torch.nn.Linear(N_EMBED, N_GENES)


def _adata(sparse: bool) -> ad.AnnData:
    rng = np.random.default_rng(0)
    x = sp.random(N_CELLS, N_GENES, density=0.05, random_state=1, format="csr", dtype=np.float32)
    x.data = np.log1p(10 * x.data).astype(np.float32)
    adata = ad.AnnData(
        obs=pd.DataFrame(index=[f"c{i}" for i in range(N_CELLS)]),
        var=pd.DataFrame(index=[f"G{i}" for i in range(N_GENES)]),
    )
    adata.layers["log1p_norm"] = x if sparse else x.toarray()
    for head in ("local", "global"):
        adata.obsm[f"_{head}_emb"] = rng.normal(size=(N_CELLS, N_EMBED)).astype(np.float32)
    return adata


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("sparse", [True, False], ids=["csr", "dense"])
def test_latent_functions_at_5000_genes_allocate_no_genes_by_genes_matrix(sparse):
    adata = _adata(sparse)
    torch.manual_seed(0)
    module = _Decoders()
    calls = {
        "gene_loadings": lambda: gene_loadings(adata, module, layer_key="log1p_norm"),
        "latent_rank_report": lambda: latent_rank_report(adata),
        "latent_correlation_matrix": lambda: latent_correlation_matrix(adata),
        "dim_importance_full": lambda: calculate_dim_importance(adata, mode="full"),
        "dim_importance_diag": lambda: calculate_dim_importance(adata, mode="diag"),
        "get_genes_dim": lambda: get_genes_dim(
            adata,
            [0, 1, 2],
            X_layer="log1p_norm",
            min_frac=0.01,
            residualize=True,
            rank_by="loading_x_sd",
            enforce_specificity=True,
            specificity_min=1.0,
        ),
    }
    for name, call in calls.items():
        peak = _peak(call)
        assert peak < PEAK_LIMIT, f"{name} peaked at {peak / 1e6:.1f} MB at {N_GENES} genes"
    for head in ("local", "global"):
        assert adata.varm[f"_{head}_std_gene_loadings"].shape == (N_GENES, N_EMBED)
    assert latent_rank_report(adata)["rank"] == N_EMBED


def test_latent_rank_report_leaves_a_float64_embedding_untouched():
    adata = _adata(True)
    z = np.random.default_rng(2).normal(3.0, 2.0, (N_CELLS, N_EMBED))
    adata.obsm["_global_emb"] = z
    before = z.copy()
    latent_rank_report(adata, center=True, scale=True)
    assert adata.obsm["_global_emb"] is z
    np.testing.assert_array_equal(z, before)
