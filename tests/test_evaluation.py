"""Tests of interscale.evaluation against straightforward numpy/scipy/sklearn computations."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import rankdata
from sklearn.metrics import r2_score, roc_auc_score

from interscale.evaluation import (
    auroc_rank_difference,
    calculate_dim_importance,
    calculate_gene_ranks,
    gene_loadings,
    get_genes_dim,
    latent_rank_report,
)
from interscale.evaluation._utils import _column_stats

HYP = settings(max_examples=25, deadline=None)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


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


def brute_r2(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    out = []
    for j in range(y.shape[1]):
        ok = np.isfinite(y[:, j]) & np.isfinite(p[:, j])
        yy, pp = y[ok, j], p[ok, j]
        out.append(np.nan if np.ptp(yy) == 0 else r2_score(yy, pp))
    return np.array(out)


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


class Wrapper:
    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module


# ----------------------------------------------------------------------------- gene ranks


@pytest.mark.parametrize("sparse", [False, True])
def test_gene_ranks_match_sklearn(sparse):
    adata = make_adata(sparse=sparse)
    df = calculate_gene_ranks(
        adata, layers_local_pred="_y_pred_local", layers_global_pred="_y_pred_global"
    )
    assert list(df.columns) == [
        "gene",
        "Local Rank",
        "Global Rank",
        "Rank Difference",
        "Avg Rank",
        "r2_local",
        "r2_global",
    ]
    y = dense(adata.layers["log1p_norm"])
    r2_l = brute_r2(y, dense(adata.layers["_y_pred_local"]))
    r2_g = brute_r2(y, dense(adata.layers["_y_pred_global"]))
    np.testing.assert_allclose(df["r2_local"], r2_l, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(df["r2_global"], r2_g, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(df["Local Rank"], rankdata(r2_l, method="average"))
    np.testing.assert_array_equal(df["Global Rank"], rankdata(r2_g, method="average"))
    np.testing.assert_array_equal(df["Rank Difference"], df["Local Rank"] - df["Global Rank"])
    np.testing.assert_array_equal(df["Avg Rank"], (df["Local Rank"] + df["Global Rank"]) / 2)
    assert list(df["gene"]) == list(adata.var_names)


def test_gene_ranks_chunked_path_matches(monkeypatch):
    # Force many small chunks so the sums are added over many chunks.
    monkeypatch.setattr("interscale.evaluation._utils._CHUNK_VALUES", 97)
    adata = make_adata(seed=3)
    df = calculate_gene_ranks(
        adata, layers_local_pred="_y_pred_local", layers_global_pred="_y_pred_global"
    )
    y = dense(adata.layers["log1p_norm"])
    r2 = brute_r2(y, dense(adata.layers["_y_pred_local"]))
    np.testing.assert_allclose(df["r2_local"], r2, rtol=1e-9, atol=1e-9)


def test_gene_ranks_nan_and_constant_genes():
    adata = make_adata(seed=1)
    y = np.array(adata.layers["log1p_norm"])
    y[:, 0] = 0.0  # all-zero gene
    y[:, 1] = 2.5  # constant non-zero gene
    adata.layers["log1p_norm"] = y
    p = np.array(adata.layers["_y_pred_local"])
    p[::7, 4] = np.nan
    p[3, 5] = np.inf
    adata.layers["_y_pred_local"] = p
    df = calculate_gene_ranks(
        adata, layers_local_pred="_y_pred_local", layers_global_pred="_y_pred_global"
    )
    assert np.isnan(df.loc[[0, 1], ["r2_local", "r2_global"]].to_numpy()).all()
    # NaN genes share the lowest (worst) ranks
    np.testing.assert_array_equal(df.loc[[0, 1], "Local Rank"], [1.5, 1.5])
    assert df["Local Rank"].drop([0, 1]).min() == 3
    r2 = brute_r2(y.astype(np.float64), p.astype(np.float64))
    np.testing.assert_allclose(df["r2_local"][2:], r2[2:], rtol=1e-9)
    assert np.isfinite(df[["Local Rank", "Global Rank", "Rank Difference"]].to_numpy()).all()


def test_gene_ranks_truth_layer_resolution():
    adata = make_adata(record_layer=False)
    with pytest.raises(ValueError, match="layer_true"):
        calculate_gene_ranks(
            adata, layers_local_pred="_y_pred_local", layers_global_pred="_y_pred_global"
        )
    df = calculate_gene_ranks(
        adata,
        layers_local_pred="_y_pred_local",
        layers_global_pred="_y_pred_global",
        layer_true="log1p_norm",
    )
    # adata.X (raw counts) is never used: results equal those against the truth layer
    r2 = brute_r2(dense(adata.layers["log1p_norm"]), dense(adata.layers["_y_pred_local"]))
    np.testing.assert_allclose(df["r2_local"], r2, rtol=1e-9)
    with pytest.raises(KeyError, match="_nope"):
        calculate_gene_ranks(adata, layers_local_pred="_nope", layers_global_pred="_y_pred_global")
    adata.uns["interscale"] = {"layer_key": "missing_layer"}
    with pytest.raises(KeyError, match="missing_layer"):
        calculate_gene_ranks(
            adata, layers_local_pred="_y_pred_local", layers_global_pred="_y_pred_global"
        )


def test_gene_ranks_local_driven_direction_and_printout(capsys):
    rng = np.random.default_rng(5)
    adata = make_adata(seed=5, n_vars=20)
    y = dense(adata.layers["log1p_norm"])
    good, bad = y + 0.05 * rng.normal(size=y.shape), y + 3.0 * rng.normal(size=y.shape)
    local = np.where(np.arange(20) < 10, good, bad)  # local head nails genes 0-9
    adata.layers["_y_pred_local"] = local.astype(np.float32)
    adata.layers["_y_pred_global"] = np.where(np.arange(20) < 10, bad, good).astype(np.float32)
    df = calculate_gene_ranks(
        adata, layers_local_pred="_y_pred_local", layers_global_pred="_y_pred_global", top_n=3
    )
    assert (df["Rank Difference"][:10] > 0).all() and (df["Rank Difference"][10:] < 0).all()
    out = capsys.readouterr().out
    local_block = out.split("Local-Driven")[1].split("Global-Driven")[0]
    top_local = df.nlargest(3, "Rank Difference")["gene"]
    assert all(g in local_block for g in top_local)
    programs = pd.Series(["local"] * 10 + ["global"] * 10, index=adata.var_names)
    assert auroc_rank_difference(df, programs) == 1.0


@HYP
@given(seed=st.integers(0, 10_000), a=st.floats(0.1, 50.0), b=st.floats(-20.0, 20.0))
def test_gene_ranks_invariances(seed, a, b):
    adata = make_adata(seed=seed, n_obs=40, n_vars=12)
    base = calculate_gene_ranks(
        adata, layers_local_pred="_y_pred_local", layers_global_pred="_y_pred_global"
    )
    # positive affine transform of truth and both predictions
    aff = adata.copy()
    for key in ("log1p_norm", "_y_pred_local", "_y_pred_global"):
        aff.layers[key] = a * dense(aff.layers[key]) + b
    t = calculate_gene_ranks(
        aff, layers_local_pred="_y_pred_local", layers_global_pred="_y_pred_global"
    )
    np.testing.assert_allclose(t["r2_local"], base["r2_local"], rtol=1e-6, atol=1e-8)
    cols = ["Local Rank", "Global Rank", "Rank Difference", "Avg Rank"]
    # ranks may only differ where R^2 values tie to within rounding
    r2 = base[["r2_local", "r2_global"]].to_numpy()
    if np.min(np.diff(np.sort(r2, axis=0), axis=0)) > 1e-6:
        np.testing.assert_array_equal(t[cols].to_numpy(), base[cols].to_numpy())
    # gene permutation
    perm = np.random.default_rng(seed).permutation(adata.n_vars)
    p = calculate_gene_ranks(
        adata[:, perm].copy(),
        layers_local_pred="_y_pred_local",
        layers_global_pred="_y_pred_global",
    )
    expected = base.iloc[perm].reset_index(drop=True)
    pd.testing.assert_frame_equal(p, expected, check_exact=False, rtol=1e-10)


def test_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(60)]
    diff = rng.integers(-5, 6, 60).astype(float)  # many ties
    df = pd.DataFrame({"gene": genes, "Rank Difference": diff})
    labels = rng.choice(["local", "global", "none"], 60)
    programs = pd.Series(labels, index=genes)
    keep = labels != "none"
    expected = roc_auc_score(labels[keep] == "local", diff[keep])
    assert auroc_rank_difference(df, programs) == pytest.approx(expected, abs=1e-12)
    flipped = auroc_rank_difference(df, programs, positive="global", negative="local")
    assert flipped == pytest.approx(1 - expected, abs=1e-12)
    with pytest.raises(ValueError, match="both classes"):
        auroc_rank_difference(df, programs, positive="absent")
    with pytest.raises(TypeError):
        auroc_rank_difference(df, list(labels))
    with pytest.raises(KeyError, match="Rank Difference"):
        auroc_rank_difference(df[["gene"]], programs)


# ----------------------------------------------------------------------------- loadings


def brute_loadings(adata, w: np.ndarray, z_key: str) -> np.ndarray:
    z = np.asarray(adata.obsm[z_key], dtype=np.float64)
    z = z[np.isfinite(z).all(axis=1)]
    x = dense(adata.layers["log1p_norm"])
    out = np.zeros_like(w)
    for g in range(w.shape[0]):
        for k in range(w.shape[1]):
            out[g, k] = w[g, k] * np.std(z[:, k], ddof=1) / np.std(x[:, g], ddof=1)
    return out


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("wrap", [False, True])
def test_gene_loadings_match_brute_force(sparse, wrap):
    adata = make_adata(sparse=sparse)
    z = np.array(adata.obsm["_global_emb"])
    z[3] = np.nan  # a non-finite embedding row is ignored
    adata.obsm["_global_emb"] = z
    module = TinyModule(6, adata.n_vars)
    out = gene_loadings(adata, Wrapper(module) if wrap else module, layer_key="log1p_norm")
    assert out is adata
    for head in ("local", "global"):
        w = getattr(module, f"{head}_decoder").weight.detach().double().numpy()
        expected = brute_loadings(adata, w, f"_{head}_emb")
        np.testing.assert_allclose(adata.varm[f"_{head}_std_gene_loadings"], expected, rtol=1e-6)


def test_gene_loadings_published_layout_single_head_and_errors():
    adata = make_adata()

    class Dec(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = torch.nn.Linear(6, adata.n_vars)

    class Comp(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = Dec()

    class Published(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.local_module, self.global_module = Comp(), Comp()

    pub = Published()
    gene_loadings(adata, pub, layer_key="log1p_norm")
    w = pub.global_module.decoder.decoder.weight.detach().double().numpy()
    np.testing.assert_allclose(
        adata.varm["_global_std_gene_loadings"], brute_loadings(adata, w, "_global_emb"), rtol=1e-6
    )

    single = make_adata()
    gene_loadings(single, TinyModule(6, single.n_vars, local=False), layer_key="log1p_norm")
    assert "_global_std_gene_loadings" in single.varm
    assert "_local_std_gene_loadings" not in single.varm

    class NonLinear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.local_decoder = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU())
            self.global_decoder = torch.nn.Linear(6, adata.n_vars)

    fresh = make_adata()
    with pytest.raises(TypeError, match="needs a linear decoder; the local decoder is Sequential"):
        gene_loadings(fresh, NonLinear(), layer_key="log1p_norm")
    assert len(fresh.varm) == 0  # untouched on failure
    with pytest.raises(ValueError, match="latent dims"):
        gene_loadings(fresh, TinyModule(5, fresh.n_vars), layer_key="log1p_norm")
    assert len(fresh.varm) == 0
    with pytest.raises(KeyError, match="nope"):
        gene_loadings(fresh, TinyModule(6, fresh.n_vars), layer_key="nope")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        gene_loadings(fresh, object(), layer_key="log1p_norm")


def test_gene_loadings_constant_gene_is_zero():
    adata = make_adata()
    x = np.array(adata.layers["log1p_norm"])
    x[:, 2] = 1.0
    adata.layers["log1p_norm"] = x
    gene_loadings(adata, TinyModule(6, adata.n_vars), layer_key="log1p_norm")
    assert np.all(adata.varm["_local_std_gene_loadings"][2] == 0)
    assert np.isfinite(adata.varm["_local_std_gene_loadings"]).all()


@HYP
@given(seed=st.integers(0, 10_000), k=st.integers(0, 5), c=st.floats(0.01, 100.0))
def test_gene_loadings_scale_invariance(seed, k, c):
    adata = make_adata(seed=seed, n_obs=30, n_vars=8)
    module = TinyModule(6, adata.n_vars, seed=seed)
    gene_loadings(adata, module, layer_key="log1p_norm")
    base = adata.varm["_global_std_gene_loadings"].copy()
    z = np.array(adata.obsm["_global_emb"], dtype=np.float64)
    z[:, k] *= c
    adata.obsm["_global_emb"] = z
    with torch.no_grad():
        module.global_decoder.weight[:, k] /= c
    gene_loadings(adata, module, layer_key="log1p_norm")
    np.testing.assert_allclose(adata.varm["_global_std_gene_loadings"], base, rtol=1e-5)


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


def test_gene_loadings_with_project_decoders():
    nn_mod = pytest.importorskip("interscale.nn")
    if not hasattr(nn_mod, "make_decoder") or not hasattr(nn_mod, "linear_weight"):
        pytest.skip("interscale.nn has no make_decoder / linear_weight yet")
    adata = make_adata()

    class Core(torch.nn.Module):
        def __init__(self, kind: str) -> None:
            super().__init__()
            self.local_decoder = nn_mod.make_decoder(kind, 6, adata.n_vars)
            self.global_decoder = nn_mod.make_decoder("linear", 6, adata.n_vars)

    for kind in ("linear", "linear-lse"):
        core = Core(kind)
        gene_loadings(adata, Wrapper(core), layer_key="log1p_norm")
        w = nn_mod.linear_weight(core.local_decoder).detach().double().numpy()
        assert w.shape == (adata.n_vars, 6)
        np.testing.assert_allclose(
            adata.varm["_local_std_gene_loadings"],
            brute_loadings(adata, w, "_local_emb"),
            rtol=1e-6,
        )
    with pytest.raises(TypeError, match="the local decoder is NonLinearDecoder"):
        gene_loadings(make_adata(), Core("nonlinear"), layer_key="log1p_norm")
