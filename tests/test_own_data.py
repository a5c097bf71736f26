"""A user's own data, end to end: counts found, samples split, no YAML needed (issue 17)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import interscale as isc
from interscale.config import load_config, tutorial_config, with_overrides
from interscale.model import CombinedModel
from interscale.names import SPLITS

ROOT = Path(__file__).resolve().parents[1]


def _readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def _blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def test_the_tutorial_config_shipped_in_the_package_is_the_repository_one():
    # the repository's example plus the linear part of each head (off there, as published)
    shipped = (ROOT / "interscale" / "config" / "tutorial.yaml").read_text().splitlines()
    example = (ROOT / "config_files" / "synthetic_example.yaml").read_text().splitlines()
    extra = [line for line in shipped if line.strip().startswith("linear_part:")]
    assert len(extra) == 1 and [line for line in shipped if line not in extra] == example
    repo = load_config(ROOT / "config_files" / "synthetic_example.yaml")
    assert tutorial_config() == with_overrides(repo, {"model.linear_part": True})


def test_readme_own_data_commands_run_as_written(tmp_path):
    (commands,) = _blocks(_readme_section("Your own data"), "bash")
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MPLBACKEND"] = "Agg"
    for line in filter(None, (c.strip() for c in commands.splitlines())):
        done = subprocess.run(
            line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, f"{line}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    run = tmp_path / "results" / "mine"
    trained = ad.read_h5ad(run / "trained.h5ad")
    assert {"_y_pred_local", "_y_pred_global"} <= set(trained.layers)
    assert set(trained.obs["split"].astype(str)) <= set(SPLITS)
    assert trained.uns["normalize"]["counts"] == "X"
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert metrics["auroc_rank_difference"] is None
    assert "program" in metrics["auroc_reason"]
    ranks = pd.read_csv(run / "evaluation" / "gene_ranks.csv")
    assert len(ranks) == trained.n_vars
    # the resolved config repeats the run: same data, same split, same settings
    config = load_config(run / "config.yaml")
    assert config.dataset.sample_key == ("library_id",)
    assert config.dataset.spatial_neighbors_kwargs.n_neighs == 10
    assert (config.dataset.train_size, config.dataset.val_size) == (0.5, 0.25)
    again = tmp_path / "again"
    argv = ["train", "--config", str(run / "config.yaml"), "--out", str(again), "--quiet"]
    done = subprocess.run(
        [sys.executable, "-m", "interscale", *argv], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    first = ad.read_h5ad(run / "preprocessed.h5ad")
    second = ad.read_h5ad(again / "preprocessed.h5ad")
    assert first.obs["split"].equals(second.obs["split"])


def test_readme_own_data_python_runs_as_written():
    (code,) = _blocks(_readme_section("Your own data"), "python")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    ranks, adata = namespace["ranks"], namespace["adata"]
    assert len(ranks) == adata.n_vars and adata.uns["normalize"]["counts"] == "X"
    assert np.isfinite(ranks["r2_global"]).any()


# ------------------------------------------------------------------ pp.normalize(layer="auto")
def _user(n_samples: int = 4) -> ad.AnnData:
    return isc.datasets.user_shaped_organoids(n_samples=n_samples, cells_per_sample=40)


def test_user_shaped_data_is_shaped_like_a_users_file():
    adata = _user()
    assert list(adata.obs.columns) == ["library_id"] and list(adata.layers) == []
    assert list(adata.obsm) == ["spatial"] and "split" not in adata.obs
    values = adata.X.data
    assert np.array_equal(values, np.round(values)) and values.min() >= 0


@pytest.mark.parametrize(
    ("layers", "expected"),
    [({}, "X"), ({"raw": 2.0}, "raw"), ({"raw": 2.0, "counts": 3.0}, "counts")],
)
def test_auto_takes_counts_then_raw_then_x(layers, expected):
    adata = _user()
    for name, factor in layers.items():
        adata.layers[name] = adata.X * factor
    isc.pp.normalize(adata)
    assert adata.uns["normalize"]["counts"] == expected
    source = adata.X if expected == "X" else adata.layers[expected]
    reference = ad.AnnData(X=source.copy())
    isc.pp.normalize(reference, layer="X", key_added="ref")
    assert (adata.layers["log1p_norm"] != reference.layers["ref"]).nnz == 0


def test_normalised_values_are_refused_as_counts_unless_asked():
    adata = _user()
    isc.pp.normalize(adata)
    adata.X = adata.layers["log1p_norm"].copy()
    before = (set(adata.layers), set(adata.uns))
    with pytest.raises(ValueError, match=r"adata.X does not look like counts.*check_counts=False"):
        isc.pp.normalize(adata, key_added="again")
    assert (set(adata.layers), set(adata.uns)) == before
    isc.pp.normalize(adata, key_added="again", check_counts=False)
    assert "again" in adata.layers


def test_auto_counts_reach_qc_too():
    adata = _user()
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    keep = np.ones(adata.n_obs, dtype=np.float32)
    keep[np.flatnonzero(totals > 0)[0]] = 0.0  # one more zero-count cell
    adata.X = sp.csr_matrix(sp.diags(keep) @ adata.X)
    summary = isc.pp.qc(adata)
    expected = int((totals == 0).sum()) + 1
    assert summary["n_zero_count"] == expected and summary["n_removed"] == expected


# ------------------------------------------------------------------ pp.split_samples
def test_split_samples_assigns_whole_samples_reproducibly():
    adata = _user(n_samples=10)
    table = isc.pp.split_samples(adata, "library_id", seed=3)
    assert adata.obs["split"].dtype == "category"
    assert list(adata.obs["split"].cat.categories) == list(SPLITS)
    assert adata.obs.groupby("library_id", observed=True)["split"].nunique().max() == 1
    assert table.value_counts().to_dict() == {"train": 5, "val": 3, "test": 2}
    other = _user(n_samples=10)
    assert isc.pp.split_samples(other, "library_id", seed=3).equals(table)
    assert not isc.pp.split_samples(other, "library_id", seed=4).equals(table)
    assert adata.uns["split_samples"]["n_samples"] == {"train": 5, "val": 3, "test": 2}


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 40),
    train=st.floats(0.05, 0.9),
    test=st.floats(0.0, 0.5),
    seed=st.integers(0, 2**16),
)
def test_split_sizes_hold_for_any_fractions(n, train, test, seed):
    val = 1.0 - train - test
    if val <= 0.01:
        return
    obs = pd.DataFrame(
        {"lib": pd.Categorical([f"s{i}" for i in range(n)])}, index=[f"c{i}" for i in range(n)]
    )
    adata = ad.AnnData(X=np.ones((n, 1), np.float32), obs=obs)
    table = isc.pp.split_samples(adata, "lib", fractions=(train, val, test), seed=seed)
    counts = table.value_counts()
    assert counts.get("train", 0) >= 1 and counts.get("val", 0) >= 1
    assert counts.sum() == n
    quota = np.array([train, val, test]) * n
    got = np.array([counts.get(s, 0) for s in SPLITS])
    # largest remainders stay within one of the quota, except where a split had to be filled
    assert (np.abs(got - quota) < 2).all()


def test_split_samples_stratifies_and_names_its_errors():
    adata = _user(n_samples=8)
    condition = {f"section_{i}": "a" if i < 4 else "b" for i in range(8)}
    adata.obs["condition"] = adata.obs["library_id"].map(condition).astype(str)
    table = isc.pp.split_samples(
        adata, "library_id", fractions=(0.5, 0.5, 0.0), stratify_key="condition"
    )
    per_split = pd.crosstab(table, table.index.map(condition))
    assert (per_split.loc["train"] == 2).all() and (per_split.loc["val"] == 2).all()
    adata.obs["mixed"] = np.arange(adata.n_obs) % 2
    with pytest.raises(ValueError, match="varies within samples"):
        isc.pp.split_samples(adata, "library_id", stratify_key="mixed")
    one = _user(n_samples=1)
    with pytest.raises(ValueError, match=r"pp\.tile"):
        isc.pp.split_samples(one, "library_id")
    with pytest.raises(KeyError, match="sample_id"):
        isc.pp.split_samples(adata, "sample_id")
    for bad in [(0.5, 0.5), (0.7, 0.2, 0.2), (1.0, 0.0, 0.0)]:
        with pytest.raises(ValueError, match="fractions"):
            isc.pp.split_samples(adata, "library_id", fractions=bad)
    with pytest.raises(TypeError, match="view"):
        isc.pp.split_samples(adata[:10], "library_id")


# ------------------------------------------------------------------ a stored graph
def test_a_stored_graph_is_used_as_is_unless_the_config_asks_for_a_rebuild():
    adata = _user()
    isc.pp.normalize(adata)
    isc.pp.split_samples(adata, "library_id")
    isc.pp.spatial_neighbors(adata, n_neighs=4, library_key="library_id")
    CombinedModel.setup_anndata(
        adata, layer_key="log1p_norm", sample_key_list=["library_id"], view_registry=False
    )
    base = with_overrides(tutorial_config(), {"dataset.spatial_neighbors_kwargs.library_key": None})
    stored = CombinedModel(adata, base)
    assert stored.graph_source_ == "adata.obsp['spatial_connectivities']"
    assert "spatial graph: adata.obsp" in stored.summary()
    rebuilt = CombinedModel(
        adata, with_overrides(base, {"dataset.spatial_neighbors_kwargs.rebuild": True})
    )
    assert rebuilt.graph_source_.startswith("built from the config (radius 200")
    n_stored = sum(g.edge_index.shape[1] for g in stored._graphs(adata))
    n_rebuilt = sum(g.edge_index.shape[1] for g in rebuilt._graphs(adata))
    assert n_stored != n_rebuilt
    assert adata.obsp["spatial_connectivities"].nnz == n_stored  # the stored one is untouched
