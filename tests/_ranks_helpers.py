"""Helpers of the gene-rank tests: a random AnnData with samples and splits, plain R^2."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

KW = {"layers_local_pred": "_y_pred_local", "layers_global_pred": "_y_pred_global"}


def make_adata(
    seed: int = 0,
    n_samples: int = 8,
    cells_per_sample: int = 20,
    n_vars: int = 12,
    sparse: bool = False,
    splits: tuple[str, ...] = ("train", "train", "train", "val", "val", "test", "test", "val"),
) -> ad.AnnData:
    """Random AnnData with samples, a whole-sample split and both prediction layers."""
    rng = np.random.default_rng(seed)
    n_obs = n_samples * cells_per_sample
    x = np.log1p(rng.poisson(rng.uniform(0.3, 3.0, n_vars), size=(n_obs, n_vars)))
    x = x + 0.3 * rng.normal(size=(n_samples, n_vars)).repeat(cells_per_sample, axis=0)
    x = np.clip(x, 0.0, None).astype(np.float32)
    adata = ad.AnnData(X=np.zeros((n_obs, n_vars), dtype=np.float32))
    adata.var_names = [f"g{i}" for i in range(n_vars)]
    adata.obs_names = [f"c{i}" for i in range(n_obs)]
    sample = np.repeat([f"s{i}" for i in range(n_samples)], cells_per_sample)
    adata.obs["sample"] = pd.Categorical(sample)
    split_of = {f"s{i}": splits[i % len(splits)] for i in range(n_samples)}
    adata.obs["split"] = pd.Categorical([split_of[s] for s in sample])
    adata.layers["log1p_norm"] = sp.csr_matrix(x) if sparse else x
    noise_l = rng.normal(size=x.shape) * rng.uniform(0.1, 1.5, n_vars)
    noise_g = rng.normal(size=x.shape) * rng.uniform(0.1, 1.5, n_vars)
    adata.layers["_y_pred_local"] = (x + noise_l).astype(np.float32)
    adata.layers["_y_pred_global"] = (0.7 * x + noise_g).astype(np.float32)
    adata.uns["interscale"] = {"layer_key": "log1p_norm"}
    return adata


def dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)


def naive_r2(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per-gene R^2 by its definition, finite entries only, NaN for a constant gene."""
    out = np.full(y.shape[1], np.nan)
    for j in range(y.shape[1]):
        ok = np.isfinite(y[:, j]) & np.isfinite(p[:, j])
        yy, pp = y[ok, j], p[ok, j]
        if len(yy) >= 2 and np.ptp(yy) > 0:
            out[j] = 1.0 - ((yy - pp) ** 2).sum() / ((yy - yy.mean()) ** 2).sum()
    return out
