"""Tests of interscale.evaluation.linear_baselines against dense numpy / sklearn computations.

Agreement with the brute-force reference of _baselines_helpers, the cross-validated alpha and
the storage in ``varm`` / ``uns`` (and an h5ad round trip).
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from _baselines_helpers import (
    KEY,
    LAYER,
    assert_table_close,
    dense,
    make_adata,
    reference,
    reference_cv_scores,
    reference_features,
)
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import interscale
from interscale.evaluation import linear_baselines

# ---------------------------------------------------------------------------------------------
# agreement with the brute-force computation


@pytest.mark.parametrize(
    ("hops", "alpha", "sparse"),
    [((1, 2), 1.0, False), ((1, 2), 25.0, True), ((1, 3), 4.0, False), ((2,), 0.3, False)],
)
def test_matches_bruteforce_sklearn(hops, alpha, sparse):
    adata = make_adata(seed=1, sparse=sparse)
    got = linear_baselines(adata, hops=hops, alpha=alpha)
    top = max(hops)
    want_cols = ["mean", *(f"hop{h}" for h in sorted(hops)), "sample", f"hop{top}_sample"]
    assert list(got.columns) == want_cols
    assert got.index.name == "gene"
    assert_table_close(got, reference(adata, alpha, hops))
    assert np.isfinite(got.to_numpy()).all()


def test_hand_made_graph_with_isolated_cells_self_loops_and_a_lone_sample():
    # Ring graphs with self loops and isolated cells; a one-cell training sample (its
    # leave-one-out mean and isolated cells' neighbourhoods fall back to the training mean).
    sizes = (30, 1, 25, 20, 22)
    splits = ("train", "train", "train", "val", "test")
    adata = make_adata(seed=3, sizes=sizes, splits=splits)
    rows, cols = [], []
    start = 0
    for size in sizes:
        ring = np.arange(start, start + size)
        linked = ring[: max(size - 4, 0)]  # the last 4 cells of each sample stay isolated
        for a, b in zip(linked[:-1], linked[1:], strict=True):
            rows += [a, b]
            cols += [b, a]
        rows += list(ring[:3])  # self loops: never features
        cols += list(ring[:3])
        start += size
    graph = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(adata.n_obs,) * 2)
    adata.obsp["hand"] = graph
    got = linear_baselines(adata, alpha=2.0, hops=(1, 3), connectivity_key="hand")
    assert_table_close(got, reference(adata, 2.0, (1, 3), key="hand"))


def test_explicit_zeros_are_edges():
    # spatial_neighbors stores an edge between coincident cells as an explicit 0 distance.
    adata = make_adata(seed=4)
    adata.obsm["spatial"][1] = adata.obsm["spatial"][0]
    interscale.pp.spatial_neighbors(adata, radius=1.6, library_key="sample")
    assert (adata.obsp["spatial_distances"].data == 0).sum() == 2
    a = linear_baselines(adata, alpha=1.0, key_added=None)
    b = linear_baselines(adata, alpha=1.0, connectivity_key="spatial_distances", key_added=None)
    pd.testing.assert_frame_equal(a, b)


def test_sample_baseline_keeps_precision_with_large_samples_and_means():
    # The leave-one-out sample mean varies within a sample only by x_i / (n - 1): its sd is
    # tiny next to its mean, the case where Gram sums of raw values lose ~7 digits.
    adata = make_adata(seed=22, sizes=(600,) * 6, radius=0.3)
    x = dense(adata.layers[LAYER]) + 20.0
    adata.layers[LAYER] = x
    sample = adata.obs["sample"].to_numpy()
    loo = np.empty_like(x)
    for i in range(adata.n_obs):
        others = sample == sample[i]
        others[i] = False
        loo[i] = x[others].mean(axis=0)
    train = (adata.obs["split"] == "train").to_numpy()
    model = make_pipeline(StandardScaler(), Ridge(alpha=10.0)).fit(loo[train], x[train])
    test = (adata.obs["split"] == "test").to_numpy()
    want = r2_score(x[test], model.predict(loo[test]), multioutput="raw_values")
    got = linear_baselines(adata, hops=1, alpha=10.0, key_added=None)
    np.testing.assert_allclose(got["sample"], want, rtol=1e-10, atol=1e-10)


def test_mean_column_is_the_training_mean_predictor():
    adata = make_adata(seed=5)
    x = dense(adata.layers[LAYER])
    train = (adata.obs["split"] == "train").to_numpy()
    held = (adata.obs["split"] == "test").to_numpy()
    y = x[held]
    ss_res = ((y - x[train].mean(axis=0)) ** 2).sum(axis=0)
    ss_tot = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    got = linear_baselines(adata, alpha=1.0)
    np.testing.assert_allclose(got["mean"], 1.0 - ss_res / ss_tot, rtol=1e-12, atol=1e-12)
    assert (got["mean"] <= 1.0 - ss_res.min() / ss_tot.max() + 1e-12).all()


def test_tiny_alpha_is_least_squares():
    adata = make_adata(seed=6, n_genes=3)
    got = linear_baselines(adata, alpha=1e-8)
    designs, x, train, held = reference_features(adata)
    for name, f in designs.items():
        design = np.column_stack([np.ones(len(f)), f])
        coef, *_ = np.linalg.lstsq(design[train], x[train], rcond=None)
        r2 = r2_score(x[held], design[held] @ coef, multioutput="raw_values")
        np.testing.assert_allclose(got[name], r2, rtol=1e-6, atol=1e-6, err_msg=name)


def test_layer_dtype_and_sparsity_do_not_matter():
    adata = make_adata(seed=7)
    want = linear_baselines(adata, alpha=3.0, key_added=None)
    x = dense(adata.layers[LAYER])
    adata.layers["csr"] = sp.csr_matrix(x)
    adata.layers["csc"] = sp.csc_matrix(x)
    for layer in ("csr", "csc"):
        got = linear_baselines(adata, layer_key=layer, alpha=3.0, key_added=None)
        assert_table_close(got, want, tol=1e-10)
    adata.X = x
    assert_table_close(linear_baselines(adata, None, alpha=3.0, key_added=None), want, 1e-10)


def test_exported_from_tl_and_evaluation():
    assert interscale.tl.linear_baselines is interscale.evaluation.linear_baselines
    assert "linear_baselines" in interscale.evaluation.__all__
    assert "linear_baselines" in interscale.tl.__all__


# ---------------------------------------------------------------------------------------------
# cross-validated alpha


def test_cv_alpha_from_grid_matches_bruteforce_and_fixed_alpha():
    # 7 training samples: 5 folds, two of them with two samples.
    sizes = (30, 35, 25, 40, 30, 28, 33, 40, 35)
    splits = ("train",) * 7 + ("val", "test")
    adata = make_adata(seed=8, sizes=sizes, splits=splits)
    grid = [0.01, 1.0, 30.0, 1000.0]
    got = linear_baselines(adata, alpha=grid)
    info = adata.uns[KEY]
    designs = ["hop1", "hop2", "sample", "hop2_sample"]
    assert list(info["alpha_chosen"]) == designs
    assert info["alpha_grid"] == grid
    assert info["params"]["alpha"] == grid
    want_scores = reference_cv_scores(adata, grid)
    for name in designs:
        np.testing.assert_allclose(info["cv_r2"][name], want_scores[name], rtol=1e-8, atol=1e-8)
        chosen = info["alpha_chosen"][name]
        assert chosen in grid
        assert chosen == grid[int(np.argmax(want_scores[name]))]
        again = linear_baselines(adata, alpha=chosen, key_added=None)
        # the same fit; only the summation order of the statistics differs (folds)
        np.testing.assert_allclose(got[name], again[name], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got["mean"], again["mean"], rtol=1e-12, atol=1e-12)
    assert_table_close(got, reference(adata, dict(info["alpha_chosen"])))


def test_default_grid_scales_with_training_cells():
    adata = make_adata(seed=9)
    linear_baselines(adata)
    info = adata.uns[KEY]
    n_train = int((adata.obs["split"] == "train").sum())
    assert info["n_train_cells"] == n_train
    assert info["params"]["alpha"] == "default grid"
    np.testing.assert_allclose(info["alpha_grid"], n_train * 10.0 ** np.arange(-6, 1))
    for value in info["alpha_chosen"].values():
        assert value in info["alpha_grid"]


def test_single_value_list_still_cross_validates():
    adata = make_adata(seed=10)
    a = linear_baselines(adata, alpha=[5.0])
    assert set(adata.uns[KEY]["cv_r2"]) == {"hop1", "hop2", "sample", "hop2_sample"}
    assert set(adata.uns[KEY]["alpha_chosen"].values()) == {5.0}
    pd.testing.assert_frame_equal(a, linear_baselines(adata, alpha=5.0, key_added=None))


def test_cv_needs_two_training_samples_but_a_fixed_alpha_does_not():
    adata = make_adata(seed=11, sizes=(50, 30, 30), splits=("train", "val", "test"))
    with pytest.raises(ValueError, match="at least 2 training samples"):
        linear_baselines(adata)
    assert KEY not in adata.uns
    got = linear_baselines(adata, alpha=2.0)
    assert_table_close(got, reference(adata, 2.0))


# ---------------------------------------------------------------------------------------------
# storage


def test_storage_and_h5ad_round_trip(tmp_path):
    adata = make_adata(seed=21)
    got = linear_baselines(adata, alpha=[0.5, 5.0], key_added="lb_cv")
    fixed = linear_baselines(adata, alpha=2.0)
    table = adata.varm[KEY]
    assert isinstance(table, pd.DataFrame)
    assert table.index.equals(adata.var_names)
    np.testing.assert_array_equal(table.to_numpy(), fixed.to_numpy())
    assert list(table.columns) == list(fixed.columns) == adata.uns[KEY]["columns"]
    info = adata.uns[KEY]
    assert info["n_scored_cells"] == int((adata.obs["split"] == "test").sum())
    assert info["alpha_chosen"] == {k: 2.0 for k in ("hop1", "hop2", "sample", "hop2_sample")}
    assert info["params"]["hops"] == [1, 2] and info["params"]["heldout"] == ["test"]

    path = tmp_path / "baselines.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    for key, want in ((KEY, fixed), ("lb_cv", got)):
        stored = back.varm[key]
        assert isinstance(stored, pd.DataFrame)
        assert stored.index.equals(back.var_names)
        np.testing.assert_array_equal(stored.to_numpy(), want.to_numpy())
        assert list(stored.columns) == list(want.columns)
        assert dict(back.uns[key]["alpha_chosen"]) == adata.uns[key]["alpha_chosen"]
        assert list(back.uns[key]["columns"]) == adata.uns[key]["columns"]
        assert int(back.uns[key]["n_train_cells"]) == adata.uns[key]["n_train_cells"]
    for name, scores in adata.uns["lb_cv"]["cv_r2"].items():
        np.testing.assert_array_equal(back.uns["lb_cv"]["cv_r2"][name], scores)


def test_view_is_refused_when_storing_and_accepted_otherwise():
    adata = make_adata(seed=16)
    view = adata[: adata.n_obs - 3]
    with pytest.raises(TypeError, match="view.*key_added=None"):
        linear_baselines(view, alpha=1.0)
    assert "linear_baselines" not in adata.varm and "linear_baselines" not in adata.uns
    table = linear_baselines(view, alpha=1.0, key_added=None)
    pd.testing.assert_frame_equal(table, linear_baselines(view.copy(), alpha=1.0, key_added=None))
