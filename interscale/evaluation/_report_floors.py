"""The linear floors and the scored cells of the evaluation report (:func:`evaluate_to_folder`).

A head's R^2 is read against ridge regressions on the averages it sees
(:func:`linear_baselines`), on the same held-out cells; a gene is claimed for a head only
together with the floor it was compared with.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from interscale._anndata import select_cells, split_names
from interscale.evaluation._baselines import linear_baselines
from interscale.evaluation._claims import driven_genes, driven_genes_vs_floor, floor_of
from interscale.graphs import sample_labels
from interscale.names import HEADS, Key
from interscale.pp import spatial_graph_from_config

# The splits whose cells the model saw: fitted on "train"; "val" chose the best epoch and
# stopped training. A score on them is not a held-out score.
_SEEN_SPLITS = ("train", "val")
_FLOOR_GRAPH_KEY = "_report_floor_graph"
_FLOOR_SAMPLE_KEY = "_report_floor_sample"


def _split_list(scored: Any) -> list[str] | None:
    """The split names a selection asks for; None for every cell (``"all"``) or a mask."""
    names = split_names(scored) if scored is not None else None
    return None if names == ["all"] else names


def _floor_inputs(adata: Any, model: Any, setup: dict[str, Any]) -> dict[str, Any]:
    """Put the graph and the sample of every cell where :func:`linear_baselines` reads them.

    The floors see what the model saw: the stored graph (or, as the model does, the one its
    config builds) and the model's sample units. Edges between two samples (a graph built
    over a whole section that was then cut into tiles) are dropped, since each floor averages
    within a sample as each model graph does. Writes only into the in-memory ``adata``.
    Raises KeyError/ValueError when there is no graph to build.
    """
    keys = [str(k) for k in (setup.get("sample_key") or [])]
    if not keys:
        raise KeyError("no sample key in uns['interscale']['setup']")
    stored = Key.obsp.spatial_connectivities()
    kw = model.cfg.dataset.spatial_neighbors_kwargs
    if stored in adata.obsp and not kw.rebuild:
        graph, source = adata.obsp[stored], f"adata.obsp[{stored!r}]"
    else:
        graph = spatial_graph_from_config(adata, model.cfg, keys, key_added=None)
        rule = f"radius {kw.radius}" if kw.radius is not None else f"{kw.n_neighs} nearest"
        source = f"built from the config ({rule}, obsm[{kw.spatial_key!r}])"
    codes = pd.factorize(sample_labels(adata, keys), sort=True)[0]
    coo = sp.coo_matrix(graph)
    inside = codes[coo.row] == codes[coo.col]
    adata.obsp[_FLOOR_GRAPH_KEY] = sp.csr_matrix(
        (np.ones(int(inside.sum())), (coo.row[inside], coo.col[inside])), shape=graph.shape
    )
    adata.obs[_FLOOR_SAMPLE_KEY] = codes
    return {
        "graph": source,
        "sample_key": keys,
        "n_edges_dropped_between_samples": int(np.count_nonzero(~inside)),
    }


def _mean_or_none(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def _ratio(head: float | None, floor: float | None) -> float | None:
    # a ratio to a floor at or below the training mean (R^2 <= 0) has no meaning
    return head / floor if head is not None and floor is not None and floor > 0 else None


def _floor_metrics(ranks: pd.DataFrame, table: pd.DataFrame) -> dict[str, Any]:
    """Means of heads and floors over the genes all of them score, ratios and gene counts."""
    floors = table.set_axis(table.index.astype(str), axis=0).loc[ranks["gene"].astype(str)]
    values = floors.to_numpy(dtype=np.float64)
    heads = {h: ranks[f"r2_{h}"].to_numpy(dtype=np.float64) for h in HEADS}
    ok = np.isfinite(values).all(axis=1)
    for r2 in heads.values():
        ok &= np.isfinite(r2)
    floor_means = {str(c): _mean_or_none(values[ok, j]) for j, c in enumerate(floors.columns)}
    scored = {c: m for c, m in floor_means.items() if m is not None}
    best = max(scored, key=scored.__getitem__) if scored else None
    out: dict[str, Any] = {
        "floor_n_genes_compared": int(ok.sum()),
        "floor_mean_r2": floor_means,
        "best_floor": best,
        "best_floor_mean_r2": scored.get(best) if best else None,
    }
    head_means = {h: _mean_or_none(r2[ok]) for h, r2 in heads.items()}
    out["floor_head_mean_r2"] = head_means
    for head, r2 in heads.items():
        own = floor_of(floors.columns, head)
        out[f"floor_{head}"] = own
        out[f"ratio_{head}_to_best_floor"] = _ratio(head_means[head], out["best_floor_mean_r2"])
        out[f"ratio_{head}_to_floor"] = _ratio(head_means[head], floor_means[own])
        for label, column in (("floor", own), ("best_floor", best), ("mean_floor", "mean")):
            above = r2[ok] > floors[column].to_numpy(dtype=np.float64)[ok] if column else []
            out[f"n_genes_{head}_above_{label}"] = int(np.count_nonzero(above))
    return out


def _floor_keys_empty() -> dict[str, Any]:
    out: dict[str, Any] = dict.fromkeys(
        ("floor_cells", "floor_n_cells_scored", "floor_n_train_cells", "floor_graph"), None
    )
    out.update(floor_n_genes_compared=0, floor_mean_r2={}, best_floor=None)
    out.update(best_floor_mean_r2=None, floor_head_mean_r2={}, floor_alpha={})
    for head in HEADS:
        out[f"floor_{head}"] = None
        out[f"ratio_{head}_to_best_floor"] = out[f"ratio_{head}_to_floor"] = None
        for label in ("floor", "best_floor", "mean_floor"):
            out[f"n_genes_{head}_above_{label}"] = None
    return out


def _linear_floors(
    adata: Any, model: Any, setup: dict[str, Any], layer: str, scored: Any, split_key: str
) -> tuple[pd.DataFrame | None, dict[str, Any]]:
    """The floor table on the scored cells and its metrics, or None and ``floors_reason``.

    What the data cannot give (no graph to build, held-out cells that are not whole
    held-out splits, too few training cells or samples to fit and choose a ridge, every
    gene constant) becomes the reason; any other error is raised.
    """
    metrics = _floor_keys_empty()
    names = _split_list(scored)
    seen = sorted(set(names or []) & {"train"})
    if not names or seen:
        what = "every cell" if not names else f"splits {names}"
        metrics["floors_reason"] = (
            f"the gene ranks are scored on {what}; the floors are fitted on the 'train' "
            "samples and can only be compared on held-out splits (cells='test')"
        )
        return None, metrics
    try:
        info = _floor_inputs(adata, model, setup)
    except (KeyError, ValueError) as exc:
        metrics["floors_reason"] = f"no spatial graph for the neighbourhood floors: {exc}"
        return None, metrics
    try:
        table = linear_baselines(
            adata,
            layer_key=layer,
            sample_key=_FLOOR_SAMPLE_KEY,
            split_key=split_key,
            connectivity_key=_FLOOR_GRAPH_KEY,
            train="train",
            heldout=tuple(names),
            key_added="linear_baselines",
        )
    except ValueError as exc:  # too few training cells or samples, constant genes
        metrics["floors_reason"] = str(exc)
        return None, metrics
    run = adata.uns["linear_baselines"]
    metrics.update(
        floor_cells=",".join(names),
        floor_n_cells_scored=int(run["n_scored_cells"]),
        floor_n_train_cells=int(run["n_train_cells"]),
        floor_graph=info["graph"],
        floor_n_edges_dropped_between_samples=info["n_edges_dropped_between_samples"],
        floor_alpha={k: float(v) for k, v in run["alpha_chosen"].items()},
        floors_reason=None,
    )
    return table, metrics


def _scored_samples(
    adata: Any, scored: Any, split_key: str, setup: dict[str, Any]
) -> dict[str, Any]:
    """How many samples were scored, and which scored splits the model saw."""
    rows = select_cells(adata, scored, split_key, what="evaluate_to_folder").rows
    keys = [str(k) for k in (setup.get("sample_key") or [])]
    out: dict[str, Any] = {"n_samples_scored": None}
    if keys and all(k in adata.obs.columns for k in keys):
        labels = sample_labels(adata, keys).to_numpy()
        out["n_samples_scored"] = int(np.unique(labels if rows is None else labels[rows]).size)
    names = _split_list(scored)
    if names:
        out["cells_seen_by_model"] = [n for n in names if n in _SEEN_SPLITS]
    else:  # every cell, or a mask: whatever it holds of the training and validation samples
        split = adata.obs[split_key].astype(str).to_numpy() if split_key in adata.obs else None
        chosen = split if split is None or rows is None else split[rows]
        out["cells_seen_by_model"] = (
            None if chosen is None else sorted(set(chosen) & set(_SEEN_SPLITS))
        )
    return out


def _claims_with_floor(ranks: pd.DataFrame, floors: pd.DataFrame | None, head: str) -> pd.DataFrame:
    """Every claimed gene of a head with its floor (no floor named without floors)."""
    if floors is not None:
        return driven_genes_vs_floor(ranks, floors, which=head)
    genes = driven_genes(ranks, which=head)
    rows = ranks.drop_duplicates("gene").set_index(ranks["gene"].astype(str)).loc[genes]
    return pd.DataFrame(
        {
            "gene": genes,
            "Rank Difference": rows["Rank Difference"].to_numpy(dtype=np.float64),
            "r2": rows[f"r2_{head}"].to_numpy(dtype=np.float64),
            "floor": None,
            "r2_floor": np.nan,
            "beats_floor": None,
        }
    )


def _claim_records(claims: pd.DataFrame) -> list[dict[str, Any]]:
    """The claims as JSON records (NaN as None)."""

    def number(v: Any) -> float | None:
        return float(v) if v is not None and np.isfinite(v) else None

    return [
        {
            "gene": str(row["gene"]),
            "rank_difference": number(row["Rank Difference"]),
            "r2": number(row["r2"]),
            "floor": None if row["floor"] is None else str(row["floor"]),
            "r2_floor": number(row["r2_floor"]),
            "beats_floor": None if row["beats_floor"] is None else bool(row["beats_floor"]),
        }
        for row in claims.to_dict("records")
    ]
