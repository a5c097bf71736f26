# %% [markdown]
# # 0 · Setup: data, quality control, spatial graph
#
# Loads the built-in synthetic organoids (or the Legnini et al. data when `legnini_csv` is set),
# runs QC and normalisation, chooses the neighbourhood radius and writes
# `<data_dir>/preprocessed.h5ad` for the next notebooks.

# %% tags=["parameters"]
# Parameters (papermill overrides them). Paths are relative to the working directory; an empty
# config_path means the example configuration shipped with the package.
n_samples = 6
cells_per_sample_min = 300
cells_per_sample_max = 400
epochs = 15
scope_epochs = 15
seed = 0
data_dir = "data"
out_dir = "metrics"
config_path = ""
config_overrides = {}  # e.g. {"optim.lr": 0.005}: settings changed on top of the configuration
device = "cpu"
legnini_csv = ""
# For the reproduction's checks only (python -m reproduce --sabotage), which show that its bands
# reject a model that never learned: "none", "training_mean" (both heads predict each gene's
# training mean), "shuffled_coordinates" (cells' positions permuted within each organoid),
# "permuted_genes" (gene names and planted programs reassigned to the expression columns)
sabotage = "none"

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
if legnini_csv:
    adata = isc.datasets.legnini(legnini_csv)
else:
    adata = isc.datasets.synthetic_organoids(
        n_samples=n_samples,
        cells_per_sample=(cells_per_sample_min, cells_per_sample_max),
        seed=seed,
    )
if sabotage not in ("none", "training_mean", "shuffled_coordinates", "permuted_genes"):
    raise ValueError(f"unknown sabotage {sabotage!r}")
rng = np.random.default_rng(seed)
if sabotage == "shuffled_coordinates":
    for rows in adata.obs.groupby("sample", observed=True).indices.values():
        adata.obsm["spatial"][rows] = adata.obsm["spatial"][rng.permutation(rows)]
if sabotage == "permuted_genes":
    adata.var = adata.var.iloc[rng.permutation(adata.n_vars)]
adata

# %% [markdown]
# ## Quality control and normalisation

# %%
qc_summary = isc.pp.qc(adata)
print(qc_summary)
isc.pp.normalize(adata, key_added="log1p_norm")

# %% [markdown]
# ## Neighbourhood size per radius
#
# The local (GNN) component sees the cells within the radius; about 10 neighbours is a good
# one-ring neighbourhood.

# %%
radii = [100, 150, 200, 250, 300]
stats = isc.pp.neighborhood_stats(adata, radii, sample_key="sample")
display(stats)
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.errorbar(stats.index, stats["mean"], yerr=stats["sd"], marker="o", capsize=3)
ax.set_xlabel("radius")
ax.set_ylabel("neighbours per cell (mean ± sd)")
plt.show()

# %%
isc.pp.spatial_neighbors(adata, radius=200, sample_key="sample")
deg = np.diff(adata.obsp["spatial_connectivities"].indptr)
print(f"mean neighbours at radius 200: {deg.mean():.2f}")

# %% [markdown]
# ## Expression in space
#
# SHH and its target PTCH1 follow the organoid-wide dose (planted *global* program); FOS responds
# to contact with sender cells (planted *local* program).

# %%
genes = [g for g in ["SHH", "FOS", "PTCH1"] if g in adata.var_names]
samples = list(adata.obs["sample"].cat.categories[:3])
fig, axes = plt.subplots(
    len(genes), len(samples), figsize=(3.2 * len(samples), 3 * len(genes)), squeeze=False
)
expr = adata[:, genes].layers["log1p_norm"]
expr = expr.toarray() if hasattr(expr, "toarray") else np.asarray(expr)
for j, s in enumerate(samples):
    rows = np.flatnonzero(adata.obs["sample"].to_numpy() == s)
    xy = adata.obsm["spatial"][rows]
    for i, g in enumerate(genes):
        ax = axes[i, j]
        ax.scatter(xy[:, 0], xy[:, 1], c=expr[rows, i], s=6, cmap="viridis")
        ax.set_title(f"{g} · {s}", fontsize=9)
        ax.set_aspect("equal")
        ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Train / validation / test split (whole organoids)
#
# About half the organoids train the model, a quarter (`val`) choose the best epoch and stop
# training, and a quarter (`test`) are held out from both: every held-out score of these notebooks
# is read on the test organoids only.

# %%
split_table = pd.crosstab(adata.obs["sample"], adata.obs["split"])
display(split_table)
adata.obs.groupby("split", observed=True).size()

# %%
adata.write_h5ad(data_dir / "preprocessed.h5ad")
metrics = {
    "n_cells": int(adata.n_obs),
    "n_genes": int(adata.n_vars),
    "mean_neighbours_200": float(deg.mean()),
}
isc.evaluation.write_metrics(metrics, out_dir, 0)
pd.Series(metrics, dtype=object).to_frame("value")
