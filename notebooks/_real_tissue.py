# ruff: noqa: E501  (cell sources are notebook code, kept readable as written in the notebook)
"""Cells of notebook 4, the real-tissue tutorial (osmFISH, one section cut into tiles).

Kept apart from ``_build_notebooks.py``, which imports :func:`real_tissue_notebook` and writes
``4_real_tissue.ipynb`` with the other notebooks (``python notebooks/_build_notebooks.py``).
Its parameters are prefixed ``tissue_`` because the reproduce runner passes one profile's
parameters to every notebook, and notebooks 0-3 already use ``epochs`` and ``seed`` for the
synthetic data.
"""

from __future__ import annotations

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

PARAMETERS = """\
# Parameters (papermill overrides these; paths are relative to the repository root)
tissue_epochs = 150  # at most; the validation tiles stop training early
tissue_seed = 44  # training seed (the split has its own, tissue_split_seed)
tissue_tile_max_cells = 410  # 4,839 cells -> 16 tiles of about 300 cells
tissue_split_seed = 0
tissue_n_neighbours = 10
tissue_n_boot = 200
tissue_marker = "Rorb"
tissue_config_overrides = {}  # settings changed on top of tutorial_config(), e.g. {"optim.lr": 0.005}
# For the reproduction's checks only (python -m reproduce --sabotage), which show that its bands
# reject a model that never learned: "none", "training_mean" (both heads predict each gene's
# training mean), "shuffled_coordinates" (the cells' positions permuted before tiling, so that
# no neighbourhood means anything), "permuted_genes" (gene names reassigned to the columns)
sabotage = "none"
data_dir = "reproduce/_build/notebooks/data"
out_dir = "reproduce/_build/notebooks/metrics"
device = "cpu"
"""

TITLE = (
    "# 4 · Real tissue: osmFISH of the mouse somatosensory cortex\n\n"
    "The tutorials 0-3 run on generated organoids whose programs are planted. Here the model "
    "meets real tissue: the osmFISH section of Codeluppi et al. (2018), 4,839 cells x 33 genes, "
    "shipped with the package (`isc.datasets.osmfish()`). It follows the README's *Your own "
    "data* path for one section: cut the section into spatial tiles, split whole tiles into "
    "train / validation / test, normalise, build a 10-nearest-neighbour graph, train with "
    "`tutorial_config()`, and score every number on the **test tiles**, which neither training "
    "nor early stopping (the validation tiles) saw. Each head is read next to the linear "
    "floors of `isc.tl.linear_baselines`: what a ridge regression on neighbourhood and tile "
    "averages already explains."
)

CELLS = [
    (
        "code",
        "from IPython.display import Markdown\n"
        "from matplotlib.patches import Rectangle\n\n"
        "from interscale.config import tutorial_config, with_overrides\n"
        "from interscale.evaluation import calculate_gene_ranks\n\n"
        "adata = isc.datasets.osmfish()\n"
        'if sabotage not in ("none", "training_mean", "shuffled_coordinates", "permuted_genes"):\n'
        '    raise ValueError(f"unknown sabotage {sabotage!r}")\n'
        "rng = np.random.default_rng(tissue_seed)\n"
        'if sabotage == "shuffled_coordinates":\n'
        '    adata.obsm["spatial"] = adata.obsm["spatial"][rng.permutation(adata.n_obs)]\n'
        'if sabotage == "permuted_genes":\n'
        "    adata.var = adata.var.iloc[rng.permutation(adata.n_vars)]\n"
        "adata",
    ),
    (
        "md",
        "## Cut the section into tiles and split whole tiles\n\n"
        "`isc.pp.tile` halves the section recursively along its longer side until no tile holds "
        "more than `tissue_tile_max_cells` cells; the tiles then play the part of samples. "
        "`isc.pp.split_samples` assigns whole tiles to train, validation and test (50 / 25 / "
        "25 %), so that no test cell was ever a neighbour of a training cell in a graph.",
    ),
    (
        "code",
        'isc.pp.tile(adata, max_cells=tissue_tile_max_cells, library_key="section")\n'
        'isc.pp.split_samples(adata, "tile", fractions=(0.5, 0.25, 0.25), seed=tissue_split_seed)\n'
        'tiles = adata.obs.groupby("tile", observed=True).agg(split=("split", "first"), cells=("split", "size"))\n'
        'display(tiles.groupby("split", observed=True)["cells"].agg(["count", "sum"]).rename(columns={"count": "tiles", "sum": "cells"}))\n'
        'xy = adata.obsm["spatial"]\n'
        'split_colour = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}\n'
        "fig, (ax_split, ax_region) = plt.subplots(1, 2, figsize=(11, 6.5), sharex=True, sharey=True)\n"
        "for split, colour in split_colour.items():\n"
        '    rows = adata.obs["split"].to_numpy() == split\n'
        "    ax_split.scatter(*xy[rows].T, s=3, c=colour, label=f\"{split} ({adata.obs.loc[rows, 'tile'].nunique()} tiles)\")\n"
        'for name, rows in adata.obs.groupby("tile", observed=True).indices.items():\n'
        "    lo, hi = xy[rows].min(axis=0), xy[rows].max(axis=0)\n"
        '    ax_split.add_patch(Rectangle(lo, *(hi - lo), fill=False, lw=0.8, color="black"))\n'
        '    ax_split.text(*(lo + hi) / 2, name.split("/")[-1], ha="center", va="center", fontsize=8)\n'
        'ax_split.set_title("tiles and their split")\n'
        'ax_split.legend(loc="upper right", markerscale=4, fontsize=8)\n'
        'regions = adata.obs["region"].cat.categories\n'
        'cmap = plt.get_cmap("tab20", len(regions))\n'
        "for i, region in enumerate(regions):\n"
        '    rows = adata.obs["region"].to_numpy() == region\n'
        "    ax_region.scatter(*xy[rows].T, s=3, color=cmap(i), label=region)\n"
        'ax_region.set_title("regions (the authors\' annotation)")\n'
        'ax_region.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), markerscale=4, fontsize=8)\n'
        "for ax in (ax_split, ax_region):\n"
        '    ax.set_aspect("equal")\n'
        '    ax.set_xlabel("x (µm)")\n'
        'ax_split.set_ylabel("y (µm)")\n'
        "plt.tight_layout()\n"
        "plt.show()",
    ),
    (
        "md",
        "## Normalise and build the graph\n\n"
        "`isc.pp.normalize` finds the counts in `layers['counts']` and writes "
        "`layers['log1p_norm']`. The graph joins each cell to its 10 nearest neighbours within "
        "its tile (`library_key='tile'`), so no edge crosses from one split into another.",
    ),
    (
        "code",
        "isc.pp.normalize(adata)\n"
        'isc.pp.spatial_neighbors(adata, n_neighs=tissue_n_neighbours, library_key="tile")\n'
        "print(f\"{adata.n_obs} cells, {adata.n_vars} genes, {adata.obs['tile'].nunique()} tiles; \"\n"
        "      f\"{adata.obsp['spatial_connectivities'].nnz / adata.n_obs:.1f} edges per cell\")",
    ),
    (
        "md",
        "## Train\n\n"
        "`tutorial_config()` is the configuration of the README's own-data path and of "
        "`interscale train --h5ad`. Training stops when the validation tiles' loss has not "
        "improved for `optim.patience` epochs, and the best-validation weights are kept.",
    ),
    (
        "code",
        "cfg = with_overrides(\n"
        "    tutorial_config(),\n"
        '    {**tissue_config_overrides, "optim.n_epochs": tissue_epochs, "optim.seed": tissue_seed},\n'
        ")\n"
        "isc.tl.set_full_reproducibility(cfg.optim.seed)\n"
        "isc.model.CombinedModel.setup_anndata(\n"
        '    adata, layer_key="log1p_norm", sample_key_list=["tile"], split_key="split", view_registry=False\n'
        ")\n"
        "model = isc.model.CombinedModel(adata, cfg)\n"
        "history = model.train(accelerator=device, progress_bar=False)\n"
        'loss_cols = [c for c in history.columns if c.endswith("loss")]\n'
        'ax = history.plot(x="epoch", y=loss_cols, figsize=(6, 3.5), marker=".")\n'
        'ax.axvline(model.best_epoch_, color="grey", ls="--", label="best epoch")\n'
        'ax.set_ylabel("loss")\n'
        'n_tiles = adata.obs.groupby("split", observed=True)["tile"].nunique()\n'
        "ax.set_title(f\"trained on {n_tiles['train']} tiles, stopped on {n_tiles['val']}\")\n"
        "plt.show()\n"
        "model.get_model_output(adata)\n"
        'if sabotage == "training_mean":\n'
        '    isc.evaluation.training_mean_predictions(adata, "log1p_norm", "split")\n'
        "print(f\"{len(history)} epochs, best {model.best_epoch_}, {history['seconds'].sum():.0f} s of training\")",
    ),
    (
        "md",
        "## Held-out gene ranks next to the linear floors\n\n"
        "Both heads are scored on the test tiles only, each cell predicted while it is masked. "
        "The bootstrap gives 90 % intervals of each head's per-gene R^2 (with 4 test tiles, "
        "fewer than the 5 needed to resample whole tiles, it resamples cells; the table's "
        "`attrs` say which). The floors are ridge regressions fitted on the training tiles and "
        "scored on the same test cells: `mean` (each gene's training mean: a model below it "
        "learned nothing), `hop1` / `hop2` (the mean of the 1- and 2-hop neighbourhood, the cell "
        "itself left out), `sample` (the leave-one-out mean of the cell's tile) and "
        "`hop2_sample` (both).",
    ),
    (
        "code",
        'ranks = calculate_gene_ranks(adata, layers_local_pred="_y_pred_local", layers_global_pred="_y_pred_global",\n'
        '                             layer_true="log1p_norm", cells="test", n_boot=tissue_n_boot, seed=0)\n'
        'floors = isc.tl.linear_baselines(adata, layer_key="log1p_norm", library_key="tile", split_key="split",\n'
        '                                 heldout=("test",), key_added=None)\n'
        "print(f\"scored on {ranks.attrs['n_cells']} cells ({ranks.attrs['cells']}); bootstrap: {ranks.attrs.get('bootstrap')}\")\n"
        'means = pd.Series({"local head": ranks["r2_local"].mean(), "global head": ranks["r2_global"].mean(),\n'
        '                   **{f"floor {c}": floors[c].mean() for c in floors.columns}}, name="mean test R^2 over genes")\n'
        "display(means.to_frame().round(4))\n"
        'best_floor = max(("hop1", "hop2", "hop2_sample"), key=lambda c: floors[c].mean())\n'
        'print(f"best ridge floor: {best_floor} ({floors[best_floor].mean():.4f})")',
    ),
    (
        "md",
        "Each head against the ridge on the averages it can see: the local head against the "
        "2-hop ridge, the global head against the 2-hop + tile ridge. A point above the "
        "diagonal is a gene the head predicts better than that ridge on the test tiles.",
    ),
    (
        "code",
        'fig = isc.pl.baselines(ranks, floors, title="osmFISH test tiles: each head\'s R² per gene against its floor")\n'
        "plt.show()\n"
        'table = ranks.set_index("gene")[["r2_local", "r2_local_lo", "r2_local_hi", "r2_global", "r2_global_lo", "r2_global_hi"]]\n'
        "table = table.join(floors)\n"
        'display(table.sort_values("r2_global", ascending=False).round(3))',
    ),
    (
        "md",
        "## A layer marker in space\n\n"
        "Rorb marks layer 4 of the cortex. Observed expression on the whole section, then each "
        "head's held-out prediction on the test tiles (the other tiles in grey: the model was "
        "trained or stopped on them), on one colour scale, over the authors' regions.",
    ),
    (
        "code",
        'observed = adata.obs_vector(tissue_marker, layer="log1p_norm")\n'
        'test = adata.obs["split"].to_numpy() == "test"\n'
        "vmin, vmax = np.percentile(observed, [1, 99])\n"
        "fig, axes = plt.subplots(1, 4, figsize=(17, 6), sharex=True, sharey=True)\n"
        "for i, region in enumerate(regions):\n"
        '    rows = adata.obs["region"].to_numpy() == region\n'
        "    axes[0].scatter(*xy[rows].T, s=3, color=cmap(i), label=region)\n"
        'axes[0].set_title("regions")\n'
        'axes[0].legend(loc="upper left", bbox_to_anchor=(0, -0.14), ncol=2, markerscale=4, fontsize=7)\n'
        'panels = [("observed", observed, np.ones_like(test)),\n'
        '          ("local head (test tiles)", adata.obs_vector(tissue_marker, layer="_y_pred_local"), test),\n'
        '          ("global head (test tiles)", adata.obs_vector(tissue_marker, layer="_y_pred_global"), test)]\n'
        "for ax, (name, values, shown) in zip(axes[1:], panels, strict=True):\n"
        '    ax.scatter(*xy[~shown].T, s=3, c="lightgrey")\n'
        '    sc = ax.scatter(*xy[shown].T, s=3, c=values[shown], cmap="viridis", vmin=vmin, vmax=vmax)\n'
        '    ax.set_title(f"{tissue_marker}: {name}")\n'
        '    fig.colorbar(sc, ax=ax, shrink=0.6, label="log1p normalised expression")\n'
        "for ax in axes:\n"
        '    ax.set_aspect("equal")\n'
        '    ax.set_xlabel("x (µm)")\n'
        'axes[0].set_ylabel("y (µm)")\n'
        "plt.tight_layout()\n"
        "plt.show()\n"
        'marker = ranks.set_index("gene").loc[tissue_marker]\n'
        "print(f\"{tissue_marker} test R^2: local {marker['r2_local']:.3f}, global {marker['r2_global']:.3f}, \"\n"
        "      f\"hop2 ridge {floors.loc[tissue_marker, 'hop2']:.3f}\")",
    ),
    (
        "md",
        "## What the tissue-scale head adds: the reading of the numbers above\n\n"
        "The text below is written by the code from the numbers of this run. A gene counts as "
        "explained by the global head *beyond the neighbourhood* when the lower end of the "
        "global head's 90 % interval lies above the better of the two neighbourhood ridges "
        "(`hop1`, `hop2`) on that gene, i.e. the interval of the difference excludes zero with "
        "the ridge held fixed (the ridge's own sampling variation on the test cells is not "
        "resampled).",
    ),
    (
        "code",
        'n_test_tiles = int(adata.obs.loc[test, "tile"].nunique())\n'
        'neighbourhood = floors[["hop1", "hop2"]].max(axis=1).loc[ranks["gene"]].to_numpy()\n'
        'beyond = ranks.loc[ranks["r2_global_lo"].to_numpy() > neighbourhood, "gene"].tolist()\n'
        'local_floor, global_floor = floors["hop2"].loc[ranks["gene"]].to_numpy(), floors["hop2_sample"].loc[ranks["gene"]].to_numpy()\n'
        'n_local_beats = int((ranks["r2_local"].to_numpy() > local_floor).sum())\n'
        'n_global_beats = int((ranks["r2_global"].to_numpy() > global_floor).sum())\n'
        "# A ratio to a floor that explains nothing (R^2 <= 0) would read as a gain: none is given.\n"
        "floor_r2 = floors[best_floor].mean()\n"
        'ratio_local = ranks["r2_local"].mean() / floor_r2 if floor_r2 > 0 else float("nan")\n'
        'ratio_global = ranks["r2_global"].mean() / floor_r2 if floor_r2 > 0 else float("nan")\n'
        'verdict = lambda r: "reaches" if r >= 1 else "falls short of"\n'
        "lines = [\n"
        "    f\"On the {ranks.attrs['n_cells']} cells of the {n_test_tiles} test tiles, \"\n"
        "    f\"the local head's mean R² is {ranks['r2_local'].mean():.3f} and the global head's {ranks['r2_global'].mean():.3f}; \"\n"
        "    f\"predicting each gene's training mean gives {floors['mean'].mean():.3f}, and the best ridge floor \"\n"
        '    f"(`{best_floor}`) {floors[best_floor].mean():.3f}.",\n'
        '    f"The local head {verdict(ratio_local)} that ridge ({ratio_local:.2f} x), the global head "\n'
        '    f"{verdict(ratio_global)} it ({ratio_global:.2f} x)."\n'
        "    if floor_r2 > 0\n"
        '    else "No ridge floor explains anything here (best R² <= 0), so no ratio to it is given.",\n'
        '    f"Gene by gene, the local head beats the 2-hop ridge on {n_local_beats} of {adata.n_vars} genes and the "\n'
        '    f"global head beats the 2-hop + tile ridge on {n_global_beats} of {adata.n_vars}.",\n'
        "]\n"
        "if beyond:\n"
        '    lines.append(f"The global head explains beyond the neighbourhood ridges, with its interval above them, on "\n'
        "                 f\"{len(beyond)} gene(s): {', '.join(beyond)}.\")\n"
        "else:\n"
        '    lines.append("On no gene does the global head\'s interval lie above the neighbourhood ridges: on these test "\n'
        '                 "tiles the tissue-scale head explains nothing that a linear model of the 1- and 2-hop "\n'
        '                 "neighbourhood does not already explain.")\n'
        'display(Markdown(" ".join(lines)))',
    ),
    (
        "code",
        "metrics = {\n"
        '    "n_cells": int(adata.n_obs),\n'
        '    "n_genes": int(adata.n_vars),\n'
        '    "n_tiles": int(adata.obs["tile"].nunique()),\n'
        '    "n_test_tiles": n_test_tiles,\n'
        '    "n_test_cells": int(ranks.attrs["n_cells"]),\n'
        '    "epochs_run": int(len(history)),\n'
        '    "best_epoch": int(model.best_epoch_),\n'
        '    "seconds_training": float(history["seconds"].sum()),\n'
        '    "mean_r2_local": float(ranks["r2_local"].mean()),\n'
        '    "mean_r2_global": float(ranks["r2_global"].mean()),\n'
        '    "best_floor": best_floor,\n'
        '    "local_over_mean_floor": float(ranks["r2_local"].mean() - floors["mean"].mean()),\n'
        '    "global_over_mean_floor": float(ranks["r2_global"].mean() - floors["mean"].mean()),\n'
        '    "local_over_best_floor": float(ratio_local),\n'
        '    "global_over_best_floor": float(ratio_global),\n'
        '    "n_genes_local_beats_hop2": n_local_beats,\n'
        '    "n_genes_global_beats_hop2_sample": n_global_beats,\n'
        '    "n_genes_global_beyond_neighbourhood": len(beyond),\n'
        '    "marker_r2_local": float(marker["r2_local"]),\n'
        '    "marker_r2_global": float(marker["r2_global"]),\n'
        "}\n"
        "for c in floors.columns:\n"
        '    metrics[f"floor_{c}"] = float(floors[c].mean())\n'
        "write_metrics(metrics, 4)",
    ),
]


def real_tissue_notebook(common_imports: str) -> nbformat.NotebookNode:
    """Notebook 4 with its own parameters cell and the shared imports cell of notebooks 0-3.

    Parameters
    ----------
    common_imports
        Source of the imports cell every tutorial runs after its parameters (defines
        ``write_metrics``).

    Returns
    -------
    nbformat.NotebookNode
        The notebook, without outputs, with stable cell ids.
    """
    params = new_code_cell(PARAMETERS)
    params.metadata["tags"] = ["parameters"]
    cells = [new_markdown_cell(TITLE), params, new_code_cell(common_imports)]
    for kind, text in CELLS:
        cells.append(new_markdown_cell(text) if kind == "md" else new_code_cell(text))
    nb = new_notebook(
        cells=cells,
        metadata={
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
    )
    # Stable cell ids keep regenerated notebooks diff-free.
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"
    return nb
