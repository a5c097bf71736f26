"""Large panels: average the top principal components of a layer instead of its genes.

The averaging operators of the floors and of the model's linear part are linear, so averages
of principal-component scores are the principal components of the gene averages. Above
:data:`AUTO_MAX_GENES` genes both average the top :data:`AUTO_COMPONENTS` components of the
training cells (:func:`auto_components`, :func:`principal_axes`), and :class:`ComponentScale`
standardises them so that the ridge of :mod:`interscale._ridge` on averaged components is the
ridge on the standardised gene averages restricted to that subspace.

API (floor 0: numpy and :mod:`interscale._ridge`)
-----------------------------------
``auto_components(n_vars) -> None | int`` (the large-panel rule: genes up to 256, else 256)
``principal_axes(chunks, mean, r, seed) -> (axes, explained share, method)``
``ComponentScale(axes, layer_mean)``: a :data:`interscale._ridge.Scale` for averages of
component scores
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.linalg

from interscale._ridge import inverse_sd

#: ``auto_components``: the genes themselves up to this many, else this many components.
AUTO_MAX_GENES = 256
AUTO_COMPONENTS = 256
#: Principal axes from the exact covariance up to this many genes, else randomized.
EXACT_PCA_MAX_GENES = 1024
_PCA_OVERSAMPLE = 10
_PCA_POWER_ITERATIONS = 2


def auto_components(n_vars: int) -> int | None:
    """The large-panel rule of the floors and the model: what the averages are taken of.

    Up to :data:`AUTO_MAX_GENES` genes the genes themselves (``None``), above the top
    :data:`AUTO_COMPONENTS` principal components. 256 genes give designs of at most 768
    features with three blocks (an eigendecomposition of about a second per fold); 256
    components keep that cost at any panel size.

    Parameters
    ----------
    n_vars
        Number of genes of the layer.

    Returns
    -------
    int or None
        Number of components, or ``None`` for the genes.
    """
    return None if int(n_vars) <= AUTO_MAX_GENES else AUTO_COMPONENTS


def principal_axes(
    chunks: Callable[[], Any],
    mean: np.ndarray,
    r: int,
    seed: int,
    exact_max_vars: int = EXACT_PCA_MAX_GENES,
) -> tuple[np.ndarray, float, str]:
    """Top-``r`` principal axes of the rows that ``chunks`` yields, centred at ``mean``.

    Up to ``exact_max_vars`` columns from the exact eigendecomposition of the
    covariance; above by a randomized range finder (Halko, Martinsson & Tropp 2011:
    oversampling 10, 2 power iterations, re-orthonormalised by QR), which never forms the
    ``n_vars x n_vars`` covariance and whose test matrix comes from ``seed``.

    Parameters
    ----------
    chunks
        Called once per pass over the rows: returns an iterable of dense ``(m, n_vars)``
        float64 blocks of raw rows, always in the same order (the randomized finder makes
        several passes).
    mean
        Centre of the rows, length ``n_vars`` (e.g. the mean of the fitted rows).
    r
        Number of axes (``1 <= r <= n_vars``).
    seed
        Seed of the randomized finder's test matrix.
    exact_max_vars
        Largest number of columns done exactly (default :data:`EXACT_PCA_MAX_GENES`).

    Returns
    -------
    axes : numpy.ndarray
        ``(n_vars, r)``, orthonormal columns, largest variance first.
    share : float
        Share of the rows' total variance (about ``mean``) the axes hold.
    method : str
        ``"exact"`` or ``"randomized"``.
    """
    mean = np.asarray(mean, dtype=np.float64)
    n_vars = mean.size
    if not 1 <= r <= n_vars:
        raise ValueError(f"principal_axes: r must be in [1, {n_vars}], got {r}")
    if n_vars <= exact_max_vars:
        cov = np.zeros((n_vars, n_vars))
        for block in chunks():
            xc = block - mean
            cov += xc.T @ xc
        lam, vecs = scipy.linalg.eigh(cov, driver="evd", check_finite=False)
        lam = np.clip(lam[::-1], 0.0, None)
        total = float(lam.sum())
        share = float(lam[:r].sum() / total) if total > 0 else 1.0
        return np.ascontiguousarray(vecs[:, ::-1][:, :r]), share, "exact"

    k = min(n_vars, r + _PCA_OVERSAMPLE)
    omega = np.random.default_rng(seed).standard_normal((n_vars, k))

    def times(basis: np.ndarray) -> np.ndarray:  # X_c @ basis, (n_rows, k)
        return np.vstack([(block - mean) @ basis for block in chunks()])

    def t_times(left: np.ndarray) -> tuple[np.ndarray, float]:  # X_c^T @ left, and ||X_c||^2
        out = np.zeros((n_vars, left.shape[1]))
        sq = 0.0
        start = 0
        for block in chunks():
            xc = block - mean
            out += xc.T @ left[start : start + xc.shape[0]]
            sq += float(np.einsum("ij,ij->", xc, xc))
            start += xc.shape[0]
        return out, sq

    q, _ = np.linalg.qr(times(omega))
    total_var = 0.0
    for _ in range(_PCA_POWER_ITERATIONS):
        w, total_var = t_times(q)
        w, _ = np.linalg.qr(w)
        q, _ = np.linalg.qr(times(w))
    bt, total_var = t_times(q)  # B^T = X_c^T Q: its left singular vectors are X_c's axes
    u, sv, _ = np.linalg.svd(bt, full_matrices=False)
    share = float((sv[:r] ** 2).sum() / total_var) if total_var > 0 else 1.0
    return np.ascontiguousarray(u[:, :r]), min(share, 1.0), "randomized"


class ComponentScale:
    """Standardisation that makes a ridge on averaged components one on averaged genes.

    With ``z = (x - m) @ V`` (``V`` orthonormal, ``(n_vars, r)``) and a block of averages of
    ``z``, the gene averages it stands for are ``m + z_avg @ V^T``, with per-gene sd ``d``
    (computed from the block's covariance ``C`` as ``diag(V C V^T)``, constant genes 1 as in
    StandardScaler). The ridge on the standardised gene averages ``z_avg V^T D^-1`` equals
    the ridge on ``z_avg @ L`` with ``L L^T = V^T D^-2 V``; ``L = R^T`` from the QR
    factorisation ``D^-1 V = Q R``. When ``V`` spans every centred row of the layer, this is
    exactly the ridge on the gene averages; otherwise it is the ridge on their projection.
    The design's columns are whole blocks of ``r`` (one per kind of average).

    Parameters
    ----------
    basis
        ``V``, ``(n_vars, r)`` with orthonormal columns.
    layer_mean
        ``m``, length ``n_vars``.
    """

    def __init__(self, basis: np.ndarray, layer_mean: np.ndarray) -> None:
        self.basis = basis
        self.layer_mean = layer_mean

    def __call__(self, mean: np.ndarray, cov: np.ndarray, noise_var: np.ndarray) -> np.ndarray:
        """The ``(p, p)`` block-diagonal transform ``T`` of a design of ``p / r`` blocks."""
        r = self.basis.shape[1]
        out = np.zeros_like(cov)
        for b in range(mean.size // r):  # the blocks of a design: at most hops + 1
            sl = slice(b * r, (b + 1) * r)
            var = np.einsum("gi,ij,gj->g", self.basis, cov[sl, sl], self.basis, optimize=True)
            # a gene's rounding: at most that of its components, added in sd (Cauchy-Schwarz)
            noise = (np.abs(self.basis) @ np.sqrt(noise_var[sl])) ** 2
            t = inverse_sd(self.layer_mean + self.basis @ mean[sl], var, noise)
            out[sl, sl] = np.linalg.qr(self.basis * t[:, None], mode="r").T
        return out
