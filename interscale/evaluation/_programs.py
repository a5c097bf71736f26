"""Held-out scores per planted program: both heads next to the ridge floors, AUROC and gaps.

For data whose genes carry planted ground truth in ``var["program"]`` (the built-in synthetic
organoids): every number is scored on the held-out split values only (by default the test
samples, which neither training nor early stopping saw) and read next to the ridge floors of
:func:`interscale.tl.linear_baselines` scored on the same cells, so that a model that never
learned cannot look good.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from anndata import AnnData

from interscale._compat import accepts_library_key
from interscale.evaluation._baselines import linear_baselines
from interscale.evaluation._claims import auroc_rank_difference
from interscale.evaluation._heldout import HELDOUT_SPLITS
from interscale.evaluation._ranks import calculate_gene_ranks

__all__ = ["heldout_program_metrics"]


@accepts_library_key
def heldout_program_metrics(
    adata: AnnData,
    *,
    layer: str,
    split_key: str = "split",
    sample_key: str = "sample",
    heldout: Sequence[str] = HELDOUT_SPLITS,
    pred_local: str = "_y_pred_local",
    pred_global: str = "_y_pred_global",
    baselines: pd.DataFrame | None = None,
    ranks: pd.DataFrame | None = None,
) -> tuple[dict[str, float], pd.DataFrame]:
    """Per-program held-out R^2 of both heads and of the linear floors, AUROC and head gaps.

    Parameters
    ----------
    adata
        AnnData with the prediction layers, the truth ``layer``, the spatial graph, the split
        and ``var["program"]`` (planted ground truth).
    layer
        Layer the model predicts.
    split_key, sample_key
        Columns of ``adata.obs`` with the split and the sample (``library_key=``, squidpy's
        word, is accepted for ``sample_key``).
    heldout
        Split values scored (default: the test split only); the floors are scored on the same
        split values.
    pred_local, pred_global
        Prediction layers of the two heads.
    baselines
        Output of :func:`interscale.tl.linear_baselines` for the same data, split and
        ``heldout`` split values; computed when None.
    ranks
        Output of :func:`interscale.evaluation.calculate_gene_ranks` scored on the ``heldout``
        cells (e.g. with bootstrap intervals); computed when None.

    Returns
    -------
    metrics : dict
        ``heldout_auroc``; ``heldout_<column>_<program>`` for the columns ``r2_local``,
        ``r2_global`` and every baseline; ``floor_gap_global_genes`` and
        ``floor_ratio_global_genes`` (on global genes, the sample ridge minus / over the 2-hop
        ridge: how much the data let the tissue add); ``head_gap_global_genes`` (global
        minus local head on global genes), ``head_gap_local_genes`` (local minus global head
        on local genes), each NaN when neither head's R^2 on those genes is above 0;
        ``local_head_over_hop2_local_genes`` and ``global_head_over_hop2_sample_global_genes``
        (each head as a fraction of the best ridge on its own program).
    per_program : pandas.DataFrame
        Mean per program (rows) of the heads' and the baselines' R^2 (columns).

    Raises
    ------
    KeyError
        ``adata.var`` has no ``program`` column.
    """
    if "program" not in adata.var:
        raise KeyError("heldout_program_metrics needs the planted programs in adata.var['program']")
    if baselines is None:
        baselines = linear_baselines(
            adata,
            layer_key=layer,
            sample_key=sample_key,
            split_key=split_key,
            heldout=tuple(heldout),
            key_added=None,
        )
    if ranks is None:
        ranks = calculate_gene_ranks(
            adata,
            layers_local_pred=pred_local,
            layers_global_pred=pred_global,
            layer_true=layer,
            cells=list(heldout),
            split_key=split_key,
        )
    program = adata.var["program"].astype(str).to_numpy()
    table = baselines.assign(
        r2_local=ranks["r2_local"].to_numpy(), r2_global=ranks["r2_global"].to_numpy()
    )
    per_program = table.groupby(program).mean()
    metrics: dict[str, float] = {
        "heldout_auroc": float(auroc_rank_difference(ranks, adata.var["program"].astype(str))),
    }
    for prog, row in per_program.iterrows():
        for col, value in row.items():
            metrics[f"heldout_{col}_{prog}"] = float(value)
    glob, loc = per_program.loc["global"], per_program.loc["local"]
    metrics["floor_gap_global_genes"] = float(glob["sample"] - glob["hop2"])
    metrics["floor_ratio_global_genes"] = _ratio(glob["hop2"], glob["sample"])
    metrics["head_gap_global_genes"] = _head_gap(glob["r2_global"], glob["r2_local"])
    metrics["head_gap_local_genes"] = _head_gap(loc["r2_local"], loc["r2_global"])
    metrics["local_head_over_hop2_local_genes"] = _ratio(loc["r2_local"], loc["hop2"])
    metrics["global_head_over_hop2_sample_global_genes"] = _ratio(
        glob["r2_global"], glob["hop2_sample"]
    )
    return metrics, per_program


def _head_gap(own: float, other: float) -> float:
    # Two heads that explain nothing have no order: a gap between R^2 values <= 0 (the
    # training-mean predictor's on held-out cells) would pass any band around 0, so it is NaN,
    # which no band accepts.
    if max(own, other) <= 0:
        return float("nan")
    return float(own - other)


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b > 0 else float("nan")
