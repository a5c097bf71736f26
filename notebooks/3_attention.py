# %% [markdown]
# # 3 · Attention
#
# Where does the global Transformer look? CLS attention over the tissue, how far cells attend, and
# a comparison of the `full` and `neighbourhood` attention scopes.

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
import anndata as ad

from interscale.config import load_config, tutorial_config, with_overrides
from interscale.evaluation import calculate_gene_ranks, heldout_r2

adata = ad.read_h5ad(data_dir / "trained.h5ad")
# an empty config_path: the package's tutorial configuration with its linear part off, the same
# settings as config_files/synthetic_example.yaml of the repository
base = (
    load_config(config_path)
    if config_path
    else with_overrides(tutorial_config(), {"model.linear_part": False})
)
cfg = with_overrides(base, {**config_overrides, "optim.n_epochs": epochs})
samples = list(adata.obs["sample"].cat.categories[:3])
xy_all = adata.obsm["spatial"]

# %% [markdown]
# ## CLS attention over space

# %%
fig, axes = plt.subplots(1, len(samples), figsize=(3.3 * len(samples), 3.2), squeeze=False)
for ax, s in zip(axes[0], samples, strict=True):
    rows = np.flatnonzero(adata.obs["sample"].to_numpy() == s)
    sc = ax.scatter(*xy_all[rows].T, c=adata.obs["_cls_attention"].to_numpy()[rows], s=6)
    ax.set_title(s, fontsize=9)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.colorbar(sc, ax=ax, shrink=0.7)
plt.show()


# %% [markdown]
# ## Attention distance
#
# For every cell, the attention-weighted mean distance (in µm) to the cells it attends to, from the
# top-k attention kept in `obsp['_attn_matrix']`; and the share of attention mass within a distance
# r, against the share of the sample's cells within r (what uniform attention would give).


# %%
def attention_distances(adata):
    coo = adata.obsp["_attn_matrix"].tocoo()
    xy = adata.obsm["spatial"]
    dist = np.linalg.norm(xy[coo.row] - xy[coo.col], axis=1)
    w = coo.data.astype(np.float64)
    wsum = np.bincount(coo.row, weights=w, minlength=adata.n_obs)
    wdist = np.bincount(coo.row, weights=w * dist, minlength=adata.n_obs)
    per_cell = np.divide(wdist, wsum, out=np.full(adata.n_obs, np.nan), where=wsum > 0)
    return coo, dist, w, per_cell


coo, dist, w, per_cell_full = attention_distances(adata)
radii = np.array([50, 100, 150, 200, 250, 300, 400, 600, 800, 1200])
att_share = np.array([w[dist <= r].sum() for r in radii]) / w.sum()
# uniform baseline: share of same-sample cell pairs within r (a few samples suffice)
base = []
for s in samples:
    pts = xy_all[adata.obs["sample"].to_numpy() == s]
    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1)[np.triu_indices(len(pts), 1)]
    base.append(d)
base = np.concatenate(base)
base_share = np.array([(base <= r).mean() for r in radii])
fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
a1.plot(radii, att_share, marker="o", label="attention mass")
a1.plot(radii, base_share, marker="s", label="uniform over cells")
a1.axvline(200, color="grey", ls="--", label="spatial radius")
a1.set_xlabel("distance (µm)")
a1.set_ylabel("cumulative share")
a1.legend()
a2.hist(per_cell_full[np.isfinite(per_cell_full)], bins=40)
a2.set_xlabel("attention-weighted distance per cell (µm)")
plt.show()
print(f"mean attention distance (full): {np.nanmean(per_cell_full):.1f} µm")

# %% [markdown]
# ## One cell's most attended cells

# %%
rows = np.flatnonzero(adata.obs["sample"].to_numpy() == samples[0])
cell = rows[len(rows) // 2]
attn_row = adata.obsp["_attn_matrix"][cell]
top = attn_row.indices[np.argsort(-attn_row.data, kind="stable")[:10]]
fig, ax = plt.subplots(figsize=(4.5, 4.5))
ax.scatter(*xy_all[rows].T, s=5, c="lightgrey")
ax.scatter(*xy_all[top].T, s=30, c=np.sort(attn_row.data)[::-1][:10], cmap="magma_r")
ax.scatter(*xy_all[cell], s=80, marker="*", c="tab:blue")
ax.add_patch(plt.Circle(xy_all[cell], 200, fill=False, ls="--", color="tab:blue"))
ax.set_aspect("equal")
ax.set_title(f"top-10 attended cells of {adata.obs_names[cell]}")
plt.show()

# %% [markdown]
# ## `full` vs `neighbourhood` attention
#
# A second model whose cells attend to their spatial neighbours (+CLS) only, trained for
# `scope_epochs` epochs (the main job's profile trains it as long as the main model). When
# `scope_epochs` differs from `epochs`, the `full` model is retrained for the same number of epochs
# so the comparison is fair. The neighbourhood model is not a local-only ablation: its CLS token
# still attends to every cell of the organoid, so its global head can still read the organoid's
# state through CLS. What the comparison shows is how much the per-cell attention over the whole
# tissue adds beyond that pooled summary, on the held-out test organoids, per planted program.

# %%
pre = ad.read_h5ad(data_dir / "preprocessed.h5ad")


def train_scope(scope):
    c = with_overrides(
        cfg, {"optim.n_epochs": scope_epochs, "model.global_component.parameters.attention": scope}
    )
    isc.tl.set_full_reproducibility(c.optim.seed)
    a = pre.copy()
    isc.model.CombinedModel.setup_anndata(
        a,
        layer_key=c.dataset.layer_key,
        sample_key_list=list(c.dataset.sample_key),
        split_key=c.dataset.split_key,
        view_registry=False,
    )
    m = isc.model.CombinedModel(a, c)
    m.train(accelerator=device, progress_bar=False)
    m.get_model_output(a)
    if sabotage == "training_mean":
        isc.evaluation.training_mean_predictions(a, c.dataset.layer_key, c.dataset.split_key)
    return a


scoped = {"neighbourhood": train_scope("neighbourhood")}
scoped["full"] = adata if scope_epochs == epochs else train_scope("full")
layer = cfg.dataset.layer_key
rows_out, metrics = [], {}
for scope in ("full", "neighbourhood"):
    a = scoped[scope]
    per_cell = attention_distances(a)[3]
    r2 = heldout_r2(a, "_y_pred_global", layer, cfg.dataset.split_key)
    r2l = heldout_r2(a, "_y_pred_local", layer, cfg.dataset.split_key)
    rows_out.append(
        {
            "scope": scope,
            "mean_attention_distance": float(np.nanmean(per_cell)),
            "r2_global_test": r2["test"],
            "r2_local_test": r2l["test"],
        }
    )
    metrics[f"mean_attention_distance_{scope}"] = float(np.nanmean(per_cell))
    for split in r2:
        metrics[f"r2_global_{split}_{scope}"] = r2[split]
    if "program" in a.var:
        ranks = calculate_gene_ranks(
            a,
            layers_local_pred="_y_pred_local",
            layers_global_pred="_y_pred_global",
            layer_true=layer,
            cells=["test"],
            split_key=cfg.dataset.split_key,
        )
        program = a.var["program"].astype(str).to_numpy()
        for prog in ("local", "global"):
            for head in ("local", "global"):
                value = float(ranks[f"r2_{head}"][program == prog].mean())
                metrics[f"heldout_r2_{head}_{prog}_genes_{scope}"] = value
                rows_out[-1][f"held-out R^2 {head} head, {prog} genes"] = value
display(pd.DataFrame(rows_out).set_index("scope").T)
isc.evaluation.write_metrics(metrics, out_dir, 3)
pd.Series(metrics, dtype=object).to_frame("value")
