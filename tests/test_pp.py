"""Tests of interscale.pp: normalisation, QC, spatial neighbour graphs, neighbourhood stats."""

from __future__ import annotations

import copy

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist

from interscale import pp
from interscale.datasets import synthetic_organoids


def _adata(counts, coords=None, libraries=None) -> ad.AnnData:
    n = counts.shape[0]
    a = ad.AnnData(X=counts)
    a.layers["raw"] = counts.copy()
    rng = np.random.default_rng(0)
    a.obsm["spatial"] = rng.uniform(0, 1000, (n, 2)) if coords is None else coords
    a.obs["sample"] = pd.Categorical(
        np.zeros(n, dtype=int).astype(str)
        if libraries is None
        else np.asarray(libraries).astype(str)
    )
    return a


def _snapshot(a: ad.AnnData) -> dict:
    return {
        "obs": a.obs.copy(),
        "obs_names": a.obs_names.copy(),
        "layers": sorted(a.layers.keys()),
        "obsp": sorted(a.obsp.keys()),
        "uns": copy.deepcopy(dict(a.uns)),
        "obsm": {k: np.array(v, copy=True) for k, v in a.obsm.items()},
    }


def _assert_unchanged(a: ad.AnnData, snap: dict) -> None:
    pd.testing.assert_frame_equal(a.obs, snap["obs"])
    assert a.obs_names.equals(snap["obs_names"])
    assert sorted(a.layers.keys()) == snap["layers"]
    assert sorted(a.obsp.keys()) == snap["obsp"]
    assert set(a.uns.keys()) == set(snap["uns"].keys())
    for k, v in snap["obsm"].items():
        np.testing.assert_array_equal(a.obsm[k], v)


# ------------------------------------------------------------------------------ normalize
def _reference(counts: np.ndarray, target: float) -> np.ndarray:
    totals = counts.sum(axis=1, keepdims=True)
    scaled = np.divide(counts * target, totals, out=np.zeros_like(counts), where=totals > 0)
    return np.log1p(scaled)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 30),
    st.integers(1, 12),
    st.integers(0, 2**31 - 1),
    st.sampled_from([1.0, 1e4, 123.5]),
    st.booleans(),
)
def test_normalize_matches_numpy(n, g, seed, target, sparse):
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rng.uniform(0, 5), (n, g)).astype(np.float32)
    counts[rng.random(n) < 0.2] = 0  # some zero-count cells
    a = _adata(sp.csr_matrix(counts) if sparse else counts.copy())
    pp.normalize(a, target_sum=target)
    out = a.layers["log1p_norm"]
    assert out.dtype == np.float32
    assert sp.issparse(out) == sparse
    if sparse:
        assert isinstance(out, sp.csr_matrix)
        out = out.toarray()
    np.testing.assert_allclose(
        out, _reference(counts.astype(np.float64), target), rtol=1e-6, atol=1e-6
    )
    assert np.isfinite(out).all()
    assert (out[counts.sum(axis=1) == 0] == 0).all()
    raw = a.layers["raw"].toarray() if sparse else a.layers["raw"]
    np.testing.assert_array_equal(raw, counts)  # input untouched


def test_normalize_x_and_median_target():
    counts = np.array([[1, 3], [0, 0], [4, 4], [2, 0]], dtype=np.float32)
    a = _adata(sp.csc_matrix(counts))
    pp.normalize(a, target_sum=None, layer=None, key_added="n")
    median = np.median([4, 8, 2])
    np.testing.assert_allclose(
        a.layers["n"].toarray(), _reference(counts.astype(float), median), rtol=1e-6
    )
    assert isinstance(a.layers["n"], sp.csr_matrix)


@pytest.mark.parametrize(
    ("kwargs", "values", "error", "match"),
    [
        ({"layer": "counts"}, None, KeyError, "counts.*available layers"),
        ({}, -1.0, ValueError, "negative"),
        ({}, np.nan, ValueError, "NaN"),
        ({"target_sum": 0}, None, ValueError, "target_sum"),
        ({"target_sum": "1e4"}, None, TypeError, "target_sum"),
    ],
)
def test_normalize_bad_input_leaves_adata_unchanged(kwargs, values, error, match):
    counts = np.ones((4, 3), dtype=np.float32)
    if values is not None:
        counts[1, 1] = values
    a = _adata(sp.csr_matrix(counts))
    snap = _snapshot(a)
    with pytest.raises(error, match=match):
        pp.normalize(a, **kwargs)
    _assert_unchanged(a, snap)


# ------------------------------------------------------------------------------ spatial_neighbors
def _brute_force_radius(coords, libs, radius):
    d = cdist(coords, coords)
    adj = (d <= radius) & (libs[:, None] == libs[None, :])
    np.fill_diagonal(adj, False)
    return adj, d


def _brute_force_knn(coords, libs, k):
    n = len(coords)
    d = cdist(coords, coords)
    d[libs[:, None] != libs[None, :]] = np.inf
    np.fill_diagonal(d, np.inf)
    adj = np.zeros((n, n), dtype=bool)
    order = np.argsort(d, axis=1)[:, :k]
    rows = np.repeat(np.arange(n), order.shape[1])
    cols = order.ravel()
    finite = np.isfinite(d[rows, cols])
    adj[rows[finite], cols[finite]] = True
    return adj | adj.T, cdist(coords, coords)


def _check_graph(a, expected_adj, dist):
    conn = a.obsp["spatial_connectivities"]
    dists = a.obsp["spatial_distances"]
    assert isinstance(conn, sp.csr_matrix) and isinstance(dists, sp.csr_matrix)
    assert conn.dtype == np.float32 and dists.dtype == np.float32
    assert conn.has_sorted_indices and dists.has_sorted_indices
    for m in (conn, dists):  # sorted indices really are sorted
        for i in range(m.shape[0]):
            row = m.indices[m.indptr[i] : m.indptr[i + 1]]
            assert (np.diff(row) > 0).all()
    got = conn.toarray() > 0
    np.testing.assert_array_equal(got, expected_adj)
    assert np.all(conn.data == 1.0)
    assert (conn != conn.T).nnz == 0
    assert conn.diagonal().sum() == 0
    np.testing.assert_array_equal(conn.indices, dists.indices)
    rows = np.repeat(np.arange(conn.shape[0]), np.diff(conn.indptr))
    np.testing.assert_allclose(dists.data, dist[rows, conn.indices], rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 60), st.integers(1, 4), st.integers(0, 2**31 - 1), st.floats(1.0, 400.0))
def test_radius_graph_matches_brute_force(n, n_libs, seed, radius):
    rng = np.random.default_rng(seed)
    coords = rng.uniform(0, 1000, (n, 2))
    libs = rng.integers(0, n_libs, n)
    a = _adata(np.ones((n, 2), dtype=np.float32), coords, libs)
    pp.spatial_neighbors(a, radius=radius)
    adj, d = _brute_force_radius(coords, libs.astype(str), radius)
    _check_graph(a, adj, d)
    params = a.uns["spatial_neighbors"]["params"]
    assert params["radius"] == radius and params["library_key"] == "sample"
    assert a.uns["spatial_neighbors"]["connectivities_key"] == "spatial_connectivities"


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 60), st.integers(1, 3), st.integers(0, 2**31 - 1), st.integers(1, 8))
def test_knn_graph_matches_brute_force(n, n_libs, seed, k):
    rng = np.random.default_rng(seed)
    coords = rng.uniform(0, 1000, (n, 2))
    libs = rng.integers(0, n_libs, n)
    a = _adata(np.ones((n, 2), dtype=np.float32), coords, libs)
    pp.spatial_neighbors(a, n_neighs=k)
    adj, d = _brute_force_knn(coords, libs.astype(str), k)
    _check_graph(a, adj, d)


def test_duplicate_points_and_single_library():
    coords = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [5.0, 0.0]])
    a = _adata(np.ones((4, 2), dtype=np.float32), coords, ["a", "a", "b", "b"])
    pp.spatial_neighbors(a, n_neighs=1, library_key=None)
    conn = a.obsp["spatial_connectivities"]
    assert conn.diagonal().sum() == 0 and conn[0].nnz >= 1
    pp.spatial_neighbors(a, radius=1.0)
    np.testing.assert_array_equal(
        a.obsp["spatial_connectivities"].toarray(),
        np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]),
    )


def test_no_edges_across_samples_on_synthetic_data():
    a = synthetic_organoids(n_samples=3, cells_per_sample=300, n_genes=5)
    a.obsm["spatial"] = a.obsm["spatial"] - a.obsm["spatial"].mean(axis=0)  # overlap samples
    for s in a.obs["sample"].cat.categories:
        m = (a.obs["sample"] == s).to_numpy()
        a.obsm["spatial"][m] -= a.obsm["spatial"][m].mean(axis=0)
    pp.spatial_neighbors(a, radius=200)
    conn = a.obsp["spatial_connectivities"].tocoo()
    codes = a.obs["sample"].cat.codes.to_numpy()
    assert conn.nnz > 0 and (codes[conn.row] == codes[conn.col]).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"radius": 10, "spatial_key": "xy"}, KeyError, "xy.*available keys"),
        ({"radius": 10, "library_key": "batch"}, KeyError, "batch"),
        ({"radius": -1}, ValueError, "radius"),
        ({"radius": 0}, ValueError, "radius"),
        ({"radius": float("nan")}, ValueError, "radius"),
        ({}, ValueError, "exactly one"),
        ({"radius": 10, "n_neighs": 3}, ValueError, "exactly one"),
        ({"n_neighs": 0}, ValueError, "n_neighs"),
        ({"n_neighs": 2.5}, TypeError, "n_neighs"),
    ],
)
def test_spatial_neighbors_bad_input(kwargs, error, match):
    a = _adata(np.ones((5, 2), dtype=np.float32))
    snap = _snapshot(a)
    with pytest.raises(error, match=match):
        pp.spatial_neighbors(a, **kwargs)
    _assert_unchanged(a, snap)


def test_nan_coordinates_need_qc_first():
    a = _adata(np.ones((5, 2), dtype=np.float32))
    a.obsm["spatial"][2, 0] = np.nan
    snap = _snapshot(a)
    with pytest.raises(ValueError, match="pp.qc"):
        pp.spatial_neighbors(a, radius=100)
    with pytest.raises(ValueError, match="pp.qc"):
        pp.neighborhood_stats(a, [100])
    _assert_unchanged(a, snap)
    pp.qc(a)
    pp.spatial_neighbors(a, radius=100)
    assert a.obsp["spatial_connectivities"].shape == (4, 4)


# ------------------------------------------------------------------------------ neighborhood_stats
def test_neighborhood_stats_matches_brute_force():
    rng = np.random.default_rng(1)
    n = 200
    coords = rng.uniform(0, 1000, (n, 2))
    libs = rng.integers(0, 3, n)
    a = _adata(np.ones((n, 2), dtype=np.float32), coords, libs)
    snap = _snapshot(a)
    table = pp.neighborhood_stats(a, [50, 150.0])
    _assert_unchanged(a, snap)  # nothing stored
    assert list(table.columns) == ["mean", "sd", "median", "min", "max", "frac_isolated"]
    assert table.index.name == "radius"
    for r in (50, 150.0):
        adj, _ = _brute_force_radius(coords, libs.astype(str), r)
        c = adj.sum(axis=1)
        row = table.loc[float(r)]
        assert row["mean"] == pytest.approx(c.mean())
        assert row["sd"] == pytest.approx(c.std(ddof=1))
        assert row["median"] == np.median(c) and row["min"] == c.min() and row["max"] == c.max()
        assert row["frac_isolated"] == pytest.approx((c == 0).mean())
    with pytest.raises(ValueError, match="radius"):
        pp.neighborhood_stats(a, [10, -5])
    with pytest.raises(KeyError, match="batch"):
        pp.neighborhood_stats(a, 10, library_key="batch")


# ------------------------------------------------------------------------------ qc
@pytest.fixture()
def defective() -> ad.AnnData:
    return synthetic_organoids(n_samples=3, cells_per_sample=1000, n_genes=12, defects=True)


def test_qc_removes_defects(defective):
    a = defective
    d = a.uns["ground_truth"]["defects"]
    zero = np.asarray(a.layers["raw"].sum(axis=1)).ravel() == 0
    bad = zero.copy()
    bad[d["nan_coordinates"]] = True
    names_before = a.obs_names.to_numpy().copy()
    summary = pp.qc(a)
    assert summary["n_nonfinite_coords"] == len(d["nan_coordinates"])
    assert summary["n_zero_count"] == zero.sum() >= len(d["extra_zero_count"])
    assert summary["n_duplicated_names"] == len(d["duplicated_names"])
    assert summary["n_removed"] == bad.sum()
    assert summary["n_obs_after"] == a.n_obs == 3000 - bad.sum()
    assert a.obs_names.is_unique
    np.testing.assert_array_equal(a.obs["original_obs_name"].to_numpy(), names_before[~bad])
    assert np.isfinite(a.obsm["spatial"]).all()
    assert (np.asarray(a.layers["raw"].sum(axis=1)).ravel() > 0).all()
    # renamed cells keep their original name in obs, others are untouched
    changed = a.obs_names.to_numpy() != a.obs["original_obs_name"].to_numpy()
    assert changed.sum() <= len(d["duplicated_names"])
    assert all(
        n.startswith(o + "-")
        for n, o in zip(a.obs_names[changed], a.obs["original_obs_name"][changed], strict=True)
    )
    pp.spatial_neighbors(a, radius=200)  # now works


def test_qc_not_inplace_and_flag_only(defective):
    a = defective
    snap = _snapshot(a)
    new, summary = pp.qc(a, inplace=False)
    _assert_unchanged(a, snap)
    assert new.n_obs == summary["n_obs_after"] < a.n_obs
    flagged, s2 = pp.qc(a, remove=False, inplace=False)
    assert flagged.n_obs == a.n_obs and s2["n_removed"] == 0
    assert flagged.obs["qc_nonfinite_coords"].sum() == summary["n_nonfinite_coords"]
    assert flagged.obs["qc_zero_count"].sum() == summary["n_zero_count"]
    assert flagged.obs_names.is_unique


def test_qc_bad_keys_leave_adata_unchanged():
    a = _adata(np.ones((4, 2), dtype=np.float32))
    snap = _snapshot(a)
    with pytest.raises(KeyError, match="spatial_key 'xy'"):
        pp.qc(a, spatial_key="xy")
    with pytest.raises(KeyError, match="layer 'counts'"):
        pp.qc(a, layer="counts")
    _assert_unchanged(a, snap)
