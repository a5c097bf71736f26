"""Quality control: NaN / infinite coordinates, zero-count cells, duplicated obs names."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from interscale.pp._validate import (
    check_counts,
    check_not_view,
    get_coordinates,
    get_layer,
    resolve_counts_layer,
)


def _unique_names(names: pd.Index) -> np.ndarray:
    """Append ``-1``, ``-2``, ... to the 2nd, 3rd, ... copy of a name, avoiding collisions."""
    values = names.astype(str).to_numpy(dtype=object)
    dup_rank = pd.Series(values).groupby(values).cumcount().to_numpy()
    out = values.copy()
    todo = dup_rank > 0
    suffix = dup_rank.copy()
    taken = set(values.tolist())
    while todo.any():  # iterates only while freshly made names collide; almost always once
        candidates = np.char.add(
            np.char.add(values[todo].astype(str), "-"), suffix[todo].astype(str)
        ).astype(object)
        clash = np.array([c in taken for c in candidates], dtype=bool)
        # within-batch clashes are impossible: (name, rank) pairs are distinct
        idx = np.flatnonzero(todo)
        out[idx[~clash]] = candidates[~clash]
        taken.update(candidates[~clash].tolist())
        todo[idx[~clash]] = False
        suffix[idx[clash]] += 1
    return out


def qc(
    adata: ad.AnnData,
    spatial_key: str = "spatial",
    layer: str | None = "auto",
    remove: bool = True,
    inplace: bool = True,
) -> dict | tuple[ad.AnnData, dict]:
    """Find (and by default remove) cells that break spatial models, and fix duplicated names.

    Three defects are checked:

    * cells with NaN or infinite coordinates in ``adata.obsm[spatial_key]``;
    * cells whose counts (``layer``) are all zero;
    * duplicated obs names: the 2nd, 3rd, ... copy of a name gets ``-1``, ``-2``, ... appended;
      the names before the change are kept in ``obs["original_obs_name"]`` (written only when
      there were duplicates).

    Parameters
    ----------
    adata
        Annotated data.
    spatial_key
        Key of the coordinates in ``adata.obsm``.
    layer
        Layer holding the counts: ``"auto"`` (default) takes ``layers["counts"]``, else
        ``layers["raw"]``, else ``adata.X``; ``"X"`` or ``None`` uses ``adata.X``.
    remove
        If True, drop the cells with bad coordinates or zero counts. If False, keep them and
        flag them in ``obs["qc_nonfinite_coords"]`` and ``obs["qc_zero_count"]``.
    inplace
        If True (scanpy style), modify ``adata`` and return the summary. If False, leave
        ``adata`` untouched and return ``(new_adata, summary)``.

    Returns
    -------
    dict or tuple
        The summary ``{"n_obs_before", "n_nonfinite_coords", "n_zero_count",
        "n_duplicated_names", "n_removed", "n_obs_after"}`` (a cell with several defects is
        counted under each, once in ``n_removed``); with ``inplace=False``, the tuple
        ``(new_adata, summary)``.

    Raises
    ------
    KeyError
        If ``spatial_key`` is not in ``obsm`` or ``layer`` is not in ``layers``.
    ValueError
        If the counts hold NaN, infinite or negative values (a zero-count test is meaningless).
    TypeError
        If ``inplace`` is true and ``adata`` is a view.
    """
    if inplace:
        check_not_view(adata, "qc")
    coords = get_coordinates(adata, spatial_key)
    layer, where = resolve_counts_layer(adata, layer)
    counts = get_layer(adata, layer)
    check_counts(counts.data if sp.issparse(counts) else np.asarray(counts), where, "qc")
    bad_coords = ~np.isfinite(coords).all(axis=1)
    totals = (
        np.asarray(counts.sum(axis=1)).ravel()
        if sp.issparse(counts)
        else np.asarray(counts).sum(axis=1)
    )
    zero = totals == 0
    duplicated = adata.obs_names.duplicated(keep="first")
    n_dup = int(duplicated.sum())
    drop = (bad_coords | zero) if remove else np.zeros(adata.n_obs, dtype=bool)
    summary = {
        "n_obs_before": int(adata.n_obs),
        "n_nonfinite_coords": int(bad_coords.sum()),
        "n_zero_count": int(zero.sum()),
        "n_duplicated_names": n_dup,
        "n_removed": int(drop.sum()),
        "n_obs_after": int(adata.n_obs - drop.sum()),
    }
    new_names = _unique_names(adata.obs_names) if n_dup else None

    if inplace:
        target = adata
    else:
        with warnings.catch_warnings():
            # the copy re-checks the duplicated names that are fixed just below
            warnings.filterwarnings("ignore", message="Observation names are not unique")
            target = adata.copy()
    if new_names is not None:
        target.obs["original_obs_name"] = adata.obs_names.to_numpy().astype(str)
        target.obs_names = pd.Index(new_names.astype(str))
    if remove:
        if drop.any():
            target._inplace_subset_obs(~drop)
    else:
        target.obs["qc_nonfinite_coords"] = bad_coords
        target.obs["qc_zero_count"] = zero
    return summary if inplace else (target, summary)
