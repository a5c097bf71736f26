"""evaluate_to_folder and `interscale evaluate` on a tiny trained model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import organoids, tiny_config

from interscale.cli import main
from interscale.evaluation import calculate_gene_ranks, driven_genes, evaluate_to_folder
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
    "metrics.json",
]


def test_evaluate_to_folder_writes_tables_figures_and_metrics(trained_files, tmp_path):
    h5ad, ckpt, adata = trained_files
    out = tmp_path / "eval"
    metrics = evaluate_to_folder(h5ad, ckpt, out)
    for name in _EXPECTED_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    # no temp files left behind
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))

    # ranks are scored on the held-out (val + test) samples, with bootstrap intervals
    heldout = adata.obs["split"].isin(["val", "test"]).to_numpy()
    assert metrics["cells"] == "val,test" and metrics["n_cells_scored"] == int(heldout.sum())
    assert 0 < heldout.sum() < adata.n_obs
    assert metrics["bootstrap"]["n_boot"] == 100 and metrics["bootstrap"]["unit"] == "cells"
    # R^2 means agree with an independent per-gene computation on those cells
    ranks = calculate_gene_ranks(
        adata,
        layers_local_pred="_y_pred_local",
        layers_global_pred="_y_pred_global",
        cells="val,test",
        n_boot=100,
    )
    truth = adata.layers["log1p_norm"].toarray().astype(np.float64)[heldout]
    pred = np.asarray(adata.layers["_y_pred_local"], dtype=np.float64)[heldout]
    ss_tot = ((truth - truth.mean(0)) ** 2).sum(0)
    r2 = 1 - ((truth - pred) ** 2).sum(0) / ss_tot
    assert metrics["mean_r2_local"] == pytest.approx(np.mean(r2[ss_tot > 0]), rel=1e-6)
    table = pd.read_csv(out / "gene_ranks.csv")
    np.testing.assert_allclose(table["Rank Difference"], ranks["Rank Difference"])
    np.testing.assert_allclose(table["rank_difference_lo"], ranks["rank_difference_lo"])
    # claimed genes: those of driven_genes on the written table, and enriched only if any
    for head in ("local", "global"):
        claimed = driven_genes(table, which=head)
        assert metrics[f"n_driven_{head}"] == len(claimed)
        assert metrics[f"driven_genes_{head}"] == claimed[:10]
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
    # default: held-out cells with 100 resamples
    assert main([*args]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["cells"] == "val,test" and metrics["bootstrap"]["n_boot"] == 100
    assert "gene ranks scored on: val,test" in capsys.readouterr().out
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
