# ruff: noqa: E501  (cell sources are notebook code, kept readable as written in the notebook)
"""Write the tutorial notebooks (without outputs) from the cell sources below.

Edit the cells here and run ``python notebooks/_build_notebooks.py``; the ``.ipynb`` files are
generated and committed so that papermill (and ``python -m reproduce``) can run them directly.
Every notebook runs with the repository root as working directory; all paths are relative to it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

PARAMETERS = """\
# Parameters (papermill overrides these; paths are relative to the repository root)
n_samples = 6
cells_per_sample_min = 300
cells_per_sample_max = 400
epochs = 15
scope_epochs = 15
seed = 0
data_dir = "reproduce/_build/notebooks/data"
out_dir = "reproduce/_build/notebooks/metrics"
config_path = "config_files/synthetic_example.yaml"
config_overrides = {}  # e.g. {"optim.lr": 0.005}: settings changed on top of config_path
device = "cpu"
legnini_csv = ""
# For the reproduction's checks only (python -m reproduce --sabotage), which show that its bands
# reject a model that never learned: "none", "training_mean" (both heads predict each gene's
# training mean), "shuffled_coordinates" (cells' positions permuted within each organoid),
# "permuted_genes" (gene names and planted programs reassigned to the expression columns)
sabotage = "none"
"""

COMMON_IMPORTS = '''\
import json
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import interscale as isc

%matplotlib inline
np.set_printoptions(precision=4, suppress=True)
data_dir, out_dir = Path(data_dir), Path(out_dir)
data_dir.mkdir(parents=True, exist_ok=True)
out_dir.mkdir(parents=True, exist_ok=True)


def write_metrics(metrics, k):
    """Write this notebook's key numbers atomically to <out_dir>/metrics_<k>.json."""
    path = out_dir / f"metrics_{k}.json"
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".json")
    with os.fdopen(fd, "w") as handle:
        json.dump(metrics, handle, indent=2, sort_keys=True)
    os.replace(tmp, path)
    print(json.dumps(metrics, indent=2, sort_keys=True))


def write_h5ad(adata, path):
    """Write an AnnData atomically (temp file in the same folder, then rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".h5ad")
    os.close(fd)
    adata.write_h5ad(tmp)
    os.replace(tmp, path)
'''


def _nb(title: str, cells: list) -> nbformat.NotebookNode:
    params = new_code_cell(PARAMETERS)
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(
        cells=[new_markdown_cell(title), params, new_code_cell(COMMON_IMPORTS), *cells],
        metadata={
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
    )
    # Stable cell ids keep regenerated notebooks diff-free.
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"
    return nb


def md(text: str):
    """A markdown cell."""
    return new_markdown_cell(text)


def code(text: str):
    """A code cell."""
    return new_code_cell(text)


SETUP = _nb(
    "# 0 · Setup: data, quality control, spatial graph\n\n"
    "Loads the built-in synthetic organoids (or the Legnini et al. data when `legnini_csv` is "
    "set), runs QC and normalisation, chooses the neighbourhood radius and writes "
    "`<data_dir>/preprocessed.h5ad` for the next notebooks.",
    [
        code(
            "if legnini_csv:\n"
            "    adata = isc.datasets.legnini(legnini_csv)\n"
            "else:\n"
            "    adata = isc.datasets.synthetic_organoids(\n"
            "        n_samples=n_samples,\n"
            "        cells_per_sample=(cells_per_sample_min, cells_per_sample_max),\n"
            "        seed=seed,\n"
            "    )\n"
            'if sabotage not in ("none", "training_mean", "shuffled_coordinates", "permuted_genes"):\n'
            '    raise ValueError(f"unknown sabotage {sabotage!r}")\n'
            "rng = np.random.default_rng(seed)\n"
            'if sabotage == "shuffled_coordinates":\n'
            '    for rows in adata.obs.groupby("sample", observed=True).indices.values():\n'
            '        adata.obsm["spatial"][rows] = adata.obsm["spatial"][rng.permutation(rows)]\n'
            'if sabotage == "permuted_genes":\n'
            "    adata.var = adata.var.iloc[rng.permutation(adata.n_vars)]\n"
            "adata"
        ),
        md("## Quality control and normalisation"),
        code(
            'qc_summary = isc.pp.qc(adata)\nprint(qc_summary)\nisc.pp.normalize(adata, key_added="log1p_norm")'
        ),
        md(
            "## Neighbourhood size per radius\n\nThe local (GNN) component sees the cells within "
            "the radius; about 10 neighbours is a good one-ring neighbourhood."
        ),
        code(
            "radii = [100, 150, 200, 250, 300]\n"
            'stats = isc.pp.neighborhood_stats(adata, radii, library_key="sample")\n'
            "display(stats)\n"
            "fig, ax = plt.subplots(figsize=(5, 3.5))\n"
            'ax.errorbar(stats.index, stats["mean"], yerr=stats["sd"], marker="o", capsize=3)\n'
            'ax.set_xlabel("radius")\n'
            'ax.set_ylabel("neighbours per cell (mean ± sd)")\n'
            "plt.show()"
        ),
        code(
            'isc.pp.spatial_neighbors(adata, radius=200, library_key="sample")\n'
            'deg = np.diff(adata.obsp["spatial_connectivities"].indptr)\n'
            'print(f"mean neighbours at radius 200: {deg.mean():.2f}")'
        ),
        md(
            "## Expression in space\n\nSHH and its target PTCH1 follow the organoid-wide dose "
            "(planted *global* program); FOS responds to contact with sender cells (planted "
            "*local* program)."
        ),
        code(
            'genes = [g for g in ["SHH", "FOS", "PTCH1"] if g in adata.var_names]\n'
            'samples = list(adata.obs["sample"].cat.categories[:3])\n'
            "fig, axes = plt.subplots(len(genes), len(samples), figsize=(3.2 * len(samples), 3 * len(genes)),\n"
            "                         squeeze=False)\n"
            'expr = adata[:, genes].layers["log1p_norm"]\n'
            'expr = expr.toarray() if hasattr(expr, "toarray") else np.asarray(expr)\n'
            "for j, s in enumerate(samples):\n"
            '    rows = np.flatnonzero(adata.obs["sample"].to_numpy() == s)\n'
            '    xy = adata.obsm["spatial"][rows]\n'
            "    for i, g in enumerate(genes):\n"
            "        ax = axes[i, j]\n"
            '        ax.scatter(xy[:, 0], xy[:, 1], c=expr[rows, i], s=6, cmap="viridis")\n'
            '        ax.set_title(f"{g} · {s}", fontsize=9)\n'
            '        ax.set_aspect("equal")\n'
            '        ax.axis("off")\n'
            "plt.tight_layout()\n"
            "plt.show()"
        ),
        md(
            "## Train / validation / test split (whole organoids)\n\n"
            "About half the organoids train the model, a quarter (`val`) choose the best epoch "
            "and stop training, and a quarter (`test`) are held out from both: every held-out "
            "score of these notebooks is read on the test organoids only."
        ),
        code(
            'split_table = pd.crosstab(adata.obs["sample"], adata.obs["split"])\n'
            "display(split_table)\n"
            'adata.obs.groupby("split", observed=True).size()'
        ),
        code(
            'write_h5ad(adata, data_dir / "preprocessed.h5ad")\n'
            "write_metrics(\n"
            "    {\n"
            '        "n_cells": int(adata.n_obs),\n'
            '        "n_genes": int(adata.n_vars),\n'
            '        "mean_neighbours_200": float(deg.mean()),\n'
            "    },\n"
            "    0,\n"
            ")"
        ),
    ],
)

TRAINING = _nb(
    "# 1 · Model training\n\nTrains the combined local (GNN) + global (Transformer) model with "
    "masked self-supervision, saves the checkpoint and writes held-out predictions and "
    "embeddings into `<data_dir>/trained.h5ad`.",
    [
        code(
            "import anndata as ad\n\n"
            "from interscale.config import load_config, with_overrides\n"
            "from interscale.evaluation import heldout_r2\n\n"
            'cfg = with_overrides(load_config(config_path), {**config_overrides, "optim.n_epochs": epochs})\n'
            "isc.tl.set_full_reproducibility(cfg.optim.seed)\n"
            'adata = ad.read_h5ad(data_dir / "preprocessed.h5ad")\n'
            "isc.model.CombinedModel.setup_anndata(\n"
            "    adata,\n"
            '    prediction_task="regression",\n'
            "    layer_key=cfg.dataset.layer_key,\n"
            "    sample_key_list=list(cfg.dataset.sample_key),\n"
            "    split_key=cfg.dataset.split_key,\n"
            ")\n"
            "model = isc.model.CombinedModel(adata, cfg)\n"
            "print(model.summary())\n"
            "n_params = int(sum(p.numel() for p in model.module.parameters()))"
        ),
        md("## Training\n\nThe best-validation weights are kept at the end."),
        code(
            "history = model.train(accelerator=device, progress_bar=False)\n"
            'loss_cols = [c for c in history.columns if c.endswith("loss")]\n'
            'ax = history.plot(x="epoch", y=loss_cols, figsize=(6, 3.5), marker=".")\n'
            'ax.set_ylabel("loss")\n'
            'ax.axvline(model.best_epoch_, color="grey", ls="--")\n'
            "plt.show()\n"
            "history.tail()"
        ),
        code(
            'ckpt = model.save(data_dir / "model", overwrite=True)\n'
            "model.get_model_output(adata)\n"
            'if sabotage == "training_mean":\n'
            "    isc.evaluation.training_mean_predictions(adata, cfg.dataset.layer_key, cfg.dataset.split_key)\n"
            'write_h5ad(adata, data_dir / "trained.h5ad")\n'
            "print(ckpt)"
        ),
        md(
            "## R² per split\n\nEach cell is predicted while it is masked, so R² measures what the "
            "context explains. The `train` organoids fitted the model and the `val` organoids "
            "chose the best epoch and stopped training, so only the `test` organoids are held "
            "out: neither training nor early stopping saw them, and every held-out number of "
            "these notebooks is read on them."
        ),
        code(
            "layer = cfg.dataset.layer_key\n"
            'r2_local = heldout_r2(adata, "_y_pred_local", layer, cfg.dataset.split_key)\n'
            'r2_global = heldout_r2(adata, "_y_pred_global", layer, cfg.dataset.split_key)\n'
            'display(pd.DataFrame({"local": r2_local, "global": r2_global}))\n'
            'metrics = {"epochs_run": int(len(history)), "best_epoch": int(model.best_epoch_),\n'
            '           "seconds_per_epoch": float(history["seconds"].mean()), "n_params": n_params}\n'
            "for split in r2_local:\n"
            '    metrics[f"r2_local_{split}"] = r2_local[split]\n'
            '    metrics[f"r2_global_{split}"] = r2_global[split]\n'
            "write_metrics(metrics, 1)"
        ),
    ],
)

EVALUATION = _nb(
    "# 2 · Gene-level evaluation\n\nWhich genes does each scale predict, which latent "
    "dimensions matter, and which biological programs do the local- and global-driven genes "
    "belong to? On synthetic data we also check agreement with the planted ground truth.",
    [
        code(
            "import anndata as ad\n\n"
            "from interscale.config import load_config, with_overrides\n"
            "from interscale.evaluation import (\n"
            "    auroc_rank_difference,\n"
            "    calculate_dim_importance,\n"
            "    calculate_gene_ranks,\n"
            "    driven_genes,\n"
            "    gene_loadings,\n"
            "    get_genes_dim,\n"
            "    latent_rank_report,\n"
            ")\n\n"
            'adata = ad.read_h5ad(data_dir / "trained.h5ad")\n'
            'cfg = with_overrides(load_config(config_path), {**config_overrides, "optim.n_epochs": epochs})\n'
            'model = isc.model.CombinedModel.load(data_dir / "model", adata, cfg,\n'
            "                                     local_component=True, global_component=True)"
        ),
        md(
            "## Gene ranks: local vs global head, on held-out organoids\n\n"
            "Every gene-level number below is scored on the held-out organoids: the test "
            "organoids, which neither training nor early stopping saw (the validation "
            "organoids chose the best epoch, so they are not unseen). The predictions come from the "
            "masked passes (each cell predicted while hidden); the embeddings in `obsm` used "
            "further down (loadings, latent structure, dimensions) come from one unmasked pass, "
            "as in the published model. 200 bootstrap resamples of whole organoids give 90 % "
            "intervals; a gene is called local- or global-driven only when its head's R^2 "
            "interval clears the training-mean floor (0) and its Rank Difference interval "
            "excludes 0 (`isc.evaluation.driven_genes`)."
        ),
        code(
            'df = calculate_gene_ranks(adata, layers_local_pred="_y_pred_local",\n'
            '                          layers_global_pred="_y_pred_global", cells=["test"],\n'
            "                          n_boot=200, seed=0, top_n=5)\n"
            "isc.pl.gene_ranks(df, top_n=5)\n"
            "plt.show()\n"
            'ordered = df.sort_values("Rank Difference", kind="mergesort")\n'
            'interval_cols = ["gene", "r2_local", "r2_global", "Rank Difference",\n'
            '                 "rank_difference_lo", "rank_difference_hi"]\n'
            'print("top five by Rank Difference (local side) and bottom five (global side):")\n'
            "display(pd.concat([ordered.iloc[::-1].head(5), ordered.head(5)])[interval_cols].round(3))"
        ),
        md(
            "## Agreement with the planted programs\n\nAUROC of the held-out Rank Difference "
            "separating planted local from planted global genes (0.5 = no separation)."
        ),
        code(
            "auroc = None\n"
            'if "program" in adata.var:\n'
            '    auroc = float(auroc_rank_difference(df, adata.var["program"].astype(str)))\n'
            '    display(df.assign(program=adata.var["program"].astype(str).to_numpy())\n'
            '              .groupby("program")["Rank Difference"].describe())\n'
            'print("AUROC (held-out):", auroc)'
        ),
        md(
            "## Floors: what a linear model already explains, on held-out organoids\n\n"
            "A head's R^2 means something only next to what simpler predictors reach from the "
            "same information. `isc.tl.linear_baselines` fits ridge regressions on the "
            "training organoids and scores them on the held-out test organoids: the "
            "per-gene training mean (`mean`, the floor of a model that learned nothing), the "
            "mean expression of the 1-hop and 2-hop spatial neighbourhood (`hop1`, `hop2`, the "
            "cell itself excluded), the leave-one-out mean of the cell's organoid (`sample`) "
            "and both (`hop2_sample`). The heads' R^2 below are scored on the same test "
            "cells.\n\n"
            "How the built-in data are made to separate the scales "
            "(`isc.datasets.synthetic_organoids`): cells sit in rosettes of 9-14 cells, so a "
            "2-hop neighbourhood is about one rosette (~11 cells). Local genes respond to "
            "contact with Delta-like sender cells in the 200 µm ring, a sharp signal with no "
            "organoid-level part. Global genes follow each cell's SHH-pathway switch, which is "
            "on with a probability set by the organoid's dose and is independent between "
            "cells: a rosette reads the dose from ~11 noisy switches, the organoid from "
            "thousands. On the default data (seed 0, after QC; fitted on the 9 training "
            "organoids, scored on the 4 test organoids) the ridges give, per program: "
            "local `hop1` 0.160 and `sample` 0.004; global `hop2` 0.068 and `sample` 0.112 "
            "(hop2 = 0.61 x sample); both `hop2` 0.15, `sample` 0.08, `hop2_sample` 0.18; none "
            "about 0.01. Local genes are made about as predictable as global ones on purpose: "
            "Rank Difference separates the programs only when the two heads reorder them. "
            "The gap on global genes has a ceiling: `m` neighbours of a gene already predict "
            "`m c / (m c + 1 - c)` of the R^2 `c` that the organoid mean gives, so the "
            "neighbourhood must be small for the organoid to add much."
        ),
        code(
            "from reproduce._metrics import heldout_program_metrics\n\n"
            "layer = cfg.dataset.layer_key\n"
            "split_key = cfg.dataset.split_key\n"
            "baselines = isc.tl.linear_baselines(adata, layer_key=layer,\n"
            "                                    library_key=cfg.dataset.sample_key[0],\n"
            '                                    split_key=split_key, heldout=("test",))\n'
            "print(f\"heads scored on {df.attrs['n_cells']} held-out cells ({df.attrs['cells']})\")\n"
            "floor_metrics = {}\n"
            'if "program" in adata.var:\n'
            "    floor_metrics, per_program = heldout_program_metrics(\n"
            "        adata, layer=layer, split_key=split_key,\n"
            '        library_key=cfg.dataset.sample_key[0], heldout=("test",),\n'
            "        baselines=baselines, ranks=df)\n"
            "    display(per_program.round(3))\n"
            '    print("held-out AUROC of Rank Difference:", floor_metrics["heldout_auroc"])\n'
            "isc.pl.baselines(df, baselines, adata=adata)\n"
            "plt.show()"
        ),
        md("## Standardised loadings and latent structure"),
        code(
            "gene_loadings(adata, model, layer_key=cfg.dataset.layer_key,\n"
            '              local_latent_key="_local_emb", global_latent_key="_global_emb")\n'
            'reports = {h: latent_rank_report(adata, z_key=f"_{h}_emb") for h in ("local", "global")}\n'
            "display(pd.DataFrame(reports).T)\n"
            'for h in ("local", "global"):\n'
            '    isc.pl.latent_correlation(adata, z_key=f"_{h}_emb", title=f"{h} embedding")\n'
            "    plt.show()"
        ),
        md(
            "## Dimension importance\n\nThe important dimensions are those reaching the "
            "cumulative cutoff; they are taken from the result, never typed in."
        ),
        code(
            "importance = {}\n"
            'for h in ("local", "global"):\n'
            '    importance[h] = calculate_dim_importance(adata, s_key=f"_{h}_std_gene_loadings",\n'
            '                                             z_key=f"_{h}_emb")\n'
            '    isc.pl.dim_importance_elbow(importance[h], title=f"{h} dimension importance")\n'
            "    plt.show()\n"
            'dims = {h: [int(d) for d in (r["dims_left"] if r["dims_left"] is not None\n'
            '                             else r["dim_sorted"][:1])] for h, r in importance.items()}\n'
            "dims"
        ),
        md("## Genes of the important dimensions"),
        code(
            "genes_dim = {}\n"
            'for h in ("local", "global"):\n'
            "    genes_dim[h], _ = get_genes_dim(adata, dims[h], which=h, n_top=10,\n"
            "                                    X_layer=cfg.dataset.layer_key, plot=True,\n"
            '                                    title=f"{h}: top genes of important dims")\n'
            "    plt.show()\n"
            'local_set, global_set = set(genes_dim["local"].index), set(genes_dim["global"].index)\n'
            'print("shared:", sorted(local_set & global_set))\n'
            'print("local only:", sorted(local_set - global_set))\n'
            'print("global only:", sorted(global_set - local_set))'
        ),
        md(
            "## Offline GO enrichment\n\nThe claimed local-driven and global-driven genes (at "
            "most 10 each, see above), tested against the measured panel (`background=adata`), "
            "not the genome. A side without claimed genes gets no enrichment."
        ),
        code(
            'top_local = driven_genes(df, which="local", n=10)\n'
            'top_global = driven_genes(df, which="global", n=10)\n'
            'print("local-driven:", top_local)\n'
            'print("global-driven:", top_global)\n'
            "enr_local = isc.tl.enrich(top_local, background=adata) if top_local else pd.DataFrame()\n"
            "enr_global = isc.tl.enrich(top_global, background=adata) if top_global else pd.DataFrame()\n"
            "if len(enr_local) and len(enr_global):\n"
            '    isc.pl.enrichment_bars({"local": enr_local, "global": enr_global})\n'
            "    plt.show()\n"
            "    isc.pl.enrichment_diverging(enr_local, enr_global)\n"
            "    plt.show()\n"
            "enr_local.head()"
        ),
        code(
            "def top_term(table):\n"
            "    if len(table) == 0:\n"
            "        return None, None\n"
            '    best = table.sort_values("Adjusted P-value", kind="mergesort").iloc[0]\n'
            '    return str(best["Term"]), float(best["Adjusted P-value"])\n\n\n'
            "metrics = {\n"
            '    "auroc": auroc,\n'
            '    "mean_r2_local": float(df["r2_local"].mean()),\n'
            '    "mean_r2_global": float(df["r2_global"].mean()),\n'
            "}\n"
            'for h in ("local", "global"):\n'
            '    metrics[f"latent_rank_{h}"] = int(reports[h]["rank"])\n'
            '    metrics[f"n_important_dims_{h}"] = len(dims[h])\n'
            'for h, table in (("local", enr_local), ("global", enr_global)):\n'
            '    metrics[f"top_term_{h}"], metrics[f"top_term_padj_{h}"] = top_term(table)\n'
            "metrics.update(floor_metrics)\n"
            "write_metrics(metrics, 2)"
        ),
    ],
)

ATTENTION = _nb(
    "# 3 · Attention\n\nWhere does the global Transformer look? CLS attention over the tissue, "
    "how far cells attend, and a comparison of the `full` and `neighbourhood` attention scopes.",
    [
        code(
            "import anndata as ad\n\n"
            "from interscale.config import load_config, with_overrides\n"
            "from interscale.evaluation import calculate_gene_ranks, heldout_r2\n\n"
            'adata = ad.read_h5ad(data_dir / "trained.h5ad")\n'
            'cfg = with_overrides(load_config(config_path), {**config_overrides, "optim.n_epochs": epochs})\n'
            'samples = list(adata.obs["sample"].cat.categories[:3])\n'
            'xy_all = adata.obsm["spatial"]'
        ),
        md("## CLS attention over space"),
        code(
            "fig, axes = plt.subplots(1, len(samples), figsize=(3.3 * len(samples), 3.2), squeeze=False)\n"
            "for ax, s in zip(axes[0], samples, strict=True):\n"
            '    rows = np.flatnonzero(adata.obs["sample"].to_numpy() == s)\n'
            '    sc = ax.scatter(*xy_all[rows].T, c=adata.obs["_cls_attention"].to_numpy()[rows], s=6)\n'
            "    ax.set_title(s, fontsize=9)\n"
            '    ax.set_aspect("equal")\n'
            '    ax.axis("off")\n'
            "    fig.colorbar(sc, ax=ax, shrink=0.7)\n"
            "plt.show()"
        ),
        md(
            "## Attention distance\n\nFor every cell, the attention-weighted mean distance (in "
            "µm) to the cells it attends to, from the top-k attention kept in "
            "`obsp['_attn_matrix']`; and the share of attention mass within a distance r, against "
            "the share of the sample's cells within r (what uniform attention would give)."
        ),
        code(
            "def attention_distances(adata):\n"
            '    coo = adata.obsp["_attn_matrix"].tocoo()\n'
            '    xy = adata.obsm["spatial"]\n'
            "    dist = np.linalg.norm(xy[coo.row] - xy[coo.col], axis=1)\n"
            "    w = coo.data.astype(np.float64)\n"
            "    wsum = np.bincount(coo.row, weights=w, minlength=adata.n_obs)\n"
            "    wdist = np.bincount(coo.row, weights=w * dist, minlength=adata.n_obs)\n"
            "    per_cell = np.divide(wdist, wsum, out=np.full(adata.n_obs, np.nan), where=wsum > 0)\n"
            "    return coo, dist, w, per_cell\n\n\n"
            "coo, dist, w, per_cell_full = attention_distances(adata)\n"
            "radii = np.array([50, 100, 150, 200, 250, 300, 400, 600, 800, 1200])\n"
            "att_share = np.array([w[dist <= r].sum() for r in radii]) / w.sum()\n"
            "# uniform baseline: share of same-sample cell pairs within r (a few samples suffice)\n"
            "base = []\n"
            "for s in samples:\n"
            '    pts = xy_all[adata.obs["sample"].to_numpy() == s]\n'
            "    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1)[np.triu_indices(len(pts), 1)]\n"
            "    base.append(d)\n"
            "base = np.concatenate(base)\n"
            "base_share = np.array([(base <= r).mean() for r in radii])\n"
            "fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))\n"
            'a1.plot(radii, att_share, marker="o", label="attention mass")\n'
            'a1.plot(radii, base_share, marker="s", label="uniform over cells")\n'
            'a1.axvline(200, color="grey", ls="--", label="spatial radius")\n'
            'a1.set_xlabel("distance (µm)")\n'
            'a1.set_ylabel("cumulative share")\n'
            "a1.legend()\n"
            "a2.hist(per_cell_full[np.isfinite(per_cell_full)], bins=40)\n"
            'a2.set_xlabel("attention-weighted distance per cell (µm)")\n'
            "plt.show()\n"
            'print(f"mean attention distance (full): {np.nanmean(per_cell_full):.1f} µm")'
        ),
        md("## One cell's most attended cells"),
        code(
            'rows = np.flatnonzero(adata.obs["sample"].to_numpy() == samples[0])\n'
            "cell = rows[len(rows) // 2]\n"
            'attn_row = adata.obsp["_attn_matrix"][cell]\n'
            'top = attn_row.indices[np.argsort(-attn_row.data, kind="stable")[:10]]\n'
            "fig, ax = plt.subplots(figsize=(4.5, 4.5))\n"
            'ax.scatter(*xy_all[rows].T, s=5, c="lightgrey")\n'
            'ax.scatter(*xy_all[top].T, s=30, c=np.sort(attn_row.data)[::-1][:10], cmap="magma_r")\n'
            'ax.scatter(*xy_all[cell], s=80, marker="*", c="tab:blue")\n'
            'ax.add_patch(plt.Circle(xy_all[cell], 200, fill=False, ls="--", color="tab:blue"))\n'
            'ax.set_aspect("equal")\n'
            'ax.set_title(f"top-10 attended cells of {adata.obs_names[cell]}")\n'
            "plt.show()"
        ),
        md(
            "## `full` vs `neighbourhood` attention\n\nA second model whose cells attend to "
            "their spatial neighbours (+CLS) only, trained for `scope_epochs` epochs (the main "
            "job's profile trains it as long as the main model). When `scope_epochs` differs "
            "from `epochs`, the `full` model is retrained for the same number of epochs so the "
            "comparison is fair. The neighbourhood model is not a local-only ablation: its CLS "
            "token still attends to every cell of the organoid, so its global head can still "
            "read the organoid's state through CLS. What the comparison shows is how much the "
            "per-cell attention over the whole tissue adds beyond that pooled summary, on the "
            "held-out test organoids, per planted program."
        ),
        code(
            'pre = ad.read_h5ad(data_dir / "preprocessed.h5ad")\n\n\n'
            "def train_scope(scope):\n"
            '    c = with_overrides(cfg, {"optim.n_epochs": scope_epochs,\n'
            '                             "model.global_component.parameters.attention": scope})\n'
            "    isc.tl.set_full_reproducibility(c.optim.seed)\n"
            "    a = pre.copy()\n"
            "    isc.model.CombinedModel.setup_anndata(a, layer_key=c.dataset.layer_key,\n"
            "                                           sample_key_list=list(c.dataset.sample_key),\n"
            "                                           split_key=c.dataset.split_key,\n"
            "                                           view_registry=False)\n"
            "    m = isc.model.CombinedModel(a, c)\n"
            "    m.train(accelerator=device, progress_bar=False)\n"
            "    m.get_model_output(a)\n"
            '    if sabotage == "training_mean":\n'
            "        isc.evaluation.training_mean_predictions(a, c.dataset.layer_key, c.dataset.split_key)\n"
            "    return a\n\n\n"
            'scoped = {"neighbourhood": train_scope("neighbourhood")}\n'
            'scoped["full"] = adata if scope_epochs == epochs else train_scope("full")\n'
            "layer = cfg.dataset.layer_key\n"
            "rows_out, metrics = [], {}\n"
            'for scope in ("full", "neighbourhood"):\n'
            "    a = scoped[scope]\n"
            "    per_cell = attention_distances(a)[3]\n"
            '    r2 = heldout_r2(a, "_y_pred_global", layer, cfg.dataset.split_key)\n'
            '    r2l = heldout_r2(a, "_y_pred_local", layer, cfg.dataset.split_key)\n'
            '    rows_out.append({"scope": scope, "mean_attention_distance": float(np.nanmean(per_cell)),\n'
            '                     "r2_global_test": r2["test"], "r2_local_test": r2l["test"]})\n'
            '    metrics[f"mean_attention_distance_{scope}"] = float(np.nanmean(per_cell))\n'
            "    for split in r2:\n"
            '        metrics[f"r2_global_{split}_{scope}"] = r2[split]\n'
            '    if "program" in a.var:\n'
            '        ranks = calculate_gene_ranks(a, layers_local_pred="_y_pred_local",\n'
            '                                     layers_global_pred="_y_pred_global", layer_true=layer,\n'
            '                                     cells=["test"], split_key=cfg.dataset.split_key)\n'
            '        program = a.var["program"].astype(str).to_numpy()\n'
            '        for prog in ("local", "global"):\n'
            '            for head in ("local", "global"):\n'
            '                value = float(ranks[f"r2_{head}"][program == prog].mean())\n'
            '                metrics[f"heldout_r2_{head}_{prog}_genes_{scope}"] = value\n'
            '                rows_out[-1][f"held-out R^2 {head} head, {prog} genes"] = value\n'
            'display(pd.DataFrame(rows_out).set_index("scope").T)\n'
            "write_metrics(metrics, 3)"
        ),
    ],
)

# Notebook 4 (real tissue) lives in its own module; this folder is on sys.path when the script runs.
from _real_tissue import real_tissue_notebook  # noqa: E402

NOTEBOOKS = {
    "0_setup.ipynb": SETUP,
    "1_model_training.ipynb": TRAINING,
    "2_gene_level_evaluation.ipynb": EVALUATION,
    "3_attention.ipynb": ATTENTION,
    "4_real_tissue.ipynb": real_tissue_notebook(COMMON_IMPORTS),
}


def main() -> None:
    """Write every notebook atomically next to this script."""
    for name, nb in NOTEBOOKS.items():
        nbformat.validate(nb)
        fd, tmp = tempfile.mkstemp(dir=HERE, suffix=".ipynb")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            nbformat.write(nb, handle)
        os.replace(tmp, HERE / name)
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
