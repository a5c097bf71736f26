"""The training-mean predictor: the reference a model that learned nothing reduces to."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from interscale.evaluation import heldout_r2, training_mean_predictions


def _adata(values: np.ndarray, split: list[str], sparse: bool = False) -> ad.AnnData:
    layer = sp.csr_matrix(values) if sparse else values
    names = [f"c{i}" for i in range(len(split))]
    obs = pd.DataFrame({"split": pd.Categorical(split)}, index=names)
    adata = ad.AnnData(np.zeros_like(values), obs=obs)
    adata.layers["x"] = layer
    return adata


@pytest.mark.parametrize("sparse", [False, True])
def test_predictions_are_the_training_mean_of_each_gene(sparse):
    rng = np.random.default_rng(0)
    values = rng.poisson(2.0, size=(30, 5)).astype(np.float32)
    split = ["train"] * 15 + ["val"] * 5 + ["test"] * 10
    adata = _adata(values, split, sparse)
    training_mean_predictions(adata, "x")
    want = values[:15].mean(axis=0)
    for key in ("_y_pred_local", "_y_pred_global"):
        pred = adata.layers[key]
        assert pred.dtype == np.float32 and pred.shape == values.shape
        np.testing.assert_allclose(pred, np.broadcast_to(want, values.shape), rtol=1e-6)
    adata.layers["_y_pred_local"][0, 0] += 1  # the two layers are separate copies
    assert adata.layers["_y_pred_global"][0, 0] == pytest.approx(want[0])


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n_train=st.integers(2, 20),
    n_test=st.integers(2, 20),
    shift=st.floats(-3, 3),
)
def test_its_heldout_r2_is_never_above_zero(seed, n_train, n_test, shift):
    """The held-out mean minimises the squared error, so the training mean cannot beat it."""
    rng = np.random.default_rng(seed)
    train = rng.normal(size=(n_train, 4))
    test = rng.normal(loc=shift, size=(n_test, 4))
    adata = _adata(np.vstack([train, test]), ["train"] * n_train + ["test"] * n_test)
    training_mean_predictions(adata, "x")
    r2 = heldout_r2(adata, "_y_pred_local", "x")["test"]
    assert r2 <= 1e-6


def test_bad_input_names_the_problem_and_leaves_the_data_alone():
    adata = _adata(np.ones((4, 2)), ["val", "val", "test", "test"])
    with pytest.raises(KeyError, match="'y'"):
        training_mean_predictions(adata, "y")
    with pytest.raises(KeyError, match="'part'"):
        training_mean_predictions(adata, "x", split_key="part")
    with pytest.raises(ValueError, match="no cell has 'split' == 'train'.*'test', 'val'"):
        training_mean_predictions(adata, "x")
    assert list(adata.layers) == ["x"]
