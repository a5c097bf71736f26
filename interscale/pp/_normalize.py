"""Library-size normalisation followed by log1p."""

from __future__ import annotations

import anndata as ad
import numpy as np
import scipy.sparse as sp

from interscale.pp._validate import check_not_view, check_positive_number, get_layer


def normalize(
    adata: ad.AnnData,
    target_sum: float | None = 1e4,
    layer: str | None = "raw",
    key_added: str = "log1p_norm",
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
        Layer holding the counts; ``None`` uses ``adata.X``.
    key_added
        Name of the layer to write.

    Returns
    -------
    None
        Writes ``adata.layers[key_added]`` as float32: CSR if the input is sparse, a dense
        ``numpy.ndarray`` if it is dense.

    Raises
    ------
    KeyError
        If ``layer`` is not in ``adata.layers``.
    ValueError
        If the counts hold negative, NaN or infinite values, or ``target_sum`` is not positive.
    TypeError
        If ``target_sum`` is not a number or ``adata`` is a view.
    """
    check_not_view(adata, "normalize")
    if target_sum is not None:
        target_sum = check_positive_number(target_sum, "target_sum")
    mat = get_layer(adata, layer)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
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
