"""interscale._r2.R2Accumulator, the one per-gene R^2 of training, streaming and evaluation,
against sklearn's r2_score per column and under any split of the cells into chunks."""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import r2_score

from interscale._anndata import CONSTANT_RTOL
from interscale._r2 import R2Accumulator


def _reference(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """sklearn per column over the finite pairs; NaN below two cells or for a constant column."""
    out = np.full(y.shape[1], np.nan)
    for j in range(y.shape[1]):
        ok = np.isfinite(y[:, j]) & np.isfinite(p[:, j])
        yj, pj = y[ok, j], p[ok, j]
        if len(yj) < 2 or np.ptp(yj) == 0:
            continue
        out[j] = r2_score(yj, pj)
    return out


def _data(seed: int, n: int = 50, g: int = 6) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    y = rng.poisson(rng.uniform(0.2, 4.0, g), size=(n, g)).astype(np.float64)
    y[:, 0] = 0.0  # all zero
    y[:, 1] = 2.5  # constant, not zero
    y[:, 2] += 1e4  # a large mean: SS_tot about the mean must keep its digits
    preds = [y + rng.normal(scale=s, size=y.shape) for s in (0.5, 2.0)]
    return y, preds


def test_r2_equals_sklearn_per_column_and_constant_genes_are_nan():
    y, preds = _data(0)
    acc = R2Accumulator(y.shape[1], 2)
    acc.add(y, preds)
    for got, p in zip(acc.r2(), preds, strict=True):
        np.testing.assert_allclose(got, _reference(y, p), rtol=1e-12, atol=1e-12)
        assert np.isnan(got[:2]).all() and np.isfinite(got[2:]).all()
    means = acc.mean_r2()
    for mean, got in zip(means, acc.r2(), strict=True):
        assert mean == pytest.approx(np.nanmean(got), rel=1e-12)


def test_non_finite_entries_are_left_out_per_gene_and_head():
    y, preds = _data(1)
    y[::7, 3] = np.nan
    preds[0][::5, 4] = np.inf
    preds[1][3, 5] = np.nan
    acc = R2Accumulator(y.shape[1], 2)
    acc.add(y, preds)
    for got, p in zip(acc.r2(), preds, strict=True):
        np.testing.assert_allclose(got, _reference(y, p), rtol=1e-12, atol=1e-12)
    # counted as given instead: the NaN shows, and makes the head's mean NaN
    every = R2Accumulator(y.shape[1], 2, skip_nonfinite=False)
    every.add(np.nan_to_num(y), preds)
    assert np.isnan(every.r2()[1][5]) and np.isnan(every.mean_r2()[1])
    assert every.r2()[0][4] == -np.inf


def test_fewer_than_two_cells_give_nan():
    acc = R2Accumulator(3, 1)
    assert all(np.isnan(v).all() for v in acc.r2()) and np.isnan(acc.mean_r2()[0])
    acc.add(np.array([[1.0, 2.0, 3.0]]), [np.zeros((1, 3))])
    assert np.isnan(acc.r2()[0]).all()
    acc.add(np.zeros((0, 3)), [np.zeros((0, 3))])  # no cells: nothing changes
    assert np.isnan(acc.r2()[0]).all()
    acc.add(np.array([[2.0, np.nan, 3.0]]), [np.zeros((1, 3))])
    got = acc.r2()[0]
    assert np.isfinite(got[0]) and np.isnan(got[1]) and np.isnan(got[2])  # 1 cell; constant


def test_constant_rule_is_relative_to_the_mean():
    n = 10
    base = np.full((n, 3), 1e3)
    base[:, 0] += np.arange(n) * 1e3 * CONSTANT_RTOL * 0.01  # sd far below the tolerance
    base[:, 1] += np.arange(n) * 1e3 * CONSTANT_RTOL * 100  # sd far above it
    acc = R2Accumulator(3, 1)
    acc.add(base, [base + 1.0])
    got = acc.r2()[0]
    assert np.isnan(got[0]) and np.isfinite(got[1]) and np.isnan(got[2])


def test_shape_checks():
    acc = R2Accumulator(3, 2)
    with pytest.raises(ValueError, match="2 head"):
        acc.add(np.zeros((2, 3)), [np.zeros((2, 3))])
    with pytest.raises(ValueError, match="shape"):
        acc.add(np.zeros((2, 4)), [np.zeros((2, 4))] * 2)
    with pytest.raises(ValueError, match="differ"):
        acc.merge(R2Accumulator(3, 1))
    with pytest.raises(ValueError, match="4 sums per head"):
        R2Accumulator.from_vector(np.zeros(7), np.zeros(3))


def test_sum_of_rank_vectors_about_one_centre_is_the_accumulator_of_all_cells():
    """The all-reduce of data-parallel training: ranks add their vectors about one centre."""
    y, preds = _data(2, n=60)
    ranks = []
    for rows in np.array_split(np.random.default_rng(3).permutation(len(y)), 3):
        acc = R2Accumulator(y.shape[1], 2)
        acc.add(y[rows], [p[rows] for p in preds])
        ranks.append(acc)
    centre = np.mean([acc.shift for acc in ranks], axis=0)
    total = sum(acc.centred_at(centre).to_vector() for acc in ranks)
    summed = R2Accumulator.from_vector(total, centre)
    whole = R2Accumulator(y.shape[1], 2)
    whole.add(y, preds)
    for got, want in zip(summed.r2(), whole.r2(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        assert np.isnan(got[:2]).all()  # a constant gene still sums to zero over the ranks
    back = R2Accumulator.from_vector(whole.to_vector(), whole.shift)
    np.testing.assert_array_equal(back.to_vector(), whole.to_vector())
    for got, want in zip(back.r2(), whole.r2(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_centring_at_the_own_centre_changes_nothing():
    y, preds = _data(4)
    acc = R2Accumulator(y.shape[1], 2)
    acc.add(y, preds)
    np.testing.assert_array_equal(acc.centred_at(acc.shift).to_vector(), acc.to_vector())
    empty = R2Accumulator(y.shape[1], 2)
    assert not empty.centred_at(np.ones(y.shape[1])).to_vector().any()


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n_obs=st.integers(0, 40),
    n_genes=st.integers(1, 5),
    n_chunks=st.integers(1, 6),
    offset=st.sampled_from([0.0, 1e4]),
)
def test_chunks_in_any_split_and_order_give_one_pass(data, n_obs, n_genes, n_chunks, offset):
    """Adding cells chunk by chunk, or merging accumulators of chunks, is one pass over all."""
    # eighths: exact in float64, so a column is constant exactly when all its values are equal
    eighths = st.integers(-400, 400).map(lambda k: k / 8)
    y = data.draw(hnp.arrays(np.float64, (n_obs, n_genes), elements=eighths)) + offset
    p = data.draw(hnp.arrays(np.float64, (n_obs, n_genes), elements=eighths)) + offset
    if n_obs:
        holes = data.draw(hnp.arrays(np.bool_, (n_obs, n_genes)))
        p[holes & (np.arange(n_obs)[:, None] % 3 == 0)] = np.nan
    order = np.random.default_rng(n_obs * 7 + n_chunks).permutation(n_obs)
    parts = np.array_split(order, n_chunks)
    whole = R2Accumulator(n_genes, 1)
    whole.add(y, [p])
    chunked = R2Accumulator(n_genes, 1)
    merged = R2Accumulator(n_genes, 1)
    for rows in parts:
        chunked.add(y[rows], [p[rows]])
        part = R2Accumulator(n_genes, 1)
        part.add(y[rows], [p[rows]])
        merged.merge(part)
    ref = _reference(y, p)
    for acc in (whole, chunked, merged):
        got = acc.r2()[0]
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        np.testing.assert_allclose(got, ref, rtol=1e-7, atol=1e-9)
