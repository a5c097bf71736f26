"""Helpers of the linear_baselines tests: random samples with a graph and the brute-force reference.

The reference builds every feature by brute force on small data (dense adjacency, boolean
matrix powers for k-hop reachability, explicit loops for the leave-one-out sample mean), fits
``StandardScaler`` + ``Ridge`` from sklearn and scores with ``r2_score``.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from hypothesis import settings
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import interscale

HYP = settings(max_examples=20, deadline=None)
LAYER = "log1p_norm"
KEY = "linear_baselines"


# ---------------------------------------------------------------------------------------------
# data


def make_adata(
    seed: int = 0,
    sizes: tuple[int, ...] = (40, 55, 35, 60, 45, 50),
    splits: tuple[str, ...] = ("train", "train", "train", "train", "val", "test"),
    n_genes: int = 5,
    radius: float = 1.6,
    sparse: bool = False,
) -> ad.AnnData:
    """Samples of random 2D points with a radius graph and genes with spatial and sample signal."""
    rng = np.random.default_rng(seed)
    n = int(sum(sizes))
    names = [f"s{i}" for i in range(len(sizes))]
    sample = np.repeat(names, sizes)
    code = np.repeat(np.arange(len(sizes)), sizes)
    obs = pd.DataFrame(
        {"sample": pd.Categorical(sample), "split": np.repeat(splits, sizes)},
        index=[f"c{i}" for i in range(n)],
    )
    adata = ad.AnnData(obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))
    coords = rng.random((n, 2)) * 10.0
    adata.obsm["spatial"] = coords
    waves = np.sin(coords @ rng.normal(scale=0.5, size=(2, n_genes)))
    effect = rng.normal(scale=0.7, size=(len(sizes), n_genes))[code]
    x = 2.0 + waves + effect + rng.normal(scale=0.5, size=(n, n_genes))
    adata.layers[LAYER] = sp.csr_matrix(x) if sparse else x
    interscale.pp.spatial_neighbors(adata, radius=radius, library_key="sample")
    return adata


def dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# brute-force reference


def reference_features(
    adata: ad.AnnData, hops=(1, 2), key: str = "spatial_connectivities"
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """(design matrices by column name, layer, train mask, held-out mask)."""
    x = dense(adata.layers[LAYER])
    n = adata.n_obs
    train = (adata.obs["split"] == "train").to_numpy()
    held = (adata.obs["split"] == "test").to_numpy()  # the default: only unseen samples
    fill = x[train].mean(axis=0)

    adj = dense(adata.obsp[key]) != 0
    np.fill_diagonal(adj, False)
    a_int = adj.astype(np.int64)
    hop_means = {}
    for h in sorted(set(hops)):
        reach = np.zeros((n, n), dtype=bool)
        power = np.eye(n, dtype=np.int64)
        for _ in range(h):
            power = ((power @ a_int) > 0).astype(np.int64)
            reach |= power.astype(bool)
        np.fill_diagonal(reach, False)
        means = np.empty_like(x)
        for i in range(n):
            nb = np.flatnonzero(reach[i])
            means[i] = x[nb].mean(axis=0) if nb.size else fill
        hop_means[h] = means

    sample = adata.obs["sample"].to_numpy()
    loo = np.empty_like(x)
    for i in range(n):
        others = [j for j in range(n) if j != i and sample[j] == sample[i]]
        loo[i] = x[others].mean(axis=0) if others else fill

    ordered = sorted(set(hops))
    designs = {}
    for i, h in enumerate(ordered):
        designs[f"hop{h}"] = np.hstack([hop_means[k] for k in ordered[: i + 1]])
    designs["sample"] = loo
    designs[f"hop{ordered[-1]}_sample"] = np.hstack([*(hop_means[k] for k in ordered), loo])
    return designs, x, train, held


def reference(adata: ad.AnnData, alpha: float | dict[str, float], hops=(1, 2), **kw):
    designs, x, train, held = reference_features(adata, hops, **kw)
    y_tr, y_ho = x[train], x[held]
    out = {"mean": r2_score(y_ho, np.tile(y_tr.mean(0), (len(y_ho), 1)), multioutput="raw_values")}
    for name, f in designs.items():
        a = alpha[name] if isinstance(alpha, dict) else alpha
        model = make_pipeline(StandardScaler(), Ridge(alpha=a)).fit(f[train], y_tr)
        out[name] = r2_score(y_ho, model.predict(f[held]), multioutput="raw_values")
    return pd.DataFrame(out, index=pd.Index(adata.var_names, name="gene"))


def assert_table_close(got: pd.DataFrame, want: pd.DataFrame, tol: float = 1e-8) -> None:
    assert list(got.columns) == list(want.columns)
    assert list(got.index) == list(want.index)
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------
# brute-force reference of the cross-validation scores


def reference_cv_scores(adata: ad.AnnData, grid, hops=(1, 2)) -> dict[str, list[float]]:
    """Mean over genes of the R^2 pooled over whole-sample folds, by brute force."""
    designs, x, train, _ = reference_features(adata, hops)
    codes = pd.factorize(adata.obs["sample"], sort=True)[0]
    train_samples = np.unique(codes[train])
    n_folds = min(5, train_samples.size)
    fold = np.full(adata.n_obs, -1)
    for rank, s in enumerate(train_samples):
        fold[codes == s] = rank % n_folds
    out = {}
    for name, f in designs.items():
        scores = []
        for a in grid:
            sse = np.zeros(x.shape[1])
            sst = np.zeros(x.shape[1])
            for k in range(n_folds):
                fit_rows, test_rows = train & (fold != k), train & (fold == k)
                model = make_pipeline(StandardScaler(), Ridge(alpha=a))
                model.fit(f[fit_rows], x[fit_rows])
                y = x[test_rows]
                sse += ((y - model.predict(f[test_rows])) ** 2).sum(axis=0)
                sst += ((y - y.mean(axis=0)) ** 2).sum(axis=0)
            ok = sst > 1e-12 * sst.max()  # genes constant within every fold are left out
            scores.append(float(np.mean(1.0 - sse[ok] / sst[ok])))
        out[name] = scores
    return out
