"""Helpers of the interscale.evaluation tests: a random AnnData with InterScale keys, a module."""

from __future__ import annotations

import anndata as ad
import numpy as np
import scipy.sparse as sp
import torch
from hypothesis import settings

HYP = settings(max_examples=25, deadline=None)


def make_adata(
    seed: int = 0,
    n_obs: int = 150,
    n_vars: int = 30,
    n_embed: int = 6,
    sparse: bool = False,
    record_layer: bool = True,
) -> ad.AnnData:
    """Random AnnData with the InterScale keys (truth layer 'log1p_norm')."""
    rng = np.random.default_rng(seed)
    x = np.log1p(rng.poisson(rng.uniform(0.2, 3.0, n_vars), size=(n_obs, n_vars))).astype(
        np.float32
    )
    adata = ad.AnnData(X=rng.poisson(2.0, size=(n_obs, n_vars)).astype(np.float32))
    adata.var_names = [f"g{i}" for i in range(n_vars)]
    adata.obs_names = [f"c{i}" for i in range(n_obs)]
    adata.layers["log1p_norm"] = sp.csr_matrix(x) if sparse else x
    noise_l = rng.normal(size=x.shape) * rng.uniform(0.1, 2.0, n_vars)
    noise_g = rng.normal(size=x.shape) * rng.uniform(0.1, 2.0, n_vars)
    adata.layers["_y_pred_local"] = (x + noise_l).astype(np.float32)
    adata.layers["_y_pred_global"] = (0.5 * x + noise_g).astype(np.float32)
    adata.obsm["_local_emb"] = rng.normal(size=(n_obs, n_embed)).astype(np.float32)
    mix = rng.normal(size=(n_embed, n_embed))
    adata.obsm["_global_emb"] = (rng.normal(size=(n_obs, n_embed)) @ mix).astype(np.float32)
    if record_layer:
        adata.uns["interscale"] = {"layer_key": "log1p_norm"}
    return adata


def dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)


class TinyModule(torch.nn.Module):
    def __init__(self, n_embed: int, n_vars: int, seed: int = 0, local: bool = True) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.local_decoder = torch.nn.Linear(n_embed, n_vars) if local else None
        self.global_decoder = torch.nn.Linear(n_embed, n_vars)
        with torch.no_grad():
            for dec in (self.local_decoder, self.global_decoder):
                if dec is not None:
                    dec.weight.copy_(torch.randn(dec.weight.shape, generator=g))
