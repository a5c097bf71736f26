"""linear_baselines' invariances (constant genes, cell order, shuffles) and its bad-input errors."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from _baselines_helpers import HYP, KEY, LAYER, assert_table_close, dense, make_adata
from hypothesis import example, given
from hypothesis import strategies as st

from interscale.evaluation import linear_baselines

# ---------------------------------------------------------------------------------------------
# properties


def _with_constant_gene(adata: ad.AnnData, value: float, position: int) -> ad.AnnData:
    x = dense(adata.layers[LAYER])
    x = np.insert(x, position, value, axis=1)
    names = list(adata.var_names)
    names.insert(position, "const")
    out = ad.AnnData(obs=adata.obs.copy(), var=pd.DataFrame(index=names))
    out.layers[LAYER] = x
    out.obsp["spatial_connectivities"] = adata.obsp["spatial_connectivities"].copy()
    return out


@HYP
@given(
    seed=st.integers(0, 10_000),
    value=st.one_of(st.just(0.0), st.floats(-200.0, 200.0, allow_nan=False)),
    position=st.integers(0, 4),
    alpha=st.sampled_from([1e-4, 1.0, 50.0, None]),
)
# Raw Gram sums (no shift) made these constant genes look variable: Cholesky failures and
# changed R^2 of the other genes.
@example(seed=2, value=7.77, position=2, alpha=1.0)
@example(seed=2, value=123.4, position=2, alpha=None)
@example(seed=4, value=-5.1, position=0, alpha=None)
def test_constant_gene_changes_no_other_gene(seed, value, position, alpha):
    adata = make_adata(seed=seed)
    with_const = _with_constant_gene(adata, value, position)
    base = linear_baselines(adata, alpha=alpha, key_added=None)
    got = linear_baselines(with_const, alpha=alpha, key_added=None)
    assert got.loc["const"].isna().all()
    others = got.drop(index="const")
    np.testing.assert_allclose(others.to_numpy(), base.to_numpy(), rtol=1e-9, atol=1e-9)


@HYP
@given(seed=st.integers(0, 10_000), alpha=st.sampled_from([0.5, 20.0]), sparse=st.booleans())
def test_cell_order_does_not_matter(seed, alpha, sparse):
    adata = make_adata(seed=seed, sparse=sparse)
    perm = np.random.default_rng(seed).permutation(adata.n_obs)
    shuffled = adata[perm].copy()
    assert shuffled.obs_names[0] == adata.obs_names[perm[0]]
    a = linear_baselines(adata, alpha=alpha, key_added=None)
    b = linear_baselines(shuffled, alpha=alpha, key_added=None)
    assert_table_close(b, a, tol=1e-9)


def _shuffle_within_sample(adata: ad.AnnData, sample: str, seed: int) -> ad.AnnData:
    out = adata.copy()
    rows = np.flatnonzero(adata.obs["sample"].to_numpy() == sample)
    x = dense(out.layers[LAYER])
    x[rows] = x[np.random.default_rng(seed).permutation(rows)]
    out.layers[LAYER] = x
    return out


@HYP
@given(seed=st.integers(0, 10_000), which=st.integers(0, 5))
def test_sample_baseline_ignores_positions_within_a_sample(seed, which):
    adata = make_adata(seed=seed)
    shuffled = _shuffle_within_sample(adata, f"s{which}", seed + 1)
    a = linear_baselines(adata, alpha=3.0, key_added=None)
    b = linear_baselines(shuffled, alpha=3.0, key_added=None)
    for col in ("mean", "sample"):
        np.testing.assert_allclose(b[col], a[col], rtol=1e-9, atol=1e-9, err_msg=col)


def test_within_sample_shuffle_does_change_the_neighbourhood_baselines():
    # The property above would pass trivially if nothing depended on positions.
    adata = make_adata(seed=12)
    shuffled = _shuffle_within_sample(adata, "s5", 1)  # the test sample
    a = linear_baselines(adata, alpha=3.0, key_added=None)
    b = linear_baselines(shuffled, alpha=3.0, key_added=None)
    assert np.abs(a["hop1"] - b["hop1"]).max() > 1e-3
    assert np.abs(a["hop2_sample"] - b["hop2_sample"]).max() > 1e-3


@HYP
@given(seed=st.integers(0, 10_000), alpha=st.sampled_from([2.0, None]), sparse=st.booleans())
def test_deterministic(seed, alpha, sparse):
    adata = make_adata(seed=seed, sparse=sparse)
    a = linear_baselines(adata, alpha=alpha)
    first = adata.uns[KEY]
    b = linear_baselines(adata, alpha=alpha)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert adata.uns[KEY] == first


@HYP
@given(seed=st.integers(0, 10_000))
def test_scores_are_r2_bounded_above_by_one(seed):
    adata = make_adata(seed=seed)
    got = linear_baselines(adata, alpha=1.0, key_added=None)
    assert (got.to_numpy() <= 1.0).all()


# ---------------------------------------------------------------------------------------------
# bad input: the right error, and adata untouched


def _snapshot(adata: ad.AnnData):
    return (
        sorted(adata.varm.keys()),
        sorted(adata.uns.keys()),
        adata.obs.copy(),
        {k: dense(v).copy() for k, v in adata.layers.items()},
    )


def assert_fails_without_side_effects(adata, error, match, **kwargs):
    before = _snapshot(adata)
    with pytest.raises(error, match=match):
        linear_baselines(adata, **kwargs)
    after = _snapshot(adata)
    assert before[0] == after[0] and before[1] == after[1]
    pd.testing.assert_frame_equal(before[2], after[2])
    for k in before[3]:
        np.testing.assert_array_equal(before[3][k], after[3][k])
    assert KEY not in adata.varm and KEY not in adata.uns


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"layer_key": "nope"}, KeyError, "'nope'"),
        ({"library_key": "nope"}, KeyError, "sample_key 'nope'"),
        ({"split_key": "nope"}, KeyError, "split_key 'nope'"),
        ({"connectivity_key": "nope"}, KeyError, "spatial_neighbors"),
        ({"hops": ()}, ValueError, "at least one hop"),
        ({"hops": (0,)}, ValueError, ">= 1"),
        ({"hops": (1, -2)}, ValueError, ">= 1"),
        ({"hops": ("a",)}, TypeError, "ints"),
        ({"hops": (True,)}, TypeError, "ints"),
        ({"hops": None}, TypeError, "sequence of ints"),
        ({"alpha": -1}, ValueError, "> 0"),
        ({"alpha": 0.0}, ValueError, "> 0"),
        ({"alpha": float("nan")}, ValueError, "finite"),
        ({"alpha": float("inf")}, ValueError, "finite"),
        ({"alpha": "x"}, TypeError, "number"),
        ({"alpha": True}, TypeError, "number"),
        ({"alpha": []}, ValueError, "non-empty"),
        ({"alpha": [1.0, -1.0]}, ValueError, "> 0"),
        ({"alpha": [1.0, "x"]}, TypeError, "number"),
        ({"n_components": 0}, ValueError, ">= 1"),
        ({"n_components": "all"}, ValueError, "'auto', None or an int"),
        ({"n_components": True}, TypeError, "n_components"),
        ({"n_components": 2.5}, TypeError, "n_components"),
        ({"seed": "a"}, TypeError, "seed"),
        ({"heldout": ("nothing",)}, ValueError, "held-out"),
        ({"train": "nothing"}, ValueError, "training cells"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    adata = make_adata(seed=13)
    assert_fails_without_side_effects(adata, error, match, **kwargs)


def test_no_heldout_cells():
    adata = make_adata(seed=14)
    adata.obs["split"] = "train"
    assert_fails_without_side_effects(adata, ValueError, "held-out", alpha=1.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("sparse", [False, True])
def test_non_finite_layer(bad, sparse):
    adata = make_adata(seed=15)
    x = dense(adata.layers[LAYER])
    x[7, 2] = bad
    adata.layers[LAYER] = sp.csr_matrix(x) if sparse else x
    assert_fails_without_side_effects(adata, ValueError, "NaN or infinite", alpha=1.0)


def test_graph_edges_between_samples():
    adata = make_adata(seed=16)
    graph = adata.obsp["spatial_connectivities"].tolil()
    graph[0, adata.n_obs - 1] = 1.0  # s0 <-> s5
    graph[adata.n_obs - 1, 0] = 1.0
    adata.obsp["spatial_connectivities"] = graph.tocsr()
    assert_fails_without_side_effects(adata, ValueError, "2 edge\\(s\\) between", alpha=1.0)


def test_missing_sample_labels():
    adata = make_adata(seed=17)
    adata.obs["sample"] = adata.obs["sample"].cat.add_categories(["x"])
    adata.obs.loc[adata.obs_names[3], "sample"] = np.nan
    assert_fails_without_side_effects(adata, ValueError, "missing values", alpha=1.0)


def test_all_genes_constant_in_training_cannot_cross_validate():
    adata = make_adata(seed=18)
    x = dense(adata.layers[LAYER])
    x[(adata.obs["split"] == "train").to_numpy()] = 1.5
    adata.layers[LAYER] = x
    assert_fails_without_side_effects(adata, ValueError, "fixed alpha")
    got = linear_baselines(adata, alpha=1.0)
    assert np.isfinite(got.to_numpy()).all()


def test_failed_call_keeps_an_earlier_result():
    adata = make_adata(seed=19)
    linear_baselines(adata, alpha=1.0)
    table = adata.varm[KEY].copy()
    info = dict(adata.uns[KEY])
    with pytest.raises(ValueError):
        linear_baselines(adata, alpha=-1.0)
    pd.testing.assert_frame_equal(adata.varm[KEY], table)
    assert adata.uns[KEY] == info


def test_key_added_none_writes_nothing():
    adata = make_adata(seed=20)
    before = _snapshot(adata)
    linear_baselines(adata, alpha=1.0, key_added=None)
    assert _snapshot(adata)[:2] == before[:2]
