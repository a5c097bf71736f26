"""Tests of the built-in datasets: synthetic organoids with ground truth, Legnini loader."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial import cKDTree

from interscale.datasets import legnini, read_transcripts, synthetic_organoids
from interscale.datasets._legnini import FILENAME
from interscale.datasets._split import split_counts

DATA = Path(__file__).parent / "data"
REQUIRED_GENES = (
    "SHH GLI2 GLI3 PTCH1 NKX6.1 NKX2.2 OLIG2 PAX6 PAX7 IRX3 DBX2 FOXA2 NEUROD1 NEUROG2 SOX2 MAP2 "
    "GAD1 CHAT ISL1 MNX1 FOS JUNB ARC EGR1 NR4A1 PER2 VAMP2 STMN2 HES6 HEY1 TUBB3"
).split()


@pytest.fixture(scope="module")
def default() -> ad.AnnData:
    return synthetic_organoids()


@pytest.fixture(scope="module")
def normalised(default) -> np.ndarray:
    counts = default.layers["raw"].toarray().astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return np.log1p(np.divide(counts * 1e4, totals, out=np.zeros_like(counts), where=totals > 0))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


# ---------------------------------------------------------------- shape of the default dataset
def test_default_shape_and_columns(default):
    a = default
    assert 43_000 <= a.n_obs <= 44_600
    assert a.n_vars == 88
    assert set(REQUIRED_GENES) <= set(a.var_names)
    sizes = a.obs["sample"].value_counts()
    assert len(sizes) == 17 and sizes.min() == 1640 and sizes.max() == 4318
    for col in ("Cell", "Area", "x", "y", "sample", "condition", "organoid", "split"):
        assert col in a.obs.columns
    assert list(a.obs["condition"].cat.categories) == ["Control", "SHH"]
    per_sample = a.obs.groupby("sample", observed=True)[["split", "condition"]].nunique()
    assert (per_sample == 1).all().all()  # splits and conditions are by whole sample
    n_split = a.obs.drop_duplicates("sample")["split"].value_counts()
    assert (n_split["train"], n_split["val"], n_split["test"]) == (9, 4, 4)
    assert a.obs_names.is_unique
    assert isinstance(a.X, sp.csr_matrix) and a.X.dtype == np.float32
    assert isinstance(a.layers["raw"], sp.csr_matrix) and a.layers["raw"].dtype == np.float32
    assert (a.X != a.layers["raw"]).nnz == 0
    assert np.array_equal(a.X.data, np.round(a.X.data))  # integer counts
    assert 50 < a.X.max() < 2000
    zero = np.asarray(a.X.sum(axis=1)).ravel() == 0
    assert 0.01 < zero.mean() < 0.02
    assert a.obsm["spatial"].dtype == np.float64
    np.testing.assert_array_equal(a.obsm["spatial"], a.obs[["x", "y"]].to_numpy())
    assert set(a.var["program"].cat.categories) == {"local", "global", "both", "none"}
    gt = a.uns["ground_truth"]
    assert set(gt["dose"]) == set(a.obs["sample"].cat.categories)
    assert sorted(sum((list(v) for v in gt["programs"].values()), [])) == sorted(a.var_names)


def test_neighbour_statistics_match_real_data_and_rosettes_bound_two_hops(default):
    # about 10 neighbours within radius 200, as in the real data ...
    degree, two_hop = [], []
    for sample in default.obs["sample"].cat.categories:
        pts = default.obsm["spatial"][(default.obs["sample"] == sample).to_numpy()]
        tree = cKDTree(pts)
        degree.append(tree.query_ball_point(pts, 200, return_length=True) - 1)
        adj = tree.sparse_distance_matrix(tree, 200, output_type="coo_matrix").tocsr()
        adj.data[:] = 1.0
        reach = adj + adj @ adj
        two_hop.append(np.diff(reach.tocsr().indptr) - 1)  # the diagonal is always stored
    c200, reach2 = np.concatenate(degree), np.concatenate(two_hop)
    assert 9.0 < c200.mean() < 11.5 and 1.5 < c200.std() < 3.6
    # ... but rosettes keep the 2-hop neighbourhood small (a uniform tissue gives about 30),
    # which is what lets the sample mean beat the neighbourhood on global genes
    assert 9.0 < reach2.mean() < 14.0


def test_same_seed_same_data_other_seed_other_data():
    kw = {"n_samples": 4, "cells_per_sample": (200, 400), "n_genes": 40}
    a, b, c = (
        synthetic_organoids(seed=3, **kw),
        synthetic_organoids(seed=3, **kw),
        synthetic_organoids(seed=4, **kw),
    )
    assert (a.X != b.X).nnz == 0
    pd.testing.assert_frame_equal(a.obs, b.obs)
    pd.testing.assert_frame_equal(a.var, b.var)
    np.testing.assert_array_equal(a.obsm["spatial"], b.obsm["spatial"])
    assert a.uns["ground_truth"] == b.uns["ground_truth"]
    assert a.shape != c.shape or not np.array_equal(a.obsm["spatial"], c.obsm["spatial"])


# ---------------------------------------------------------------- the planted programs are real
def test_local_genes_follow_sender_neighbours(default, normalised):
    # recompute the driver from expression + geometry, independently of the gt_ columns
    a = default
    markers = [a.var_names.get_loc(g) for g in a.uns["ground_truth"]["sender_markers"]]
    sender = normalised[:, markers].mean(axis=1) > 4.5
    assert 0.08 < sender.mean() < 0.16
    assert (sender == (a.obs["gt_cell_type"] == "sender").to_numpy()).mean() > 0.95
    n_sender_nb = np.zeros(a.n_obs)
    for sample in a.obs["sample"].cat.categories:
        idx = np.flatnonzero((a.obs["sample"] == sample).to_numpy())
        pairs = cKDTree(a.obsm["spatial"][idx]).query_pairs(200, output_type="ndarray")
        np.add.at(n_sender_nb, idx[pairs[:, 0]], sender[idx[pairs[:, 1]]])
        np.add.at(n_sender_nb, idx[pairs[:, 1]], sender[idx[pairs[:, 0]]])
    ok = np.asarray(a.X.sum(axis=1)).ravel() > 0
    touched = n_sender_nb > 0
    for g in np.flatnonzero((a.var["program"] == "local").to_numpy()):
        # contact-repressed genes (lateral inhibition) fall instead of rising
        sign = np.sign(a.var["gt_local_effect"].iloc[g])
        y = sign * normalised[ok, g]
        assert y[touched[ok]].mean() - y[~touched[ok]].mean() > 0.5, a.var_names[g]
        assert _corr(y, np.minimum(n_sender_nb[ok], 3)) > 0.3, a.var_names[g]
        assert abs(_corr(y, a.obs["gt_shh_signal"].to_numpy()[ok])) < 0.1


def test_global_genes_follow_the_morphogen(default, normalised):
    a = default
    ok = np.asarray(a.X.sum(axis=1)).ravel() > 0
    signal = a.obs["gt_shh_signal"].to_numpy()[ok]
    contact = a.obs["gt_sender_contact"].to_numpy()[ok]
    for g in np.flatnonzero((a.var["program"] == "global").to_numpy()):
        r = _corr(normalised[ok, g], signal)
        assert abs(r) > 0.2 and np.sign(r) == np.sign(a.var["gt_global_effect"].iloc[g])
        assert abs(_corr(normalised[ok, g], contact)) < 0.15
    # within SHH organoids, induced targets are higher near the source than far from it
    shh = ok & (a.obs["condition"] == "SHH").to_numpy()
    grad = a.obs["gt_gradient"].to_numpy()
    near, far = shh & (grad > 0.5), shh & (grad < 0.1)
    ptch1 = a.var_names.get_loc("PTCH1")
    assert normalised[near, ptch1].mean() > normalised[far, ptch1].mean()


def test_none_genes_follow_neither(default, normalised):
    a = default
    ok = np.asarray(a.X.sum(axis=1)).ravel() > 0
    drivers = {
        "contact": a.obs["gt_sender_contact"].to_numpy()[ok],
        "signal": a.obs["gt_shh_signal"].to_numpy()[ok],
        "gradient": a.obs["gt_gradient"].to_numpy()[ok],
    }
    for g in np.flatnonzero((a.var["program"] == "none").to_numpy()):
        for name, d in drivers.items():
            assert abs(_corr(normalised[ok, g], d)) < 0.1, (a.var_names[g], name)


def test_sample_mean_beats_neighbour_mean_for_global_genes(default, normalised):
    """Thousands of cells estimate the global state better than 10 neighbours; not so locally."""
    a = default
    ok = np.asarray(a.X.sum(axis=1)).ravel() > 0
    nb_mean = np.zeros_like(normalised)
    smp_mean = np.zeros_like(normalised)
    for sample in a.obs["sample"].cat.categories:
        idx = np.flatnonzero((a.obs["sample"] == sample).to_numpy() & ok)
        pairs = cKDTree(a.obsm["spatial"][idx]).query_pairs(200, output_type="ndarray")
        adj = sp.coo_matrix(
            (
                np.ones(2 * len(pairs)),
                (np.r_[pairs[:, 0], pairs[:, 1]], np.r_[pairs[:, 1], pairs[:, 0]]),
            ),
            shape=(idx.size, idx.size),
        ).tocsr()
        deg = np.maximum(np.asarray(adj.sum(axis=1)).ravel(), 1)
        nb_mean[idx] = (adj @ normalised[idx]) / deg[:, None]
        smp_mean[idx] = normalised[idx].mean(axis=0)

    def r2(pred, g):
        return _corr(pred[ok, g], normalised[ok, g]) ** 2

    prog = a.var["program"].to_numpy()
    glob = np.flatnonzero(prog == "global")
    loc = np.flatnonzero(prog == "local")
    r2_nb_glob = np.mean([r2(nb_mean, g) for g in glob])
    r2_smp_glob = np.mean([r2(smp_mean, g) for g in glob])
    assert r2_smp_glob > 1.3 * r2_nb_glob
    assert np.mean([r2(nb_mean, g) for g in loc]) > 10 * np.mean([r2(smp_mean, g) for g in loc])


# ---------------------------------------------------------------- arguments
def test_gene_panel_cut_and_extended():
    small = synthetic_organoids(n_samples=3, cells_per_sample=150, n_genes=35)
    assert list(small.var_names[:31]) == REQUIRED_GENES
    assert set(REQUIRED_GENES) <= set(small.var_names)
    assert {"DLL1", "DLL3"} <= set(small.var_names)
    big = synthetic_organoids(n_samples=3, cells_per_sample=150, n_genes=100)
    assert big.n_vars == 100 and big.var_names.is_unique
    assert list(big.var_names[88:91]) == ["SYN001", "SYN002", "SYN003"]
    assert big.var["program"].notna().all()
    assert (big.obs["sample"].value_counts() == 150).all()


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 60))
def test_split_counts(n):
    train, val, test = split_counts(n)
    assert train + val + test == n and train >= 1
    if n >= 3:
        assert val >= 1 and test >= 1
        # test as large as val: early stopping reads val, so test is the only unseen split
        assert test == val and (train >= n / 2 or n == 3)
        assert abs(test / n - 0.25) < 0.125 + 1.0 / n


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (3, (1, 1, 1)),
        (4, (2, 1, 1)),
        (6, (4, 1, 1)),
        (7, (5, 1, 1)),
        (12, (6, 3, 3)),
        (17, (9, 4, 4)),
    ],
)
def test_split_counts_examples(n, expected):
    # 4 organoids -> 2/1/1 keeps the frozen fixture (synthetic_organoids(n_samples=4)) unchanged
    assert split_counts(n) == expected


def test_small_sample_counts_have_every_split():
    a = synthetic_organoids(n_samples=3, cells_per_sample=(100, 200), n_genes=10)
    assert set(a.obs["split"]) == {"train", "val", "test"}
    sizes = a.obs["sample"].value_counts()
    assert sizes.min() == 100 and sizes.max() == 200


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_samples": 0}, ValueError, "n_samples"),
        ({"n_samples": 2.5}, TypeError, "n_samples"),
        ({"n_genes": 0}, ValueError, "n_genes"),
        ({"cells_per_sample": (10, 5)}, ValueError, "cells_per_sample"),
        ({"cells_per_sample": "many"}, TypeError, "cells_per_sample"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"defects": "yes"}, TypeError, "defects"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        synthetic_organoids(**kwargs)


def test_defects_and_h5ad_round_trip(tmp_path):
    a = synthetic_organoids(n_samples=3, cells_per_sample=400, n_genes=20, defects=True)
    d = a.uns["ground_truth"]["defects"]
    assert np.isnan(a.obsm["spatial"][d["nan_coordinates"]]).all()
    assert np.isnan(a.obs["x"].to_numpy()[d["nan_coordinates"]]).all()
    assert a.obs_names.duplicated().sum() == len(d["duplicated_names"]) > 0
    zero = np.asarray(a.layers["raw"].sum(axis=1)).ravel() == 0
    assert zero[d["extra_zero_count"]].all()
    clean = synthetic_organoids(n_samples=3, cells_per_sample=400, n_genes=20)
    path = tmp_path / "s.h5ad"
    clean.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert back.uns["ground_truth"]["dose"] == clean.uns["ground_truth"]["dose"]
    assert list(back.uns["ground_truth"]["programs"]["local"]) == list(
        clean.uns["ground_truth"]["programs"]["local"]
    )
    pd.testing.assert_frame_equal(back.var, clean.var)


# ---------------------------------------------------------------- Legnini loader
def test_legnini_reads_the_tiny_table():
    a = legnini(path=DATA / "legnini_tiny.csv")
    assert a.shape == (7, 5)
    assert list(a.obs.columns) == [
        "Cell",
        "Area",
        "x",
        "y",
        "sample",
        "condition",
        "organoid",
        "split",
    ]
    assert list(a.var_names) == ["FOS", "PAX6", "PTCH1", "SHH", "SOX2"]
    table = pd.read_csv(DATA / "legnini_tiny.csv", dtype=str)
    table = table.dropna(subset=["gene"])
    expected = table.groupby([table["sample"] + "_" + table["Cell"], "gene"]).size()
    dense = pd.DataFrame(a.X.toarray(), index=a.obs_names, columns=a.var_names)
    for (cell, gene), n in expected.items():
        assert dense.loc[cell, gene] == n
    assert dense.to_numpy().sum() == len(table)
    assert dense.loc["A1_3"].sum() == 0  # the cell without transcripts is kept
    assert isinstance(a.X, sp.csr_matrix) and a.X.dtype == np.float32
    np.testing.assert_array_equal(a.obsm["spatial"], a.obs[["x", "y"]].to_numpy())
    per_sample = a.obs.groupby("sample", observed=True)["split"].nunique()
    assert (per_sample == 1).all() and set(a.obs["split"]) == {"train", "val", "test"}


def test_legnini_offline_error_is_clear(tmp_path):
    with pytest.raises(ConnectionError, match="path=") as info:
        legnini(cache_dir=tmp_path)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert list(tmp_path.iterdir()) == []  # no partial download left behind


def test_legnini_uses_cache_and_checks_sha256(tmp_path):
    cached = tmp_path / FILENAME
    with open(DATA / "legnini_tiny.csv", "rb") as src, gzip.open(cached, "wb") as dst:
        shutil.copyfileobj(src, dst)
    digest = hashlib.sha256(cached.read_bytes()).hexdigest()
    a = legnini(cache_dir=tmp_path, sha256=digest)
    assert a.shape == (7, 5)
    with pytest.raises(ValueError, match="sha256"):
        legnini(cache_dir=tmp_path, sha256="0" * 64)


def test_legnini_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        legnini(path=tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("sample,Cell,gene\nA,1,FOS\n")
    with pytest.raises(ValueError, match="condition"):
        read_transcripts(bad)


def test_linear_baselines_separate_the_scales(default):
    """The planted programs are discriminating by the floors a user would measure."""
    import interscale as isc

    a = default.copy()
    isc.pp.qc(a)
    isc.pp.normalize(a, key_added="log1p_norm")
    isc.pp.spatial_neighbors(a, radius=200, library_key="sample")
    table = isc.tl.linear_baselines(a, heldout=("test",), key_added=None)
    per_program = table.groupby(a.var["program"].to_numpy()).mean()
    glob, loc = per_program.loc["global"], per_program.loc["local"]
    both, none = per_program.loc["both"], per_program.loc["none"]
    assert glob["sample"] - glob["hop2"] >= 0.03
    assert glob["hop2"] <= 0.7 * glob["sample"]
    assert loc["hop1"] >= 0.15 and loc["sample"] <= 0.02
    assert (none[["hop1", "hop2", "sample", "hop2_sample"]].abs() < 0.03).all()
    assert both["hop2_sample"] > both["hop2"] + 0.02 and both["hop2_sample"] > both["sample"] + 0.05
    assert both["sample"] > 0.03 and both["hop2"] > 0.03
