"""``spatial_neighbors`` (radius 200, about 10 neighbours per cell) at 100,000 and 1M cells."""

from __future__ import annotations

import numpy as np

from ._common import SLOW_ATTRS, random_points, sizes

CELLS_PER_SAMPLE = 50_000


class SpatialNeighbors:
    """Radius graph within each sample of 50,000 cells (2 and 20 samples)."""

    params = (sizes([100_000, 1_000_000]),)
    param_names = ["cells"]

    def setup(self, cells: int) -> None:
        """Uniform random coordinates, one sample column."""
        import anndata as ad
        import pandas as pd

        n_samples = cells // CELLS_PER_SAMPLE
        per = [random_points(CELLS_PER_SAMPLE, 10.0, 200.0, seed=s) for s in range(n_samples)]
        obs = pd.DataFrame(
            {"sample": pd.Categorical(np.repeat(np.arange(n_samples), CELLS_PER_SAMPLE))},
            index=pd.RangeIndex(cells).astype(str),
        )
        self.adata = ad.AnnData(obs=obs)
        self.adata.obsm["spatial"] = np.concatenate(per)
        from interscale.pp import spatial_neighbors

        self.fn = spatial_neighbors

    def _run(self) -> None:
        self.fn(self.adata, radius=200, library_key="sample")

    def time_spatial_neighbors(self, cells: int) -> None:
        """Wall time."""
        self._run()

    def peakmem_spatial_neighbors(self, cells: int) -> None:
        """Peak RSS over setup and the call."""
        self._run()


for _name, _value in SLOW_ATTRS.items():
    setattr(SpatialNeighbors, _name, _value)
del _name, _value
