"""Library-size normalisation followed by log1p."""

from __future__ import annotations

import anndata as ad
import numpy as np
import scipy.sparse as sp

from interscale.pp._validate import (
    check_integer_counts,
    check_not_view,
    check_positive_number,
    get_layer,
    resolve_counts_layer,
)


def normalize(
    adata: ad.AnnData,
    target_sum: float | None = 1e4,
    layer: str | None = "auto",
    key_added: str = "log1p_norm",
    check_counts: bool = True,
) -> None:
    """Scale every cell to the same total and apply ``log1p``, into a new layer.

    ``out[i, g] = log1p(counts[i, g] * target_sum / sum_g counts[i, g])``. Cells whose counts
    are all zero stay all zero (no NaN). The input matrix is not modified.

    Parameters
    ----------
    adata
        Annotated data holding counts.
    target_sum
        Total each cell is scaled to (> 0). ``None`` uses the median total of the cells with
        non-zero counts.
    layer
        Layer holding the counts. ``"auto"`` (default) takes ``layers["counts"]`` (where scanpy
        users keep them), else ``layers["raw"]``, else ``adata.X``; ``"X"`` or ``None`` uses
        ``adata.X``.
    key_added
        Name of the layer to write.
    check_counts
        Refuse values that are not whole numbers (a matrix that was already normalised);
        ``False`` normalises whatever is there.

    Returns
    -------
    None
        Writes ``adata.layers[key_added]`` as float32: CSR if the input is sparse, a dense
        ``numpy.ndarray`` if it is dense, and ``adata.uns["normalize"]`` (which matrix held the
        counts, ``target_sum``, ``key_added``).

    Raises
    ------
    KeyError
        If ``layer`` is not in ``adata.layers``.
    ValueError
        If the counts hold negative, NaN or infinite values, non-integer values (unless
        ``check_counts=False``), or ``target_sum`` is not positive.
    TypeError
        If ``target_sum`` is not a number or ``adata`` is a view.
    """
    check_not_view(adata, "normalize")
    if target_sum is not None:
        target_sum = check_positive_number(target_sum, "target_sum")
    layer, where = resolve_counts_layer(adata, layer)
    mat = get_layer(adata, layer)
    if sp.issparse(mat):
        mat = sp.csr_matrix(mat)  # copies only if not CSR already
        values = mat.data
    else:
        mat = np.asarray(mat)
        values = mat
    if values.size and not np.isfinite(values).all():
        raise ValueError(f"{where} contains NaN or infinite values")
    if values.size and values.min() < 0:
        raise ValueError(f"{where} contains negative values; normalize expects counts")
    if check_counts:
        check_integer_counts(values, where, "normalize")

    totals = np.asarray(mat.sum(axis=1), dtype=np.float64).ravel()
    if target_sum is None:
        positive = totals[totals > 0]
        target_sum = float(np.median(positive)) if positive.size else 1.0
    scale = np.zeros_like(totals)
    np.divide(target_sum, totals, out=scale, where=totals > 0)
    if sp.issparse(mat):
        data = np.log1p(mat.data.astype(np.float64) * np.repeat(scale, np.diff(mat.indptr)))
        out = sp.csr_matrix(
            (data.astype(np.float32), mat.indices.copy(), mat.indptr.copy()), shape=mat.shape
        )
    else:
        out = np.log1p(mat.astype(np.float64) * scale[:, None]).astype(np.float32)
    adata.layers[key_added] = out
    adata.uns["normalize"] = {
        "counts": "X" if layer is None else layer,
        "target_sum": float(target_sum),
        "key_added": key_added,
    }
