"""Gene ranks on held-out cells, driven-gene claims and their plot, held-out R^2 and AUROC."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import sys

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from _ranks_helpers import KW, dense, make_adata, naive_r2
from matplotlib.collections import LineCollection
from scipy.stats import rankdata

import interscale
from interscale.cli import _heldout_auroc, _print_report
from interscale.evaluation import calculate_gene_ranks, driven_genes, heldout_r2
from interscale.evaluation._ranks import RANK_COLUMNS


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ----------------------------------------------------------------------------- cells=


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize(
    "cells,label",
    [
        (["val", "test"], "val,test"),
        (("test", "val"), "test,val"),
        ("val, test", "val,test"),
        (["val"], "val"),
    ],
)
def test_cells_by_split_equal_the_subset_copy(sparse, cells, label, monkeypatch):
    adata = make_adata(sparse=sparse)
    names = [cells] if isinstance(cells, str) else list(cells)
    names = [n.strip() for part in names for n in part.split(",")]
    mask = adata.obs["split"].isin(names).to_numpy()
    expected = calculate_gene_ranks(adata[mask].copy(), **KW)
    # the AnnData is neither copied nor subset: only rows of its layers are read
    monkeypatch.setattr(ad.AnnData, "copy", lambda *a, **k: pytest.fail("copied"))
    monkeypatch.setattr(ad.AnnData, "__getitem__", lambda *a, **k: pytest.fail("subset"))
    got = calculate_gene_ranks(adata, cells=cells, **KW)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert got.attrs["cells"] == label
    assert got.attrs["n_cells"] == int(mask.sum()) < adata.n_obs
    whole = calculate_gene_ranks(adata, **KW)
    assert not np.array_equal(got["r2_local"], whole["r2_local"])


def test_cells_mask_equal_the_subset_copy_in_small_chunks(monkeypatch):
    monkeypatch.setattr("interscale.evaluation._utils._CHUNK_VALUES", 50)  # several chunks
    adata = make_adata(seed=2)
    y = np.array(adata.layers["_y_pred_local"])
    y[::9, 3] = np.nan  # per-head missing values on the selected rows too
    adata.layers["_y_pred_local"] = y
    mask = np.random.default_rng(0).random(adata.n_obs) < 0.4
    got = calculate_gene_ranks(adata, cells=mask, **KW)
    expected = calculate_gene_ranks(adata[mask].copy(), **KW)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert got.attrs["cells"] == f"mask ({mask.sum()} cells)"
    series = calculate_gene_ranks(adata, cells=pd.Series(mask, index=adata.obs_names), **KW)
    pd.testing.assert_frame_equal(series, expected, check_exact=True)


def test_all_cells_unchanged():
    adata = make_adata(seed=4)
    base = calculate_gene_ranks(adata, **KW)
    assert list(base.columns) == RANK_COLUMNS
    assert base.attrs["cells"] == "all" and base.attrs["n_cells"] == adata.n_obs
    y = dense(adata.layers["log1p_norm"])
    np.testing.assert_allclose(
        base["r2_local"], naive_r2(y, dense(adata.layers["_y_pred_local"])), rtol=1e-9
    )
    for cells in ("all", ["all"], np.ones(adata.n_obs, dtype=bool), ["train", "val", "test"]):
        pd.testing.assert_frame_equal(
            calculate_gene_ranks(adata, cells=cells, **KW), base, check_exact=True
        )


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (
            {"cells": ["val", "holdout"]},
            KeyError,
            r"holdout.*available: \['test', 'train', 'val'\]",
        ),
        ({"cells": "val", "split_key": "fold"}, KeyError, "split column 'fold'"),
        ({"cells": np.ones(7, dtype=bool)}, ValueError, r"shape \(7,\), expected \(160,\)"),
        ({"cells": np.zeros(160, dtype=bool)}, ValueError, "selects no cells"),
        ({"cells": ""}, ValueError, "names no split"),
        ({"cells": []}, ValueError, "names no split"),
        ({"cells": "all,val"}, ValueError, "'all' cannot be combined"),
        ({"cells": np.arange(160)}, TypeError, "boolean mask"),
        ({"n_boot": -1}, ValueError, "n_boot"),
        ({"n_boot": 1.5}, ValueError, "n_boot"),
        ({"n_boot": 5, "ci": 1.0}, ValueError, "ci"),
        ({"n_boot": 5, "ci": 0}, ValueError, "ci"),
        ({"n_boot": 5, "library_key": "donor"}, KeyError, "sample column 'donor'"),
        ({"top_n": 0}, ValueError, "top_n"),
    ],
)
def test_bad_input_names_the_problem(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        calculate_gene_ranks(make_adata(), **KW, **kwargs)


# ----------------------------------------------------------------------------- claims


def claim_table(boot: bool = False) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "gene": ["a", "b", "c", "d", "e", "f", "g", "h"],
            "Rank Difference": [5.0, 3.0, 7.0, 3.0, -4.0, -6.0, -1.0, 0.0],
            "r2_local": [0.30, 0.20, 0.005, 0.40, 0.1, 0.2, 0.3, 0.5],
            "r2_global": [0.10, 0.10, 0.10, 0.10, 0.30, -0.2, 0.02, 0.5],
        }
    )
    if boot:
        df["r2_local_lo"] = [0.2, -0.05, 0.001, 0.3, 0.0, 0.1, 0.2, 0.4]
        df["r2_global_lo"] = [0.0, 0.0, 0.0, 0.0, 0.2, -0.3, 0.01, 0.4]
        df["rank_difference_lo"] = [1.0, 0.5, 2.0, -1.0, -7.0, -9.0, -3.0, -1.0]
        df["rank_difference_hi"] = [8.0, 5.0, 9.0, 6.0, -1.0, 1.0, -0.5, 1.0]
    return df


def test_driven_genes_without_intervals():
    df = claim_table()
    # c has the largest gap but r2_local 0.005: below the mean-predictor floor
    assert driven_genes(df, which="local") == ["a", "b", "d"]  # b before d: table order
    assert driven_genes(df, which="local", n=2) == ["a", "b"]
    assert driven_genes(df, which="local", n=0) == []
    assert driven_genes(df, which="local", margin=0.25) == ["a", "d"]
    assert driven_genes(df, which="local", margin=0.0) == ["c", "a", "b", "d"]
    # f has the strongest global side but r2_global < 0; h (difference 0) is on no side
    assert driven_genes(df, which="global") == ["e", "g"]
    nan = df.assign(r2_local=[np.nan] + list(df["r2_local"][1:]))
    assert "a" not in driven_genes(nan, which="local")


def test_driven_genes_with_intervals():
    df = claim_table(boot=True)
    # b: r2_local_lo < 0; c: r2 point below the margin but its interval is above 0 (the
    # interval replaces the margin); d: difference interval crosses 0
    assert driven_genes(df, which="local") == ["c", "a"]
    assert driven_genes(df, which="local", require_interval=False) == ["c", "a", "d"]
    # e: claimed; f: interval crosses 0 and r2_global_lo < 0; g: claimed
    assert driven_genes(df, which="global") == ["e", "g"]
    assert driven_genes(df.assign(rank_difference_hi=1.0), which="global") == []
    assert driven_genes(
        df.assign(rank_difference_hi=1.0), which="global", require_interval=False
    ) == [
        "e",
        "g",
    ]


def test_driven_genes_bad_input():
    df = claim_table()
    with pytest.raises(ValueError, match="which"):
        driven_genes(df, which="both")
    with pytest.raises(ValueError, match="n must be"):
        driven_genes(df, n=-1)
    with pytest.raises(ValueError, match="margin"):
        driven_genes(df, margin=float("nan"))
    with pytest.raises(KeyError, match="r2_global"):
        driven_genes(df.drop(columns="r2_global"), which="global")


def test_printout_names_scored_cells_and_dropped_genes(capsys):
    adata = make_adata(seed=5, n_vars=10)
    y = dense(adata.layers["log1p_norm"])
    rng = np.random.default_rng(0)
    # g0: the local head is useless (R^2 < 0) but still ranks above the global head, which
    # is worse on it than on any other gene; g1-g4 the local head nails
    local_noise = np.array([5.0] + [0.05] * 4 + [20.0] * 5)
    global_noise = np.array([50.0] + [1.0] * 9)
    adata.layers["_y_pred_local"] = y + local_noise * rng.normal(size=y.shape)
    adata.layers["_y_pred_global"] = y + global_noise * rng.normal(size=y.shape)
    df = calculate_gene_ranks(adata, cells=["val", "test"], top_n=3, **KW)
    out = capsys.readouterr().out
    n_heldout = int(adata.obs["split"].isin(["val", "test"]).sum())
    assert f"Scored cells: val,test ({n_heldout} of {adata.n_obs} cells)" in out
    local_block = out.split("Local-Driven")[1].split("Global-Driven")[0]
    claimed = driven_genes(df, which="local", n=3)
    assert claimed and all(g in local_block for g in claimed)
    assert df.loc[0, "r2_local"] < 0.01 and df.loc[0, "Rank Difference"] > 0
    assert " g0 " not in local_block
    n_side = int((df["Rank Difference"] > 0).sum())
    n_claimed = len(driven_genes(df, which="local"))
    assert (
        f"Of the {n_side} genes with Rank Difference > 0, {n_claimed} are claimed and "
        f"{n_side - n_claimed} dropped" in local_block
    )


# ----------------------------------------------------------------------------- plot


def test_plot_highlights_claimed_genes_and_draws_intervals():
    adata = make_adata(seed=9, n_samples=10, n_vars=15)
    df = calculate_gene_ranks(adata, n_boot=30, **KW)
    ax = interscale.pl.gene_ranks(df, top_n=4)
    local_color = matplotlib.colors.to_rgba("#EE9B00")
    named_local = [
        t.get_text()
        for t in ax.texts
        if isinstance(t, matplotlib.text.Annotation)
        and matplotlib.colors.to_rgba(t.get_color()) == local_color
    ]
    assert named_local and named_local == driven_genes(df, which="local", n=4)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("Claimed local-driven") for t in legend)
    assert "90% bootstrap interval of Rank Difference (crosses y = x: includes 0)" in legend
    bars = [c for c in ax.collections if isinstance(c, LineCollection)]
    grey = bars[0].get_segments()
    assert len(grey) == len(df)
    ends = np.array(grey)  # genes x 2 x (x, y): perpendicular to y = x through the point
    np.testing.assert_allclose(ends[:, 0, 0] - ends[:, 0, 1], df["rank_difference_lo"])
    np.testing.assert_allclose(ends[:, 1, 0] - ends[:, 1, 1], df["rank_difference_hi"])
    np.testing.assert_allclose(ends[:, :, 0].sum(1) + ends[:, :, 1].sum(1), 4 * df["Avg Rank"])
    # show_all highlights the largest gaps whether claimed or not
    ax2 = interscale.pl.gene_ranks(df, top_n=4, show_all=True, intervals="none")
    named = {
        t.get_text()
        for t in ax2.texts
        if isinstance(t, matplotlib.text.Annotation)
        and matplotlib.colors.to_rgba(t.get_color()) == local_color
    }
    assert named == set(df.nlargest(4, "Rank Difference")["gene"])
    assert not [c for c in ax2.collections if isinstance(c, LineCollection)]
    with pytest.raises(ValueError, match="intervals"):
        interscale.pl.gene_ranks(df, intervals="some")


def test_plot_without_claimable_genes_says_so():
    df = claim_table()
    df["r2_local"] = -0.5
    df["r2_global"] = -0.5
    df["Local Rank"] = rankdata(df["Rank Difference"])
    df["Global Rank"] = df["Local Rank"] - df["Rank Difference"]
    df["Avg Rank"] = (df["Local Rank"] + df["Global Rank"]) / 2
    ax = interscale.pl.gene_ranks(df, top_n=3)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "Claimed local-driven: none" in legend and "Claimed global-driven: none" in legend
    colors = {matplotlib.colors.to_rgba(c) for c in ("#EE9B00", "#005F73")}
    named = [
        t
        for t in ax.texts
        if isinstance(t, matplotlib.text.Annotation)
        and matplotlib.colors.to_rgba(t.get_color()) in colors
    ]
    assert named == []


# ----------------------------------------------------------------------------- held-out R^2, job


def test_heldout_r2_moved_and_reexported():
    from interscale import cli

    assert cli.heldout_r2 is heldout_r2
    adata = make_adata(seed=6)
    got = heldout_r2(adata, "_y_pred_local", "log1p_norm")
    y, p = dense(adata.layers["log1p_norm"]), dense(adata.layers["_y_pred_local"])
    assert list(got) == ["test", "train", "val"]
    for split, value in got.items():
        rows = (adata.obs["split"] == split).to_numpy()
        assert value == pytest.approx(np.nanmean(naive_r2(y[rows], p[rows])), rel=1e-9)
    with pytest.raises(KeyError, match="fold"):
        heldout_r2(adata, "_y_pred_local", "log1p_norm", split_key="fold")


def test_job_auroc_is_heldout_and_never_silently_dropped(monkeypatch, capsys):
    adata = make_adata(seed=8)
    adata.var["program"] = ["local"] * 6 + ["global"] * 6
    out = _heldout_auroc(adata, "split")
    # held out means unseen: the test samples only (val chose the best epoch)
    n_heldout = int((adata.obs["split"] == "test").sum())
    assert out["gene_ranks_cells"] == "test" and out["gene_ranks_n_cells"] == n_heldout
    ranks = calculate_gene_ranks(adata, cells="test", **KW)
    from interscale.evaluation import auroc_rank_difference

    assert out["auroc_local_vs_global_genes"] == auroc_rank_difference(ranks, adata.var["program"])
    assert "auroc_reason" not in out

    # no test split: no held-out score, and no silent fall-back to the validation samples
    no_test = adata.copy()
    no_test.obs["split"] = no_test.obs["split"].astype(str).replace("test", "train")
    res = _heldout_auroc(no_test, "split")
    assert res["auroc_local_vs_global_genes"] is None and "gene_ranks_cells" not in res
    assert "no test samples" in res["auroc_reason"] and "cells='val'" in res["auroc_reason"]

    one_class = adata.copy()
    one_class.var["program"] = "local"
    res = _heldout_auroc(one_class, "split")
    assert res["auroc_local_vs_global_genes"] is None
    assert "both classes" in res["auroc_reason"]

    bare = adata.copy()
    del bare.var["program"]
    res = _heldout_auroc(bare, "split")
    assert res["auroc_local_vs_global_genes"] is None
    assert res["auroc_reason"] == "no var['program'] column: data without planted programs"

    monkeypatch.setitem(sys.modules, "interscale.evaluation", None)
    res = _heldout_auroc(adata, "split")
    assert res["auroc_local_vs_global_genes"] is None
    assert res["auroc_reason"].startswith("interscale.evaluation could not be imported")
    monkeypatch.undo()

    report = {
        "data": "x",
        "n_cells": 1,
        "n_genes": 1,
        "epochs_run": 1,
        "best_epoch": 0,
        "seconds_per_epoch": 0.1,
        "inference_seconds": 0.1,
        "heldout_r2_local": {"val": 0.1},
        "heldout_r2_global": {"val": 0.1},
        "total_seconds": 1.0,
        **_heldout_auroc(bare, "split"),
    }
    _print_report(report)
    printed = capsys.readouterr().out
    assert "AUROC not computed: no var['program'] column" in printed
    assert f"gene ranks scored on test ({n_heldout} cells)" in printed


def test_report_cells_reads_only_the_test_samples_as_held_out():
    from interscale.evaluation import report_cells
    from interscale.evaluation._heldout import HELDOUT_SPLITS

    assert HELDOUT_SPLITS == ("test",)
    adata = make_adata(seed=2)
    before = adata.obs.copy()
    assert report_cells(adata, "test", "split") == ["test"]
    assert report_cells(adata, ["test", "test"], "split") == ["test"]
    assert report_cells(adata, "val, test", "split") == ["val", "test"]
    # anything else is passed on unchanged
    mask = np.ones(adata.n_obs, dtype=bool)
    for other in ("all", "train", ["train", "val"], None):
        assert report_cells(adata, other, "split") == other
    assert report_cells(adata, mask, "split") is mask
    no_test = adata.copy()
    no_test.obs["split"] = no_test.obs["split"].astype(str).replace("test", "val")
    # asked for the held-out split: refused, never scored on val instead
    with pytest.raises(ValueError, match="no test samples") as err:
        report_cells(no_test, "test", "split")
    assert "best epoch" in str(err.value) and "cells='val'" in str(err.value)
    # asked for val and test explicitly: the val samples, as asked
    assert report_cells(no_test, "val,test", "split") == ["val"]
    with pytest.raises(KeyError, match="fold"):
        report_cells(adata, "test", "fold")
    pd.testing.assert_frame_equal(adata.obs, before)
