"""One tissue section from the command line: tiles, a whole-tile split, a config that repeats it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

import interscale as isc
from interscale.cli import _parser, main
from interscale.cli._pipeline import _heldout_auroc, _preprocess
from interscale.config import ConfigError, load_config, tutorial_config, with_overrides

TILE = 40


def _section(n_cells: int = 300) -> ad.AnnData:
    """The osmFISH cells closest to the centre of the section: one compact piece of tissue."""
    full = isc.datasets.osmfish()
    xy = full.obsm["spatial"]
    nearest = np.argsort(np.linalg.norm(xy - np.median(xy, axis=0), axis=1), kind="stable")
    return full[np.sort(nearest[:n_cells])].copy()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _train(h5ad: Path, out: Path, *extra: str) -> int:
    argv = ["train", "--h5ad", str(h5ad), "--sample-key", "section", "--out", str(out)]
    return main([*argv, "--epochs", "2", "--quiet", *extra])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One training on a 300-cell section cut into tiles of at most 40 cells, then a rerun."""
    root = tmp_path_factory.mktemp("tiling")
    h5ad = root / "section.h5ad"
    _section().write_h5ad(h5ad)
    before = _digest(h5ad)
    first = root / "first"
    assert _train(h5ad, first, "--tile-max-cells", str(TILE)) == 0
    second = root / "second"
    assert main(["train", "--config", str(first / "config.yaml"), "--out", str(second)]) == 0
    assert _digest(h5ad) == before  # the user's file is only read
    return {"h5ad": h5ad, "first": first, "second": second}


def test_config_records_the_tiling(run):
    cfg = load_config(run["first"] / "config.yaml")
    assert cfg.dataset.tile_max_cells == TILE
    assert cfg.dataset.tile_key == "tile"
    assert cfg.dataset.sample_key == ("section",)
    assert cfg.dataset.h5ad_data == str(run["h5ad"])
    assert (cfg.dataset.train_size, cfg.dataset.val_size, cfg.dataset.test_size) == (
        0.5,
        0.25,
        0.25,
    )
    assert cfg.optim.n_epochs == 2


def test_tiles_are_the_units_split_and_graphed(run):
    adata = ad.read_h5ad(run["first"] / "preprocessed.h5ad")
    tiles = adata.obs["tile"].astype(str)
    sizes = tiles.value_counts()
    assert len(sizes) == 8 and sizes.max() <= TILE  # 300 cells halved three times
    assert tiles.str.startswith("SScortex/").all()
    per_tile = adata.obs.groupby("tile", observed=True)["split"].nunique()
    assert (per_tile == 1).all()  # no tile is in two splits
    n_tiles = adata.obs.drop_duplicates("tile")["split"].value_counts()
    assert (n_tiles["train"], n_tiles["val"], n_tiles["test"]) == (4, 2, 2)
    graph = adata.obsp["spatial_connectivities"].tocoo()
    assert graph.nnz > 0
    codes = adata.obs["tile"].cat.codes.to_numpy()
    assert (codes[graph.row] == codes[graph.col]).all()  # graphs stop at tile borders
    assert list(adata.uns["interscale"]["sample_key"]) == ["tile"]
    # the tiles are interscale.pp.tile's own, computed independently here
    reference = _section()
    expected = isc.pp.tile(reference, TILE, library_key="section")
    np.testing.assert_array_equal(tiles.to_numpy(), expected.astype(str).to_numpy())


def test_rerun_from_the_config_repeats_tiles_split_and_model(run):
    first = ad.read_h5ad(run["first"] / "preprocessed.h5ad")
    second = ad.read_h5ad(run["second"] / "preprocessed.h5ad")
    assert first.obs["tile"].equals(second.obs["tile"])
    assert first.obs["split"].equals(second.obs["split"])
    (a,) = run["first"].glob("*.pt")
    (b,) = run["second"].glob("*.pt")
    state_a = torch.load(a, weights_only=False)["state_dict"]
    state_b = torch.load(b, weights_only=False)["state_dict"]
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


@pytest.mark.filterwarnings("ignore::interscale.evaluation.BootstrapFallbackWarning")
def test_output_and_evaluate_on_the_folder_score_test_only(run):
    folder = run["first"]
    assert main(["output", "--checkpoint", str(folder)]) == 0
    assert main(["evaluate", "--checkpoint", str(folder), "--n-boot", "5"]) == 0
    trained = ad.read_h5ad(folder / "trained.h5ad")
    assert {"_y_pred_local", "_y_pred_global"} <= set(trained.layers)
    metrics = json.loads((folder / "evaluation" / "metrics.json").read_text())
    n_test = int((trained.obs["split"] == "test").sum())
    assert metrics["cells"] == "test" and metrics["n_cells_scored"] == n_test < trained.n_obs
    ranks = pd.read_csv(folder / "evaluation" / "gene_ranks.csv")
    assert len(ranks) == trained.n_vars
    # the job's AUROC reads the same test cells
    report = _heldout_auroc(trained, "split")
    assert report["gene_ranks_n_cells"] == n_test


def test_stored_tiles_are_used_when_they_match(run, capsys):
    adata = ad.read_h5ad(run["first"] / "preprocessed.h5ad")
    tiles = adata.obs["tile"].copy()
    cfg = load_config(run["first"] / "config.yaml")
    _preprocess(adata, cfg)
    assert "using the stored tiles" in capsys.readouterr().out
    assert adata.obs["tile"].equals(tiles)
    other = with_overrides(cfg, {"dataset.tile_max_cells": TILE // 2})
    with pytest.raises(ValueError, match=r"tiles of at most 40 cells.*dataset\.tile_key"):
        _preprocess(adata, other)


def test_single_section_error_names_the_option(tmp_path, capsys):
    h5ad = tmp_path / "section.h5ad"
    _section(120).write_h5ad(h5ad)
    assert _train(h5ad, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "single sample" in err and "--tile-max-cells" in err
    assert "dataset.tile_max_cells" in err
    assert not (tmp_path / "out").exists()


def test_one_tile_too_few(tmp_path, capsys):
    h5ad = tmp_path / "section.h5ad"
    _section(120).write_h5ad(h5ad)
    assert _train(h5ad, tmp_path / "out", "--tile-max-cells", "500") == 2
    err = capsys.readouterr().err
    assert "lower --tile-max-cells" in err and "1 tile" in err


def test_a_foreign_tile_column_is_refused(tmp_path, capsys):
    adata = _section(120)
    adata.obs["tile"] = pd.Categorical(["a", "b"] * 60)
    h5ad = tmp_path / "section.h5ad"
    adata.write_h5ad(h5ad)
    assert _train(h5ad, tmp_path / "out", "--tile-max-cells", "30") == 2
    err = capsys.readouterr().err
    assert "obs['tile'] already exists" in err and "pp.tile did not write" in err


def test_tiling_config_is_validated():
    base = with_overrides(tutorial_config(), {"dataset.sample_key": ["section"]})
    assert base.dataset.tile_max_cells is None
    assert with_overrides(base, {"dataset.tile_max_cells": 400}).dataset.tile_max_cells == 400
    for bad, message in [
        (0, "positive integer"),
        (2.5, "integer"),
        (True, "integer"),
        ("400", "integer"),
    ]:
        with pytest.raises(ConfigError, match=rf"dataset\.tile_max_cells.*{message}"):
            with_overrides(base, {"dataset.tile_max_cells": bad})
    with pytest.raises(ConfigError, match="single column"):
        with_overrides(base, {"dataset.tile_max_cells": 4, "dataset.sample_key": ["a", "b"]})
    for key in ("section", "split"):
        with pytest.raises(ConfigError, match="tile_key"):
            with_overrides(base, {"dataset.tile_max_cells": 4, "dataset.tile_key": key})
    with pytest.raises(ConfigError, match="tile_key must not be empty"):
        with_overrides(base, {"dataset.tile_key": ""})


def test_defaults_leave_test_samples():
    args = _parser().parse_args(["evaluate", "--checkpoint", "x"])
    assert args.cells == "test"
    adata = isc.datasets.user_shaped_organoids(n_samples=8, cells_per_sample=20)
    isc.pp.split_samples(adata, "library_id")
    assert adata.uns["split_samples"]["n_samples"] == {"train": 4, "val": 2, "test": 2}
