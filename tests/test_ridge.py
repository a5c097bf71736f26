"""Tests of interscale._ridge against sklearn's StandardScaler + Ridge and direct sums."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from interscale._ridge import (
    RidgePath,
    RidgeStats,
    cv_r2,
    group_folds,
    select_alpha,
    standard_scale,
)

HYP = settings(max_examples=25, deadline=None)


def data(seed: int, n: int, p: int, g: int, offset: float = 5.0):
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(n, p)) * rng.uniform(0.1, 3.0, p) + offset
    y = f[:, : min(3, p)] @ rng.normal(size=(min(3, p), g)) + rng.normal(size=(n, g))
    return f, y


def stats_of(f, y, shift=True, chunk=7) -> RidgeStats:
    s = RidgeStats(f.shape[1], y.shape[1], f.mean(0) if shift else None, None)
    for start in range(0, len(f), chunk):
        s.add(f[start : start + chunk], y[start : start + chunk])
    return s


@pytest.mark.parametrize(("n", "p"), [(40, 150), (200, 12), (30, 30)])
@pytest.mark.parametrize("alpha", [0.05, 3.0, 400.0])
def test_matches_sklearn_also_with_more_features_than_rows(n, p, alpha):
    f, y = data(1, n, p, 4)
    path = RidgePath(stats_of(f, y))
    model = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(f, y)
    new, _ = data(2, 9, p, 4)
    np.testing.assert_allclose(path.predict(new, alpha), model.predict(new), rtol=1e-9, atol=1e-9)
    w, b = path.coef(alpha)
    np.testing.assert_allclose(new @ w + b, model.predict(new), rtol=1e-8, atol=1e-8)
    assert np.isfinite(path.eigenvalues).all() and (path.eigenvalues >= 0).all()


def test_column_subset_and_matrix_scale_equal_the_vector_rule():
    f, y = data(3, 60, 10, 3)
    s = stats_of(f, y)
    cols = np.array([7, 2, 5])
    model = make_pipeline(StandardScaler(), Ridge(alpha=2.0)).fit(f[:, cols], y)
    by_vector = RidgePath(s, cols)
    by_matrix = RidgePath(s, cols, scale=lambda m, c, e: np.diag(standard_scale(m, c, e)))
    for path in (by_vector, by_matrix):
        np.testing.assert_allclose(path.predict(f, 2.0), model.predict(f[:, cols]), atol=1e-9)


def test_an_orthogonal_rotation_inside_scale_changes_nothing():
    # The penalty ||w||^2 of standardised features is invariant to an orthogonal map after the
    # standardisation: a transform T = D^-1 O must give the same predictions as D^-1.
    f, y = data(4, 50, 6, 2)
    rot, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(6, 6)))
    s = stats_of(f, y)
    plain = RidgePath(s).predict(f, 0.5)
    rotated = RidgePath(s, scale=lambda m, c, e: standard_scale(m, c, e)[:, None] * rot)
    np.testing.assert_allclose(rotated.predict(f, 0.5), plain, rtol=1e-9, atol=1e-9)


def test_constant_feature_gets_no_weight_and_changes_nothing():
    f, y = data(5, 40, 4, 2)
    with_const = np.column_stack([f[:, :2], np.full(40, 123.4), f[:, 2:]])
    a = RidgePath(stats_of(f, y)).predict(f, 1.0)
    path = RidgePath(stats_of(with_const, y))
    np.testing.assert_allclose(path.predict(with_const, 1.0), a, rtol=1e-10, atol=1e-10)
    assert np.abs(path.coef(1.0)[0][2]).max() < 1e-9


@HYP
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(3, 40),
    p=st.integers(1, 60),
    alphas=st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=4),
)
def test_sse_from_statistics_equals_direct_errors(seed, n, p, alphas):
    f, y = data(seed, n, p, 3)
    other_f, other_y = data(seed + 1, 11, p, 3)
    s = stats_of(f, y)
    other = RidgeStats(p, 3, s.f_shift, s.y_shift)
    other.add(other_f, sp.csr_matrix(other_y))  # sparse targets are accepted
    path = RidgePath(s)
    got = path.sse(other, alphas)
    for i, a in enumerate(alphas):
        want = ((other_y - path.predict(other_f, a)) ** 2).sum(axis=0)
        np.testing.assert_allclose(got[i], want, rtol=1e-7, atol=1e-7 * max(1.0, want.max()))


def test_cv_r2_and_select_alpha_match_a_brute_force_loop():
    f, y = data(6, 90, 20, 3)
    groups = np.repeat(np.arange(7), [10, 15, 12, 13, 14, 11, 15])
    fold = group_folds(groups, 5)
    assert set(fold) == set(range(5))
    for k in range(5):  # whole groups only
        assert len(set(groups[fold == k])) >= 1
        assert not set(groups[fold == k]) & set(groups[fold != k])
    shift = f.mean(0)
    folds = []
    for k in range(5):
        s = RidgeStats(20, 3, shift)
        s.add(f[fold == k], y[fold == k])
        folds.append(s)
    grid = [0.01, 1.0, 50.0, 5000.0]
    want = []
    for a in grid:
        sse = np.zeros(3)
        sst = np.zeros(3)
        for k in range(5):
            model = make_pipeline(StandardScaler(), Ridge(alpha=a)).fit(f[fold != k], y[fold != k])
            yk = y[fold == k]
            sse += ((yk - model.predict(f[fold == k])) ** 2).sum(0)
            sst += ((yk - yk.mean(0)) ** 2).sum(0)
        want.append(np.mean(1.0 - sse / sst))
    np.testing.assert_allclose(cv_r2(folds, grid), want, rtol=1e-9, atol=1e-9)
    best, scores = select_alpha(folds, grid)
    assert best == grid[int(np.argmax(want))]
    np.testing.assert_allclose(scores, want, rtol=1e-9, atol=1e-9)


def test_statistics_add_and_subtract_by_rows():
    f, y = data(7, 30, 5, 2)
    whole = stats_of(f, y)
    part = RidgeStats(5, 2, whole.f_shift)
    part.add(f[:12], y[:12])
    rest = whole - part
    direct = RidgeStats(5, 2, whole.f_shift)
    direct.add(f[12:], y[12:])
    for name in ("n", "f_sum", "y_sum", "ff", "fy", "yy"):
        np.testing.assert_allclose(getattr(rest, name), getattr(direct, name), atol=1e-10)
    total = RidgeStats.total([part, direct])
    np.testing.assert_allclose(total.ff, whole.ff, rtol=1e-12)
    np.testing.assert_allclose(total.sst(), ((y - y.mean(0)) ** 2).sum(0), rtol=1e-10)


def test_bad_input():
    with pytest.raises(ValueError, match="f_shift"):
        RidgeStats(3, 2, np.zeros(4))
    s = RidgeStats(3, 2)
    with pytest.raises(ValueError, match="columns"):
        s.add(np.zeros((4, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="same rows"):
        s.add(np.zeros((4, 3)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="no rows"):
        RidgePath(s)
    with pytest.raises(ValueError, match="same shifts"):
        _ = s + RidgeStats(3, 2, np.ones(3))
    with pytest.raises(ValueError, match="at least 2 groups"):
        group_folds(np.zeros(5))
    with pytest.raises(ValueError, match="at least 2 folds"):
        cv_r2([s], [1.0])
    const = RidgeStats(2, 1)
    const.add(np.ones((4, 2)), np.ones((4, 1)))
    with pytest.raises(ValueError, match="constant"):
        select_alpha([const, const], [1.0])
