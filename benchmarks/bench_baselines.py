"""``linear_baselines``: ridge floors on k-hop and sample averages.

Two benchmark classes; the data are random (the cost does not depend on the values):

- ``LinearBaselines``: 43,800 x 88 and 1,000,000 x 500. Samples of 4,380 / 50,000 uniform
  random points with a radius-200 graph of about 10 neighbours per cell
  (:func:`interscale.pp.spatial_neighbors`), a dense float32 layer whose rows repeat a random
  block of 4,096 rows (set-up in seconds at 1,000,000 x 500), the last two samples held out
  (``val``, ``test``). At 88 genes the floors average the genes themselves; at 500 genes
  (above the 256 of ``n_components="auto"``) they average 256 principal components. The
  1,000,000-cell size takes minutes on 2 CPU cores, so it is opt-in:
  ``INTERSCALE_BENCH_SCALE=1`` (as in ``bench_scale.py``); without it ``setup`` raises
  NotImplementedError and asv reports it as skipped. In smoke mode
  (``INTERSCALE_BENCH_SMOKE=1``) only a reduced case of 4 samples x 750 cells x 88 genes runs.
- ``LinearBaselinesLargePanel``: 100,000 cells x 5,000 genes, the panel size where the
  former solver (a Cholesky factorisation of the 15,000-wide Gram matrix per alpha and fold)
  took hours. 10 samples of 10,000 random points with a 10-nearest-neighbour graph, a sparse
  counts-like CSR layer (``log1p`` of gamma counts in 250 random genes per cell, 5 %
  non-zero), 8 samples ``train``: 256 principal components from the randomized range finder,
  every design at most 768 features, 5 folds x 7 alphas. Also opt-in with
  ``INTERSCALE_BENCH_SCALE=1`` (minutes); in smoke mode 4 samples x 300 cells x 1,100
  genes with 32 components run instead (the same path: randomized components above 1,024
  genes).

Both call ``linear_baselines`` with its defaults: hops (1, 2), alpha chosen from the default
grid by whole-sample cross-validation, ``n_components="auto"``, the ``test`` sample scored.
"""

from __future__ import annotations

import os

import numpy as np
import scipy.sparse as sp

from ._common import SLOW_ATTRS, SMOKE, random_points, sizes

#: Opt-in switch for the size that takes minutes on CPU.
SCALE: bool = os.environ.get("INTERSCALE_BENCH_SCALE", "").strip().lower() not in (
    "",
    "0",
    "false",
)
#: (cells, genes, samples) of every size label; the smoke case stands in for the first.
CASES: dict[str, tuple[int, int, int]] = {
    "43800x88": (43_800, 88, 10),
    "1000000x500": (1_000_000, 500, 20),
}
SMOKE_CASE = (3_000, 88, 4)  # 2 training samples: the least cross-validation needs
#: Sizes that run only with INTERSCALE_BENCH_SCALE=1.
OPT_IN = {"1000000x500"}
RADIUS = 200.0
MEAN_DEGREE = 10.0
#: Rows of random data drawn once; larger layers repeat them.
BLOCK_ROWS = 4096


def _layer(n: int, g: int, rng: np.random.Generator) -> np.ndarray:
    """Random log1p-like float32 values: a random block of rows repeated to ``n`` rows."""
    block = np.log1p(rng.gamma(0.8, 2.0, (min(n, BLOCK_ROWS), g))).astype(np.float32)
    reps = -(-n // len(block))
    out = np.empty((reps, *block.shape), dtype=np.float32)
    out[...] = block  # one broadcast copy
    return out.reshape(reps * len(block), g)[:n]


def _sparse_layer(n: int, g: int, per_cell: int, rng: np.random.Generator) -> sp.csr_matrix:
    """Counts-like CSR layer: ``log1p`` of gamma values in ``per_cell`` random genes per cell."""
    cols = rng.integers(0, g, (n, per_cell))
    cols.sort(axis=1)
    values = np.log1p(rng.gamma(0.8, 3.0, (n, per_cell)) + 1.0).astype(np.float32)
    indptr = np.arange(0, n * per_cell + 1, per_cell)
    layer = sp.csr_matrix((values.ravel(), cols.ravel(), indptr), shape=(n, g))
    layer.sum_duplicates()  # a gene drawn twice in a cell: one entry
    return layer


def baseline_data(
    cells: int,
    genes: int,
    n_samples: int,
    seed: int = 0,
    *,
    n_neighs: int | None = None,
    per_cell: int | None = None,
):
    """Samples of random points with a radius graph, a dense layer and a whole-sample split.

    Parameters
    ----------
    cells
        Total number of cells (split evenly over the samples).
    genes
        Number of genes.
    n_samples
        Number of samples; the last two are ``val`` and ``test``, the others ``train``.
    seed
        Seed of the numpy Generator.
    n_neighs
        Build a kNN graph with this many neighbours instead of the radius graph.
    per_cell
        Make the layer sparse (CSR) with this many non-zero genes per cell instead of dense.

    Returns
    -------
    anndata.AnnData
        With ``layers["log1p_norm"]``, ``obs["sample"]``, ``obs["split"]`` and
        ``obsp["spatial_connectivities"]``.
    """
    import anndata as ad
    import pandas as pd

    from interscale.pp import spatial_neighbors

    rng = np.random.default_rng(seed)
    per = np.full(n_samples, cells // n_samples)
    per[: cells - per.sum()] += 1
    labels = [f"s{i:02d}" for i in range(n_samples)]
    splits = ["train"] * (n_samples - 2) + ["val", "test"]
    obs = pd.DataFrame(
        {
            "sample": pd.Categorical(np.repeat(labels, per)),
            "split": pd.Categorical(np.repeat(splits, per)),
        },
        index=pd.RangeIndex(cells).astype(str),
    )
    var = pd.DataFrame(index=[f"G{i:04d}" for i in range(genes)])
    adata = ad.AnnData(obs=obs, var=var)
    adata.obsm["spatial"] = np.concatenate(
        [random_points(int(m), MEAN_DEGREE, RADIUS, seed=seed + s) for s, m in enumerate(per)]
    )
    if per_cell is None:
        adata.layers["log1p_norm"] = _layer(cells, genes, rng)
    else:
        adata.layers["log1p_norm"] = _sparse_layer(cells, genes, per_cell, rng)
    if n_neighs is None:
        spatial_neighbors(adata, radius=RADIUS, library_key="sample")
    else:
        spatial_neighbors(adata, n_neighs=n_neighs, library_key="sample")
    return adata


class LinearBaselines:
    """``linear_baselines`` with its defaults (hops 1 and 2, cross-validated alpha)."""

    params = (sizes(list(CASES)),)
    param_names = ["size"]

    def setup(self, size: str) -> None:
        """Random layer, radius graph and split (skipped: the opt-in size without the switch)."""
        if size in OPT_IN and not SCALE and not SMOKE:
            raise NotImplementedError(
                f"linear_baselines at {size} takes minutes on CPU; set INTERSCALE_BENCH_SCALE=1"
            )
        cells, genes, n_samples = SMOKE_CASE if SMOKE else CASES[size]
        self.adata = baseline_data(cells, genes, n_samples)
        from interscale.evaluation import linear_baselines

        self.fn = linear_baselines

    #: Extra arguments of the call (none: the defaults are what is measured).
    kwargs: dict = {}

    def _run(self) -> None:
        self.fn(
            self.adata,
            layer_key="log1p_norm",
            library_key="sample",
            split_key="split",
            **self.kwargs,
        )

    def time_linear_baselines(self, size: str) -> None:
        """Wall time."""
        self._run()

    def peakmem_linear_baselines(self, size: str) -> None:
        """Peak RSS over setup and the call."""
        self._run()


#: (cells, genes, samples) of the large panel, its smoke stand-in, and its layer and graph.
LARGE_PANEL = {"100000x5000": (100_000, 5_000, 10)}
LARGE_PANEL_SMOKE = (1_200, 1_100, 4)
LARGE_PANEL_SMOKE_COMPONENTS = 32
LARGE_PANEL_PER_CELL = 250
LARGE_PANEL_NEIGHS = 10


class LinearBaselinesLargePanel(LinearBaselines):
    """``linear_baselines`` with its defaults on a 5,000-gene sparse panel (components)."""

    params = (list(LARGE_PANEL),)

    def setup(self, size: str) -> None:
        """Sparse counts-like layer and kNN graph (skipped without INTERSCALE_BENCH_SCALE)."""
        if not SCALE and not SMOKE:
            raise NotImplementedError(
                f"linear_baselines at {size} takes minutes on CPU; set INTERSCALE_BENCH_SCALE=1"
            )
        cells, genes, n_samples = LARGE_PANEL_SMOKE if SMOKE else LARGE_PANEL[size]
        self.adata = baseline_data(
            cells,
            genes,
            n_samples,
            n_neighs=LARGE_PANEL_NEIGHS,
            per_cell=min(LARGE_PANEL_PER_CELL, genes // 20),
        )
        # smoke: the same randomized-components path with fewer components, to stay quick
        self.kwargs = {"n_components": LARGE_PANEL_SMOKE_COMPONENTS} if SMOKE else {}
        from interscale.evaluation import linear_baselines

        self.fn = linear_baselines


for _cls in (LinearBaselines, LinearBaselinesLargePanel):
    for _name, _value in SLOW_ATTRS.items():
        setattr(_cls, _name, _value)
# The randomized components and 6e11 multiply-adds of cross products: minutes on 2 busy cores.
LinearBaselinesLargePanel.timeout = 1800
del _cls, _name, _value
