"""evaluate_to_folder and `interscale evaluate` on a tiny trained model."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import RADIUS, organoids, tiny_config

from interscale.cli import main
from interscale.evaluation import (
    BootstrapFallbackWarning,
    calculate_gene_ranks,
    driven_genes,
    evaluate_to_folder,
    linear_baselines,
)
from interscale.evaluation._report_floors import _floor_metrics
from interscale.model import CombinedModel


@pytest.fixture(scope="module")
def trained_files(tmp_path_factory):
    import matplotlib

    matplotlib.use("Agg")
    root = tmp_path_factory.mktemp("report")
    adata = organoids(5, (120, 200), 0, setup=True)
    model = CombinedModel(adata, tiny_config(n_epochs=2, width=32))
    model.train(progress_bar=False)
    ckpt = model.save(root / "ckpt")
    model.get_model_output(adata)
    h5ad = root / "trained.h5ad"
    adata.write_h5ad(h5ad)
    return h5ad, ckpt, adata


_EXPECTED_FILES = [
    "gene_ranks.csv",
    "gene_ranks.png",
    "latent_rank.csv",
    "latent_correlation_local.png",
    "latent_correlation_global.png",
    "loadings_local.csv",
    "loadings_global.csv",
    "dim_importance_local.csv",
    "dim_importance_global.csv",
    "dim_importance_local.png",
    "dim_importance_global.png",
    "genes_dim_local.csv",
    "genes_dim_global.csv",
    "genes_dim_local.png",
    "genes_dim_global.png",
    "enrichment_local.csv",
    "enrichment_global.csv",
    "linear_baselines.csv",
    "baselines.png",
    "driven_genes.csv",
    "metrics.json",
]


def test_evaluate_to_folder_writes_tables_figures_and_metrics(trained_files, tmp_path):
    h5ad, ckpt, adata = trained_files
    out = tmp_path / "eval"
    with pytest.warns(BootstrapFallbackWarning, match="resamples cells"):
        metrics = evaluate_to_folder(h5ad, ckpt, out)
    for name in _EXPECTED_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    # no temp files left behind
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))

    # ranks are scored on the test samples only (val chose the best epoch), with intervals
    heldout = (adata.obs["split"] == "test").to_numpy()
    assert metrics["cells"] == "test" and metrics["n_cells_scored"] == int(heldout.sum())
    assert 0 < heldout.sum() < adata.n_obs
    assert metrics["n_samples_scored"] == adata.obs.loc[heldout, "sample"].nunique() >= 1
    assert metrics["cells_seen_by_model"] == []
    assert metrics["bootstrap"]["n_boot"] == 100 and metrics["bootstrap"]["unit"] == "cells"
    # R^2 means agree with an independent per-gene computation on those cells
    with pytest.warns(BootstrapFallbackWarning):
        ranks = calculate_gene_ranks(
            adata,
            layers_local_pred="_y_pred_local",
            layers_global_pred="_y_pred_global",
            cells="test",
            n_boot=100,
        )
    assert (ranks["bootstrap_unit"] == "cells").all()
    truth = adata.layers["log1p_norm"].toarray().astype(np.float64)[heldout]
    pred = np.asarray(adata.layers["_y_pred_local"], dtype=np.float64)[heldout]
    ss_tot = ((truth - truth.mean(0)) ** 2).sum(0)
    r2 = 1 - ((truth - pred) ** 2).sum(0) / ss_tot
    assert metrics["mean_r2_local"] == pytest.approx(np.mean(r2[ss_tot > 0]), rel=1e-6)
    table = pd.read_csv(out / "gene_ranks.csv")
    np.testing.assert_allclose(table["Rank Difference"], ranks["Rank Difference"])
    np.testing.assert_allclose(table["rank_difference_lo"], ranks["rank_difference_lo"])
    # claimed genes: those of driven_genes on the written table, each named with its floor
    floors = pd.read_csv(out / "linear_baselines.csv", index_col=0)
    claims = pd.read_csv(out / "driven_genes.csv")
    for head in ("local", "global"):
        claimed = driven_genes(table, which=head)
        assert metrics[f"n_driven_{head}"] == len(claimed)
        records = metrics[f"driven_genes_{head}"]
        assert [r["gene"] for r in records] == claimed[:10]
        assert list(claims.loc[claims["head"] == head, "gene"]) == claimed
        floor = "hop2" if head == "local" else "hop2_sample"
        for r in records:
            r2_floor = floors.loc[r["gene"], floor]
            assert r["floor"] == floor and r["r2_floor"] == pytest.approx(r2_floor)
            assert r["beats_floor"] == (r["r2"] > r2_floor)
        beating = driven_genes(table, which=head, baselines=floors)
        assert metrics[f"n_driven_{head}_beating_floor"] == len(beating)
        if not claimed:
            assert metrics[f"enrichment_reason_{head}"] == f"no claimed {head}-driven genes"
            assert metrics[f"top_term_{head}"] is None

    # important dims come from the computed importance, and the genes_dim table uses them
    for head in ("local", "global"):
        dims = metrics[f"important_dims_{head}"]
        assert metrics[f"n_important_dims_{head}"] == len(dims) >= 1
        imp = pd.read_csv(out / f"dim_importance_{head}.csv")
        assert set(dims) == set(imp["dim"].head(len(dims)))
        genes_dim = pd.read_csv(out / f"genes_dim_{head}.csv", index_col=0)
        assert [int(c) for c in genes_dim.columns] == dims
        assert 1 <= metrics[f"latent_rank_{head}"] <= 16
    assert 0.0 <= metrics["auroc_rank_difference"] <= 1.0
    assert "auroc_reason" not in metrics


def test_report_floors_match_linear_baselines(trained_files, tmp_path):
    """The floor table, the means, the best floor, the ratios and the gene counts of the
    report are those of linear_baselines called directly on the same test cells."""
    h5ad, ckpt, adata = trained_files
    out = tmp_path / "eval"
    metrics = evaluate_to_folder(h5ad, ckpt, out, n_boot=0)
    direct = linear_baselines(
        ad.read_h5ad(h5ad),
        layer_key="log1p_norm",
        library_key="sample",
        split_key="split",
        heldout=("test",),
        key_added=None,
    )
    written = pd.read_csv(out / "linear_baselines.csv", index_col=0)
    pd.testing.assert_frame_equal(written, direct, check_names=False, atol=1e-12, rtol=0)
    assert metrics["floors_reason"] is None
    assert metrics["floor_cells"] == "test"
    assert metrics["floor_n_cells_scored"] == int((adata.obs["split"] == "test").sum())
    assert metrics["floor_n_train_cells"] == int((adata.obs["split"] == "train").sum())
    assert metrics["floor_graph"] == "adata.obsp['spatial_connectivities']"
    assert metrics["floor_n_edges_dropped_between_samples"] == 0
    assert metrics["floor_n_genes_compared"] == adata.n_vars
    means = direct.mean()
    assert metrics["floor_mean_r2"] == pytest.approx(means.to_dict(), rel=1e-9)
    assert metrics["best_floor"] == means.idxmax()
    assert metrics["best_floor_mean_r2"] == pytest.approx(means.max(), rel=1e-9)
    ranks = pd.read_csv(out / "gene_ranks.csv").set_index("gene").loc[direct.index]
    for head, own in (("local", "hop2"), ("global", "hop2_sample")):
        r2 = ranks[f"r2_{head}"]
        assert metrics["floor_head_mean_r2"][head] == pytest.approx(r2.mean(), rel=1e-9)
        assert metrics[f"mean_r2_{head}"] == pytest.approx(r2.mean(), rel=1e-9)
        assert metrics[f"floor_{head}"] == own
        # a ratio to a floor at or below the training mean (R^2 <= 0) is None
        for key, floor_mean in (("best_floor", means.max()), ("floor", means[own])):
            got = metrics[f"ratio_{head}_to_{key}"]
            if floor_mean > 0:
                assert got == pytest.approx(r2.mean() / floor_mean, rel=1e-9)
            else:
                assert got is None
        assert metrics[f"n_genes_{head}_above_floor"] == int((r2 > direct[own]).sum())
        assert metrics[f"n_genes_{head}_above_best_floor"] == int(
            (r2 > direct[means.idxmax()]).sum()
        )
        assert metrics[f"n_genes_{head}_above_mean_floor"] == int((r2 > direct["mean"]).sum())


def test_floor_metrics_ratios_against_numpy():
    """Ratios and counts on a table with positive floors and a gene no floor can score."""
    rng = np.random.default_rng(3)
    genes = [f"g{i}" for i in range(40)]
    floors = pd.DataFrame(
        {
            "mean": rng.uniform(-0.02, 0.0, 40),
            "hop1": rng.uniform(0.05, 0.3, 40),
            "hop2": rng.uniform(0.05, 0.35, 40),
            "sample": rng.uniform(-0.1, 0.1, 40),
            "hop2_sample": rng.uniform(0.0, 0.4, 40),
        },
        index=pd.Index(genes, name="gene"),
    )
    floors.iloc[7] = np.nan  # constant on the held-out cells
    ranks = pd.DataFrame(
        {"gene": genes[::-1], "r2_local": rng.uniform(0, 0.4, 40), "r2_global": 0.0}
    )
    ranks["r2_global"] = rng.uniform(0, 0.4, 40)
    got = _floor_metrics(ranks, floors)
    table = floors.loc[ranks["gene"]].to_numpy()
    ok = np.isfinite(table).all(axis=1)
    means = np.nanmean(table[ok], axis=0)
    best = int(np.argmax(means))
    assert got["floor_n_genes_compared"] == 39
    assert got["best_floor"] == floors.columns[best]
    for head, own in (("local", "hop2"), ("global", "hop2_sample")):
        r2 = ranks[f"r2_{head}"].to_numpy()[ok]
        assert got[f"ratio_{head}_to_best_floor"] == pytest.approx(r2.mean() / means[best])
        j = list(floors.columns).index(own)
        assert got[f"ratio_{head}_to_floor"] == pytest.approx(r2.mean() / means[j])
        assert got[f"n_genes_{head}_above_floor"] == int((r2 > table[ok, j]).sum())
    # a best floor at or below the training mean gives no ratio
    got = _floor_metrics(ranks, floors.assign(hop1=-1.0, hop2=-1.0, hop2_sample=-1.0, sample=-1.0))
    assert got["best_floor"] == "mean" and got["ratio_local_to_best_floor"] is None


def test_report_says_why_there_are_no_floors(trained_files, tmp_path):
    h5ad, ckpt, adata = trained_files
    # every cell: the floors are fitted on train and compared on held-out splits only
    metrics = evaluate_to_folder(h5ad, ckpt, tmp_path / "all", cells="all", n_boot=0)
    assert "every cell" in metrics["floors_reason"]
    assert metrics["best_floor"] is None and metrics["ratio_local_to_best_floor"] is None
    assert metrics["cells_seen_by_model"] == ["train", "val"]
    assert not (tmp_path / "all" / "linear_baselines.csv").exists()
    assert not (tmp_path / "all" / "baselines.png").exists()
    for head in ("local", "global"):
        assert all(r["floor"] is None for r in metrics[f"driven_genes_{head}"])
        assert metrics[f"n_driven_{head}_beating_floor"] is None
    saved = json.loads((tmp_path / "all" / "metrics.json").read_text())
    assert saved["floors_reason"] == metrics["floors_reason"]

    # one training sample: alpha cannot be chosen over whole samples
    one = adata.copy()
    train_samples = sorted(one.obs.loc[one.obs["split"] == "train", "sample"].unique())
    assert len(train_samples) >= 2
    split = one.obs["split"].astype(str)
    split[(split == "train") & (one.obs["sample"] != train_samples[0])] = "val"
    one.obs["split"] = pd.Categorical(split)
    path = tmp_path / "one.h5ad"
    one.write_h5ad(path)
    metrics = evaluate_to_folder(path, ckpt, tmp_path / "one", n_boot=0)
    assert "at least 2 training samples" in metrics["floors_reason"]
    assert metrics["floor_mean_r2"] == {} and metrics["mean_r2_local"] is not None

    # no stored graph: the floors use the graph the model's config builds
    bare = adata.copy()
    del bare.obsp["spatial_connectivities"], bare.obsp["spatial_distances"]
    path = tmp_path / "nograph.h5ad"
    bare.write_h5ad(path)
    metrics = evaluate_to_folder(path, ckpt, tmp_path / "nograph", n_boot=0)
    assert metrics["floors_reason"] is None
    assert metrics["floor_graph"].startswith("built from the config")


def test_auroc_reason_is_recorded(trained_files, tmp_path):
    h5ad, ckpt, adata = trained_files
    bare = adata.copy()
    del bare.var["program"]
    path = tmp_path / "bare.h5ad"
    bare.write_h5ad(path)
    metrics = evaluate_to_folder(path, ckpt, tmp_path / "bare", n_boot=0)
    assert metrics["auroc_rank_difference"] is None
    assert metrics["auroc_reason"] == "no var['program'] column: data without planted programs"
    saved = json.loads((tmp_path / "bare" / "metrics.json").read_text())
    assert saved["auroc_reason"] == metrics["auroc_reason"]
    assert "bootstrap" not in metrics

    one_class = adata.copy()
    one_class.var["program"] = "local"
    path = tmp_path / "one.h5ad"
    one_class.write_h5ad(path)
    metrics = evaluate_to_folder(path, ckpt, tmp_path / "one", n_boot=0)
    assert metrics["auroc_rank_difference"] is None
    assert "both classes" in metrics["auroc_reason"]


@pytest.mark.filterwarnings("ignore::interscale.evaluation.BootstrapFallbackWarning")
def test_cli_evaluate_returns_zero(trained_files, tmp_path, capsys):
    h5ad, ckpt, adata = trained_files
    out = tmp_path / "cli"
    args = ["evaluate", "--h5ad", str(h5ad), "--checkpoint", str(ckpt), "--out", str(out)]
    assert main([*args, "--cells", "all", "--n-boot", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["cells"] == "all" and metrics["n_cells_scored"] == adata.n_obs
    assert "bootstrap" not in metrics
    assert "rank_difference_lo" not in pd.read_csv(out / "gene_ranks.csv").columns
    assert "gene ranks scored on: all" in capsys.readouterr().out
    # default: the test samples with 100 resamples, and the floors on them
    assert main([*args]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["cells"] == "test" and metrics["bootstrap"]["n_boot"] == 100
    assert metrics["floor_cells"] == "test" and (out / "linear_baselines.csv").is_file()
    printed = capsys.readouterr().out
    assert "gene ranks scored on: test" in printed and "linear floors on test" in printed
    assert main([*args, "--cells", "val,holdout"]) == 2
    assert "holdout" in capsys.readouterr().err


def test_missing_outputs_raise_before_writing(trained_files, tmp_path):
    h5ad, ckpt, adata = trained_files
    bare = adata.copy()
    del bare.layers["_y_pred_global"]
    path = tmp_path / "bare.h5ad"
    bare.write_h5ad(path)
    with pytest.raises(KeyError, match="_y_pred_global"):
        evaluate_to_folder(path, ckpt, tmp_path / "never")
    assert not (tmp_path / "never").exists()
    with pytest.raises(FileNotFoundError):
        evaluate_to_folder(tmp_path / "nope.h5ad", ckpt, tmp_path / "never")


def test_driven_genes_against_a_floor():
    """driven_genes(baselines=...) keeps the claims whose head beats the floor;
    driven_genes_vs_floor names the floor of every claim (independent numpy check)."""
    from interscale.evaluation import driven_genes_vs_floor, floor_of

    rng = np.random.default_rng(5)
    n = 30
    genes = [f"g{i}" for i in range(n)]
    ranks = pd.DataFrame({"gene": genes, "r2_local": rng.uniform(0.02, 0.5, n)})
    ranks["r2_global"] = rng.uniform(0.02, 0.5, n)
    ranks["Rank Difference"] = rng.permutation(np.arange(n) - n / 2 + 0.5)
    floors = pd.DataFrame(
        {c: rng.uniform(0, 0.5, n) for c in ("mean", "hop1", "hop3", "sample", "hop3_sample")},
        index=genes[::-1],
    )
    floors.loc["g3", "hop3"] = np.nan
    assert floor_of(floors.columns, "local") == "hop3"
    assert floor_of(floors.columns, "global") == "hop3_sample"
    for head, sign in (("local", 1), ("global", -1)):
        claimed = driven_genes(ranks, which=head)
        table = driven_genes_vs_floor(ranks, floors, which=head)
        assert list(table["gene"]) == claimed
        own = floor_of(floors.columns, head)
        assert set(table["floor"]) <= {own}
        r2 = ranks.set_index("gene")[f"r2_{head}"]
        floor_r2 = floors[own]
        expected = [g for g in claimed if r2[g] > floor_r2[g]]  # NaN floor never beaten
        assert [g for g, b in zip(table["gene"], table["beats_floor"], strict=True) if b] == (
            expected
        )
        assert driven_genes(ranks, which=head, baselines=floors) == expected
        side = [g for g in genes if sign * ranks.set_index("gene").loc[g, "Rank Difference"] > 0]
        assert set(claimed) == {g for g in side if r2[g] > 0.01}
    assert "g3" not in driven_genes(ranks, which="local", baselines=floors, floor="hop3")
    other = driven_genes(ranks, which="local", baselines=floors, floor="sample")
    assert other == [g for g in driven_genes(ranks) if r2_of(ranks, g) > floors.loc[g, "sample"]]
    with pytest.raises(KeyError, match="hop9"):
        driven_genes(ranks, baselines=floors, floor="hop9")
    with pytest.raises(KeyError, match="not in baselines"):
        driven_genes_vs_floor(ranks, floors.drop(index="g0"), which="local")
    with pytest.raises(TypeError, match="DataFrame"):
        driven_genes(ranks, baselines=floors.to_numpy())
    with pytest.raises(KeyError, match="no global floor"):
        floor_of(["mean", "hop1"], "global")


def r2_of(ranks: pd.DataFrame, gene: str) -> float:
    return float(ranks.set_index("gene").loc[gene, "r2_local"])


def test_floor_graph_drops_edges_between_samples(trained_files):
    """A graph built over the whole data set (as over a section later cut into tiles) keeps
    only the edges inside each sample unit for the floors."""
    from types import SimpleNamespace

    import interscale as isc
    from interscale.evaluation._report_floors import _FLOOR_GRAPH_KEY, _floor_inputs

    _, _, adata = trained_files
    crossing = adata.copy()
    # samples laid on top of each other, one graph over all of them
    xy = np.asarray(crossing.obsm["spatial"], dtype=np.float64)
    centre = pd.DataFrame(xy).groupby(crossing.obs["sample"].to_numpy()).transform("mean")
    crossing.obsm["spatial"] = xy - centre.to_numpy()
    isc.pp.spatial_neighbors(crossing, radius=RADIUS, library_key=None)
    graph = crossing.obsp["spatial_connectivities"].tocoo()
    codes = crossing.obs["sample"].cat.codes.to_numpy()
    between = int((codes[graph.row] != codes[graph.col]).sum())
    assert between > 0
    info = _floor_inputs(crossing, SimpleNamespace(cfg=tiny_config()), {"sample_key": ["sample"]})
    assert info["n_edges_dropped_between_samples"] == between
    kept = crossing.obsp[_FLOOR_GRAPH_KEY].tocoo()
    assert kept.nnz == graph.nnz - between
    assert (codes[kept.row] == codes[kept.col]).all()
