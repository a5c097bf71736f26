# %% [markdown]
# # 4 · Real tissue: osmFISH of the mouse somatosensory cortex
#
# The tutorials 0-3 run on generated organoids whose programs are planted. Here the model meets
# real tissue: the osmFISH section of Codeluppi et al. (2018), 4,839 cells x 33 genes, shipped with
# the package (`isc.datasets.osmfish()`). It follows the README's *Your own data* path for one
# section: cut the section into spatial tiles, split whole tiles into train / validation / test,
# normalise, build a 10-nearest-neighbour graph, train with `tutorial_config()`, and score every
# number on the **test tiles**, which neither training nor early stopping (the validation tiles)
# saw. Each head is read next to the linear floors of `isc.tl.linear_baselines`: what a ridge
# regression on neighbourhood and tile averages already explains.

# %% tags=["parameters"]
# Parameters (papermill overrides them; paths are relative to the working directory)
tissue_epochs = 150  # at most; the validation tiles stop training early
tissue_seed = 44  # training seed (the split has its own, tissue_split_seed)
tissue_tile_max_cells = 410  # 4,839 cells -> 16 tiles of about 300 cells
tissue_split_seed = 0
tissue_n_neighbours = 10
tissue_n_boot = 200
tissue_marker = "Rorb"
# settings changed on top of tutorial_config(), e.g. {"optim.lr": 0.005}
tissue_config_overrides = {}
# For the reproduction's checks only (python -m reproduce --sabotage), which show that its bands
# reject a model that never learned: "none", "training_mean" (both heads predict each gene's
# training mean), "shuffled_coordinates" (the cells' positions permuted before tiling, so that
# no neighbourhood means anything), "permuted_genes" (gene names reassigned to the columns)
sabotage = "none"
data_dir = "data"
out_dir = "metrics"
device = "cpu"

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display

import interscale as isc

# %matplotlib inline
np.set_printoptions(precision=4, suppress=True)
data_dir, out_dir = Path(data_dir), Path(out_dir)
data_dir.mkdir(parents=True, exist_ok=True)

# %%
from IPython.display import Markdown
from matplotlib.patches import Rectangle

from interscale.config import tutorial_config, with_overrides
from interscale.evaluation import calculate_gene_ranks

adata = isc.datasets.osmfish()
if sabotage not in ("none", "training_mean", "shuffled_coordinates", "permuted_genes"):
    raise ValueError(f"unknown sabotage {sabotage!r}")
rng = np.random.default_rng(tissue_seed)
if sabotage == "shuffled_coordinates":
    adata.obsm["spatial"] = adata.obsm["spatial"][rng.permutation(adata.n_obs)]
if sabotage == "permuted_genes":
    adata.var = adata.var.iloc[rng.permutation(adata.n_vars)]
adata

# %% [markdown]
# ## Cut the section into tiles and split whole tiles
#
# `isc.pp.tile` halves the section recursively along its longer side until no tile holds more than
# `tissue_tile_max_cells` cells; the tiles then play the part of samples. `isc.pp.split_samples`
# assigns whole tiles to train, validation and test (50 / 25 / 25 %), so that no test cell was ever
# a neighbour of a training cell in a graph.

# %%
isc.pp.tile(adata, max_cells=tissue_tile_max_cells, sample_key="section")
isc.pp.split_samples(adata, "tile", fractions=(0.5, 0.25, 0.25), seed=tissue_split_seed)
tiles = adata.obs.groupby("tile", observed=True).agg(
    split=("split", "first"), cells=("split", "size")
)
display(
    tiles.groupby("split", observed=True)["cells"]
    .agg(["count", "sum"])
    .rename(columns={"count": "tiles", "sum": "cells"})
)
xy = adata.obsm["spatial"]
split_colour = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}
fig, (ax_split, ax_region) = plt.subplots(1, 2, figsize=(11, 6.5), sharex=True, sharey=True)
for split, colour in split_colour.items():
    rows = adata.obs["split"].to_numpy() == split
    ax_split.scatter(
        *xy[rows].T, s=3, c=colour, label=f"{split} ({adata.obs.loc[rows, 'tile'].nunique()} tiles)"
    )
for name, rows in adata.obs.groupby("tile", observed=True).indices.items():
    lo, hi = xy[rows].min(axis=0), xy[rows].max(axis=0)
    ax_split.add_patch(Rectangle(lo, *(hi - lo), fill=False, lw=0.8, color="black"))
    ax_split.text(*(lo + hi) / 2, name.split("/")[-1], ha="center", va="center", fontsize=8)
ax_split.set_title("tiles and their split")
ax_split.legend(loc="upper right", markerscale=4, fontsize=8)
regions = adata.obs["region"].cat.categories
cmap = plt.get_cmap("tab20", len(regions))
for i, region in enumerate(regions):
    rows = adata.obs["region"].to_numpy() == region
    ax_region.scatter(*xy[rows].T, s=3, color=cmap(i), label=region)
ax_region.set_title("regions (the authors' annotation)")
ax_region.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), markerscale=4, fontsize=8)
for ax in (ax_split, ax_region):
    ax.set_aspect("equal")
    ax.set_xlabel("x (µm)")
ax_split.set_ylabel("y (µm)")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Normalise and build the graph
#
# `isc.pp.normalize` finds the counts in `layers['counts']` and writes `layers['log1p_norm']`. The
# graph joins each cell to its 10 nearest neighbours within its tile (`sample_key='tile'`), so no
# edge crosses from one split into another.

# %%
isc.pp.normalize(adata)
isc.pp.spatial_neighbors(adata, n_neighs=tissue_n_neighbours, sample_key="tile")
print(
    f"{adata.n_obs} cells, {adata.n_vars} genes, {adata.obs['tile'].nunique()} tiles; "
    f"{adata.obsp['spatial_connectivities'].nnz / adata.n_obs:.1f} edges per cell"
)

# %% [markdown]
# ## Train
#
# `tutorial_config()` is the configuration of the README's own-data path and of `interscale train
# --h5ad`. Training stops when the validation tiles' loss has not improved for `optim.patience`
# epochs, and the best-validation weights are kept.

# %%
cfg = with_overrides(
    tutorial_config(),
    {**tissue_config_overrides, "optim.n_epochs": tissue_epochs, "optim.seed": tissue_seed},
)
isc.tl.set_full_reproducibility(cfg.optim.seed)
isc.model.CombinedModel.setup_anndata(
    adata, layer_key="log1p_norm", sample_key_list=["tile"], split_key="split", view_registry=False
)
model = isc.model.CombinedModel(adata, cfg)
history = model.train(accelerator=device, progress_bar=False)
loss_cols = [c for c in history.columns if c.endswith("loss")]
ax = history.plot(x="epoch", y=loss_cols, figsize=(6, 3.5), marker=".")
ax.axvline(model.best_epoch_, color="grey", ls="--", label="best epoch")
ax.set_ylabel("loss")
n_tiles = adata.obs.groupby("split", observed=True)["tile"].nunique()
ax.set_title(f"trained on {n_tiles['train']} tiles, stopped on {n_tiles['val']}")
plt.show()
model.get_model_output(adata)
if sabotage == "training_mean":
    isc.evaluation.training_mean_predictions(adata, "log1p_norm", "split")
print(
    f"{len(history)} epochs, best {model.best_epoch_}, {history['seconds'].sum():.0f} s of training"
)

# %% [markdown]
# ## Held-out gene ranks next to the linear floors
#
# Both heads are scored on the test tiles only, each cell predicted while it is masked. The
# bootstrap gives 90 % intervals of each head's per-gene R^2 (with fewer than 5 test tiles it
# resamples cells instead of whole tiles, and says so: a warning and the `bootstrap_unit` column).
# The floors are ridge regressions fitted on the training tiles and scored on the same test cells:
# `mean` (each gene's training mean: a model below it learned nothing), `hop1` / `hop2` (the mean
# of the 1- and 2-hop neighbourhood, the cell itself left out), `sample` (the leave-one-out mean of
# the cell's tile) and `hop2_sample` (both).

# %%
ranks = calculate_gene_ranks(
    adata,
    layers_local_pred="_y_pred_local",
    layers_global_pred="_y_pred_global",
    layer_true="log1p_norm",
    cells="test",
    n_boot=tissue_n_boot,
    seed=0,
)
floors = isc.tl.linear_baselines(
    adata,
    layer_key="log1p_norm",
    sample_key="tile",
    split_key="split",
    heldout=("test",),
    key_added=None,
)
print(
    f"scored on {ranks.attrs['n_cells']} cells ({ranks.attrs['cells']}); "
    f"bootstrap: {ranks.attrs.get('bootstrap')}"
)
means = pd.Series(
    {
        "local head": ranks["r2_local"].mean(),
        "global head": ranks["r2_global"].mean(),
        **{f"floor {c}": floors[c].mean() for c in floors.columns},
    },
    name="mean test R^2 over genes",
)
display(means.to_frame().round(4))
best_floor = max(("hop1", "hop2", "hop2_sample"), key=lambda c: floors[c].mean())
print(f"best ridge floor: {best_floor} ({floors[best_floor].mean():.4f})")

# %% [markdown]
# Each head against the ridge on the averages it can see: the local head against the 2-hop ridge,
# the global head against the 2-hop + tile ridge. A point above the diagonal is a gene the head
# predicts better than that ridge on the test tiles.

# %%
fig = isc.pl.baselines(
    ranks, floors, title="osmFISH test tiles: each head's R² per gene against its floor"
)
plt.show()
table = ranks.set_index("gene")[
    ["r2_local", "r2_local_lo", "r2_local_hi", "r2_global", "r2_global_lo", "r2_global_hi"]
]
table = table.join(floors)
display(table.sort_values("r2_global", ascending=False).round(3))

# %% [markdown]
# ## A layer marker in space
#
# Rorb marks layer 4 of the cortex. Observed expression on the whole section, then each head's
# held-out prediction on the test tiles (the other tiles in grey: the model was trained or stopped
# on them), on one colour scale, over the authors' regions.

# %%
observed = adata.obs_vector(tissue_marker, layer="log1p_norm")
test = adata.obs["split"].to_numpy() == "test"
vmin, vmax = np.percentile(observed, [1, 99])
fig, axes = plt.subplots(1, 4, figsize=(17, 6), sharex=True, sharey=True)
for i, region in enumerate(regions):
    rows = adata.obs["region"].to_numpy() == region
    axes[0].scatter(*xy[rows].T, s=3, color=cmap(i), label=region)
axes[0].set_title("regions")
axes[0].legend(loc="upper left", bbox_to_anchor=(0, -0.14), ncol=2, markerscale=4, fontsize=7)
panels = [
    ("observed", observed, np.ones_like(test)),
    ("local head (test tiles)", adata.obs_vector(tissue_marker, layer="_y_pred_local"), test),
    ("global head (test tiles)", adata.obs_vector(tissue_marker, layer="_y_pred_global"), test),
]
for ax, (name, values, shown) in zip(axes[1:], panels, strict=True):
    ax.scatter(*xy[~shown].T, s=3, c="lightgrey")
    sc = ax.scatter(*xy[shown].T, s=3, c=values[shown], cmap="viridis", vmin=vmin, vmax=vmax)
    ax.set_title(f"{tissue_marker}: {name}")
    fig.colorbar(sc, ax=ax, shrink=0.6, label="log1p normalised expression")
for ax in axes:
    ax.set_aspect("equal")
    ax.set_xlabel("x (µm)")
axes[0].set_ylabel("y (µm)")
plt.tight_layout()
plt.show()
marker = ranks.set_index("gene").loc[tissue_marker]
print(
    f"{tissue_marker} test R^2: local {marker['r2_local']:.3f}, global {marker['r2_global']:.3f}, "
    f"hop2 ridge {floors.loc[tissue_marker, 'hop2']:.3f}"
)

# %% [markdown]
# ## What the tissue-scale head adds: the reading of the numbers above
#
# The text below is written by the code from the numbers of this run. A gene counts as explained by
# the global head *beyond the neighbourhood* when the lower end of the global head's 90 % interval
# lies above the better of the two neighbourhood ridges (`hop1`, `hop2`) on that gene, i.e. the
# interval of the difference excludes zero with the ridge held fixed (the ridge's own sampling
# variation on the test cells is not resampled).

# %%
n_test_tiles = int(adata.obs.loc[test, "tile"].nunique())
neighbourhood = floors[["hop1", "hop2"]].max(axis=1).loc[ranks["gene"]].to_numpy()
beyond = ranks.loc[ranks["r2_global_lo"].to_numpy() > neighbourhood, "gene"].tolist()
local_floor, global_floor = (
    floors["hop2"].loc[ranks["gene"]].to_numpy(),
    floors["hop2_sample"].loc[ranks["gene"]].to_numpy(),
)
n_local_beats = int((ranks["r2_local"].to_numpy() > local_floor).sum())
n_global_beats = int((ranks["r2_global"].to_numpy() > global_floor).sum())
# A ratio to a floor that explains nothing (R^2 <= 0) would read as a gain: none is given.
floor_r2 = floors[best_floor].mean()
ratio_local = ranks["r2_local"].mean() / floor_r2 if floor_r2 > 0 else float("nan")
ratio_global = ranks["r2_global"].mean() / floor_r2 if floor_r2 > 0 else float("nan")


def verdict(ratio):
    return "reaches" if ratio >= 1 else "falls short of"


lines = [
    f"On the {ranks.attrs['n_cells']} cells of the {n_test_tiles} test tiles, "
    f"the local head's mean R² is {ranks['r2_local'].mean():.3f} and the global head's "
    f"{ranks['r2_global'].mean():.3f}; predicting each gene's training mean gives "
    f"{floors['mean'].mean():.3f}, and the best ridge floor "
    f"(`{best_floor}`) {floors[best_floor].mean():.3f}.",
    f"The local head {verdict(ratio_local)} that ridge ({ratio_local:.2f} x), the global head "
    f"{verdict(ratio_global)} it ({ratio_global:.2f} x)."
    if floor_r2 > 0
    else "No ridge floor explains anything here (best R² <= 0), so no ratio to it is given.",
    f"Gene by gene, the local head beats the 2-hop ridge on {n_local_beats} of {adata.n_vars} "
    f"genes and the global head beats the 2-hop + tile ridge on {n_global_beats} of "
    f"{adata.n_vars}.",
]
if beyond:
    lines.append(
        "The global head explains beyond the neighbourhood ridges, with its interval above them, "
        f"on {len(beyond)} gene(s): {', '.join(beyond)}."
    )
else:
    lines.append(
        "On no gene does the global head's interval lie above the neighbourhood ridges: on these "
        "test tiles the tissue-scale head explains nothing that a linear model of the 1- and 2-hop "
        "neighbourhood does not already explain."
    )
display(Markdown(" ".join(lines)))

# %%
metrics = {
    "n_cells": int(adata.n_obs),
    "n_genes": int(adata.n_vars),
    "n_tiles": int(adata.obs["tile"].nunique()),
    "n_test_tiles": n_test_tiles,
    "n_test_cells": int(ranks.attrs["n_cells"]),
    "epochs_run": int(len(history)),
    "best_epoch": int(model.best_epoch_),
    "seconds_training": float(history["seconds"].sum()),
    "mean_r2_local": float(ranks["r2_local"].mean()),
    "mean_r2_global": float(ranks["r2_global"].mean()),
    "best_floor": best_floor,
    "local_over_mean_floor": float(ranks["r2_local"].mean() - floors["mean"].mean()),
    "global_over_mean_floor": float(ranks["r2_global"].mean() - floors["mean"].mean()),
    "local_over_best_floor": float(ratio_local),
    "global_over_best_floor": float(ratio_global),
    "n_genes_local_beats_hop2": n_local_beats,
    "n_genes_global_beats_hop2_sample": n_global_beats,
    "n_genes_global_beyond_neighbourhood": len(beyond),
    "marker_r2_local": float(marker["r2_local"]),
    "marker_r2_global": float(marker["r2_global"]),
}
for c in floors.columns:
    metrics[f"floor_{c}"] = float(floors[c].mean())
isc.evaluation.write_metrics(metrics, out_dir, 4)
pd.Series(metrics, dtype=object).to_frame("value")
