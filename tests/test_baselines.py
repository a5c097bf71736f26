"""Tests of interscale.evaluation.linear_baselines against dense numpy / sklearn computations.

The reference builds every feature by brute force on small data (dense adjacency, boolean
matrix powers for k-hop reachability, explicit loops for the leave-one-out sample mean), fits
``StandardScaler`` + ``Ridge`` from sklearn and scores with ``r2_score``.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import interscale
from interscale.evaluation import linear_baselines

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


# ---------------------------------------------------------------------------------------------
# properties


def _with_constant_gene(adata: ad.AnnData, value: float, position: int) -> ad.AnnData:
    x = dense(adata.layers[LAYER])
    x = np.insert(x, position, value, axis=1)
    names = list(adata.var_names)
    names.insert(position, "const")
    out = ad.AnnData(obs=adata.obs.copy(), var=pd.DataFrame(index=names))
    out.layers[LAYER] = x
    out.obsp["spatial_connectivities"] = adata.obsp["spatial_connectivities"].copy()
    return out


@HYP
@given(
    seed=st.integers(0, 10_000),
    value=st.one_of(st.just(0.0), st.floats(-200.0, 200.0, allow_nan=False)),
    position=st.integers(0, 4),
    alpha=st.sampled_from([1e-4, 1.0, 50.0, None]),
)
# Raw Gram sums (no shift) made these constant genes look variable: Cholesky failures and
# changed R^2 of the other genes.
@example(seed=2, value=7.77, position=2, alpha=1.0)
@example(seed=2, value=123.4, position=2, alpha=None)
@example(seed=4, value=-5.1, position=0, alpha=None)
def test_constant_gene_changes_no_other_gene(seed, value, position, alpha):
    adata = make_adata(seed=seed)
    with_const = _with_constant_gene(adata, value, position)
    base = linear_baselines(adata, alpha=alpha, key_added=None)
    got = linear_baselines(with_const, alpha=alpha, key_added=None)
    assert got.loc["const"].isna().all()
    others = got.drop(index="const")
    np.testing.assert_allclose(others.to_numpy(), base.to_numpy(), rtol=1e-9, atol=1e-9)


@HYP
@given(seed=st.integers(0, 10_000), alpha=st.sampled_from([0.5, 20.0]), sparse=st.booleans())
def test_cell_order_does_not_matter(seed, alpha, sparse):
    adata = make_adata(seed=seed, sparse=sparse)
    perm = np.random.default_rng(seed).permutation(adata.n_obs)
    shuffled = adata[perm].copy()
    assert shuffled.obs_names[0] == adata.obs_names[perm[0]]
    a = linear_baselines(adata, alpha=alpha, key_added=None)
    b = linear_baselines(shuffled, alpha=alpha, key_added=None)
    assert_table_close(b, a, tol=1e-9)


def _shuffle_within_sample(adata: ad.AnnData, sample: str, seed: int) -> ad.AnnData:
    out = adata.copy()
    rows = np.flatnonzero(adata.obs["sample"].to_numpy() == sample)
    x = dense(out.layers[LAYER])
    x[rows] = x[np.random.default_rng(seed).permutation(rows)]
    out.layers[LAYER] = x
    return out


@HYP
@given(seed=st.integers(0, 10_000), which=st.integers(0, 5))
def test_sample_baseline_ignores_positions_within_a_sample(seed, which):
    adata = make_adata(seed=seed)
    shuffled = _shuffle_within_sample(adata, f"s{which}", seed + 1)
    a = linear_baselines(adata, alpha=3.0, key_added=None)
    b = linear_baselines(shuffled, alpha=3.0, key_added=None)
    for col in ("mean", "sample"):
        np.testing.assert_allclose(b[col], a[col], rtol=1e-9, atol=1e-9, err_msg=col)


def test_within_sample_shuffle_does_change_the_neighbourhood_baselines():
    # The property above would pass trivially if nothing depended on positions.
    adata = make_adata(seed=12)
    shuffled = _shuffle_within_sample(adata, "s5", 1)  # the test sample
    a = linear_baselines(adata, alpha=3.0, key_added=None)
    b = linear_baselines(shuffled, alpha=3.0, key_added=None)
    assert np.abs(a["hop1"] - b["hop1"]).max() > 1e-3
    assert np.abs(a["hop2_sample"] - b["hop2_sample"]).max() > 1e-3


@HYP
@given(seed=st.integers(0, 10_000), alpha=st.sampled_from([2.0, None]), sparse=st.booleans())
def test_deterministic(seed, alpha, sparse):
    adata = make_adata(seed=seed, sparse=sparse)
    a = linear_baselines(adata, alpha=alpha)
    first = adata.uns[KEY]
    b = linear_baselines(adata, alpha=alpha)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert adata.uns[KEY] == first


@HYP
@given(seed=st.integers(0, 10_000))
def test_scores_are_r2_bounded_above_by_one(seed):
    adata = make_adata(seed=seed)
    got = linear_baselines(adata, alpha=1.0, key_added=None)
    assert (got.to_numpy() <= 1.0).all()


# ---------------------------------------------------------------------------------------------
# bad input: the right error, and adata untouched


def _snapshot(adata: ad.AnnData):
    return (
        sorted(adata.varm.keys()),
        sorted(adata.uns.keys()),
        adata.obs.copy(),
        {k: dense(v).copy() for k, v in adata.layers.items()},
    )


def assert_fails_without_side_effects(adata, error, match, **kwargs):
    before = _snapshot(adata)
    with pytest.raises(error, match=match):
        linear_baselines(adata, **kwargs)
    after = _snapshot(adata)
    assert before[0] == after[0] and before[1] == after[1]
    pd.testing.assert_frame_equal(before[2], after[2])
    for k in before[3]:
        np.testing.assert_array_equal(before[3][k], after[3][k])
    assert KEY not in adata.varm and KEY not in adata.uns


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"layer_key": "nope"}, KeyError, "'nope'"),
        ({"library_key": "nope"}, KeyError, "sample_key 'nope'"),
        ({"split_key": "nope"}, KeyError, "split_key 'nope'"),
        ({"connectivity_key": "nope"}, KeyError, "spatial_neighbors"),
        ({"hops": ()}, ValueError, "at least one hop"),
        ({"hops": (0,)}, ValueError, ">= 1"),
        ({"hops": (1, -2)}, ValueError, ">= 1"),
        ({"hops": ("a",)}, TypeError, "ints"),
        ({"hops": (True,)}, TypeError, "ints"),
        ({"hops": None}, TypeError, "sequence of ints"),
        ({"alpha": -1}, ValueError, "> 0"),
        ({"alpha": 0.0}, ValueError, "> 0"),
        ({"alpha": float("nan")}, ValueError, "finite"),
        ({"alpha": float("inf")}, ValueError, "finite"),
        ({"alpha": "x"}, TypeError, "number"),
        ({"alpha": True}, TypeError, "number"),
        ({"alpha": []}, ValueError, "non-empty"),
        ({"alpha": [1.0, -1.0]}, ValueError, "> 0"),
        ({"alpha": [1.0, "x"]}, TypeError, "number"),
        ({"n_components": 0}, ValueError, ">= 1"),
        ({"n_components": "all"}, ValueError, "'auto', None or an int"),
        ({"n_components": True}, TypeError, "n_components"),
        ({"n_components": 2.5}, TypeError, "n_components"),
        ({"seed": "a"}, TypeError, "seed"),
        ({"heldout": ("nothing",)}, ValueError, "held-out"),
        ({"train": "nothing"}, ValueError, "training cells"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    adata = make_adata(seed=13)
    assert_fails_without_side_effects(adata, error, match, **kwargs)


def test_no_heldout_cells():
    adata = make_adata(seed=14)
    adata.obs["split"] = "train"
    assert_fails_without_side_effects(adata, ValueError, "held-out", alpha=1.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("sparse", [False, True])
def test_non_finite_layer(bad, sparse):
    adata = make_adata(seed=15)
    x = dense(adata.layers[LAYER])
    x[7, 2] = bad
    adata.layers[LAYER] = sp.csr_matrix(x) if sparse else x
    assert_fails_without_side_effects(adata, ValueError, "NaN or infinite", alpha=1.0)


def test_graph_edges_between_samples():
    adata = make_adata(seed=16)
    graph = adata.obsp["spatial_connectivities"].tolil()
    graph[0, adata.n_obs - 1] = 1.0  # s0 <-> s5
    graph[adata.n_obs - 1, 0] = 1.0
    adata.obsp["spatial_connectivities"] = graph.tocsr()
    assert_fails_without_side_effects(adata, ValueError, "2 edge\\(s\\) between", alpha=1.0)


def test_missing_sample_labels():
    adata = make_adata(seed=17)
    adata.obs["sample"] = adata.obs["sample"].cat.add_categories(["x"])
    adata.obs.loc[adata.obs_names[3], "sample"] = np.nan
    assert_fails_without_side_effects(adata, ValueError, "missing values", alpha=1.0)


def test_all_genes_constant_in_training_cannot_cross_validate():
    adata = make_adata(seed=18)
    x = dense(adata.layers[LAYER])
    x[(adata.obs["split"] == "train").to_numpy()] = 1.5
    adata.layers[LAYER] = x
    assert_fails_without_side_effects(adata, ValueError, "fixed alpha")
    got = linear_baselines(adata, alpha=1.0)
    assert np.isfinite(got.to_numpy()).all()


def test_failed_call_keeps_an_earlier_result():
    adata = make_adata(seed=19)
    linear_baselines(adata, alpha=1.0)
    table = adata.varm[KEY].copy()
    info = dict(adata.uns[KEY])
    with pytest.raises(ValueError):
        linear_baselines(adata, alpha=-1.0)
    pd.testing.assert_frame_equal(adata.varm[KEY], table)
    assert adata.uns[KEY] == info


def test_key_added_none_writes_nothing():
    adata = make_adata(seed=20)
    before = _snapshot(adata)
    linear_baselines(adata, alpha=1.0, key_added=None)
    assert _snapshot(adata)[:2] == before[:2]


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
