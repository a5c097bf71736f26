"""Property-based fuzzing of the graph builder and the evaluation functions on random AnnData.

Invariants: no exception other than the documented ones (ValueError naming the embedding when
fewer finite rows than needed, or the filters when no gene passes), results finite where inputs are
finite, the radius graph equals a brute-force one, R^2, ranks, latent rank, dimension importance
and normalised totals equal computations independent of the code (scikit-learn, brute force, the
construction of the data), and the input AnnData is never modified by a read-only call.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist
from sklearn.metrics import r2_score

import interscale as isc
from interscale.evaluation import (
    calculate_dim_importance,
    calculate_gene_ranks,
    get_genes_dim,
    latent_rank_report,
)

_SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)


@st.composite
def spatial_anndata(draw) -> ad.AnnData:
    """A small AnnData with random shape, sparsity, sample layout and coordinates."""
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    n_obs = draw(st.integers(1, 40))
    n_vars = draw(st.integers(1, 8))
    n_samples = draw(st.integers(1, min(4, n_obs)))
    layout = draw(st.sampled_from(["uniform", "grid", "line", "duplicates", "3d", "clustered"]))
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    sparse_format = draw(st.sampled_from(["dense", "csr", "csc"]))

    if layout == "grid":
        side = int(np.ceil(np.sqrt(n_obs)))
        coords = np.stack(np.divmod(np.arange(n_obs), side), axis=1).astype(float) * 10.0
    elif layout == "line":
        coords = np.c_[rng.uniform(0, 100, n_obs), np.zeros(n_obs)]
    elif layout == "duplicates":
        coords = rng.uniform(0, 50, (max(1, n_obs // 3), 2))[
            rng.integers(0, max(1, n_obs // 3), n_obs)
        ]
    elif layout == "3d":
        coords = rng.uniform(0, 100, (n_obs, 3))
    elif layout == "clustered":
        coords = rng.normal(0, 1, (n_obs, 2)) + 1000.0 * rng.integers(0, 2, (n_obs, 1))
    else:
        coords = rng.uniform(0, 100, (n_obs, 2))

    counts = rng.poisson(3.0, (n_obs, n_vars)).astype(np.float32)
    counts *= rng.random((n_obs, n_vars)) < density
    layer = {"dense": counts, "csr": sp.csr_matrix(counts), "csc": sp.csc_matrix(counts)}
    samples = rng.integers(0, n_samples, n_obs)
    samples[:n_samples] = np.arange(n_samples)  # every sample has at least one cell
    adata = ad.AnnData(
        X=layer[sparse_format],
        obs=pd.DataFrame(
            {"sample": pd.Categorical([f"s{i}" for i in samples])},
            index=[f"c{i}" for i in range(n_obs)],
        ),
        var=pd.DataFrame(index=[f"g{j}" for j in range(n_vars)]),
    )
    adata.obsm["spatial"] = coords
    adata.layers["raw"] = layer[sparse_format]
    return adata


def _brute_force_edges(coords: np.ndarray, samples: np.ndarray, radius: float) -> set:
    d = cdist(coords, coords)
    same = samples[:, None] == samples[None, :]
    adj = (d <= radius) & same
    np.fill_diagonal(adj, False)
    return set(zip(*np.nonzero(adj), strict=True))


@_SETTINGS
@given(adata=spatial_anndata(), radius=st.floats(0.5, 200.0), k=st.integers(1, 6))
def test_spatial_graph_matches_brute_force(adata, radius, k):
    coords = np.asarray(adata.obsm["spatial"])
    samples = adata.obs["sample"].to_numpy()
    isc.pp.spatial_neighbors(adata, radius=radius, library_key="sample")
    conn = adata.obsp["spatial_connectivities"]
    dist = adata.obsp["spatial_distances"]
    coo = conn.tocoo()
    got = set(zip(coo.row.tolist(), coo.col.tolist(), strict=True))
    # cKDTree and cdist may disagree on pairs at exactly the radius: ignore those
    d = cdist(coords, coords)
    boundary = np.isclose(d, radius, rtol=1e-9, atol=1e-9)
    expected = _brute_force_edges(coords, samples, radius)
    differ = got ^ expected
    assert all(boundary[i, j] for i, j in differ)
    assert (conn != conn.T).nnz == 0 and conn.diagonal().sum() == 0
    dcoo = dist.tocoo()
    np.testing.assert_allclose(dcoo.data, d[dcoo.row, dcoo.col], rtol=1e-5, atol=1e-4)

    stats = isc.pp.neighborhood_stats(adata, radius, library_key="sample")
    degree = np.diff(conn.indptr)
    assert stats.loc[float(radius), "max"] <= degree.max() + len(differ)
    assert np.isfinite(stats[["mean", "median", "min", "max", "frac_isolated"]].to_numpy()).all()

    isc.pp.spatial_neighbors(adata, n_neighs=k, library_key="sample", key_added="knn")
    knn = adata.obsp["knn_connectivities"]
    sizes = adata.obs["sample"].value_counts().reindex(samples).to_numpy()
    assert (knn != knn.T).nnz == 0 and knn.diagonal().sum() == 0
    # every cell keeps min(k, sample size - 1) neighbours of its own (more after symmetrising)
    assert (np.diff(knn.indptr) >= np.minimum(k, sizes - 1)).all()
    kcoo = knn.tocoo()
    assert (samples[kcoo.row] == samples[kcoo.col]).all()


def _dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _check_qc_then_normalize(adata: ad.AnnData, remove: bool) -> None:
    counts = _dense(adata.layers["raw"])
    n_before = adata.n_obs
    n_zero = int((counts.sum(axis=1) == 0).sum())
    summary = isc.pp.qc(adata, remove=remove)
    assert summary["n_zero_count"] == n_zero
    assert summary["n_obs_after"] == adata.n_obs == (n_before - n_zero if remove else n_before)
    isc.pp.normalize(adata, key_added="log1p_norm")
    out = _dense(adata.layers["log1p_norm"])
    assert out.shape == adata.shape
    assert out.dtype == np.float32 and np.isfinite(out).all() and (out >= 0).all()
    # independent of the code: undoing log1p gives totals of 1e4, or all zeros for empty cells
    totals = np.expm1(out.astype(np.float64)).sum(axis=1)
    kept = _dense(adata.layers["raw"]).sum(axis=1) > 0
    np.testing.assert_allclose(totals[kept], 1e4, rtol=1e-4)
    assert (out[~kept] == 0).all()


@_SETTINGS
@given(adata=spatial_anndata(), data=st.data())
def test_normalize_and_qc_never_produce_non_finite_values(adata, data):
    _check_qc_then_normalize(adata, remove=data.draw(st.booleans()))


@pytest.mark.parametrize("remove", [True, False])
@pytest.mark.parametrize("sparse_format", ["dense", "csr"])
def test_qc_and_normalize_on_all_zero_counts(remove, sparse_format):
    """qc removing every cell, then normalize on 0 cells: pinned here, not left to the draws."""
    counts = np.zeros((5, 3), dtype=np.float32)
    layer = sp.csr_matrix(counts) if sparse_format == "csr" else counts
    adata = ad.AnnData(X=layer, var=pd.DataFrame(index=["g0", "g1", "g2"]))
    adata.obs_names = [f"c{i}" for i in range(5)]
    adata.layers["raw"] = layer
    adata.obsm["spatial"] = np.arange(10.0).reshape(5, 2)
    _check_qc_then_normalize(adata, remove=remove)
    assert adata.n_obs == (0 if remove else 5)


def _random_outputs(adata: ad.AnnData, rng: np.random.Generator, n_embed: int, nan_rows: int):
    truth = rng.normal(size=adata.shape).astype(np.float32)
    adata.layers["truth"] = truth
    adata.layers["pred_local"] = truth + rng.normal(scale=0.5, size=adata.shape).astype(np.float32)
    adata.layers["pred_global"] = rng.normal(size=adata.shape).astype(np.float32)
    z = rng.normal(size=(adata.n_obs, n_embed))
    if n_embed > 1 and adata.n_obs > 2:
        z[:, -1] = z[:, 0]  # a redundant dimension: rank deficiency must be handled
    z[:nan_rows] = np.nan
    adata.obsm["z"] = z
    adata.varm["s"] = rng.normal(size=(adata.n_vars, n_embed))


@_SETTINGS
@given(
    adata=spatial_anndata(),
    seed=st.integers(0, 2**16),
    n_embed=st.integers(1, 6),
    nan_frac=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_evaluation_functions_are_finite_or_fail_clearly(adata, seed, n_embed, nan_frac):
    rng = np.random.default_rng(seed)
    nan_rows = int(nan_frac * adata.n_obs)
    _random_outputs(adata, rng, n_embed, nan_rows)
    n_finite = adata.n_obs - nan_rows
    snapshot = {k: np.array(v, copy=True) for k, v in adata.obsm.items()}

    table = calculate_gene_ranks(
        adata, layers_local_pred="pred_local", layers_global_pred="pred_global", layer_true="truth"
    )
    assert len(table) == adata.n_vars
    ranks = table[["Local Rank", "Global Rank", "Rank Difference", "Avg Rank"]].to_numpy()
    assert np.isfinite(ranks).all()
    y = adata.layers["truth"].astype(np.float64)
    for head in ("local", "global"):
        r2 = table[f"r2_{head}"].to_numpy()
        if adata.n_obs >= 2:  # the truth is continuous: never constant over two cells
            pred = adata.layers[f"pred_{head}"].astype(np.float64)
            expected = r2_score(y, pred, multioutput="raw_values")
            np.testing.assert_allclose(r2, expected, rtol=1e-9, atol=1e-9)
        else:  # documented: R^2 is NaN with fewer than two cells
            assert np.isnan(r2).all()
        # brute-force average rank: 1 + #worse + (#ties - 1) / 2, NaN ranked below everything
        key = np.where(np.isnan(r2), -np.inf, r2)
        brute = (
            1
            + (key[None, :] < key[:, None]).sum(1)
            + ((key[None, :] == key[:, None]).sum(1) - 1) / 2
        )
        np.testing.assert_array_equal(table[f"{head.capitalize()} Rank"], brute)
    np.testing.assert_array_equal(
        table["Rank Difference"], table["Local Rank"] - table["Global Rank"]
    )

    if n_finite < 1:
        with pytest.raises(ValueError, match="'z'"):
            latent_rank_report(adata, z_key="z")
    else:
        report = latent_rank_report(adata, z_key="z")
        # by construction: Gaussian columns, the last one a copy of the first when
        # n_embed > 1 and n_obs > 2; centring n_finite rows leaves n_finite - 1 directions
        n_distinct = n_embed - 1 if n_embed > 1 and adata.n_obs > 2 else n_embed
        expected_rank = min(n_finite - 1, n_distinct)
        assert report["rank"] == expected_rank
        assert (report["n_obs"], report["n_dims"]) == (n_finite, n_embed)
        assert report["linearly_independent"] == (expected_rank == n_embed)

    if n_finite < 3:
        with pytest.raises(ValueError, match="'z'"):
            calculate_dim_importance(adata, s_key="s", z_key="z")
    else:
        s = adata.varm["s"]
        z = adata.obsm["z"][nan_rows:]
        corr = np.corrcoef(z, rowvar=False).reshape(n_embed, n_embed)
        for mode in ("full", "diag"):
            out = calculate_dim_importance(adata, s_key="s", z_key="z", mode=mode)
            assert np.isfinite(np.asarray(out["y_sorted"], dtype=float)).all()
            assert sorted(np.asarray(out["dim_sorted"]).tolist()) == list(range(n_embed))
            # brute force: dim k's share sum_g sum_j S_gk S_gj C_kj (C = identity in diag mode)
            c = corr if mode == "full" else np.eye(n_embed)
            share = np.array(
                [
                    sum(
                        s[g, k] * s[g, j] * c[k, j]
                        for g in range(s.shape[0])
                        for j in range(n_embed)
                    )
                    for k in range(n_embed)
                ]
            )
            expected = share / share.sum() if share.sum() > 0 else np.zeros(n_embed)
            np.testing.assert_allclose(
                out["y_sorted"], expected[out["dim_sorted"]], rtol=1e-7, atol=1e-10
            )
            assert (np.diff(out["y_sorted"]) <= 0).all()

    dims = sorted(set(rng.integers(0, n_embed, size=2).tolist()))
    if adata.n_obs < 2:  # the sd (ddof=1) of every gene is undefined: no gene passes
        with pytest.raises(ValueError, match="no gene passed the filters"):
            get_genes_dim(adata, dims, s_key="s", z_key="z", X_layer="truth", min_frac=0.0)
    else:
        genes = get_genes_dim(adata, dims, s_key="s", z_key="z", X_layer="truth", min_frac=0.0)
        # every gene passes min_frac=0 and n_top=20 exceeds n_vars: all genes, signed loadings
        assert sorted(genes.index) == sorted(adata.var_names)
        assert list(genes.columns) == [str(d) for d in dims]
        rows = adata.var_names.get_indexer(genes.index)
        np.testing.assert_array_equal(genes.to_numpy(), adata.varm["s"][np.ix_(rows, dims)])

    for key, value in snapshot.items():
        np.testing.assert_array_equal(adata.obsm[key], value)
