"""Bootstrap intervals of the gene ranks, checked against a naive resampling loop."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from _ranks_helpers import KW, dense, make_adata, naive_r2
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import rankdata

from interscale.evaluation import BootstrapFallbackWarning, calculate_gene_ranks
from interscale.evaluation._ranks import BOOTSTRAP_COLUMNS, BOOTSTRAP_UNIT_COLUMN, RANK_COLUMNS

HYP = settings(max_examples=20, deadline=None)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def naive_bootstrap(y, pl, pg, labels, n_boot, seed, ci=0.9):
    """A plain loop over resamples: rebuild each resampled data set and score it."""
    rng = np.random.default_rng(seed)
    if labels is None:
        n_units = y.shape[0]
        members = None
    else:
        names, codes = np.unique(labels, return_inverse=True)  # units in sorted label order
        n_units = len(names)
        members = [np.flatnonzero(codes == u) for u in range(n_units)]
    r2l, r2g, diff = [], [], []
    for _ in range(n_boot):
        draw = rng.integers(0, n_units, size=n_units)
        idx = draw if members is None else np.concatenate([members[u] for u in draw])
        a, b = naive_r2(y[idx], pl[idx]), naive_r2(y[idx], pg[idx])
        r2l.append(a)
        r2g.append(b)
        ra = rankdata(np.where(np.isnan(a), -np.inf, a), method="average")
        rb = rankdata(np.where(np.isnan(b), -np.inf, b), method="average")
        diff.append(ra - rb)
    q = [(1 - ci) / 2, (1 + ci) / 2]
    out = {"n_nan": np.isnan(np.array(r2l)).sum(axis=0)}
    for name, values in (("r2_local", r2l), ("r2_global", r2g), ("rank_difference", diff)):
        arr = np.array(values)
        lo, hi = [], []
        for j in range(arr.shape[1]):
            col = arr[:, j][np.isfinite(arr[:, j])]
            bounds = np.quantile(col, q) if len(col) else (np.nan, np.nan)
            lo.append(bounds[0])
            hi.append(bounds[1])
        out[f"{name}_lo"], out[f"{name}_hi"] = np.array(lo), np.array(hi)
    return out


# ----------------------------------------------------------------------------- bootstrap


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("missing", [False, True])
@pytest.mark.parametrize("unit", ["samples", "cells"])
def test_bootstrap_equals_a_naive_loop(sparse, missing, unit, monkeypatch):
    if unit == "cells":  # a small count-matrix block, so resamples come in several blocks
        monkeypatch.setattr("interscale.evaluation._resample._BOOT_BLOCK_VALUES", 700)
    adata = make_adata(seed=7, sparse=sparse, n_samples=8, cells_per_sample=12)
    # cells of a sample scattered over the table, labels not in sorted order
    adata = adata[np.random.default_rng(1).permutation(adata.n_obs)].copy()
    adata.obs["sample"] = adata.obs["sample"].astype(str).map(lambda s: f"x{9 - int(s[1:])}")
    y = dense(adata.layers["log1p_norm"])
    sample_idx = adata.obs["sample"].str[1:].astype(int).to_numpy()
    y[sample_idx < 8, 0] = 0.0  # gene 0 is constant in some resamples of samples
    adata.layers["log1p_norm"] = sp.csr_matrix(y) if sparse else y
    if missing:
        p = np.array(adata.layers["_y_pred_global"])
        p[::5, 2] = np.nan
        adata.layers["_y_pred_global"] = p
    if unit == "cells":
        del adata.obs["sample"]
    n_boot, seed = 40, 11
    if unit == "cells":
        with pytest.warns(BootstrapFallbackWarning, match="no sample column is known"):
            got = calculate_gene_ranks(adata, n_boot=n_boot, seed=seed, **KW)
    else:
        got = calculate_gene_ranks(adata, n_boot=n_boot, seed=seed, **KW)
    assert got.attrs["bootstrap"]["unit"] == unit
    assert (got[BOOTSTRAP_UNIT_COLUMN] == unit).all()
    labels = None if unit == "cells" else adata.obs["sample"].astype(str).to_numpy()
    ref = naive_bootstrap(
        y,
        dense(adata.layers["_y_pred_local"]),
        dense(adata.layers["_y_pred_global"]),
        labels,
        n_boot,
        seed,
    )
    if unit == "samples":  # the undefined-R^2 path is exercised
        assert 0 < ref["n_nan"][0] < n_boot
    for col in BOOTSTRAP_COLUMNS:
        if col.startswith("rank_difference"):
            np.testing.assert_array_equal(got[col], ref[col], err_msg=col)
        else:
            np.testing.assert_allclose(got[col], ref[col], rtol=1e-9, atol=1e-12, err_msg=col)
    # point estimates and the published columns are untouched, new columns at the end
    plain = calculate_gene_ranks(adata, **KW)
    assert list(got.columns) == RANK_COLUMNS + BOOTSTRAP_COLUMNS + [BOOTSTRAP_UNIT_COLUMN]
    pd.testing.assert_frame_equal(got[RANK_COLUMNS], plain, check_exact=True)


def test_bootstrap_on_selected_cells_equals_the_subset_copy():
    adata = make_adata(seed=3, n_samples=14, splits=("train", "val", "test"))
    got = calculate_gene_ranks(adata, cells="val,test", n_boot=30, seed=5, **KW)
    sub = adata[adata.obs["split"].isin(["val", "test"]).to_numpy()].copy()
    expected = calculate_gene_ranks(sub, n_boot=30, seed=5, **KW)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert got.attrs["bootstrap"] == expected.attrs["bootstrap"]
    assert got.attrs["bootstrap"]["unit"] == "samples"
    assert got.attrs["bootstrap"]["n_units"] == 9


def test_resampling_unit_follows_the_number_of_scored_samples():
    adata = make_adata(n_samples=8)
    boot = calculate_gene_ranks(adata, n_boot=5, **KW).attrs["bootstrap"]
    assert boot == {
        "n_boot": 5,
        "unit": "samples",
        "n_units": 8,
        "ci": 0.9,
        "seed": 0,
        "library_key": "sample",
    }
    # the test split holds 2 of the 8 samples: too few, cells are resampled
    with pytest.warns(BootstrapFallbackWarning, match="2 sample.*of 'sample', fewer than 5"):
        heldout = calculate_gene_ranks(adata, cells="test", n_boot=5, **KW).attrs["bootstrap"]
    n_test = int((adata.obs["split"] == "test").sum())
    assert heldout["unit"] == "cells" and heldout["n_units"] == n_test
    # exactly 5 samples are enough
    five = adata.obs["sample"].isin([f"s{i}" for i in range(5)]).to_numpy()
    assert calculate_gene_ranks(adata, cells=five, n_boot=5, **KW).attrs["bootstrap"]["unit"] == (
        "samples"
    )
    four = adata.obs["sample"].isin([f"s{i}" for i in range(4)]).to_numpy()
    with pytest.warns(BootstrapFallbackWarning):
        table = calculate_gene_ranks(adata, cells=four, n_boot=5, **KW)
    assert table.attrs["bootstrap"]["unit"] == "cells"
    assert (table[BOOTSTRAP_UNIT_COLUMN] == "cells").all()
    # the sample key recorded by the model setup wins over a 'sample' column ...
    adata.obs["organoid"] = adata.obs["sample"].astype(str).str[:2].replace({"s7": "s6"})
    adata.uns["interscale"]["sample_key"] = ["organoid"]
    rec = calculate_gene_ranks(adata, n_boot=5, **KW).attrs["bootstrap"]
    assert rec["library_key"] == "organoid" and rec["n_units"] == 7
    # ... and an explicit library_key wins over both
    adata.obs["pair"] = (adata.obs["sample"].cat.codes // 2).astype(str)
    with pytest.warns(BootstrapFallbackWarning, match="4 sample"):
        mine = calculate_gene_ranks(adata, n_boot=5, library_key="pair", **KW).attrs["bootstrap"]
    assert mine["unit"] == "cells" and mine["library_key"] is None  # 4 pairs: too few
    # no sample column at all: cells
    del adata.obs["sample"]
    del adata.uns["interscale"]["sample_key"]
    with pytest.warns(BootstrapFallbackWarning, match="no sample column"):
        assert calculate_gene_ranks(adata, n_boot=5, **KW).attrs["bootstrap"]["unit"] == "cells"


def test_bootstrap_is_deterministic_by_seed():
    adata = make_adata(seed=1)
    a = calculate_gene_ranks(adata, n_boot=25, seed=3, **KW)
    b = calculate_gene_ranks(adata, n_boot=25, seed=3, **KW)
    c = calculate_gene_ranks(adata, n_boot=25, seed=4, **KW)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert not np.array_equal(a[BOOTSTRAP_COLUMNS].to_numpy(), c[BOOTSTRAP_COLUMNS].to_numpy())
    assert c.attrs["bootstrap"]["seed"] == 4
    # a wider ci gives intervals at least as wide
    wide = calculate_gene_ranks(adata, n_boot=25, seed=3, ci=0.99, **KW)
    assert (wide["r2_local_lo"] <= a["r2_local_lo"]).all()
    assert (wide["r2_local_hi"] >= a["r2_local_hi"]).all()
    assert (
        (wide["r2_local_hi"] - wide["r2_local_lo"]) > (a["r2_local_hi"] - a["r2_local_lo"])
    ).any()


@pytest.mark.filterwarnings("ignore::interscale.evaluation.BootstrapFallbackWarning")
@HYP
@given(
    seed=st.integers(0, 10_000),
    n_samples=st.integers(2, 9),
    n_boot=st.integers(1, 30),
    ci=st.floats(0.05, 0.99),
)
def test_intervals_are_ordered(seed, n_samples, n_boot, ci):
    adata = make_adata(seed=seed, n_samples=n_samples, cells_per_sample=6, n_vars=7)
    df = calculate_gene_ranks(adata, n_boot=n_boot, seed=seed, ci=ci, **KW)
    for name in ("r2_local", "r2_global", "rank_difference"):
        lo, hi = df[f"{name}_lo"].to_numpy(), df[f"{name}_hi"].to_numpy()
        ok = np.isfinite(lo) & np.isfinite(hi)
        assert (np.isnan(lo) == np.isnan(hi)).all()
        assert (lo[ok] <= hi[ok]).all()
    diff = df[["rank_difference_lo", "rank_difference_hi"]].to_numpy()
    assert np.all(np.abs(diff) <= adata.n_vars - 1)


@HYP
@given(seed=st.integers(0, 10_000), n_samples=st.integers(5, 9), n_boot=st.integers(1, 20))
def test_resampling_identical_samples_gives_zero_width_intervals(seed, n_samples, n_boot):
    one = make_adata(seed=seed, n_samples=1, cells_per_sample=15, n_vars=6, splits=("val",))
    adata = ad.concat([one] * n_samples, index_unique="-")
    adata.obs["sample"] = np.repeat([f"s{i}" for i in range(n_samples)], one.n_obs)
    adata.uns["interscale"] = {"layer_key": "log1p_norm"}
    df = calculate_gene_ranks(adata, n_boot=n_boot, seed=seed, **KW)
    assert df.attrs["bootstrap"]["unit"] == "samples"
    # every resample is n_samples copies of the one sample: the same R^2 as the point estimate
    for head in ("local", "global"):
        np.testing.assert_allclose(df[f"r2_{head}_lo"], df[f"r2_{head}"], rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(df[f"r2_{head}_hi"], df[f"r2_{head}"], rtol=1e-9, atol=1e-9)
    r2 = np.sort(df[["r2_local", "r2_global"]].to_numpy(), axis=0)
    if np.min(np.diff(r2, axis=0)) > 1e-7:  # ranks cannot flip through rounding
        np.testing.assert_array_equal(df["rank_difference_lo"], df["Rank Difference"])
        np.testing.assert_array_equal(df["rank_difference_hi"], df["Rank Difference"])


def test_bootstrap_separates_a_clearly_better_head():
    rng = np.random.default_rng(0)
    n, g = 8000, 40
    x = rng.normal(size=(n, g))
    adata = ad.AnnData(X=np.zeros((n, g), dtype=np.float32))
    adata.layers["log1p_norm"] = x
    adata.layers["_y_pred_local"] = x + rng.normal(size=(n, g))
    adata.layers["_y_pred_global"] = x + 2 * rng.normal(size=(n, g))
    adata.obs["sample"] = rng.integers(0, 12, n).astype(str)
    adata.uns["interscale"] = {"layer_key": "log1p_norm"}
    df = calculate_gene_ranks(adata, n_boot=50, **KW)
    assert df.attrs["bootstrap"]["unit"] == "samples"
    # R^2 about 0 (local) vs -3 (global) on every gene: the intervals do not overlap
    assert (df["r2_local_lo"] > df["r2_global_hi"]).all()
    width = df["r2_local_hi"] - df["r2_local_lo"]
    assert ((width > 0) & (width < 0.2)).all()  # sd of R^2 at 8,000 cells is about 0.03
