"""Xenium-scale panels: 5,000 genes, sparse counts, 100,000 and 1,000,000 cells.

Generated data (``benchmarks/_xenium.py``): about 5 % non-zero integer counts, built as CSR
without a dense matrix; 100,000 cells in 4 sections and 1,000,000 cells in 8 sections (the last
two sections ``val`` and ``test``); a radius graph of about 8 neighbours per cell; sections
larger than 10,000 cells split by :func:`interscale.pp.tile` with a one-radius halo.

``XeniumStep`` times each step of an end-to-end run separately (``step`` parameter), with its
peak RSS (``peakmem_``, set-up included):

- ``normalize``: ``pp.normalize`` of the counts in ``X`` (CSR in, CSR out);
- ``spatial_graph``: ``pp.spatial_neighbors`` per section;
- ``tile_and_setup``: ``pp.tile``, ``setup_anndata`` and building the model;
- ``train_epoch``: one training epoch with validation, the published configuration with the
  ``neighbourhood`` attention scope (graphs keep row indices into the layer and densify
  each batch: no dense copy of the whole layer);
- ``outputs``: ``get_model_output`` (masked) with ``predictions="none"`` where that option
  exists (dense float32 predictions otherwise);
- ``gene_r2``: per-gene R^2 of both heads on the held-out sections, streamed by
  ``model.gene_r2`` where it exists (else ``calculate_gene_ranks`` on stored predictions);
- ``gene_loadings``: standardised loadings of both decoders;
- ``genes_per_dim``: ``calculate_dim_importance`` and ``get_genes_dim`` on the top 3 dims.

Each ``setup`` runs the steps before its own (untimed); outputs and gene R^2 run on an
untrained model (the cost does not depend on the weights), and loadings use random
embeddings. The 1,000,000-cell size takes tens of minutes on CPU, and the training epoch,
outputs and gene R^2 take minutes at 100,000 cells on CPU: they are opt-in,
``INTERSCALE_BENCH_SCALE=1`` (as in ``bench_scale.py``); without it ``setup`` raises
NotImplementedError and asv reports them as skipped (the other 100,000-cell steps run by
default, about 3 minutes on 2 cores, set-ups included). Smoke mode (``INTERSCALE_BENCH_SMOKE=1``)
runs every step at 6,000 cells in 3 sections with tiles of 1,500 cells.

``scripts/bench_xenium.py`` runs all steps once in one process and prints the table of seconds
and peak RSS per step (the closing-note figures).
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from ._common import DEVICES, SLOW_ATTRS, SMOKE, require_device, sizes
from ._xenium import MAX_TILE_CELLS, XeniumRun

#: Opt-in switch for the size that takes tens of minutes on CPU.
SCALE: bool = os.environ.get("INTERSCALE_BENCH_SCALE", "").strip().lower() not in (
    "",
    "0",
    "false",
)
#: (cells, sections, largest tile) of every size label; the smoke case stands in for the first.
CASES: dict[str, tuple[int, int, int]] = {
    "100000x5000": (100_000, 4, MAX_TILE_CELLS),
    "1000000x5000": (1_000_000, 8, MAX_TILE_CELLS),
}
SMOKE_CASE = (6_000, 3, 1_500)
#: Sizes that run only with INTERSCALE_BENCH_SCALE=1.
OPT_IN = {"1000000x5000"}
#: Steps that take minutes at 100,000 cells on CPU (epoch ~45 s, outputs ~130 s, gene R^2
#: ~40 s on 2 cores, each run twice: time_ and peakmem_): also opt-in there, so that the quick
#: CPU suite stays under 15 minutes. On CUDA they always run.
OPT_IN_CPU_STEPS = {"train_epoch", "outputs", "gene_r2"}
#: Timed steps (data generation is set-up, never timed).
STEPS = [s for s in XeniumRun.STEPS if s != "generate"]


class XeniumStep:
    """One step of the end-to-end run, the steps before it done in ``setup``."""

    params = (DEVICES, sizes(list(CASES)), STEPS)
    param_names = ["device", "size", "step"]

    def setup(self, device: str, size: str, step: str) -> None:
        """Generate the data and run (or stand in for) the steps before ``step``."""
        if size in OPT_IN and not SCALE and not SMOKE:
            raise NotImplementedError(
                f"the Xenium-like run at {size} takes tens of minutes on CPU; "
                "set INTERSCALE_BENCH_SCALE=1"
            )
        if device == "cpu" and step in OPT_IN_CPU_STEPS and not SCALE and not SMOKE:
            raise NotImplementedError(
                f"{step} at {size} takes minutes on CPU; set INTERSCALE_BENCH_SCALE=1"
            )
        require_device(device)
        cells, sections, max_tile = SMOKE_CASE if SMOKE else CASES[size]
        self.run = XeniumRun(cells, sections, max_tile, device=device)
        self.step = step
        before = XeniumRun.STEPS[: XeniumRun.STEPS.index(step)]
        for name in before:
            if name in ("train_epoch", "outputs", "gene_r2"):
                continue  # the later steps do not need trained weights or stored outputs
            if name == "gene_loadings":
                self._stand_in_outputs()
            self.run.run(name)
        if step == "gene_loadings":
            self._stand_in_outputs()

    def _stand_in_outputs(self) -> None:
        """Random embeddings where the outputs step would write them (same shapes, dtypes)."""
        adata, n_embed = self.run.adata, int(self.run.model.module.n_embed)
        rng = np.random.default_rng(0)
        for head in ("local", "global"):
            adata.obsm[f"_{head}_emb"] = rng.normal(size=(adata.n_obs, n_embed)).astype(np.float32)

    def _run(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.run.run(self.step)
        if self.run.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def time_step(self, device: str, size: str, step: str) -> None:
        """Wall time of the step."""
        self._run()

    def peakmem_step(self, device: str, size: str, step: str) -> None:
        """Peak RSS over the set-up and the step."""
        self._run()


for _name, _value in {**SLOW_ATTRS, "timeout": 3600}.items():  # 1M: set-up + epoch ~ 15 min
    setattr(XeniumStep, _name, _value)
del _name, _value
