"""Tests of interscale.pl.baselines: model R^2 against the linear baselines, headless (Agg)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection

import interscale
from interscale.evaluation import calculate_gene_ranks, linear_baselines

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COLUMNS = ["mean", "hop1", "hop2", "sample", "hop2_sample"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def tables(n_genes: int = 12, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(df_ranks-like table, baseline table) with distinct values per gene."""
    rng = np.random.default_rng(seed)
    genes = [f"G{i}" for i in range(n_genes)]
    ranks = pd.DataFrame(
        {
            "gene": genes,
            "Local Rank": np.arange(n_genes, dtype=float),
            "Global Rank": np.arange(n_genes, dtype=float)[::-1],
            "r2_local": rng.uniform(-0.2, 0.9, n_genes),
            "r2_global": rng.uniform(-0.2, 0.9, n_genes),
        }
    )
    base = pd.DataFrame(
        rng.uniform(-0.3, 0.8, (n_genes, len(COLUMNS))),
        index=pd.Index(genes, name="gene"),
        columns=COLUMNS,
    )
    return ranks, base


def points(ax) -> np.ndarray:
    """All scatter points of an Axes, stacked."""
    offsets = [c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)]
    return np.vstack([np.asarray(o) for o in offsets if len(o)])


def face_colors(ax) -> set[tuple[float, ...]]:
    return {
        tuple(np.round(fc, 6))
        for c in ax.collections
        if isinstance(c, PathCollection) and len(c.get_offsets())
        for fc in c.get_facecolors()
    }


def sorted_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


def test_two_panels_with_aligned_points_diagonal_and_labels(tmp_path):
    ranks, base = tables()
    shuffled = base.sample(frac=1.0, random_state=1)  # alignment is by name, not position
    fig = interscale.pl.baselines(ranks, shuffled, save=tmp_path / "b.png")
    assert isinstance(fig, matplotlib.figure.Figure)
    left, right = fig.axes[:2]
    for ax, head, column in ((left, "local", "hop2"), (right, "global", "hop2_sample")):
        want = np.column_stack([base.loc[ranks["gene"], column], ranks[f"r2_{head}"]])
        np.testing.assert_allclose(sorted_rows(points(ax)), sorted_rows(want))
        assert ax.get_xlabel().startswith("held-out R\u00b2, ridge on")
        assert ax.get_ylabel() == f"R\u00b2, {head} head"
        assert column in ax.get_title()
        assert ax.get_xlim() == ax.get_ylim()
        lo, hi = ax.get_xlim()
        assert lo <= want.min() and hi >= want.max()
        diagonals = [
            line
            for line in ax.get_lines()
            if np.array_equal(line.get_xdata(), line.get_ydata()) and len(line.get_xdata()) == 2
        ]
        assert len(diagonals) == 1
        above = int((want[:, 1] > want[:, 0]).sum())
        assert any(t.get_text().startswith(f"model above baseline: {above}/12") for t in ax.texts)
        assert len(face_colors(ax)) == 1
        assert ax.get_legend() is None
    assert "2-hop neighbourhood" in left.get_xlabel()
    assert "2-hop + sample" in right.get_xlabel()
    assert fig._suptitle is not None and "baselines" in fig._suptitle.get_text()
    assert (tmp_path / "b.png").read_bytes().startswith(PNG_MAGIC)
    assert [p.name for p in tmp_path.iterdir()] == ["b.png"]  # no temporary file left


def test_largest_hop_is_the_default_and_columns_can_be_chosen():
    ranks, base = tables()
    base["hop3"] = base["hop1"] + 10.0
    base["hop3_sample"] = base["sample"] - 10.0
    fig = interscale.pl.baselines(ranks, base, title=None)
    left, right = fig.axes[:2]
    np.testing.assert_allclose(np.sort(points(left)[:, 0]), np.sort(base["hop3"]))
    np.testing.assert_allclose(np.sort(points(right)[:, 0]), np.sort(base["hop3_sample"]))
    assert "3-hop" in left.get_xlabel()
    assert fig._suptitle is None
    fig = interscale.pl.baselines(ranks, base, local_baseline="hop1", global_baseline="sample")
    left, right = fig.axes[:2]
    np.testing.assert_allclose(np.sort(points(left)[:, 0]), np.sort(base["hop1"]))
    np.testing.assert_allclose(np.sort(points(right)[:, 0]), np.sort(base["sample"]))
    assert "leave-one-out sample mean" in right.get_xlabel()


def test_program_colours_and_legend():
    ranks, base = tables(n_genes=12)
    adata = ad.AnnData(var=pd.DataFrame(index=base.index.copy()))
    adata.var["program"] = pd.Categorical(
        ["beta", "alpha", "gamma"] * 4, categories=["gamma", "beta", "alpha", "unused"]
    )
    fig = interscale.pl.baselines(ranks, base, adata=adata)
    left, right = fig.axes[:2]
    assert len(face_colors(left)) == len(face_colors(right)) == 3
    legend = right.get_legend()
    assert legend is not None and legend.get_title().get_text() == "program"
    assert [t.get_text() for t in legend.get_texts()] == ["gamma", "beta", "alpha"]
    # the points of each program are its genes
    for coll in right.collections:
        if isinstance(coll, PathCollection) and coll.get_label() == "alpha":
            genes = adata.var_names[adata.var["program"] == "alpha"]
            want = np.column_stack(
                [base.loc[genes, "hop2_sample"], ranks.set_index("gene").loc[genes, "r2_global"]]
            )
            np.testing.assert_allclose(
                sorted_rows(np.asarray(coll.get_offsets())), sorted_rows(want)
            )
    # a missing program is 'unassigned'; another key or no column: one colour, no legend
    adata.var["other"] = ["x", None, "y"] * 4
    fig = interscale.pl.baselines(ranks, base, adata=adata, program_key="other")
    texts = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert texts == ["x", "y", "unassigned"]
    assert len(face_colors(fig.axes[0])) == 3
    fig = interscale.pl.baselines(ranks, base, adata=adata, program_key="absent")
    assert len(face_colors(fig.axes[0])) == 1 and fig.axes[1].get_legend() is None


def test_many_programs_get_distinct_colours():
    ranks, base = tables(n_genes=30)
    adata = ad.AnnData(var=pd.DataFrame(index=base.index.copy()))
    adata.var["program"] = [f"p{i:02d}" for i in range(25)] + ["p00"] * 5
    fig = interscale.pl.baselines(ranks, base, adata=adata)
    assert len(face_colors(fig.axes[0])) == 25


def test_draws_on_a_given_pair_of_axes_and_shows(monkeypatch):
    ranks, base = tables()
    shown = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(1))
    fig, axes = plt.subplots(2, 2)
    out = interscale.pl.baselines(ranks, base, ax=axes[1], show=True)
    assert out is fig and shown == [1]
    assert len(points(axes[1][0])) == len(points(axes[1][1])) == 12
    assert not axes[0][0].collections and not axes[0][1].collections
    with pytest.raises(ValueError, match="pair of matplotlib Axes"):
        interscale.pl.baselines(ranks, base, ax=axes[0][0])
    with pytest.raises(ValueError, match="pair of matplotlib Axes"):
        interscale.pl.baselines(ranks, base, ax=axes.ravel()[:3])


def test_non_finite_values_are_left_out():
    ranks, base = tables()
    ranks.loc[3, "r2_local"] = np.nan
    base.loc["G5", "hop2_sample"] = np.nan
    fig = interscale.pl.baselines(ranks, base)
    assert len(points(fig.axes[0])) == 11 and len(points(fig.axes[1])) == 11
    assert np.isfinite(fig.axes[0].get_xlim()).all()


def test_bad_input():
    ranks, base = tables()
    with pytest.raises(TypeError, match="DataFrame"):
        interscale.pl.baselines(ranks.to_dict(), base)
    with pytest.raises(TypeError, match="df_baselines"):
        interscale.pl.baselines(ranks, base.to_numpy())
    with pytest.raises(KeyError, match="r2_global"):
        interscale.pl.baselines(ranks.drop(columns="r2_global"), base)
    with pytest.raises(KeyError, match="G4"):
        interscale.pl.baselines(ranks, base.drop(index="G4"))
    with pytest.raises(KeyError, match="nope"):
        interscale.pl.baselines(ranks, base, local_baseline="nope")
    with pytest.raises(KeyError, match="hop2_sample"):
        interscale.pl.baselines(ranks, base.drop(columns="hop2_sample"))
    with pytest.raises(KeyError, match="local_baseline"):
        interscale.pl.baselines(ranks, base[["mean", "sample"]])
    with pytest.raises(ValueError, match="empty"):
        interscale.pl.baselines(ranks.iloc[:0], base)
    with pytest.raises(ValueError, match="duplicate"):
        interscale.pl.baselines(ranks, pd.concat([base, base.iloc[:1]]))
    adata = ad.AnnData(var=pd.DataFrame({"program": ["a"] * 11}, index=base.index[:11]))
    with pytest.raises(KeyError, match="G11"):
        interscale.pl.baselines(ranks, base, adata=adata)
    with pytest.raises(TypeError, match="AnnData"):
        interscale.pl.baselines(ranks, base, adata=base)
    with pytest.raises(FileNotFoundError):
        interscale.pl.baselines(ranks, base, save="/nonexistent-folder/x.png")


def test_end_to_end_with_gene_ranks_and_linear_baselines(tmp_path):
    rng = np.random.default_rng(0)
    sizes, g = (40, 50, 45, 35, 40), 8
    n = sum(sizes)
    obs = pd.DataFrame(
        {
            "sample": pd.Categorical(np.repeat([f"s{i}" for i in range(5)], sizes)),
            "split": np.repeat(["train", "train", "train", "val", "test"], sizes),
        },
        index=[f"c{i}" for i in range(n)],
    )
    adata = ad.AnnData(obs=obs, var=pd.DataFrame(index=[f"GENE{i}" for i in range(g)]))
    adata.obsm["spatial"] = rng.random((n, 2)) * 10
    x = rng.gamma(2.0, 1.0, (n, g)) + np.sin(adata.obsm["spatial"][:, :1])
    adata.layers["log1p_norm"] = x
    adata.layers["_y_pred_local"] = x + rng.normal(size=x.shape) * 0.5
    adata.layers["_y_pred_global"] = x + rng.normal(size=x.shape)
    adata.var["program"] = ["up", "down"] * (g // 2)
    interscale.pp.spatial_neighbors(adata, radius=1.5, library_key="sample")
    linear_baselines(adata, alpha=1.0)
    ranks = calculate_gene_ranks(
        adata,
        layers_local_pred="_y_pred_local",
        layers_global_pred="_y_pred_global",
        layer_true="log1p_norm",
    )
    fig = interscale.pl.baselines(
        ranks, adata.varm["linear_baselines"], adata=adata, save=tmp_path / "e2e.png", dpi=40
    )
    assert (tmp_path / "e2e.png").read_bytes().startswith(PNG_MAGIC)
    assert len(points(fig.axes[0])) == g
    assert len(face_colors(fig.axes[1])) == 2
