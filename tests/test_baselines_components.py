"""linear_baselines with more features than training cells and principal-component summaries."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from _baselines_helpers import (
    HYP,
    KEY,
    LAYER,
    assert_table_close,
    dense,
    make_adata,
    reference,
    reference_cv_scores,
    reference_features,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from interscale.evaluation import linear_baselines

# ---------------------------------------------------------------------------------------------
# more features than training cells; principal-component summaries of large panels


def _genes_in_one_sample(adata: ad.AnnData, seed: int, share: float = 0.3) -> ad.AnnData:
    """Sparse log counts where ``share`` of the genes are detected in a single sample only."""
    rng = np.random.default_rng(seed)
    x = dense(adata.layers[LAYER])
    counts = rng.poisson(0.3 * np.exp(x - 2.5)).astype(np.float64)
    codes = adata.obs["sample"].cat.codes.to_numpy()
    owners = rng.integers(0, codes.max() + 1, int(share * x.shape[1]))
    for gene, owner in enumerate(owners):
        counts[codes != owner, gene] = 0.0
    adata.layers[LAYER] = sp.csr_matrix(np.log1p(counts))
    return adata


@pytest.mark.parametrize("alpha", [0.5, 20.0])
def test_more_features_than_training_cells_matches_sklearn(alpha):
    # 50 training cells, 120 features in hop2_sample (3 x 40 genes)
    sizes = (12, 15, 10, 13, 40, 40)
    adata = make_adata(seed=23, sizes=sizes, n_genes=40, radius=2.5)
    got = linear_baselines(adata, alpha=alpha, n_components=None)
    assert np.isfinite(got.to_numpy()).all()
    assert_table_close(got, reference(adata, alpha))
    assert adata.uns[KEY]["features"] == {
        "averaged": "genes",
        "n_components": 40,
        "explained_variance": 1.0,
        "pca": "none",
    }


def test_genes_of_one_sample_with_more_features_than_cells_cross_validate_like_sklearn():
    # The case that raised LinAlgError in cho_factor: 360 features, 100 training cells, and
    # genes absent from all training samples but one, so exactly constant in some folds.
    sizes = (25, 25, 25, 25, 30, 30)
    adata = _genes_in_one_sample(make_adata(seed=0, sizes=sizes, n_genes=120), seed=0)
    got = linear_baselines(adata, n_components=None)
    info = adata.uns[KEY]
    want = reference_cv_scores(adata, info["alpha_grid"])
    for name, scores in want.items():
        np.testing.assert_allclose(info["cv_r2"][name], scores, rtol=1e-8, atol=1e-8)
        assert info["alpha_chosen"][name] == info["alpha_grid"][int(np.argmax(scores))]
    held = dense(adata.layers[LAYER])[(adata.obs["split"] == "test").to_numpy()]
    varies = held.std(axis=0) > 0  # r2_score gives 0 where we give NaN
    assert 0 < (~varies).sum() and got[~varies].isna().all().all()
    ref = reference(adata, dict(info["alpha_chosen"]))
    assert_table_close(got[varies], ref[varies], tol=1e-7)
    assert np.isfinite(got[varies].to_numpy()).all()


def test_large_panel_with_few_training_cells_is_finite():
    # 400 genes, 300 training cells: 3 x 100 components per cell, 240 cells per fold fit
    sizes = (60, 60, 60, 60, 60, 40, 40)
    splits = ("train",) * 5 + ("val", "test")
    adata = _genes_in_one_sample(make_adata(seed=1, sizes=sizes, splits=splits, n_genes=400), 1)
    got = linear_baselines(adata, n_components=100)
    assert np.isfinite(got.drop(columns="mean").to_numpy()[got["mean"].notna()]).all()
    features = adata.uns[KEY]["features"]
    assert features["averaged"] == "components" and features["n_components"] == 100
    assert 0.0 < features["explained_variance"] < 1.0


def _low_rank_layer(adata: ad.AnnData, rank: int, n_genes: int, seed: int, noise: float = 0.0):
    """Replace the layer by ``1 + signal @ M`` (rank ``rank`` after centring) plus noise."""
    rng = np.random.default_rng(seed)
    signal = dense(adata.layers[LAYER])[:, :rank]
    x = (
        1.0
        + signal @ rng.normal(size=(rank, n_genes))
        + noise * rng.normal(size=(adata.n_obs, n_genes))
    )
    out = ad.AnnData(
        obs=adata.obs.copy(), var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)])
    )
    out.layers[LAYER] = x
    out.obsp["spatial_connectivities"] = adata.obsp["spatial_connectivities"].copy()
    return out


@pytest.mark.parametrize("randomized", [False, True])
@pytest.mark.parametrize("alpha", [None, 3.0])
def test_components_spanning_the_layer_give_the_exact_floors(monkeypatch, randomized, alpha):
    adata = _low_rank_layer(make_adata(seed=24), rank=5, n_genes=30, seed=0)
    if randomized:  # the range finder instead of the covariance's eigenvectors
        monkeypatch.setattr("interscale.evaluation._baselines._EXACT_PCA_MAX_GENES", 0)
    exact = linear_baselines(adata, alpha=alpha, n_components=None)
    exact_info = dict(adata.uns[KEY])
    for r in (5, 9):
        got = linear_baselines(adata, alpha=alpha, n_components=r)
        info = adata.uns[KEY]
        assert info["features"]["pca"] == ("randomized" if randomized else "exact")
        assert info["features"]["n_components"] == r
        np.testing.assert_allclose(info["features"]["explained_variance"], 1.0, rtol=1e-9)
        assert info["alpha_chosen"] == exact_info["alpha_chosen"]
        assert_table_close(got, exact, tol=1e-7)


def test_fewer_components_than_the_rank_are_close_and_recorded():
    adata = _low_rank_layer(make_adata(seed=25), rank=4, n_genes=40, seed=1, noise=0.15)
    exact = linear_baselines(adata, n_components=None, key_added=None)
    close = linear_baselines(adata, n_components=8)
    share = adata.uns[KEY]["features"]["explained_variance"]
    assert 0.8 < share < 1.0
    # close on the neighbourhood floors (the sample floors of 4 small training samples are
    # far below 0, where any change is large), but a different model
    diff = np.abs(close - exact)[["hop1", "hop2"]].to_numpy()
    assert 1e-6 < diff.max() < 0.05
    got = linear_baselines(adata, alpha=5.0, n_components=8, key_added=None)
    # the same as a ridge on the averages' projection onto the top 8 training components
    designs, x, train, held = reference_features(adata)
    centred = x[train] - x[train].mean(axis=0)
    axes = np.linalg.svd(centred, full_matrices=False)[2][:8].T
    for name, f in designs.items():
        blocks = f.shape[1] // 40
        mean = np.tile(x[train].mean(axis=0), blocks)
        proj = np.kron(np.eye(blocks), axes @ axes.T)
        f_proj = (f - mean) @ proj + mean
        model = make_pipeline(StandardScaler(), Ridge(alpha=5.0)).fit(f_proj[train], x[train])
        want = r2_score(x[held], model.predict(f_proj[held]), multioutput="raw_values")
        np.testing.assert_allclose(got[name], want, rtol=1e-7, atol=1e-7, err_msg=name)


@pytest.mark.parametrize(
    ("n_genes", "averaged", "r"), [(256, "genes", 256), (300, "components", 256)]
)
def test_auto_components_above_256_genes(n_genes, averaged, r):
    adata = make_adata(seed=26, sizes=(30, 30, 30, 30, 30, 30), n_genes=n_genes)
    linear_baselines(adata, alpha=10.0)
    info = adata.uns[KEY]
    assert info["params"]["n_components"] == "auto"
    assert info["features"]["averaged"] == averaged
    assert info["features"]["n_components"] == r


def test_as_many_components_as_genes_is_the_exact_path():
    adata = make_adata(seed=27, n_genes=6)
    a = linear_baselines(adata, alpha=2.0, n_components=6)
    assert adata.uns[KEY]["features"]["averaged"] == "genes"
    assert adata.uns[KEY]["params"]["n_components"] == 6
    pd.testing.assert_frame_equal(a, linear_baselines(adata, alpha=2.0, n_components=None))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), rank=st.integers(1, 5), extra=st.integers(0, 4))
def test_components_spanning_the_layer_property(seed, rank, extra):
    adata = _low_rank_layer(make_adata(seed=seed), rank=rank, n_genes=12, seed=seed)
    exact = linear_baselines(adata, alpha=1.0, n_components=None, key_added=None)
    got = linear_baselines(adata, alpha=1.0, n_components=rank + extra, key_added=None)
    assert_table_close(got, exact, tol=1e-6)


@HYP
@given(
    seed=st.integers(0, 10_000),
    gene=st.integers(0, 4),
    factor=st.floats(0.01, 100.0),
    offset=st.floats(-50.0, 50.0),
    alpha=st.sampled_from([2.0, None]),
)
def test_affine_change_of_one_gene_changes_no_floor(seed, gene, factor, offset, alpha):
    # Standardised features and R^2 targets: a gene's units and origin cannot matter.
    adata = make_adata(seed=seed)
    base = linear_baselines(adata, alpha=alpha, key_added=None)
    x = dense(adata.layers[LAYER])
    x[:, gene] = factor * x[:, gene] + offset
    adata.layers[LAYER] = x
    got = linear_baselines(adata, alpha=alpha, key_added=None)
    assert_table_close(got, base, tol=1e-7)
