# %% [markdown]
# # 1 · Model training
#
# Trains the combined local (GNN) + global (Transformer) model with masked self-supervision, saves
# the checkpoint and writes held-out predictions and embeddings into `<data_dir>/trained.h5ad`.

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
from interscale.evaluation import heldout_r2

# an empty config_path: the package's tutorial configuration with its linear part off, the same
# settings as config_files/synthetic_example.yaml of the repository
base = (
    load_config(config_path)
    if config_path
    else with_overrides(tutorial_config(), {"model.linear_part": False})
)
cfg = with_overrides(base, {**config_overrides, "optim.n_epochs": epochs})
isc.tl.set_full_reproducibility(cfg.optim.seed)
adata = ad.read_h5ad(data_dir / "preprocessed.h5ad")
isc.model.CombinedModel.setup_anndata(
    adata,
    prediction_task="regression",
    layer_key=cfg.dataset.layer_key,
    sample_key_list=list(cfg.dataset.sample_key),
    split_key=cfg.dataset.split_key,
)
model = isc.model.CombinedModel(adata, cfg)
print(model.summary())
n_params = int(sum(p.numel() for p in model.module.parameters()))

# %% [markdown]
# ## Training
#
# The best-validation weights are kept at the end.

# %%
history = model.train(accelerator=device, progress_bar=False)
loss_cols = [c for c in history.columns if c.endswith("loss")]
ax = history.plot(x="epoch", y=loss_cols, figsize=(6, 3.5), marker=".")
ax.set_ylabel("loss")
ax.axvline(model.best_epoch_, color="grey", ls="--")
plt.show()
history.tail()

# %%
ckpt = model.save(data_dir / "model", overwrite=True)
model.get_model_output(adata)
if sabotage == "training_mean":
    isc.evaluation.training_mean_predictions(adata, cfg.dataset.layer_key, cfg.dataset.split_key)
adata.write_h5ad(data_dir / "trained.h5ad")
print(ckpt)

# %% [markdown]
# ## R² per split
#
# Each cell is predicted while it is masked, so R² measures what the context explains. The `train`
# organoids fitted the model and the `val` organoids chose the best epoch and stopped training, so
# only the `test` organoids are held out: neither training nor early stopping saw them, and every
# held-out number of these notebooks is read on them.

# %%
layer = cfg.dataset.layer_key
r2_local = heldout_r2(adata, "_y_pred_local", layer, cfg.dataset.split_key)
r2_global = heldout_r2(adata, "_y_pred_global", layer, cfg.dataset.split_key)
display(pd.DataFrame({"local": r2_local, "global": r2_global}))
metrics = {
    "epochs_run": int(len(history)),
    "best_epoch": int(model.best_epoch_),
    "seconds_per_epoch": float(history["seconds"].mean()),
    "n_params": n_params,
}
for split in r2_local:
    metrics[f"r2_local_{split}"] = r2_local[split]
    metrics[f"r2_global_{split}"] = r2_global[split]
isc.evaluation.write_metrics(metrics, out_dir, 1)
pd.Series(metrics, dtype=object).to_frame("value")
