"""Tests of the latent rank, dim importance, genes per dim and column stats against numpy."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from _evaluation_helpers import HYP, TinyModule, dense, make_adata
from hypothesis import given
from hypothesis import strategies as st

from interscale.evaluation import (
    calculate_dim_importance,
    gene_loadings,
    get_genes_dim,
    latent_rank_report,
)
from interscale.evaluation._utils import _column_stats


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ----------------------------------------------------------------------------- latent rank


def test_latent_rank_report_matches_numpy_and_honours_tolerances():
    rng = np.random.default_rng(0)
    adata = make_adata()
    z = rng.normal(size=(adata.n_obs, 5))
    z[:, 4] = z[:, 0] + 1e-4 * rng.normal(size=adata.n_obs)  # nearly dependent
    z[7] = np.inf
    adata.obsm["z"] = z
    rep = latent_rank_report(adata, z_key="z")
    assert set(rep) == {"z_key", "n_obs", "n_dims", "rank", "linearly_independent"}
    assert rep["n_obs"] == adata.n_obs - 1 and rep["n_dims"] == 5
    zc = z[np.isfinite(z).all(axis=1)]
    zc = zc - zc.mean(axis=0)
    s = np.linalg.svd(zc, compute_uv=False)
    for rtol in (1e-7, 1e-3, 0.5):
        expected = np.linalg.matrix_rank(zc, tol=rtol * s.max())
        assert latent_rank_report(adata, z_key="z", rtol=rtol)["rank"] == expected
    assert latent_rank_report(adata, z_key="z")["rank"] == 5
    assert latent_rank_report(adata, z_key="z", rtol=1e-3)["rank"] == 4  # rtol honoured
    assert latent_rank_report(adata, z_key="z", atol=s.min() * 1.01)["rank"] == 4  # atol too
    assert latent_rank_report(adata, z_key="z", atol=s.max() * 2)["rank"] == 0
    scaled = latent_rank_report(adata, z_key="z", scale=True, rtol=1e-3)
    zs = zc / zc.std(axis=0, ddof=1)
    s2 = np.linalg.svd(zs, compute_uv=False)
    assert scaled["rank"] == int((s2 > 1e-3 * s2.max()).sum())
    with pytest.raises(KeyError, match="nope"):
        latent_rank_report(adata, z_key="nope")
    with pytest.raises(ValueError, match="rtol"):
        latent_rank_report(adata, z_key="z", rtol=-1)


@HYP
@given(seed=st.integers(0, 10_000), d=st.integers(2, 8), j=st.integers(0, 7))
def test_latent_rank_drops_with_duplicated_column(seed, d, j):
    rng = np.random.default_rng(seed)
    adata = ad.AnnData(X=np.zeros((50, 1), dtype=np.float32))
    z = rng.normal(size=(50, d)).astype(np.float32)
    adata.obsm["z"] = z
    base = latent_rank_report(adata, z_key="z")
    assert base["rank"] == d and base["linearly_independent"]
    adata.obsm["z"] = np.concatenate([z, z[:, [j % d]]], axis=1)
    dup = latent_rank_report(adata, z_key="z")
    assert dup["rank"] == d and dup["n_dims"] == d + 1 and not dup["linearly_independent"]


# ----------------------------------------------------------------------------- dim importance


def brute_importance(s: np.ndarray, z: np.ndarray, mode: str) -> np.ndarray:
    k = s.shape[1]
    corr = np.corrcoef(z, rowvar=False)
    score = np.zeros(k)
    for a in range(k):
        for b in range(k):
            if mode == "diag" and a != b:
                continue
            c = 1.0 if mode == "diag" else corr[a, b]
            score[a] += sum(s[g, a] * s[g, b] for g in range(s.shape[0])) * c
    return score


@pytest.mark.parametrize("mode", ["full", "diag"])
def test_dim_importance_matches_brute_force(mode):
    adata = make_adata()
    gene_loadings(adata, TinyModule(6, adata.n_vars), layer_key="log1p_norm")
    res = calculate_dim_importance(
        adata,
        s_key="_global_std_gene_loadings",
        z_key="_global_emb",
        mode=mode,
        use_ratio=True,
        cumulative_cutoff=0.6,
        spacing=2,
    )
    expected_keys = {
        "y_plot",
        "dim_plot",
        "y_sorted",
        "dim_sorted",
        "cutoff_x",
        "cutoff_idx",
        "n_dims_left",
        "dims_left",
        "cumulative_cutoff",
        "mode",
        "s_key",
        "z_key",
        "use_ratio",
        "spacing",
    }
    assert set(res) == expected_keys
    score = brute_importance(
        adata.varm["_global_std_gene_loadings"], np.asarray(adata.obsm["_global_emb"], float), mode
    )
    ratio = score / score.sum()
    np.testing.assert_allclose(res["y_sorted"], ratio[res["dim_sorted"]], rtol=1e-9)
    assert np.all(np.diff(res["y_sorted"]) <= 0)
    assert sorted(res["dim_sorted"]) == list(range(6))
    cum = np.cumsum(res["y_sorted"])
    n_left = res["n_dims_left"]
    assert cum[n_left - 1] >= 0.6 - 1e-12 and (n_left == 1 or cum[n_left - 2] < 0.6)
    assert res["cutoff_x"] == (n_left - 1) * 2
    raw = calculate_dim_importance(adata, mode=mode, use_ratio=False, n_top=3)
    np.testing.assert_allclose(np.sort(raw["y_sorted"])[::-1], np.sort(score)[::-1], rtol=1e-9)
    assert len(raw["y_plot"]) == 3 and raw["dims_left"] is None
    with pytest.raises(ValueError, match="mode"):
        calculate_dim_importance(adata, mode="both")
    with pytest.raises(KeyError, match="nope"):
        calculate_dim_importance(adata, s_key="nope")


@HYP
@given(seed=st.integers(0, 10_000), mode=st.sampled_from(["full", "diag"]))
def test_dim_importance_ratios_sum_to_one_and_permute(seed, mode):
    rng = np.random.default_rng(seed)
    adata = ad.AnnData(X=np.zeros((40, 10), dtype=np.float32))
    s = rng.normal(size=(10, 5))
    z = rng.normal(size=(40, 5)) + 0.5 * rng.normal(size=(40, 1))
    adata.varm["S"], adata.obsm["Z"] = s, z
    res = calculate_dim_importance(adata, s_key="S", z_key="Z", mode=mode)
    y = np.empty(5)
    y[res["dim_sorted"]] = res["y_sorted"]
    if res["y_sorted"].sum() != 0:
        assert res["y_sorted"].sum() == pytest.approx(1.0, abs=1e-12)
    perm = rng.permutation(5)
    adata.varm["S"], adata.obsm["Z"] = s[:, perm], z[:, perm]
    res_p = calculate_dim_importance(adata, s_key="S", z_key="Z", mode=mode)
    y_p = np.empty(5)
    y_p[res_p["dim_sorted"]] = res_p["y_sorted"]
    np.testing.assert_allclose(y_p, y[perm], rtol=1e-9, atol=1e-12)


@HYP
@given(seed=st.integers(0, 10_000))
def test_full_equals_diag_for_uncorrelated_dims(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(60, 4))
    a -= a.mean(axis=0)
    q, _ = np.linalg.qr(a)  # centred, exactly orthogonal columns
    adata = ad.AnnData(X=np.zeros((60, 9), dtype=np.float32))
    adata.obsm["Z"] = q * rng.uniform(0.5, 3.0, 4) + rng.normal(size=4)
    adata.varm["S"] = rng.normal(size=(9, 4))
    full = calculate_dim_importance(adata, s_key="S", z_key="Z", mode="full")
    diag = calculate_dim_importance(adata, s_key="S", z_key="Z", mode="diag")
    np.testing.assert_allclose(full["y_sorted"], diag["y_sorted"], rtol=1e-8, atol=1e-12)


# ----------------------------------------------------------------------------- genes per dim


def brute_genes_dim(
    adata,
    dims,
    *,
    s_key,
    z_key,
    layer,
    n_top,
    min_frac,
    min_sd,
    rank_by,
    residualize,
    enforce_specificity,
    specificity_mode,
    specificity_min,
):
    """The published algorithm, written out plainly (dense, loops)."""
    s = np.asarray(adata.varm[s_key], float)
    score = s.copy()
    if residualize:
        z = np.asarray(adata.obsm[z_key], float)
        zc = z - z.mean(axis=0)
        for k in range(z.shape[1]):
            others = np.delete(zc, k, axis=1)
            b, *_ = np.linalg.lstsq(others, zc[:, k], rcond=None)
            r = zc[:, k] - others @ b
            score[:, k] *= np.std(r, ddof=1) / np.std(zc[:, k], ddof=1)
    x = dense(adata.layers[layer])
    frac = (x > 0).mean(axis=0)
    sd = x.std(axis=0, ddof=1)
    valid = [
        g for g in range(x.shape[1]) if frac[g] >= min_frac and (min_sd is None or sd[g] >= min_sd)
    ]
    if rank_by == "loading_x_sd":
        score = score * sd[:, None]
    if enforce_specificity and len(dims) >= 2:
        kept = []
        for g in valid:
            a = sorted(np.abs(score[g, dims]), reverse=True)
            ok = (
                a[0] / (a[1] + 1e-12) >= specificity_min
                if specificity_mode == "ratio"
                else a[0] - a[1] >= specificity_min
            )
            if ok:
                kept.append(g)
        valid = kept
    selected = set()
    for d in dims:
        ranked = sorted(valid, key=lambda g: (-abs(score[g, d]), g))
        selected.update(ranked[:n_top])
    return {adata.var_names[g]: score[g, dims] for g in selected}


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize(
    "opts",
    [
        {"rank_by": "loading", "residualize": False, "enforce_specificity": False},
        {"rank_by": "loading_x_sd", "residualize": True, "enforce_specificity": True},
        {
            "rank_by": "loading_x_sd",
            "residualize": False,
            "enforce_specificity": True,
            "specificity_mode": "diff",
            "specificity_min": 0.05,
            "min_sd": 0.3,
        },
    ],
)
def test_get_genes_dim_matches_brute_force(sparse, opts):
    adata = make_adata(sparse=sparse, n_vars=40)
    gene_loadings(adata, TinyModule(6, adata.n_vars), layer_key="log1p_norm")
    full = {"specificity_mode": "ratio", "specificity_min": 1.5, "min_sd": None, **opts}
    dims = [1, 3, 4]
    df = get_genes_dim(
        adata, dims=dims, which="global", n_top=5, X_layer="log1p_norm", min_frac=0.3, **full
    )
    expected = brute_genes_dim(
        adata,
        dims,
        s_key="_global_std_gene_loadings",
        z_key="_global_emb",
        layer="log1p_norm",
        n_top=5,
        min_frac=0.3,
        **full,
    )
    assert list(df.columns) == ["1", "3", "4"]
    assert set(df.index) == set(expected)
    for gene, row in df.iterrows():
        np.testing.assert_allclose(row.to_numpy(), expected[gene], rtol=1e-6, atol=1e-9)
    # winner ordering: groups by the dim of the largest |score|, in dims order
    winner = np.argmax(np.abs(df.to_numpy()), axis=1)
    assert np.all(np.diff(winner) >= 0)


def test_get_genes_dim_plot_and_errors():
    adata = make_adata(sparse=True, n_vars=40)
    gene_loadings(adata, TinyModule(6, adata.n_vars), layer_key="log1p_norm")
    df, ax = get_genes_dim(
        adata,
        which="global",
        dims=[2, 3],
        n_top=4,
        X_layer="log1p_norm",
        min_frac=0.1,
        rank_by="loading_x_sd",
        enforce_specificity=True,
        specificity_min=1.5,
        plot=True,
        figsize=(3.3, 5),
    )
    assert isinstance(df, pd.DataFrame) and ax.get_ylabel() == "gene"
    assert [t.get_text() for t in ax.get_yticklabels()] == list(df.index)
    local = get_genes_dim(adata, [0], which="local", X_layer="log1p_norm", order_genes_by=None)
    assert list(local.index) == [g for g in adata.var_names if g in set(local.index)]
    with pytest.raises(ValueError, match=r"out of range"):
        get_genes_dim(adata, [6], X_layer="log1p_norm")
    with pytest.raises(ValueError, match="duplicates"):
        get_genes_dim(adata, [1, 1], X_layer="log1p_norm")
    with pytest.raises(ValueError, match="which"):
        get_genes_dim(adata, [1], which="both", X_layer="log1p_norm")
    with pytest.raises(ValueError, match="rank_by"):
        get_genes_dim(adata, [1], X_layer="log1p_norm", rank_by="sd")
    with pytest.raises(ValueError, match="no gene passed"):
        get_genes_dim(adata, [1], X_layer="log1p_norm", min_frac=1.01)


def test_column_stats_never_densify_sparse():
    class NoDense(sp.csr_matrix):
        def toarray(self, *args, **kwargs):
            raise AssertionError("densified")

        todense = toarray

    rng = np.random.default_rng(0)
    x = sp.random(300, 20, density=0.1, random_state=1, format="csr") * 3
    x.data[::11] = np.nan
    stats = _column_stats(NoDense(x))
    d = x.toarray()
    assert stats["n"].tolist() == np.isfinite(d).sum(axis=0).tolist()
    np.testing.assert_allclose(stats["mean"], np.nanmean(d, axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats["sd"], np.nanstd(d, axis=0, ddof=1), rtol=1e-10)
    np.testing.assert_allclose(stats["frac_pos"], (d > 0).mean(axis=0))
    csc = _column_stats(sp.csc_matrix(x))
    np.testing.assert_allclose(csc["sd"], stats["sd"], rtol=1e-12)
    dense_stats = _column_stats(np.where(np.isnan(d), np.nan, d) + rng.normal(size=d.shape) * 0)
    np.testing.assert_allclose(dense_stats["sd"], stats["sd"], rtol=1e-10)


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_column_stats_sparse_chunks_match_numpy(monkeypatch, fmt):
    # Chunks of 7 stored entries split columns (CSC) and rows (CSR) at arbitrary places.
    monkeypatch.setattr("interscale.evaluation._utils._CHUNK_ENTRIES", 7)
    x = sp.random(200, 13, density=0.15, random_state=4, format="csr")
    x.data = x.data * 5 - 1  # stored negatives too
    x.data[::9] = np.nan
    x.data[5::17] = np.inf
    d = x.toarray()
    d[~np.isfinite(d)] = np.nan
    stats = _column_stats(x.asformat(fmt))
    assert stats["n"].tolist() == np.isfinite(d).sum(axis=0).tolist()
    np.testing.assert_allclose(stats["mean"], np.nanmean(d, axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats["sd"], np.nanstd(d, axis=0, ddof=1), rtol=1e-10)
    np.testing.assert_allclose(stats["frac_pos"], (np.nan_to_num(d) > 0).mean(axis=0))
