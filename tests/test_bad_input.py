"""Bad input to preprocessing, setup, training, the config, enrichment and the command line.

One clear exception, and the AnnData left untouched (see _bad_input_helpers); legal but odd
input must work end to end with finite outputs.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from _bad_input_helpers import _cfg, _expect_failure, _fingerprint, _prepared, _with_layer_value
from conftest import organoids, setup_model_anndata

import interscale as isc
from interscale.cli import main as cli_main
from interscale.config import load_config, with_overrides
from interscale.evaluation import calculate_gene_ranks
from interscale.model import CombinedModel


def _raw(n_samples: int = 4) -> ad.AnnData:
    """Raw counts of this file's organoids: 20-30 cells per sample, 10 genes, seed 0."""
    return organoids(n_samples, (20, 30), 0, n_genes=10, prepare=False)


# ----------------------------------------------------------------------------- mutators


def _with_coords(adata, value, rows=(0,)):
    coords = np.array(adata.obsm["spatial"], dtype=np.float64)
    coords[list(rows), 0] = value
    adata.obsm["spatial"] = coords
    return adata


def _without_coords(adata):
    del adata.obsm["spatial"]
    return adata


def _with_sample_nan(adata):
    col = adata.obs["sample"].astype(object)
    col.iloc[0] = np.nan
    adata.obs["sample"] = col
    return adata


def _with_split(adata, mapping):
    adata.obs["split"] = adata.obs["split"].astype(str).replace(mapping)
    return adata


def _dup_obs(adata):
    names = adata.obs_names.to_numpy().copy()
    names[1] = names[0]
    adata.obs_names = names
    return adata


def _dup_var(adata):
    names = adata.var_names.to_numpy().copy()
    names[1] = names[0]
    adata.var_names = names
    return adata


# ----------------------------------------------------------------------------- preprocessing

_PP_FAIL = [
    # (id, mutate, call, exception, message pattern)
    ("nan-coords", lambda a: _with_coords(a, np.nan), "neighbors", ValueError, "spatial"),
    ("inf-coords", lambda a: _with_coords(a, np.inf), "neighbors", ValueError, "spatial"),
    ("no-coords", _without_coords, "neighbors", KeyError, "spatial"),
    ("radius-0", None, "neighbors-r0", ValueError, "radius"),
    ("radius-neg", None, "neighbors-rneg", ValueError, "radius"),
    ("radius-nan", None, "neighbors-rnan", ValueError, "radius"),
    ("no-library", None, "neighbors-nolib", KeyError, "nope"),
    ("nan-library", _with_sample_nan, "neighbors", ValueError, "sample"),
    ("view", lambda a: a[:10], "neighbors", TypeError, "view"),
    ("stats-nan-coords", lambda a: _with_coords(a, np.nan), "stats", ValueError, "spatial"),
    ("stats-no-coords", _without_coords, "stats", KeyError, "spatial"),
    ("stats-radius-0", None, "stats-r0", ValueError, "radius"),
    ("stats-no-radii", None, "stats-empty", ValueError, "radii"),
    ("norm-nan", lambda a: _with_layer_value(a, "raw", np.nan), "normalize", ValueError, "raw"),
    ("norm-inf", lambda a: _with_layer_value(a, "raw", np.inf), "normalize", ValueError, "raw"),
    ("norm-negative", lambda a: _with_layer_value(a, "raw", -1.0), "normalize", ValueError, "neg"),
    ("norm-no-layer", None, "normalize-nolayer", KeyError, "nope"),
    ("norm-view", lambda a: a[:10], "normalize", TypeError, "view"),
    ("qc-no-coords", _without_coords, "qc", KeyError, "spatial"),
    ("qc-no-layer", None, "qc-nolayer", KeyError, "nope"),
    ("qc-nan-counts", lambda a: _with_layer_value(a, "raw", np.nan), "qc", ValueError, "raw"),
    ("qc-negative", lambda a: _with_layer_value(a, "raw", -1.0), "qc", ValueError, "negative"),
    ("qc-view", lambda a: a[:10], "qc", TypeError, "view"),
]

_PP_CALLS: dict[str, Callable] = {
    "neighbors": lambda a: isc.pp.spatial_neighbors(a, radius=200, library_key="sample"),
    "neighbors-r0": lambda a: isc.pp.spatial_neighbors(a, radius=0),
    "neighbors-rneg": lambda a: isc.pp.spatial_neighbors(a, radius=-5.0),
    "neighbors-rnan": lambda a: isc.pp.spatial_neighbors(a, radius=float("nan")),
    "neighbors-nolib": lambda a: isc.pp.spatial_neighbors(a, radius=200, library_key="nope"),
    "stats": lambda a: isc.pp.neighborhood_stats(a, [100, 200]),
    "stats-r0": lambda a: isc.pp.neighborhood_stats(a, [0]),
    "stats-empty": lambda a: isc.pp.neighborhood_stats(a, []),
    "normalize": lambda a: isc.pp.normalize(a),
    "normalize-nolayer": lambda a: isc.pp.normalize(a, layer="nope"),
    "qc": lambda a: isc.pp.qc(a),
    "qc-nolayer": lambda a: isc.pp.qc(a, layer="nope"),
}


@pytest.mark.parametrize(
    ("mutate", "call", "exc", "match"),
    [pytest.param(*case[1:], id=case[0]) for case in _PP_FAIL],
)
def test_preprocessing_rejects_bad_input(mutate, call, exc, match):
    adata = _raw()
    if mutate is not None:
        adata = mutate(adata)
    _expect_failure(_PP_CALLS[call], adata, exc, match)


@pytest.mark.parametrize(
    "kind", ["int64-dense", "float64-dense", "float16-dense", "float32-csr", "int32-csc", "f64-csc"]
)
def test_normalize_accepts_every_numeric_layer_type(kind):
    adata = _raw()
    dense = adata.layers["raw"].toarray()
    dtype = {"int64": np.int64, "float64": np.float64, "float16": np.float16}.get(
        kind.split("-")[0],
        {"float32": np.float32, "int32": np.int32, "f64": np.float64}.get(kind.split("-")[0]),
    )
    m = np.rint(dense).astype(dtype)
    fmt = kind.split("-")[1]
    adata.layers["raw"] = m if fmt == "dense" else getattr(sp, f"{fmt}_matrix")(m)
    isc.pp.normalize(adata, key_added="log1p_norm")
    out = adata.layers["log1p_norm"]
    out = out.toarray() if sp.issparse(out) else out
    assert out.dtype == np.float32 and np.isfinite(out).all()
    totals = np.rint(dense).sum(axis=1, keepdims=True)
    expected = np.log1p(np.rint(dense) / np.where(totals > 0, totals, 1) * 1e4)
    np.testing.assert_allclose(out, expected, rtol=1e-3, atol=1e-3)


def test_normalize_zero_count_cells_give_zeros():
    adata = _raw()
    m = adata.layers["raw"].toarray()
    m[:3] = 0
    adata.layers["raw"] = sp.csr_matrix(m)
    isc.pp.normalize(adata, key_added="log1p_norm")
    out = adata.layers["log1p_norm"].toarray()
    assert np.isfinite(out).all() and (out[:3] == 0).all()


def test_qc_fixes_what_it_documents():
    adata = _raw()
    adata = _with_coords(adata, np.nan, rows=(0,))
    adata = _dup_obs(adata)
    m = adata.layers["raw"].toarray()
    m[5] = 0
    adata.layers["raw"] = sp.csr_matrix(m)
    n_zero = int((m.sum(axis=1) == 0).sum())
    n_removed = int(((m.sum(axis=1) == 0) | (np.arange(adata.n_obs) == 0)).sum())
    before = _fingerprint(adata)
    new, summary = isc.pp.qc(adata, inplace=False)
    assert _fingerprint(adata) == before
    assert summary["n_nonfinite_coords"] == 1 and summary["n_zero_count"] == n_zero
    assert summary["n_duplicated_names"] == 1 and new.n_obs == adata.n_obs - n_removed
    assert new.obs_names.is_unique


@pytest.mark.parametrize("radius", [1e-6, 1e9])
def test_absurd_but_legal_radius(radius):
    adata = _raw()
    isc.pp.spatial_neighbors(adata, radius=radius, library_key="sample")
    conn = adata.obsp["spatial_connectivities"]
    sizes = adata.obs["sample"].value_counts()
    if radius > 1:  # larger than the tissue: every pair within a sample, nothing across
        assert conn.nnz == int((sizes * (sizes - 1)).sum())
        coo = conn.tocoo()
        s = adata.obs["sample"].to_numpy()
        assert (s[coo.row] == s[coo.col]).all()
    else:
        assert conn.nnz == 0
    stats = isc.pp.neighborhood_stats(adata, radius)
    assert np.isfinite(stats[["mean", "min", "max", "frac_isolated"]].to_numpy()).all()


def test_isolated_cell_and_one_cell_sample_get_empty_rows():
    adata = _raw()
    coords = np.array(adata.obsm["spatial"])
    coords[0] = [1e7, 1e7]  # far from everything
    adata.obsm["spatial"] = coords
    samples = adata.obs["sample"].astype(str).to_numpy().copy()
    samples[1] = "lonely"
    adata.obs["sample"] = pd.Categorical(samples)
    isc.pp.spatial_neighbors(adata, radius=200, library_key="sample")
    conn = adata.obsp["spatial_connectivities"]
    assert conn[0].nnz == 0 and conn[:, 0].nnz == 0
    assert conn[1].nnz == 0 and conn[:, 1].nnz == 0


# ----------------------------------------------------------------------------- setup


def _setup_call(**kwargs):
    def call(adata):
        args = {"layer_key": "log1p_norm", "sample_key_list": ["sample"]}
        args.update(kwargs)
        CombinedModel.setup_anndata(adata, view_registry=False, **args)

    return call


_SETUP_FAIL = [
    ("no-layer", None, _setup_call(layer_key="nope"), KeyError, "nope"),
    (
        "nan-layer",
        lambda a: _with_layer_value(a, "log1p_norm", np.nan),
        _setup_call(),
        ValueError,
        "log1p_norm",
    ),
    (
        "inf-layer",
        lambda a: _with_layer_value(a, "log1p_norm", -np.inf),
        _setup_call(),
        ValueError,
        "log1p_norm",
    ),
    ("no-sample-key", None, _setup_call(sample_key_list=["nope"]), KeyError, "nope"),
    ("nan-sample", _with_sample_nan, _setup_call(), ValueError, "sample"),
    ("no-split-col", None, _setup_call(split_key="nope"), KeyError, "nope"),
    ("no-train", lambda a: _with_split(a, {"train": "val"}), _setup_call(), ValueError, "train"),
    ("no-val", lambda a: _with_split(a, {"val": "train"}), _setup_call(), ValueError, "val"),
    (
        "unknown-split",
        lambda a: _with_split(a, {"val": "validation"}),
        _setup_call(),
        ValueError,
        "validation",
    ),
    ("view", lambda a: a[:40], _setup_call(), TypeError, "view"),
    ("zero-genes", lambda a: a[:, []].copy(), _setup_call(), ValueError, "genes"),
    ("task", None, _setup_call(prediction_task="classification"), ValueError, "classification"),
]


@pytest.mark.parametrize(
    ("mutate", "call", "exc", "match"),
    [pytest.param(*case[1:], id=case[0]) for case in _SETUP_FAIL],
)
def test_setup_anndata_rejects_bad_input(mutate, call, exc, match):
    adata = _prepared()
    if mutate is not None:
        adata = mutate(adata)
    _expect_failure(call, adata, exc, match)


def test_model_rejects_duplicated_genes_and_unset_adata():
    adata = _prepared()
    _dup_var(adata)
    _expect_failure(_setup_call(), adata, ValueError, "var_names")
    adata.uns["interscale"] = {"setup": {"layer_key": "log1p_norm", "sample_key": ["sample"]}}
    adata.uns["interscale"]["setup"]["split_key"] = "split"
    _expect_failure(lambda a: CombinedModel(a, _cfg()), adata, ValueError, "var_names")
    fresh = _prepared()
    _expect_failure(lambda a: CombinedModel(a, _cfg()), fresh, ValueError, "setup_anndata")
    # no graph yet: the model builds one, so missing or NaN coordinates must be named
    for mutate, exc in [
        (_without_coords, KeyError),
        (lambda a: _with_coords(a, np.nan), ValueError),
    ]:
        nograph = _raw()
        isc.pp.normalize(nograph, key_added="log1p_norm")
        setup_model_anndata(nograph)
        nograph = mutate(nograph)
        _expect_failure(lambda a: CombinedModel(a, _cfg()), nograph, exc, "spatial")
    adata = _prepared()
    setup_model_anndata(adata)
    _expect_failure(lambda a: CombinedModel(a, {"n_embed": 8}), adata, TypeError, "cfg")


def _train_and_check(adata: ad.AnnData, layer_key: str | None = "log1p_norm", **cfg_overrides):
    setup_model_anndata(adata, layer_key=layer_key)
    model = CombinedModel(adata, _cfg(**cfg_overrides))
    model.train(progress_bar=False)
    model.get_model_output(adata)
    for key in ("_local_emb", "_global_emb"):
        assert adata.obsm[key].shape == (adata.n_obs, model.cfg.model.n_embed)
        assert np.isfinite(adata.obsm[key]).all()
    for key in ("_y_pred_local", "_y_pred_global"):
        assert np.isfinite(adata.layers[key]).all()
    return model


@pytest.mark.parametrize("kind", ["int64-dense", "float16-dense", "float64-csc"])
def test_training_accepts_every_numeric_layer_type(kind):
    adata = _prepared()
    dense = adata.layers["log1p_norm"].toarray()
    dtype, fmt = kind.split("-")
    dtype = {"int64": np.int64, "float64": np.float64, "float16": np.float16}[dtype]
    m = (np.rint(dense) if dtype is np.int64 else dense).astype(dtype)
    adata.layers["input"] = sp.csc_matrix(m) if fmt == "csc" else m
    _train_and_check(adata, layer_key="input")


def test_training_works_on_degenerate_but_legal_data():
    """Zero-count cells, a one-cell sample, an isolated cell, duplicated obs names."""
    adata = _raw(n_samples=4)
    m = adata.layers["raw"].toarray()
    m[2] = 0
    adata.layers["raw"] = sp.csr_matrix(m)
    coords = np.array(adata.obsm["spatial"])
    coords[3] = [1e7, 1e7]
    adata.obsm["spatial"] = coords
    samples = adata.obs["sample"].astype(str).to_numpy().copy()
    samples[0] = "single"
    adata.obs["sample"] = pd.Categorical(samples)
    adata.obs["split"] = adata.obs["split"].astype(str)  # the lonely cell keeps its split
    _dup_obs(adata)
    names = adata.obs_names.copy()
    isc.pp.normalize(adata, key_added="log1p_norm")
    isc.pp.spatial_neighbors(adata, radius=200, library_key="sample")
    _train_and_check(adata)
    assert adata.obs_names.equals(names)


def test_one_gene_panel_trains():
    adata = _prepared()[:, :1].copy()
    model = _train_and_check(adata)
    table = calculate_gene_ranks(
        adata, layers_local_pred="_y_pred_local", layers_global_pred="_y_pred_global"
    )
    assert list(table["gene"]) == [adata.var_names[0]] and model.module.n_embed == 16


def test_sample_larger_than_max_seq_len_works_with_a_warning():
    adata = _prepared()
    with pytest.warns(UserWarning, match="max_seq_len"):
        _train_and_check(adata, **{"model.global_component.parameters.max_seq_len": 8})


def test_non_categorical_sample_key_works():
    adata = _prepared()
    adata.obs["sample"] = adata.obs["sample"].astype(str)
    adata.obs["sample_int"] = adata.obs["sample"].factorize()[0]
    CombinedModel.setup_anndata(
        adata, layer_key="log1p_norm", sample_key_list=["sample_int"], view_registry=False
    )
    assert adata.uns["interscale"]["setup"]["n_samples"] == 4


# ----------------------------------------------------------------------------- config

_CONFIG_FAIL = [
    ("unknown-key", {"model.n_embedd": 8}, ValueError, "n_embedd"),
    ("wrong-type", {"model.n_embed": "sixteen"}, TypeError, "n_embed"),
    ("mask-0", {"dataset.pct_mask_nodes": 0.0}, ValueError, "pct_mask_nodes"),
    ("mask-1", {"dataset.pct_mask_nodes": 1.0}, ValueError, "pct_mask_nodes"),
    ("heads", {"model.n_embed": 10}, ValueError, "n_heads|n_embed"),
    ("component", {"model.local_component.name": "GAT"}, ValueError, "GAT"),
    ("bool-as-str", {"optim.early_stopping": "yes"}, TypeError, "early_stopping"),
]


@pytest.mark.parametrize(
    ("overrides", "exc", "match"), [pytest.param(*c[1:], id=c[0]) for c in _CONFIG_FAIL]
)
def test_config_rejects_bad_values(overrides, exc, match):
    with pytest.raises(exc, match=match):
        with_overrides(load_config(None), overrides)


def test_config_file_errors_name_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  n_embd: 16\n")
    with pytest.raises(ValueError, match="n_embd"):
        load_config(path)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")


# ----------------------------------------------------------------------------- enrichment


def test_enrich_rejects_bad_gene_lists():
    with pytest.raises(ValueError, match="empty"):
        isc.tl.enrich([], gene_sets={"a": ["X1", "X2", "X3"]})
    with pytest.raises(ValueError, match=re.escape("NOT_A_GENE")):
        isc.tl.enrich(["NOT_A_GENE"], gene_sets={"a": ["X1", "X2", "X3"]})
    with pytest.raises(TypeError, match="gene_list"):
        isc.tl.enrich("X1", gene_sets={"a": ["X1", "X2", "X3"]})
    with pytest.raises(ValueError, match="NO_SUCH_LIBRARY"):
        isc.tl.enrich(["X1"], gene_sets="NO_SUCH_LIBRARY")


# ----------------------------------------------------------------------------- command line


def test_cli_reports_bad_input_with_exit_code_2(tmp_path, capsys):
    missing = tmp_path / "missing.h5ad"
    out = tmp_path / "out.h5ad"
    code = cli_main(
        ["output", "--h5ad", str(missing), "--checkpoint", str(tmp_path), "--out", str(out)]
    )
    assert code == 2
    assert "missing.h5ad" in capsys.readouterr().err
    assert not out.exists()
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("optim:\n  n_epoch: 1\n")
    code = cli_main(["train", "--config", str(bad_cfg), "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 2
    assert "n_epoch" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_cli_train_without_sample_key_names_the_setting(tmp_path, capsys):
    adata = isc.datasets.synthetic_organoids(n_samples=2, cells_per_sample=50, seed=0)
    path = tmp_path / "data.h5ad"
    adata.write_h5ad(path)
    code = cli_main(["train", "--h5ad", str(path), "--out", str(tmp_path / "run"), "--quiet"])
    assert code == 2
    assert "dataset.sample_key" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
