"""A small AnnData shaped the way scanpy and squidpy leave a user's own data."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from interscale.datasets._synthetic import synthetic_organoids


def user_shaped_organoids(
    n_samples: int = 4,
    cells_per_sample: int | tuple[int, int] = 700,
    n_genes: int = 120,
    seed: int = 0,
) -> ad.AnnData:
    """Synthetic sections laid out as a user's file is: the shape of "bring your own data".

    The cells of :func:`synthetic_organoids`, stripped of everything InterScale's own pipeline
    adds: raw integer counts in ``X`` (sparse CSR, float32), coordinates in
    ``obsm["spatial"]``, the section of each cell in ``obs["library_id"]``, and nothing else:
    no ``split`` column, no count layers, no planted-program annotations. It exercises the
    path ``pp.normalize(adata)`` -> ``pp.split_samples`` -> train -> evaluate without a YAML
    file, as the README's "Your own data" section shows.

    Parameters
    ----------
    n_samples
        Sections (libraries).
    cells_per_sample
        Cells per section, or a (min, max) range.
    n_genes
        Genes of the panel.
    seed
        Seed of the simulation.

    Returns
    -------
    AnnData with ``X``, ``obs["library_id"]`` (categorical) and ``obsm["spatial"]``.
    """
    source = synthetic_organoids(
        n_samples=n_samples, cells_per_sample=cells_per_sample, n_genes=n_genes, seed=seed
    )
    library = pd.Categorical(
        [f"section_{s}" for s in source.obs["sample"].cat.codes], ordered=False
    )
    obs = pd.DataFrame({"library_id": library}, index=source.obs_names.copy())
    adata = ad.AnnData(X=source.X.copy(), obs=obs, var=pd.DataFrame(index=source.var_names.copy()))
    adata.obsm["spatial"] = np.asarray(source.obsm["spatial"], dtype=np.float64).copy()
    return adata
