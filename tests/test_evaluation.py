"""Tests of interscale.evaluation's gene ranks, AUROC and gene loadings against numpy/sklearn."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from _evaluation_helpers import HYP, TinyModule, dense, make_adata
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import rankdata
from sklearn.metrics import r2_score, roc_auc_score

from interscale.evaluation import auroc_rank_difference, calculate_gene_ranks, gene_loadings


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def brute_r2(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    out = []
    for j in range(y.shape[1]):
        ok = np.isfinite(y[:, j]) & np.isfinite(p[:, j])
        yy, pp = y[ok, j], p[ok, j]
        out.append(np.nan if np.ptp(yy) == 0 else r2_score(yy, pp))
    return np.array(out)


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
