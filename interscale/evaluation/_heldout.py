"""Scores read on the held-out samples: per-split R^2, the scored cells of a report, AUROC.

Held out means unseen: the validation samples choose the best epoch and stop training, so only
the test samples are held out from everything the model was fitted or selected on, and every
held-out score is read on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from interscale._anndata import read_setup, split_names
from interscale.evaluation._claims import auroc_rank_difference
from interscale.evaluation._ranks import r2_per_gene
from interscale.evaluation._utils import _get_matrix

__all__ = [
    "HELDOUT_SPLITS",
    "auroc_with_reason",
    "heldout_r2",
    "report_cells",
    "training_mean_predictions",
]

# The splits whose samples neither training nor early stopping saw (val picks the best epoch).
HELDOUT_SPLITS = ("test",)
# The splits training did not fit (val did choose the epoch): what a report may score.
_UNFITTED_SPLITS = ("val", "test")


def heldout_r2(
    adata: AnnData, pred_key: str, truth_key: str, split_key: str = "split"
) -> dict[str, float]:
    """Mean over genes of the per-gene R^2 of a prediction layer, per split.

    The per-gene R^2 is that of :func:`calculate_gene_ranks` (chunked, sparse-aware,
    non-finite entries left out, NaN for a gene constant within the split); only the rows of
    each split are read.

    Parameters
    ----------
    adata
        AnnData with the prediction layer, the truth layer and the split column.
    pred_key
        Layer with the predictions (e.g. ``"_y_pred_local"``).
    truth_key
        Layer with the values predicted (e.g. ``"log1p_norm"``).
    split_key
        obs column; one value is reported per split present.

    Returns
    -------
    dict
        Split name -> mean R^2 over the genes with a defined R^2 (NaN if none), splits in
        sorted order.

    Raises
    ------
    KeyError
        A layer or the split column is missing.
    ValueError
        A layer has the wrong shape.
    """
    what = "heldout_r2"
    if split_key not in adata.obs.columns:
        raise KeyError(
            f"{what}: split column {split_key!r} not found in adata.obs "
            f"(columns: {list(adata.obs.columns)})"
        )
    truth = _get_matrix(adata, truth_key, what=what)
    pred = _get_matrix(adata, pred_key, what=what)
    splits = adata.obs[split_key].astype(str).to_numpy()
    out = {}
    for split in sorted(set(splits)):
        rows = np.flatnonzero(splits == split)
        (r2,) = r2_per_gene(truth, [pred], rows=rows)
        out[split] = float(np.nanmean(r2)) if np.isfinite(r2).any() else np.nan
    return out


def _split_key_of(adata: AnnData) -> str:
    """The split column recorded by the model setup, else ``"split"``."""
    key = (read_setup(adata) or {}).get("split_key")
    return str(key) if key else "split"


def report_cells(
    adata: AnnData, cells: str | Sequence[str] | None, split_key: str
) -> str | list[str] | None:
    """The ``cells`` a report scores: requested ``val`` / ``test`` names kept where present.

    A request made only of ``"val"`` and ``"test"`` keeps the names the data has (``"val,test"``
    on data without a test split scores the validation samples, as asked). A request for the
    held-out split alone (``"test"``, the default of the reports) is refused with a clear
    message when the data has no test samples: it never falls back to the validation samples,
    which chose the best epoch and are therefore not unseen. Any other request (``"all"``,
    ``"train"``, a mask) is passed on unchanged, and checked by :func:`calculate_gene_ranks`.

    Parameters
    ----------
    adata
        AnnData holding the split column.
    cells
        The requested cells, as :func:`calculate_gene_ranks` takes them (``"test"``,
        ``["val"]``, ``"all"``, a boolean mask, None).
    split_key
        obs column with the split names.

    Returns
    -------
    str, list of str or None
        The requested ``val`` / ``test`` names present in the data (in the order requested),
        or ``cells`` unchanged when it asks for anything else.

    Raises
    ------
    KeyError
        Held-out cells are requested but ``split_key`` is not an obs column.
    ValueError
        Held-out cells are requested but the data has none of the requested splits (for
        ``"test"``: no test samples).
    """
    names = split_names(cells) if cells is not None else None
    if not names or not set(names) <= set(_UNFITTED_SPLITS):
        return cells
    if split_key not in adata.obs.columns:
        raise KeyError(
            f"no split column {split_key!r} in adata.obs to find the held-out cells "
            f"({', '.join(names)}); pass cells='all' to score every cell"
        )
    present = set(adata.obs[split_key].astype(str))
    kept = [name for name in dict.fromkeys(names) if name in present]
    if not kept:
        raise ValueError(
            f"no held-out cells: adata.obs[{split_key!r}] has no {' / '.join(names)} samples "
            f"(available: {sorted(present)}). Held-out scores are read on the test samples "
            "only, because the validation samples chose the best epoch; split the samples "
            "with a test share (interscale.pp.split_samples), or pass cells='val' (scored on "
            "the early-stopping samples) or cells='all' explicitly"
        )
    return kept


def auroc_with_reason(ranks: pd.DataFrame, var: pd.DataFrame) -> tuple[float | None, str | None]:
    """AUROC of the Rank Difference for planted local vs global genes, or why there is none.

    Parameters
    ----------
    ranks
        Output of :func:`calculate_gene_ranks`.
    var
        ``adata.var``; its ``program`` column labels the planted ``"local"`` and
        ``"global"`` genes (as :func:`interscale.datasets.synthetic_organoids` writes it).

    Returns
    -------
    tuple
        ``(auroc, None)`` with the :func:`auroc_rank_difference` of the planted genes, or
        ``(None, reason)`` when it cannot be computed (no ``program`` column, or genes of
        only one class); never raises for those.
    """
    if "program" not in var.columns:
        return None, "no var['program'] column: data without planted programs"
    try:
        return float(auroc_rank_difference(ranks, var["program"].astype(str))), None
    except ValueError as exc:
        return None, f"auroc_rank_difference failed: {exc}"


def _describe(ranks: pd.DataFrame) -> dict[str, Any]:
    """The scored cells and bootstrap set-up of a gene-rank table, for a JSON report."""
    out: dict[str, Any] = {
        "cells": ranks.attrs.get("cells"),
        "n_cells_scored": ranks.attrs.get("n_cells"),
    }
    if "bootstrap" in ranks.attrs:
        out["bootstrap"] = dict(ranks.attrs["bootstrap"])
    return out


def training_mean_predictions(
    adata: AnnData,
    layer: str,
    split_key: str = "split",
    train: str = "train",
    pred_keys: Sequence[str] = ("_y_pred_local", "_y_pred_global"),
) -> None:
    """Write each gene's training mean into prediction layers: a model that learned nothing.

    Scored like a model's output, this reference shows what a score is worth: a per-gene R^2
    on held-out cells of at most 0 (the held-out mean does at least as well as the training
    mean), a rank difference of 0 for every gene. The reproduction's checks use it to show that
    their bands reject a predictor without any skill.

    Parameters
    ----------
    adata
        AnnData with ``layer`` and the split column; the ``pred_keys`` layers are (over)written
        with float32 copies.
    layer
        Layer whose training mean is predicted.
    split_key
        obs column with the split.
    train
        Split value of the training cells.
    pred_keys
        Layers to write (default: the prediction layers of both heads).

    Raises
    ------
    KeyError
        ``layer`` or ``split_key`` is missing.
    ValueError
        No cell has the split value ``train``.
    """
    if layer not in adata.layers:
        raise KeyError(f"training_mean_predictions: layer {layer!r} not in adata.layers")
    if split_key not in adata.obs:
        raise KeyError(f"training_mean_predictions: split column {split_key!r} not in adata.obs")
    rows = np.flatnonzero(adata.obs[split_key].astype(str).to_numpy() == train)
    if rows.size == 0:
        raise ValueError(
            f"training_mean_predictions: no cell has {split_key!r} == {train!r}; "
            f"values present: {sorted(adata.obs[split_key].astype(str).unique())}"
        )
    mean = np.asarray(adata.layers[layer][rows].mean(axis=0), dtype=np.float32).ravel()
    for key in pred_keys:
        adata.layers[key] = np.broadcast_to(mean, (adata.n_obs, adata.n_vars)).copy()
