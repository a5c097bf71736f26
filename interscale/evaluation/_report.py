"""The whole gene-level evaluation of a trained model, written to a folder of tables and figures."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from interscale._anndata import read_setup
from interscale._io import atomic_file, atomic_write_text
from interscale.names import HEADS, Key

__all__ = ["evaluate_to_folder"]

_HEADS = HEADS


def _write_csv(df: pd.DataFrame, path: Path, index: bool = False) -> None:
    with atomic_file(path, suffix=path.suffix) as tmp:
        df.to_csv(tmp, index=index)


def _write_json(obj: Any, path: Path) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True), path)


def _save_figure(ax: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = ax.figure if hasattr(ax, "figure") else ax
    try:
        # the temp name keeps the suffix so that savefig picks the format from it
        with atomic_file(path, suffix=path.suffix) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _top_term(table: pd.DataFrame) -> tuple[str | None, float | None]:
    if table is None or len(table) == 0:
        return None, None
    best = table.sort_values("Adjusted P-value", kind="mergesort").iloc[0]
    return str(best["Term"]), float(best["Adjusted P-value"])


def evaluate_to_folder(
    h5ad: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: str | os.PathLike[str] | None = None,
    n_top_genes: int = 10,
    gene_sets: str = "GO_Biological_Process",
    cells: str | Sequence[str] = "test",
    n_boot: int = 100,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the gene-level evaluation of a trained model and write its tables and figures.

    Steps: per-gene R^2 ranks of both heads with bootstrap intervals, scored on the test
    samples by default (:func:`calculate_gene_ranks`); the linear floors on the same cells
    (:func:`linear_baselines`: ridges on neighbourhood and sample averages, fitted on the
    training samples) with each head's ratio to the best of them; the claimed local-driven
    and global-driven genes (:func:`driven_genes`), each named with the floor it was read
    against and whether the head beat it (:func:`driven_genes_vs_floor`); standardised
    loadings of each head on its own embedding (:func:`gene_loadings`); the numerical rank
    of both embeddings (:func:`latent_rank_report`); the importance of each head's latent
    dimensions (:func:`calculate_dim_importance`); the top genes of the important dimensions
    (:func:`get_genes_dim`, dims taken from the computed importance) and an offline GO
    enrichment of the claimed local-driven and global-driven genes against the measured
    genes.

    Held out means unseen: the default scores only the ``test`` samples. The training
    samples fitted the model and the validation samples chose its best epoch and stopped
    training, so a score on either is not a held-out score; ``metrics.json`` says which
    cells were scored, how many, and which of them the model saw.

    Parameters
    ----------
    h5ad
        AnnData written after ``get_model_output`` (``interscale output``): it must hold the
        prediction layers, both embeddings and the ``uns["interscale"]`` setup.
    checkpoint
        Checkpoint file or folder written by :meth:`CombinedModel.save`.
    out
        Output folder (created if needed). Every file is written atomically.
    config
        Optional YAML config; default: the config stored in the checkpoint.
    n_top_genes
        Claimed genes taken per head for the enrichment (strongest Rank Difference first),
        and genes per dim.
    gene_sets
        Shipped gene-set library name or ``.gmt`` path for :func:`interscale.tl.enrich`.
    cells
        Cells the gene ranks and the floors are scored on: split names (``"test"`` by
        default; ``"val,test"`` adds the early-stopping samples, and held-out names the data
        lacks are skipped) or ``"all"``. The split column is the one recorded by the model
        setup. The floors are computed only on held-out splits (not with ``"all"`` or
        ``"train"``; ``floors_reason`` then says so).
    n_boot
        Bootstrap resamples for the intervals of R^2 and Rank Difference (0: none).
    seed
        Seed of the bootstrap.

    Returns
    -------
    dict
        Key metrics (also written to ``<out>/metrics.json``):

        - the scored cells: ``cells``, ``n_cells_scored``, ``n_samples_scored``,
          ``cells_seen_by_model`` (scored splits that training or early stopping used;
          empty for a held-out score) and the ``bootstrap`` set-up;
        - ``mean_r2_local`` / ``mean_r2_global`` over the scored genes;
        - the floors: ``floor_mean_r2`` (mean held-out R^2 of each floor), ``best_floor``
          and ``best_floor_mean_r2``, ``floor_head_mean_r2`` (each head's mean over the same
          ``floor_n_genes_compared`` genes), ``ratio_<head>_to_best_floor``, the floor of
          each head's own scale ``floor_<head>`` (``hop{K}`` local, ``hop{K}_sample``
          global) with ``ratio_<head>_to_floor``, the per-gene counts
          ``n_genes_<head>_above_floor`` / ``_above_best_floor`` / ``_above_mean_floor``,
          and how they were computed (``floor_cells``, ``floor_n_cells_scored``,
          ``floor_n_train_cells``, ``floor_graph``, ``floor_alpha``). A ratio is None when
          the floor's mean R^2 is <= 0. When the data cannot give floors these are None and
          ``floors_reason`` says why (else it is None);
        - claims: ``n_driven_<head>`` and the top ``n_top_genes`` claimed genes
          ``driven_genes_<head>``, each a record with ``gene``, ``rank_difference``,
          ``r2``, ``floor``, ``r2_floor`` and ``beats_floor`` (None without floors),
          ``n_driven_<head>_beating_floor``, the numbers dropped by the R^2 floor or the
          interval and the rule (``driven_rule_<head>``);
        - the rank of each embedding, the important dims per head, the top enriched term
          per gene group (or ``enrichment_reason_<head>`` when there was no claimed gene to
          test) and ``auroc_rank_difference``: the AUROC of the Rank Difference separating
          planted local from global genes (``var["program"]``), or None with
          ``auroc_reason`` saying why it could not be computed.

        Files: ``gene_ranks.csv/.png``, ``linear_baselines.csv`` and ``baselines.png`` (each
        head against its floor, when there are floors), ``driven_genes.csv`` (every claimed
        gene with its floor), loadings, latent rank, dim importance, genes per dim and
        enrichment tables and figures.

    Raises
    ------
    FileNotFoundError
        ``h5ad`` or the checkpoint does not exist.
    KeyError
        The AnnData lacks a key written by ``get_model_output`` or the setup, or the
        split column of held-out ``cells``.
    ValueError
        The checkpoint does not match the AnnData or the config, or the data has none of
        the requested held-out splits.
    """
    import anndata as ad

    # This report draws with interscale.pl and enriches with interscale.tl (the packages above
    # evaluation) and loads the model: it uses them through the lazy attributes of the
    # interscale package when it runs, so no module of evaluation imports pl or tl.
    import interscale as isc
    from interscale.evaluation._claims import _claim_summary, _describe_cells, driven_genes
    from interscale.evaluation._dims import calculate_dim_importance, get_genes_dim
    from interscale.evaluation._heldout import (
        _describe,
        _split_key_of,
        auroc_with_reason,
        report_cells,
    )
    from interscale.evaluation._latent import latent_rank_report
    from interscale.evaluation._loadings import gene_loadings
    from interscale.evaluation._ranks import calculate_gene_ranks
    from interscale.evaluation._report_floors import (
        _claim_records,
        _claims_with_floor,
        _floor_metrics,
        _linear_floors,
        _scored_samples,
    )

    h5ad = Path(h5ad)
    if not h5ad.is_file():
        raise FileNotFoundError(f"h5ad file not found: {h5ad}")
    if not Path(checkpoint).exists():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    adata = ad.read_h5ad(h5ad)
    setup = read_setup(adata) or {}
    layer = setup.get("layer_key")
    if not layer:
        raise KeyError(f"{h5ad}: uns['interscale']['layer_key'] missing; run get_model_output")
    for key in (Key.layers.y_pred(h) for h in HEADS):
        if key not in adata.layers:
            raise KeyError(f"{h5ad}: layer {key!r} missing; run get_model_output first")
    for key in (Key.obsm.embedding(h) for h in HEADS):
        if key not in adata.obsm:
            raise KeyError(f"{h5ad}: obsm {key!r} missing; run get_model_output first")

    cfg = None
    if config is not None:
        from interscale.config import load_config

        cfg = load_config(config)
    model = isc.model.CombinedModel.load(checkpoint, adata, cfg, verbose=False)
    split_key = _split_key_of(adata)
    scored = report_cells(adata, cells, split_key)  # raises before anything is written

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {"n_cells": int(adata.n_obs), "n_genes": int(adata.n_vars)}

    ranks = calculate_gene_ranks(
        adata,
        layers_local_pred=Key.layers.y_pred("local"),
        layers_global_pred=Key.layers.y_pred("global"),
        cells=scored,
        split_key=split_key,
        n_boot=n_boot,
        seed=seed,
    )
    print(f"gene ranks scored on: {_describe_cells(ranks, adata.n_obs)}")
    metrics.update(_describe(ranks))
    metrics.update(_scored_samples(adata, scored, split_key, setup))
    _write_csv(ranks, out / "gene_ranks.csv")
    _save_figure(isc.pl.gene_ranks(ranks, top_n=5), out / "gene_ranks.png")
    metrics["mean_r2_local"] = float(np.nanmean(ranks["r2_local"]))
    metrics["mean_r2_global"] = float(np.nanmean(ranks["r2_global"]))

    floors, floor_metrics = _linear_floors(adata, model, setup, layer, scored, split_key)
    metrics.update(floor_metrics)
    if floors is not None:
        metrics.update(_floor_metrics(ranks, floors))
        _write_csv(floors, out / "linear_baselines.csv", index=True)
        _save_figure(
            isc.pl.baselines(
                ranks,
                floors,
                adata=adata,
                local_baseline=metrics["floor_local"],
                global_baseline=metrics["floor_global"],
            ),
            out / "baselines.png",
        )
        print(
            f"linear floors on {metrics['floor_cells']}: best {metrics['best_floor']} "
            f"(mean R^2 {metrics['best_floor_mean_r2']:.3f}); heads / best floor: "
            + ", ".join(f"{h} {_fmt(metrics[f'ratio_{h}_to_best_floor'])}" for h in HEADS)
        )
    else:
        print(f"no linear floors: {metrics['floors_reason']}")
    auroc, reason = auroc_with_reason(ranks, adata.var)
    metrics["auroc_rank_difference"] = auroc
    if reason is not None:
        metrics["auroc_reason"] = reason
    groups = {}
    claim_tables = []
    for head in _HEADS:
        summary = _claim_summary(ranks, head)
        groups[head] = driven_genes(ranks, which=head, n=n_top_genes)
        claims = _claims_with_floor(ranks, floors, head)
        claim_tables.append(claims.assign(head=head))
        metrics[f"n_driven_{head}"] = summary["n_claimed"]
        metrics[f"driven_genes_{head}"] = _claim_records(claims.head(n_top_genes))
        metrics[f"n_driven_{head}_beating_floor"] = (
            int(claims["beats_floor"].astype(bool).sum()) if floors is not None else None
        )
        metrics[f"n_dropped_below_floor_{head}"] = summary["n_below_floor"]
        metrics[f"n_dropped_interval_{head}"] = summary["n_interval_includes_0"]
        metrics[f"driven_rule_{head}"] = summary["floor"] + (
            f" and {summary['interval']}" if summary["interval"] else ""
        )

    _write_csv(pd.concat(claim_tables, ignore_index=True), out / "driven_genes.csv")

    gene_loadings(adata, model, layer_key=layer)
    rank_rows = []
    for head in _HEADS:
        rep = latent_rank_report(adata, z_key=f"_{head}_emb")
        rank_rows.append({"head": head, **rep})
        metrics[f"latent_rank_{head}"] = int(rep["rank"])
        _save_figure(
            isc.pl.latent_correlation(adata, z_key=f"_{head}_emb", title=f"{head} embedding"),
            out / f"latent_correlation_{head}.png",
        )
    _write_csv(pd.DataFrame(rank_rows), out / "latent_rank.csv")

    for head in _HEADS:
        s_key, z_key = f"_{head}_std_gene_loadings", f"_{head}_emb"
        _write_csv(
            pd.DataFrame(adata.varm[s_key], index=adata.var_names),
            out / f"loadings_{head}.csv",
            index=True,
        )
        imp = calculate_dim_importance(adata, s_key=s_key, z_key=z_key)
        left = imp["dims_left"]
        dims = [int(d) for d in (imp["dim_sorted"][:1] if left is None else left)]
        metrics[f"n_important_dims_{head}"] = len(dims)
        metrics[f"important_dims_{head}"] = dims
        _write_csv(
            pd.DataFrame(
                {"dim": np.asarray(imp["dim_sorted"]), "importance": np.asarray(imp["y_sorted"])}
            ),
            out / f"dim_importance_{head}.csv",
        )
        _save_figure(
            isc.pl.dim_importance_elbow(imp, title=f"{head} dimension importance", verbose=False),
            out / f"dim_importance_{head}.png",
        )
        genes_dim = get_genes_dim(adata, dims, which=head, n_top=n_top_genes, X_layer=layer)
        _write_csv(genes_dim, out / f"genes_dim_{head}.csv", index=True)
        _save_figure(
            isc.pl.gene_by_dim_heatmap(genes_dim, title=f"{head}: top genes of important dims"),
            out / f"genes_dim_{head}.png",
        )

    tables = {}
    for group, genes in groups.items():
        if genes:
            table = isc.tl.enrich(genes, gene_sets=gene_sets, background=adata)
        else:
            table = isc.tl.empty_enrichment()
            metrics[f"enrichment_reason_{group}"] = f"no claimed {group}-driven genes"
        tables[group] = table
        _write_csv(table, out / f"enrichment_{group}.csv")
        term, padj = _top_term(table)
        metrics[f"top_term_{group}"] = term
        metrics[f"top_term_padj_{group}"] = padj
    if all(len(t) for t in tables.values()):
        _save_figure(isc.pl.enrichment_bars(tables, alpha=0.05), out / "enrichment_bars.png")
        _save_figure(
            isc.pl.enrichment_diverging(tables["local"], tables["global"]),
            out / "enrichment_diverging.png",
        )
    _write_json(metrics, out / "metrics.json")
    return metrics
