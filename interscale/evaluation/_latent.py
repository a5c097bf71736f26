"""Linear independence and correlation of the latent dimensions."""

from __future__ import annotations

from typing import Any

import numpy as np
from anndata import AnnData

from interscale.evaluation._utils import _embedding, _safe_corr
from interscale.names import Key


def latent_rank_report(
    adata: AnnData,
    *,
    z_key: str = Key.obsm.embedding("global"),
    center: bool = True,
    scale: bool = False,
    rtol: float = 1e-7,
    atol: float = 0.0,
) -> dict[str, Any]:
    """Numerical rank of an embedding: are its dimensions linearly independent?

    The rank is the number of singular values of the (optionally centred and scaled) finite
    rows of the embedding that exceed ``tol = max(atol, rtol * s_max)``, where ``s_max`` is
    the largest singular value.

    Parameters
    ----------
    adata
        AnnData with the embedding in ``obsm``.
    z_key
        ``obsm`` key of the embedding.
    center
        Subtract each column's mean first (recommended: a constant offset is not a
        direction of variation).
    scale
        Divide each column by its sd (ddof=1) first; constant columns are left as they are.
    rtol
        Relative tolerance (fraction of the largest singular value).
    atol
        Absolute tolerance.

    Returns
    -------
    dict
        ``{"z_key", "n_obs" (finite rows used), "n_dims", "rank", "linearly_independent"}``.

    Raises
    ------
    KeyError
        ``z_key`` is not in ``adata.obsm``.
    ValueError
        No finite row, or a negative / non-finite tolerance.
    """
    for name, val in (("rtol", rtol), ("atol", atol)):
        if not np.isfinite(val) or val < 0:
            raise ValueError(f"latent_rank_report: {name} must be a finite number >= 0, got {val}")
    z = _embedding(adata, z_key, min_rows=1, what="latent_rank_report")
    # Centred and scaled in place: copy only when z is the stored array itself (a float64
    # embedding with all rows finite); otherwise _embedding already made a fresh array.
    stored = adata.obsm[z_key]
    x = z.copy() if isinstance(stored, np.ndarray) and np.shares_memory(z, stored) else z
    if center:
        x -= x.mean(axis=0, keepdims=True)
    if scale:
        sd = x.std(axis=0, ddof=1, keepdims=True) if x.shape[0] > 1 else np.ones((1, x.shape[1]))
        sd[~(sd > 0)] = 1.0
        x /= sd
    n, d = x.shape
    s = np.linalg.svd(x, compute_uv=False) if min(n, d) > 0 else np.zeros(0)
    s_max = float(s.max()) if s.size else 0.0
    tol = max(float(atol), float(rtol) * s_max)
    rank = int((s > tol).sum())
    return {
        "z_key": z_key,
        "n_obs": int(n),
        "n_dims": int(d),
        "rank": rank,
        "linearly_independent": bool(rank == d),
    }


def latent_correlation_matrix(
    adata: AnnData, *, z_key: str = Key.obsm.embedding("global")
) -> np.ndarray:
    """Pearson correlation between the dimensions of an embedding.

    What :func:`interscale.pl.latent_correlation` draws. Rows of the embedding that are not
    all finite are left out; a constant dimension correlates 0 with every other one (and 1
    with itself).

    Parameters
    ----------
    adata
        AnnData with the embedding in ``obsm``.
    z_key
        ``obsm`` key of the embedding.

    Returns
    -------
    numpy.ndarray
        Symmetric ``(n_dims, n_dims)`` float64 matrix with values in [-1, 1] and ones on the
        diagonal.

    Raises
    ------
    KeyError
        ``z_key`` is not in ``adata.obsm``.
    ValueError
        The embedding is not 2-D or has fewer than 3 finite rows.
    """
    return _safe_corr(_embedding(adata, z_key, min_rows=3, what="latent_correlation_matrix"))
