"""``linear_baselines``: ridge floors on k-hop and sample averages, 43,800 x 88 and 1M x 500.

Data are random (the cost does not depend on the values): samples of 4,380 / 50,000 uniform
random points with a radius-200 graph of about 10 neighbours per cell
(:func:`interscale.pp.spatial_neighbors`), a dense float32 layer whose rows repeat a random
block of 4,096 rows (set-up in seconds at 1,000,000 x 500), the last two samples held out
(``val``, ``test``). The call uses the defaults: hops (1, 2) and alpha chosen from the default
grid by whole-sample cross-validation.

At 1,000,000 x 500 the three feature blocks have 1,500 columns: the Gram matrix alone costs
about 2 x 10^12 multiply-adds, minutes on 2 CPU cores, so that size is opt-in:
``INTERSCALE_BENCH_SCALE=1`` (as in ``bench_scale.py``); without it ``setup`` raises
NotImplementedError and asv reports it as skipped. In smoke mode
(``INTERSCALE_BENCH_SMOKE=1``) only a reduced case of 4 samples x 750 cells x 88 genes runs.
"""

from __future__ import annotations

import os

import numpy as np

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


def baseline_data(cells: int, genes: int, n_samples: int, seed: int = 0):
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
    adata.layers["log1p_norm"] = _layer(cells, genes, rng)
    spatial_neighbors(adata, radius=RADIUS, library_key="sample")
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

    def _run(self) -> None:
        self.fn(self.adata, layer_key="log1p_norm", library_key="sample", split_key="split")

    def time_linear_baselines(self, size: str) -> None:
        """Wall time."""
        self._run()

    def peakmem_linear_baselines(self, size: str) -> None:
        """Peak RSS over setup and the call."""
        self._run()


for _name, _value in SLOW_ATTRS.items():
    setattr(LinearBaselines, _name, _value)
del _name, _value
