"""Bad input to a trained model: inference, train(), checkpoints and the evaluation functions.

One clear exception, and the AnnData left untouched (see _bad_input_helpers); legal but odd
input must work end to end with finite outputs.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from _bad_input_helpers import _cfg, _expect_failure, _prepared, _with_layer_value
from conftest import setup_model_anndata

from interscale.evaluation import (
    calculate_dim_importance,
    calculate_gene_ranks,
    gene_loadings,
    get_genes_dim,
    latent_rank_report,
)
from interscale.model import CombinedModel


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1-epoch model, its AnnData with outputs and loadings, and a saved checkpoint."""
    adata = _prepared()
    setup_model_anndata(adata)
    model = CombinedModel(adata, _cfg())
    model.train(progress_bar=False)
    model.get_model_output(adata)
    gene_loadings(adata, model, layer_key="log1p_norm")
    folder = tmp_path_factory.mktemp("ckpt")
    path = model.save(folder)
    return model, adata, path


# ----------------------------------------------------------------------------- model calls


def _output_call(model):
    return lambda a: model.get_model_output(a)


@pytest.mark.parametrize("layout", ["float64-dense", "float32-dense", "float64-csc"])
def test_inference_accepts_other_layer_layouts(trained, layout):
    model, reference, _ = trained
    adata = _prepared()
    dtype, fmt = layout.split("-")
    m = adata.layers["log1p_norm"].toarray().astype(dtype)
    adata.layers["log1p_norm"] = m if fmt == "dense" else sp.csc_matrix(m)
    model.get_model_output(adata)
    np.testing.assert_allclose(
        adata.obsm["_global_emb"], reference.obsm["_global_emb"], rtol=1e-4, atol=1e-5
    )
    assert np.isfinite(adata.layers["_y_pred_local"]).all()


def test_get_model_output_rejects_bad_input(trained):
    model, adata, _ = trained
    bad_cases = [
        (lambda a: _with_layer_value(a, "log1p_norm", np.nan), ValueError, "log1p_norm"),
        (lambda a: a[:, :5].copy(), ValueError, "genes"),
        (lambda a: a[:30], TypeError, "view"),
        (lambda a: _dropped_layer(a), KeyError, "log1p_norm"),
    ]
    for mutate, exc, match in bad_cases:
        target = mutate(_prepared())
        _expect_failure(_output_call(model), target, exc, match)
    _expect_failure(lambda a: model.get_model_output(a, attention_top_k=0), adata, ValueError, "k")


def _dropped_layer(adata):
    del adata.layers["log1p_norm"]
    return adata


def test_train_rejects_bad_arguments(trained):
    model, _, _ = trained
    for kwargs, match in [
        ({"max_epochs": 0}, "max_epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"resume": True}, "checkpoint_dir"),
    ]:
        with pytest.raises(ValueError, match=match):
            model.train(progress_bar=False, **kwargs)


# ----------------------------------------------------------------------------- checkpoints


def _load(path, adata, **kwargs):
    return CombinedModel.load(path, adata, verbose=False, **kwargs)


def test_load_rejects_bad_checkpoints(trained, tmp_path):
    model, _, good = trained
    adata = _prepared()
    setup_model_anndata(adata)
    good_bytes = Path(good).read_bytes()

    def expect(path, exc, match, target=adata, **kwargs):
        _expect_failure(lambda a: _load(path, a, **kwargs), target, exc, match)

    expect(tmp_path / "nothing_here.pt", FileNotFoundError, "nothing_here")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good_bytes[: len(good_bytes) // 2])
    expect(truncated, ValueError, "truncated.pt")
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    expect(noise, ValueError, "noise.pt")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    expect(empty, ValueError, "empty.pt")
    # another gene panel
    other = _prepared()[:, :6].copy()
    setup_model_anndata(other)
    expect(good, ValueError, "genes", target=other)
    # another n_embed in the config given
    expect(good, ValueError, "n_embed", cfg=_cfg(**{"model.n_embed": 8}))
    # a checkpoint written with another n_embed, loaded with the config of this model
    adata8 = _prepared()
    setup_model_anndata(adata8)
    small = CombinedModel(adata8, _cfg(**{"model.n_embed": 8}))
    path8 = small.save(tmp_path / "n8")
    expect(path8, ValueError, "n_embed", cfg=model.cfg)
    # the same file loads fine, with its own config
    loaded = _load(path8, adata)
    assert loaded.module.n_embed == 8


# ----------------------------------------------------------------------------- evaluation


def _eval_adata(trained):
    return trained[1].copy()


def _nan_rows(adata, key, rows=(0, 1)):
    z = np.array(adata.obsm[key])
    z[list(rows)] = np.nan
    adata.obsm[key] = z
    return adata


def _bad_loadings(adata, key="_global_std_gene_loadings"):
    adata.varm[key] = np.ones((adata.n_vars, 3), dtype=np.float32)
    return adata


_EVAL_FAIL = [
    # calculate_gene_ranks
    (
        "ranks-missing-local",
        None,
        lambda a: calculate_gene_ranks(
            a, layers_local_pred="nope", layers_global_pred="_y_pred_global"
        ),
        KeyError,
        "nope",
    ),
    (
        "ranks-missing-truth",
        None,
        lambda a: calculate_gene_ranks(
            a,
            layers_local_pred="_y_pred_local",
            layers_global_pred="_y_pred_global",
            layer_true="nope",
        ),
        KeyError,
        "nope",
    ),
    (
        "ranks-nan-pred",
        lambda a: _with_layer_value(a, "_y_pred_local", np.nan),
        lambda a: calculate_gene_ranks(
            a, layers_local_pred="_y_pred_local", layers_global_pred="_y_pred_global"
        ),
        None,
        None,
    ),
    (
        "ranks-view",
        lambda a: a[:20],
        lambda a: calculate_gene_ranks(
            a, layers_local_pred="_y_pred_local", layers_global_pred="_y_pred_global"
        ),
        None,
        None,
    ),
    # gene_loadings
    ("loadings-missing-layer", None, "loadings-nolayer", KeyError, "nope"),
    (
        "loadings-missing-emb",
        lambda a: _drop_obsm(a, "_global_emb"),
        "loadings",
        KeyError,
        "_global_emb",
    ),
    ("loadings-nan-emb", lambda a: _nan_rows(a, "_local_emb"), "loadings", None, None),
    ("loadings-view", lambda a: a[:20], "loadings", TypeError, "view"),
    # latent_rank_report
    ("latent-missing", None, lambda a: latent_rank_report(a, z_key="nope"), KeyError, "nope"),
    (
        "latent-nan",
        lambda a: _nan_rows(a, "_global_emb"),
        lambda a: latent_rank_report(a),
        None,
        None,
    ),
    # calculate_dim_importance
    (
        "dims-missing-s",
        None,
        lambda a: calculate_dim_importance(a, s_key="nope"),
        KeyError,
        "nope",
    ),
    (
        "dims-missing-z",
        None,
        lambda a: calculate_dim_importance(a, z_key="nope"),
        KeyError,
        "nope",
    ),
    ("dims-bad-shape", _bad_loadings, lambda a: calculate_dim_importance(a), ValueError, "dims"),
    (
        "dims-few-rows",
        lambda a: _nan_rows(a, "_global_emb", rows=range(2, a.n_obs)),
        lambda a: calculate_dim_importance(a),
        ValueError,
        "_global_emb",
    ),
    (
        "dims-mode",
        None,
        lambda a: calculate_dim_importance(a, mode="half"),
        ValueError,
        "half",
    ),
    # get_genes_dim
    ("genes-dim-range", None, lambda a: get_genes_dim(a, [99]), ValueError, "99"),
    ("genes-dim-neg", None, lambda a: get_genes_dim(a, [-100]), ValueError, "-100"),
    ("genes-dim-empty", None, lambda a: get_genes_dim(a, []), ValueError, "dims"),
    ("genes-dim-type", None, lambda a: get_genes_dim(a, ["a"]), TypeError, "dims"),
    (
        "genes-dim-no-gene-left",
        None,
        lambda a: get_genes_dim(a, [0, 1], X_layer="log1p_norm", min_sd=1e9),
        ValueError,
        "min_sd",
    ),
    (
        "genes-dim-bad-shape",
        _bad_loadings,
        lambda a: get_genes_dim(a, [5]),
        ValueError,
        "5",
    ),
    ("genes-dim-which", None, lambda a: get_genes_dim(a, [0], which="both"), ValueError, "both"),
]


def _assert_finite_result(result) -> None:
    """Every number in a returned table / dict / AnnData varm is finite."""
    if isinstance(result, ad.AnnData):
        for value in result.varm.values():
            assert np.isfinite(value).all()
    elif isinstance(result, pd.DataFrame):
        numeric = result.select_dtypes("number").to_numpy(dtype=float)
        assert np.isfinite(numeric).all()
    elif isinstance(result, dict):
        for value in result.values():
            if isinstance(value, int | float | np.number):
                assert np.isfinite(value)


def _drop_obsm(adata, key):
    del adata.obsm[key]
    return adata


@pytest.mark.parametrize(
    ("mutate", "call", "exc", "match"), [pytest.param(*c[1:], id=c[0]) for c in _EVAL_FAIL]
)
def test_evaluation_rejects_bad_input(trained, mutate, call, exc, match):
    model = trained[0]
    adata = _eval_adata(trained)
    if mutate is not None:
        adata = mutate(adata)
    if call == "loadings":
        call = lambda a: gene_loadings(a, model, layer_key="log1p_norm")  # noqa: E731
    elif call == "loadings-nolayer":
        call = lambda a: gene_loadings(a, model, layer_key="nope")  # noqa: E731
    if exc is None:  # legal input (NaN entries/rows are documented as skipped): must work
        result = call(adata)
        _assert_finite_result(result)
        return
    _expect_failure(call, adata, exc, match)


def test_get_genes_dim_filters_that_leave_no_gene_raise(trained):
    adata = _eval_adata(trained)
    # no gene has a value > 0 in more than all cells: documented ValueError naming the filter
    call = lambda a: get_genes_dim(a, [0, 1], X_layer="log1p_norm", min_frac=1.0 + 1e-9)  # noqa: E731
    _expect_failure(call, adata, ValueError, r"no gene passed the filters \(min_frac=1\.0+1")


def test_dim_importance_with_three_finite_rows_is_finite(trained):
    adata = _eval_adata(trained)
    _nan_rows(adata, "_global_emb", rows=range(3, adata.n_obs))
    out = calculate_dim_importance(adata)  # NaN rows are skipped, 3 finite rows suffice
    assert np.isfinite(np.asarray(out["y_sorted"], dtype=float)).all()
    assert sorted(np.asarray(out["dim_sorted"]).tolist()) == list(
        range(adata.obsm["_global_emb"].shape[1])
    )
