"""Predictions at scale: float16 or no prediction layers, and per-gene R^2 summed up in inference.

The streaming R^2 (``model.gene_r2``, ``gene_ranks_from_model``) must give the numbers of
``calculate_gene_ranks`` on the stored float32 predictions of ``get_model_output``.
"""

from __future__ import annotations

import copy
import types
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import organoids, setup_model_anndata, tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import interscale.model._inference as inference
import interscale.model._outputs as outputs_module
import interscale.model._streaming as streaming
from interscale.evaluation import (
    calculate_gene_ranks,
    gene_ranks_from_model,
    gene_ranks_from_r2,
)
from interscale.evaluation._ranks import RANK_COLUMNS, r2_per_gene
from interscale.model import CombinedModel, LocalModel

KW = {"layers_local_pred": "_y_pred_local", "layers_global_pred": "_y_pred_global"}
R2 = ["r2_local", "r2_global"]
# A gene constant in every cell, and one constant within the val cells only.
CONSTANT, CONSTANT_IN_VAL = 0, 1


def _data():
    adata = organoids(n_samples=4, cells=(30, 40), seed=2)
    x = adata.layers["log1p_norm"]
    sparse = sp.issparse(x)
    x = x.tolil() if sparse else x.copy()
    x[:, CONSTANT] = np.float32(0.7)
    x[(adata.obs["split"] == "val").to_numpy(), CONSTANT_IN_VAL] = np.float32(1.3)
    adata.layers["log1p_norm"] = x.tocsr() if sparse else x
    return adata


def _trained(cls):
    adata = _data()
    setup_model_anndata(adata, cls)
    model = cls(adata, tiny_config(n_epochs=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(progress_bar=False)
    return model, adata


def _fresh():
    """The data of the fixtures again, set up for a CombinedModel, without outputs."""
    adata = _data()
    setup_model_anndata(adata)
    return adata


@pytest.fixture(scope="module")
def combined():
    """A trained CombinedModel and its AnnData with the dense float32 outputs."""
    model, adata = _trained(CombinedModel)
    model.get_model_output(adata)
    return model, adata


@pytest.fixture(scope="module")
def local():
    model, adata = _trained(LocalModel)
    model.get_model_output(adata)
    return model, adata


def _cells(adata, which):
    if which == "mask":
        return adata.obs["sample"].to_numpy() != adata.obs["sample"].cat.categories[0]
    return which


def _snapshot(adata):
    return (
        {k: v.copy() for k, v in adata.layers.items()},
        {k: v.copy() for k, v in adata.obsm.items()},
        set(adata.obsp),
        adata.obs.copy(),
        copy.deepcopy(dict(adata.uns)),
    )


def _assert_unchanged(adata, snap):
    layers, obsm, obsp, obs, uns = snap
    assert set(adata.layers) == set(layers)
    for k, v in layers.items():
        now = adata.layers[k]
        assert sp.issparse(now) == sp.issparse(v), k
        if sp.issparse(v):
            now, v = now.toarray(), v.toarray()
        np.testing.assert_array_equal(now, v, err_msg=k)
    assert set(adata.obsm) == set(obsm)
    for k, v in obsm.items():
        np.testing.assert_array_equal(adata.obsm[k], v, err_msg=k)
    assert set(adata.obsp) == obsp
    pd.testing.assert_frame_equal(adata.obs, obs)
    assert set(adata.uns) == set(uns)
    assert adata.uns["interscale"].keys() == uns["interscale"].keys()
    for k, v in uns["interscale"].items():
        assert str(adata.uns["interscale"][k]) == str(v), k


# ----------------------------------------------------------------------------- streaming R^2


@pytest.mark.parametrize("which", [None, "val", ["val", "test"], "mask"])
def test_streaming_r2_equals_stored_predictions(combined, which):
    model, adata = combined
    cells = _cells(adata, which)
    ref = calculate_gene_ranks(adata, **KW, cells=cells)
    got = model.gene_r2(adata, cells=cells)
    assert list(got.columns) == R2
    assert list(got.index) == list(adata.var_names)
    assert got.attrs["n_cells"] == ref.attrs["n_cells"]
    assert got.attrs["cells"] == ref.attrs["cells"]
    assert got.attrs["heads"] == ["local", "global"]
    for col in R2:
        np.testing.assert_allclose(got[col].to_numpy(), ref[col].to_numpy(), rtol=0, atol=1e-6)
    # the planted constant genes are NaN in both (constant within the val cells for gene 1)
    assert np.isnan(got.iloc[CONSTANT]).all()
    assert np.isnan(got.iloc[CONSTANT_IN_VAL]).all() == (which == "val")
    table = gene_ranks_from_model(model, adata, cells=cells)
    assert list(table.columns) == RANK_COLUMNS
    pd.testing.assert_frame_equal(table, ref, check_exact=False, rtol=0, atol=1e-6)
    assert table.attrs["cells"] == ref.attrs["cells"]
    assert table.attrs["n_cells"] == ref.attrs["n_cells"]


def test_streaming_unmasked_reconstruction_equals_stored(combined):
    model, _ = combined
    adata = _data()
    setup_model_anndata(adata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.get_model_output(adata, masked=False)
    ref = calculate_gene_ranks(adata, **KW, cells="val")
    got = model.gene_r2(adata, cells="val", masked=False)
    for col in R2:
        np.testing.assert_allclose(got[col].to_numpy(), ref[col].to_numpy(), rtol=0, atol=1e-6)
    assert got.attrs["masked"] is False


def test_streaming_runs_only_samples_with_selected_cells(combined, monkeypatch):
    model, adata = combined
    seen = []
    real = inference.single_batch

    def spy(graph):
        seen.append(graph.name)
        return real(graph)

    monkeypatch.setattr(inference, "single_batch", spy)
    model.gene_r2(adata, cells="val")
    val = adata.obs.loc[adata.obs["split"] == "val", "sample"].astype(str).unique()
    assert sorted(seen) == sorted(val)
    assert len(seen) < adata.obs["sample"].nunique()


def test_gene_r2_leaves_adata_unchanged_and_checks_cells(combined):
    model, adata = combined
    snap = _snapshot(adata)
    model.gene_r2(adata, cells=["val", "test"])
    _assert_unchanged(adata, snap)
    with pytest.raises(KeyError, match=r"gene_r2: split name\(s\) \['nope'\]"):
        model.gene_r2(adata, cells="nope")
    with pytest.raises(KeyError, match="split column 'missing'"):
        model.gene_r2(adata, cells="val", split_key="missing")
    with pytest.raises(ValueError, match="selects no cells"):
        model.gene_r2(adata, cells=np.zeros(adata.n_obs, dtype=bool))
    with pytest.raises(TypeError, match="cells must be"):
        model.gene_r2(adata, cells=np.arange(adata.n_obs))
    with pytest.raises(ValueError, match="heads must name"):
        model.gene_r2(adata, heads=["both"])
    _assert_unchanged(adata, snap)


def test_local_model_scores_its_one_head(local, monkeypatch):
    model, adata = local
    assert "_y_pred_global" not in adata.layers
    got = model.gene_r2(adata, cells=["val", "test"])
    assert list(got.columns) == ["r2_local"]
    assert got.attrs["heads"] == ["local"]
    ref = calculate_gene_ranks(
        adata,
        layers_local_pred="_y_pred_local",
        layers_global_pred="_y_pred_local",
        cells=["val", "test"],
    )
    np.testing.assert_allclose(got["r2_local"], ref["r2_local"], rtol=0, atol=1e-6)

    # the ranks compare two heads: refused before any inference
    def no_inference(*args, **kwargs):
        raise AssertionError("inference ran")

    monkeypatch.setattr(inference, "run_inference", no_inference)
    monkeypatch.setattr(streaming, "run_inference", no_inference)
    with pytest.raises(ValueError, match="LocalModel has no global decoder"):
        gene_ranks_from_model(model, adata)
    with pytest.raises(ValueError, match="no global decoder"):
        model.gene_r2(adata, heads=["global"])


def test_gene_ranks_from_model_checks_its_arguments(combined):
    model, adata = combined
    with pytest.raises(TypeError, match="gene_ranks_from_model: model must be"):
        gene_ranks_from_model(object(), adata)
    with pytest.raises(ValueError, match="gene_ranks_from_model: top_n must be"):
        gene_ranks_from_model(model, adata, top_n=0)


def test_gene_ranks_from_r2_is_the_table_of_calculate_gene_ranks(combined):
    _, adata = combined
    ref = calculate_gene_ranks(adata, **KW, cells="val")
    got = gene_ranks_from_r2(
        ref["r2_local"].to_numpy(),
        ref["r2_global"].to_numpy(),
        adata.var_names,
        cells="val",
        n_cells=ref.attrs["n_cells"],
    )
    pd.testing.assert_frame_equal(got, ref, check_exact=True)
    assert got.attrs == ref.attrs
    with pytest.raises(ValueError, match="r2_global has shape"):
        gene_ranks_from_r2(np.zeros(3), np.zeros(2), ["a", "b", "c"])
    with pytest.raises(TypeError, match="r2_local must be numeric"):
        gene_ranks_from_r2(["x", "y"], np.zeros(2), ["a", "b"])


# ----------------------------------------------------------------------------- prediction modes


def test_float16_layers_round_the_float32_ones(combined):
    model, dense = combined
    adata = _fresh()
    model.get_model_output(adata, predictions="float16")
    assert adata.uns["interscale"]["output"]["predictions"] == "float16"
    for head in ("local", "global"):
        half = adata.layers[f"_y_pred_{head}"]
        full = dense.layers[f"_y_pred_{head}"]
        assert half.dtype == np.float16 and full.dtype == np.float32
        # one rounding of the float32 predictions: within 2^-11 relative (about 5e-4)
        np.testing.assert_array_equal(half, full.astype(np.float16))
        np.testing.assert_allclose(half.astype(np.float32), full, rtol=1e-3, atol=1e-7)
        np.testing.assert_array_equal(adata.obsm[f"_{head}_emb"], dense.obsm[f"_{head}_emb"])
    assert (adata.obsp["_attn_matrix"] != dense.obsp["_attn_matrix"]).nnz == 0


def test_none_writes_no_prediction_layers_and_removes_stale_ones(combined):
    model, dense = combined
    adata = _fresh()
    model.get_model_output(adata, prefix="run")
    assert {"run_y_pred_local", "run_y_pred_global"} <= set(adata.layers)
    model.get_model_output(adata, prefix="run", predictions="none")
    assert not [k for k in adata.layers if "_y_pred_" in k]
    assert adata.uns["interscale"]["output"]["predictions"] == "none"
    for head in ("local", "global"):
        np.testing.assert_array_equal(adata.obsm[f"run_{head}_emb"], dense.obsm[f"_{head}_emb"])
    assert "run_attn_matrix" in adata.obsp
    np.testing.assert_array_equal(adata.obs["run_cls_attention"], dense.obs["_cls_attention"])


def test_default_refuses_large_dense_predictions_before_any_work(combined, monkeypatch):
    model, _ = combined
    adata = _fresh()
    snap = _snapshot(adata)

    def no_inference(*args, **kwargs):
        raise AssertionError("inference ran")

    monkeypatch.setattr(outputs_module, "DENSE_PREDICTIONS_MAX_BYTES", 1000)
    monkeypatch.setattr(inference, "run_inference", no_inference)
    monkeypatch.setattr(streaming, "run_inference", no_inference)
    monkeypatch.setattr(outputs_module, "check_finite_layer", no_inference)
    with pytest.raises(ValueError, match=r"GiB.*predictions='float16'.*'none'.*gene_r2") as err:
        model.get_model_output(adata)
    assert f"{adata.n_obs} cells x {adata.n_vars} genes" in str(err.value)
    _assert_unchanged(adata, snap)
    monkeypatch.undo()
    monkeypatch.setattr(outputs_module, "DENSE_PREDICTIONS_MAX_BYTES", 1000)
    model.get_model_output(adata, predictions="dense")  # asked for: written
    assert adata.layers["_y_pred_local"].dtype == np.float32
    assert adata.uns["interscale"]["output"]["predictions"] == "dense"


def test_buffers_are_allocated_in_the_chosen_dtype():
    module = types.SimpleNamespace(n_embed=2, has_local=True, has_global=False, heads=("local",))
    half = inference._Buffers(module, 3, 4, "float16")
    assert half.y["local"].dtype == np.float16 and half.y["local"].nbytes == 3 * 4 * 2
    assert inference._Buffers(module, 3, 4, "none").y == {"local": None}
    half.predictions(np.array([0]), {"local": np.full((1, 4), 1.0 / 3.0, np.float32)})
    assert half.y["local"][0, 0] == np.float16(1.0 / 3.0)
    with pytest.raises(FloatingPointError, match="float16 range"):
        half.predictions(np.array([1]), {"local": np.full((1, 4), 7e4, np.float32)})


def test_predictions_argument_is_checked(combined):
    model, _ = combined
    adata = _fresh()
    snap = _snapshot(adata)
    with pytest.raises(ValueError, match=r"predictions must be one of \['dense', 'float16'"):
        model.get_model_output(adata, predictions="half")
    with pytest.raises(TypeError, match="predictions must be None or one of"):
        model.get_model_output(adata, predictions=16)
    _assert_unchanged(adata, snap)


def test_memory_check_follows_the_prediction_mode(monkeypatch):
    n_obs, n_genes, n_embed, top_k = 10**6, 5000, 16, 32
    rest = 4 * n_obs * 2 * n_embed + 20 * n_obs * top_k
    monkeypatch.setattr(inference, "physical_memory_bytes", lambda: rest + 2 * 2 * n_obs * n_genes)
    with pytest.raises(MemoryError, match="predictions='dense'"):
        inference.check_output_memory(n_obs, n_genes, n_embed, top_k, "dense", 2)
    inference.check_output_memory(n_obs, n_genes, n_embed, top_k, "float16", 2)
    monkeypatch.setattr(inference, "physical_memory_bytes", lambda: rest + 10)
    with pytest.raises(MemoryError, match="predictions='float16'"):
        inference.check_output_memory(n_obs, n_genes, n_embed, top_k, "float16", 2)
    inference.check_output_memory(n_obs, n_genes, n_embed, top_k, "none", 2)
    # one prediction layer (a LocalModel) needs half of two
    monkeypatch.setattr(inference, "physical_memory_bytes", lambda: rest + 4 * n_obs * n_genes)
    inference.check_output_memory(n_obs, n_genes, n_embed, top_k, "dense", 1)


def test_default_mode_threshold():
    limit = inference.DENSE_PREDICTIONS_MAX_BYTES
    assert limit == 2 * 2**30
    assert outputs_module.choose_predictions(None, limit // 8, 1, 2) == "dense"
    with pytest.raises(ValueError, match="2.0 GiB"):
        outputs_module.choose_predictions(None, limit // 8 + 1, 1, 2)
    assert outputs_module.choose_predictions("none", 10**9, 10**4, 2) == "none"


# ----------------------------------------------------------------------------- properties


@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_streaming_r2_equals_stored_on_random_cell_masks(combined, data):
    model, adata = combined
    mask = data.draw(hnp.arrays(np.bool_, adata.n_obs).filter(lambda m: m.any()))
    ref = calculate_gene_ranks(adata, **KW, cells=mask)
    got = model.gene_r2(adata, cells=mask)
    for col in R2:
        np.testing.assert_allclose(got[col].to_numpy(), ref[col].to_numpy(), rtol=0, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n_obs=st.integers(1, 60),
    layout=st.sampled_from(["dense", "csr", "csc"]),
    n_blocks=st.integers(1, 5),
)
def test_accumulated_r2_equals_r2_per_gene(seed, n_obs, layout, n_blocks):
    """Blocks of rows in any order and partition give the R^2 of the evaluation module."""
    rng = np.random.default_rng(seed)
    n_genes = 7
    y = rng.poisson(rng.uniform(0.1, 3.0, n_genes), size=(n_obs, n_genes)).astype(np.float32)
    y[:, 0] = 2.5  # constant
    y[:, 1] = 0.0  # all zero
    y[:, 2] += 1e4  # large mean, small spread: no cancellation may show
    preds = {h: (y + rng.normal(size=y.shape)).astype(np.float32) for h in ("local", "global")}
    selected = rng.random(n_obs) < 0.7
    selected[rng.integers(n_obs)] = True
    truth = {"dense": y, "csr": sp.csr_matrix(y), "csc": sp.csc_matrix(y)}[layout]
    acc = streaming._R2Consumer(truth, selected, ["local", "global"])
    acc.step = int(rng.integers(1, 4))  # several truth blocks per call
    order = rng.permutation(n_obs)
    for rows in np.array_split(order, n_blocks):
        acc.predictions(rows, {h: p[rows] for h, p in preds.items()})
    got = acc.finish()
    rows = np.flatnonzero(selected)
    ref = r2_per_gene(y, [preds["local"], preds["global"]], rows=rows)
    for head, expected in zip(("local", "global"), ref, strict=True):
        np.testing.assert_allclose(got[head], expected, rtol=0, atol=1e-9, err_msg=head)
        assert np.isnan(got[head][:2]).all()
