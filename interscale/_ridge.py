"""Closed-form ridge regression from sufficient statistics, for a whole grid of penalties.

A ridge with an intercept needs only sums over the cells: the feature and target sums, the
Gram matrix ``F^T F``, the cross products ``F^T Y`` and the target sums of squares. They are
accumulated over row chunks (:class:`RidgeStats`), added and subtracted by folds, and solved
here without ever holding all rows. One symmetric eigendecomposition of the standardised Gram
matrix per design (:class:`RidgePath`) gives the weights and the squared errors on other cells
for every penalty of a grid at the cost of a few matrix products each, and never fails: a Gram
matrix of more features than cells is singular, but ``lambda + alpha > 0`` for every
eigenvalue ``lambda >= 0`` (rounding below zero is clipped) and every ``alpha > 0``.

The penalty applies to the standardised features, ``(f - mean) @ T``, with ``T`` the inverse
standard deviations (:func:`standard_scale`, the rule of ``sklearn.preprocessing.
StandardScaler``: a constant feature keeps scale 1) or any other transform from a caller (a
``scale`` function), e.g. one that makes a ridge on low-rank summaries of features equal the
ridge on the features themselves. The intercept is never penalised. The penalty is chosen by
:func:`cv_r2` / :func:`select_alpha`: cross-validation over folds of whole groups (samples,
say) built by :func:`group_folds`. Large panels average principal components instead of genes
(:mod:`interscale._components`).

API (floor 0: numpy, scipy and ``interscale._anndata``)
-----------------------------------
``RidgeStats(n_features, n_targets, f_shift=None, y_shift=None)``
    ``.add(f, y)``, ``a + b``, ``a - b``, ``RidgeStats.total(parts)``, ``.sst()``.
``RidgePath(stats, cols=None, scale=None)``
    ``.coef(alpha) -> (weights, intercept)``, ``.predict(f, alpha)``,
    ``.sse(other, alphas) -> (len(alphas), n_targets)``.
``standard_scale(mean, cov) -> 1 / sd``, ``inverse_sd(mean, var) -> 1 / sd``
``group_folds(groups, max_folds=5) -> fold of each row``
``cv_r2(folds, alphas, cols=None, scale=None) -> mean R^2 per alpha``
``select_alpha(folds, alphas, cols=None, scale=None) -> (alpha, scores)``
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from interscale._anndata import CONSTANT_RTOL

#: Variance, relative to the mean square about the shift of everything added to or subtracted
#: from the sums, that their rounding alone can produce: a feature at or below it is constant.
#: (A gene absent from all cells but one fold's is exactly constant in the other folds, but
#: ``total - fold`` leaves ~1e-16 of the total's sums: standardised, that noise became a
#: feature of unit variance and wrecked the cross-validation.)
ROUNDING_RTOL = 1e-11

#: A standardisation rule: ``(mean, cov, noise_var)`` of the raw design columns over the fitted
#: rows (``noise_var``: per-column variance that rounding alone can produce) -> either a vector
#: ``t`` (standardised features ``(f - mean) * t``) or a ``(p, q)`` matrix ``T`` (standardised
#: features ``(f - mean) @ T``).
Scale = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


class RidgeStats:
    """Sufficient statistics of a ridge with intercept, accumulated over row chunks.

    The sums are of the features minus ``f_shift`` and the targets minus ``y_shift``: with
    shifts near the means, ``Gram - n * mu mu^T`` keeps its precision for a feature whose sd is
    tiny next to its mean (on raw sums such a feature looks non-constant, or loses all digits).

    Parameters
    ----------
    n_features
        Number of feature columns ``p``.
    n_targets
        Number of target columns ``g``.
    f_shift
        Value subtracted from every feature row (length ``p``; default zeros).
    y_shift
        Value subtracted from every target row (length ``g``; default zeros).

    Attributes
    ----------
    n : float
        Number of rows added.
    f_sum, y_sum : numpy.ndarray
        Column sums of the shifted features and targets.
    ff : numpy.ndarray
        ``(p, p)`` Gram matrix of the shifted features.
    fy : numpy.ndarray
        ``(p, g)`` cross products of shifted features and targets.
    yy : numpy.ndarray
        Per-target sums of squares of the shifted targets.
    f_round : numpy.ndarray
        Per-feature sum of squares of the shifted features over every row added *or
        subtracted*: the scale of the rounding error of ``ff``'s diagonal.
    """

    def __init__(
        self,
        n_features: int,
        n_targets: int,
        f_shift: np.ndarray | None = None,
        y_shift: np.ndarray | None = None,
    ) -> None:
        self.f_shift = np.zeros(n_features) if f_shift is None else np.asarray(f_shift, float)
        self.y_shift = np.zeros(n_targets) if y_shift is None else np.asarray(y_shift, float)
        if self.f_shift.shape != (n_features,) or self.y_shift.shape != (n_targets,):
            raise ValueError(
                f"RidgeStats: f_shift / y_shift have shapes {self.f_shift.shape} / "
                f"{self.y_shift.shape}, expected ({n_features},) / ({n_targets},)"
            )
        self.n = 0.0
        self.f_sum = np.zeros(n_features)
        self.y_sum = np.zeros(n_targets)
        self.ff = np.zeros((n_features, n_features))
        self.fy = np.zeros((n_features, n_targets))
        self.yy = np.zeros(n_targets)
        self.f_round = np.zeros(n_features)

    @property
    def n_features(self) -> int:
        """Number of feature columns."""
        return self.f_sum.size

    @property
    def n_targets(self) -> int:
        """Number of target columns."""
        return self.y_sum.size

    def add(self, f: np.ndarray, y: Any) -> None:
        """Add rows: ``f`` dense ``(m, p)`` raw features, ``y`` ``(m, g)`` raw targets.

        Parameters
        ----------
        f
            Raw feature rows (the shift is subtracted here).
        y
            Raw target rows, dense or scipy sparse (densified).
        """
        y = np.asarray(y.toarray() if sp.issparse(y) else y, dtype=np.float64)
        f = np.asarray(f, dtype=np.float64)
        if f.ndim != 2 or y.ndim != 2 or f.shape[0] != y.shape[0]:
            raise ValueError(f"RidgeStats.add: f {f.shape} and y {y.shape} must be 2-D, same rows")
        if f.shape[1] != self.n_features or y.shape[1] != self.n_targets:
            raise ValueError(
                f"RidgeStats.add: f has {f.shape[1]} columns and y {y.shape[1]}, expected "
                f"{self.n_features} and {self.n_targets}"
            )
        f = f - self.f_shift
        y = y - self.y_shift
        self.n += f.shape[0]
        self.f_sum += f.sum(axis=0)
        self.y_sum += y.sum(axis=0)
        self.ff += f.T @ f
        self.fy += f.T @ y
        self.yy += np.einsum("ij,ij->j", y, y)
        self.f_round += np.einsum("ij,ij->j", f, f)

    def _combine(self, other: RidgeStats, sign: float) -> RidgeStats:
        if not (
            np.array_equal(self.f_shift, other.f_shift)
            and np.array_equal(self.y_shift, other.y_shift)
        ):
            raise ValueError("RidgeStats: only statistics with the same shifts can be combined")
        out = RidgeStats(self.n_features, self.n_targets, self.f_shift, self.y_shift)
        for name in ("n", "f_sum", "y_sum", "ff", "fy", "yy"):
            setattr(out, name, getattr(self, name) + sign * getattr(other, name))
        out.f_round = self.f_round + other.f_round  # rounding errors add whatever the sign
        return out

    def __add__(self, other: RidgeStats) -> RidgeStats:
        return self._combine(other, 1.0)

    def __sub__(self, other: RidgeStats) -> RidgeStats:
        return self._combine(other, -1.0)

    @classmethod
    def total(cls, parts: Sequence[RidgeStats]) -> RidgeStats:
        """Statistics of the union of the rows of ``parts`` (same shifts).

        Parameters
        ----------
        parts
            One or more statistics.

        Returns
        -------
        RidgeStats
        """
        out = parts[0] - parts[0]
        for part in parts:
            out = out + part
        return out

    def sst(self) -> np.ndarray:
        """Per-target sum of squared deviations from these rows' own mean.

        Returns
        -------
        numpy.ndarray
            Length ``g`` (zeros when no row was added).
        """
        if self.n == 0:
            return np.zeros(self.n_targets)
        return np.clip(self.yy - self.y_sum**2 / self.n, 0.0, None)


def standard_scale(
    mean: np.ndarray, cov: np.ndarray, noise_var: np.ndarray | None = None
) -> np.ndarray:
    """Inverse standard deviations of ``StandardScaler``, 1 for constant features.

    A feature counts as constant when its sd is below ``1e-12 * max(1, largest sd)`` or below
    ``CONSTANT_RTOL * |mean|``, or its variance is at most ``noise_var`` (what rounding of the
    sums can produce): it then stays a column of centred zeros and receives no weight.

    Parameters
    ----------
    mean
        Raw feature means over the fitted rows, length ``p``.
    cov
        ``(p, p)`` population covariance over the fitted rows (only its diagonal is read).
    noise_var
        Per-feature variance of rounding (default: none).

    Returns
    -------
    numpy.ndarray
        Length ``p``: ``1 / sd``, or 1 for a constant feature.
    """
    return inverse_sd(mean, np.diag(cov), noise_var)


def inverse_sd(
    mean: np.ndarray, var: np.ndarray, noise_var: np.ndarray | None = None
) -> np.ndarray:
    """:func:`standard_scale` from the variances alone (no ``p x p`` matrix needed).

    Parameters
    ----------
    mean
        Raw feature means, length ``p``.
    var
        Population variances, length ``p`` (rounding below zero is clipped).
    noise_var
        Per-feature variance of rounding (default: none).

    Returns
    -------
    numpy.ndarray
        Length ``p``: ``1 / sd``, or 1 for a constant feature.
    """
    var = np.clip(np.asarray(var, dtype=np.float64), 0.0, None)
    sd = np.sqrt(var)
    level = np.maximum(1e-12 * max(1.0, float(sd.max(initial=0.0))), CONSTANT_RTOL * np.abs(mean))
    keep = sd > level
    if noise_var is not None:
        keep &= var > noise_var
    return 1.0 / np.where(keep, sd, 1.0)


class RidgePath:
    """Standardised ridge of one design for every penalty, from one eigendecomposition.

    Minimises ``||y - b - s w||^2 + alpha ||w||^2`` per target, ``s = (f[:, cols] - mean) @ T``
    the standardised features of the fitted rows (``T`` from ``scale``, by default
    :func:`standard_scale`), ``b`` the unpenalised intercept. With ``T^T G T = V diag(lam)
    V^T`` (``G`` the centred Gram matrix), the standardised weights are ``V diag(1 / (lam +
    alpha)) V^T T^T C`` (``C`` the centred cross products): every alpha costs only products.

    Parameters
    ----------
    stats
        Statistics of the rows to fit (at least 1 row).
    cols
        Feature columns of the design (default: all), in the order of the weights.
    scale
        Standardisation rule (see :data:`Scale`); default :func:`standard_scale`.

    Attributes
    ----------
    cols : numpy.ndarray
        The design's columns.
    eigenvalues : numpy.ndarray
        Of the standardised, centred Gram matrix (ascending, clipped at 0).
    """

    def __init__(
        self, stats: RidgeStats, cols: np.ndarray | None = None, scale: Scale | None = None
    ) -> None:
        if stats.n < 1:
            raise ValueError("RidgePath: the statistics hold no rows")
        cols = np.arange(stats.n_features) if cols is None else np.asarray(cols, dtype=np.intp)
        self.cols = cols
        self._stats = stats
        n = stats.n
        self._mu = stats.f_sum[cols] / n  # shifted units
        self._y_bar = stats.y_sum / n
        gram = stats.ff[np.ix_(cols, cols)] - n * np.outer(self._mu, self._mu)
        cross = stats.fy[cols] - n * np.outer(self._mu, self._y_bar)
        noise = ROUNDING_RTOL * stats.f_round[cols] / n
        transform = (scale or standard_scale)(self._mu + stats.f_shift[cols], gram / n, noise)
        transform = np.asarray(transform, dtype=np.float64)
        if transform.ndim == 1:
            lhs = gram * np.outer(transform, transform)
            rhs = cross * transform[:, None]
        else:
            lhs = transform.T @ gram @ transform
            rhs = transform.T @ cross
        lhs = 0.5 * (lhs + lhs.T)
        lam, vecs = scipy.linalg.eigh(lhs, driver="evd", check_finite=False)
        self.eigenvalues = np.clip(lam, 0.0, None)
        # Raw-unit weights are embed @ coords(alpha): one product per alpha, whatever T is.
        self._embed = (
            vecs * transform[:, None] if transform.ndim == 1 else transform @ vecs
        )  # (p, q)
        self._proj = vecs.T @ rhs  # (q, g)

    def _coords(self, alpha: float) -> np.ndarray:
        return self._proj / (self.eigenvalues + float(alpha))[:, None]

    def _weights(self, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """Weights (raw units) and intercept for features and targets minus the shifts."""
        w = self._embed @ self._coords(alpha)
        return w, self._y_bar - self._mu @ w

    def coef(self, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """Weights and intercept in raw units: predictions are ``f[:, cols] @ w + b``.

        Parameters
        ----------
        alpha
            Penalty (> 0).

        Returns
        -------
        weights : numpy.ndarray
            ``(len(cols), g)``.
        intercept : numpy.ndarray
            Length ``g``.
        """
        w, b = self._weights(alpha)
        stats = self._stats
        return w, b + stats.y_shift - stats.f_shift[self.cols] @ w

    def predict(self, f: np.ndarray, alpha: float) -> np.ndarray:
        """Predictions for raw feature rows ``f`` (all ``p`` columns).

        Parameters
        ----------
        f
            ``(m, p)`` raw features.
        alpha
            Penalty (> 0).

        Returns
        -------
        numpy.ndarray
            ``(m, g)``.
        """
        w, b = self._weights(alpha)
        stats = self._stats
        return (f[:, self.cols] - stats.f_shift[self.cols]) @ w + (b + stats.y_shift)

    def sse(self, other: RidgeStats, alphas: Sequence[float]) -> np.ndarray:
        """Per-target sum of squared errors on the rows of ``other``, for every alpha.

        Computed from ``other``'s statistics in the eigenbasis: two products per alpha of
        sizes ``q x q x g``, no pass over rows.

        Parameters
        ----------
        other
            Statistics (same shifts) of the rows to score, e.g. a held-out fold.
        alphas
            Penalties.

        Returns
        -------
        numpy.ndarray
            ``(len(alphas), g)``, clipped at 0 against rounding.
        """
        cols, mu, y_bar = self.cols, self._mu, self._y_bar
        n_o, fs, ys = other.n, other.f_sum[cols], other.y_sum
        # other's statistics centred at this fit's means (the predictions' reference point)
        ff = other.ff[np.ix_(cols, cols)] - np.outer(mu, fs) - np.outer(fs, mu)
        ff += n_o * np.outer(mu, mu)
        fy = other.fy[cols] - np.outer(mu, ys) - np.outer(fs, y_bar) + n_o * np.outer(mu, y_bar)
        yy = other.yy - 2.0 * y_bar * ys + n_o * y_bar**2
        m = self._embed.T @ ff @ self._embed
        c = self._embed.T @ fy
        out = np.empty((len(alphas), other.n_targets))
        for i, alpha in enumerate(alphas):
            a = self._coords(alpha)
            out[i] = yy - 2.0 * np.einsum("ij,ij->j", c, a) + np.einsum("ij,ij->j", m @ a, a)
        return np.clip(out, 0.0, None)


def group_folds(groups: np.ndarray, max_folds: int = 5) -> np.ndarray:
    """Fold of every row: whole groups, assigned in turn by sorted group label.

    Parameters
    ----------
    groups
        Group label (e.g. sample code) of each row.
    max_folds
        Largest number of folds; fewer when there are fewer groups.

    Returns
    -------
    numpy.ndarray
        Integer fold ``0 .. min(max_folds, n_groups) - 1`` of each row.

    Raises
    ------
    ValueError
        Fewer than 2 groups, or ``max_folds < 2``.
    """
    if max_folds < 2:
        raise ValueError(f"group_folds: max_folds must be >= 2, got {max_folds}")
    labels, inverse = np.unique(np.asarray(groups), return_inverse=True)
    if labels.size < 2:
        raise ValueError(f"group_folds: need at least 2 groups, found {labels.size}")
    n_folds = min(max_folds, labels.size)
    return (np.arange(labels.size) % n_folds)[inverse.ravel()]


def cv_r2(
    folds: Sequence[RidgeStats],
    alphas: Sequence[float],
    cols: np.ndarray | None = None,
    scale: Scale | None = None,
) -> np.ndarray:
    """Mean over targets of the R^2 pooled over folds, each fold predicted by the others.

    Per alpha and target, ``1 - sum_k SSE_k / sum_k SST_k`` with ``SST_k`` about fold ``k``'s
    own mean; targets constant within every fold are left out. One eigendecomposition per fold.

    Parameters
    ----------
    folds
        Statistics of each fold (same shifts), at least 2.
    alphas
        Penalties to score.
    cols, scale
        As in :class:`RidgePath`.

    Returns
    -------
    numpy.ndarray
        Length ``len(alphas)``; NaN everywhere when no target varies within the folds.
    """
    if len(folds) < 2:
        raise ValueError(f"cv_r2: need at least 2 folds, got {len(folds)}")
    total = RidgeStats.total(folds)
    sse = np.zeros((len(alphas), total.n_targets))
    sst = np.zeros(total.n_targets)
    for fold in folds:
        sse += RidgePath(total - fold, cols, scale).sse(fold, alphas)
        sst += fold.sst()
    ok = sst > 1e-12 * max(1.0, float(sst.max(initial=0.0)))
    if not ok.any():
        return np.full(len(alphas), np.nan)
    return np.mean(1.0 - sse[:, ok] / sst[ok], axis=1)


def select_alpha(
    folds: Sequence[RidgeStats],
    alphas: Sequence[float],
    cols: np.ndarray | None = None,
    scale: Scale | None = None,
) -> tuple[float, np.ndarray]:
    """The alpha of the grid with the best :func:`cv_r2` (the first one on ties).

    Parameters
    ----------
    folds, alphas, cols, scale
        As in :func:`cv_r2`.

    Returns
    -------
    alpha : float
        The chosen penalty.
    scores : numpy.ndarray
        :func:`cv_r2` of every alpha.

    Raises
    ------
    ValueError
        No target varies within the folds (every score is NaN).
    """
    scores = cv_r2(folds, alphas, cols, scale)
    if np.isnan(scores).all():
        raise ValueError("select_alpha: every target is constant within the folds")
    return float(alphas[int(np.nanargmax(scores))]), scores
