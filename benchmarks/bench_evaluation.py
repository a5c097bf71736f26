"""Gene-level evaluation at atlas scale: ranks, loadings, dimension importance, top genes.

Data are random (the cost does not depend on the values): a truth layer (dense float32 or CSR
with 20 % non-zeros), dense float32 predictions of both heads (as the model writes them) and
16-dimensional embeddings. Layers repeat a random block of 4,096 rows, so that set-up takes
seconds, not minutes, at 1,000,000 x 500. Sizes: 50,000 and 1,000,000 cells x 88 and 500 genes.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ._common import SLOW_ATTRS, sizes

N_EMBED = 16
CELLS = sizes([50_000, 1_000_000])
GENES = sizes([88, 500])
LAYOUTS = ["dense", "sparse"]


#: Rows of random data drawn once; larger matrices repeat them (cheap set-up at 1M x 500).
BLOCK_ROWS = 4096


def _tile_rows(block: np.ndarray, n: int) -> np.ndarray:
    """The rows of ``block`` repeated to ``n`` rows (C-contiguous)."""
    reps = -(-n // len(block))
    out = np.empty((reps, *block.shape), dtype=block.dtype)
    out[...] = block  # one broadcast copy; np.tile is several times slower at this size
    return out.reshape(reps * len(block), *block.shape[1:])[:n]


def _random_dense(n: int, g: int, rng: np.random.Generator) -> np.ndarray:
    """Random float32 values in [0, 1): a random block of rows repeated to ``n`` rows.

    Drawing 10^9 random numbers would dominate the benchmark's set-up; the evaluation's cost
    does not depend on the values, so repeated rows measure the same work.
    """
    return _tile_rows(rng.random((min(n, BLOCK_ROWS), g), dtype=np.float32), n)


def _truth(n: int, g: int, layout: str, rng: np.random.Generator):
    """Random expression in [0, 1), dense or CSR with ``g // 5`` non-zeros per row."""
    if layout == "dense":
        return _random_dense(n, g, rng)
    k = max(1, g // 5)
    m = min(n, BLOCK_ROWS)
    # k distinct columns per row: a random start plus a fixed stride, sorted within the row
    cols = (rng.integers(0, g, m)[:, None] + np.arange(k) * (g // k)) % g
    cols.sort(axis=1)
    data = rng.random((m, k), dtype=np.float32) + 0.1
    indices = _tile_rows(cols.astype(np.int32), n).ravel()
    indptr = np.arange(0, n * k + 1, k, dtype=np.int64)
    return sp.csr_matrix((_tile_rows(data, n).ravel(), indices, indptr), shape=(n, g))


def _adata(n: int, g: int, layout: str | None, predictions: bool, seed: int = 0):
    """AnnData with embeddings and, as asked, a truth layer and prediction layers."""
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(seed)
    obs = pd.DataFrame(index=pd.RangeIndex(n).astype(str))
    var = pd.DataFrame(index=[f"G{i:04d}" for i in range(g)])
    adata = ad.AnnData(obs=obs, var=var)
    adata.obsm["_local_emb"] = rng.random((n, N_EMBED), dtype=np.float32)
    adata.obsm["_global_emb"] = rng.random((n, N_EMBED), dtype=np.float32)
    if layout is not None:
        adata.layers["truth"] = _truth(n, g, layout, rng)
    if predictions:
        for key in ("_y_pred_local", "_y_pred_global"):
            adata.layers[key] = _random_dense(n, g, rng)
    adata.uns["interscale"] = {"layer_key": "truth"}
    return adata


def _decoders(g: int, seed: int = 0):
    """A module with two linear decoders (16 -> g), as :func:`gene_loadings` expects."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    module = torch.nn.Module()
    for name in ("local_decoder", "global_decoder"):
        lin = torch.nn.Linear(N_EMBED, g)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(g, N_EMBED, generator=gen))
        setattr(module, name, lin)
    return module


class GeneRanks:
    """``calculate_gene_ranks``: per-gene R^2 of both heads, then ranks."""

    params = (CELLS, GENES, LAYOUTS)
    param_names = ["cells", "genes", "layout"]

    def setup(self, cells: int, genes: int, layout: str) -> None:
        """Random truth and prediction layers."""
        from interscale.evaluation import calculate_gene_ranks

        self.fn = calculate_gene_ranks
        self.adata = _adata(cells, genes, layout, predictions=True)

    def _run(self) -> None:
        self.fn(
            self.adata,
            layers_local_pred="_y_pred_local",
            layers_global_pred="_y_pred_global",
            layer_true="truth",
        )

    def time_calculate_gene_ranks(self, cells: int, genes: int, layout: str) -> None:
        """Wall time."""
        self._run()

    def peakmem_calculate_gene_ranks(self, cells: int, genes: int, layout: str) -> None:
        """Peak RSS over setup and the call."""
        self._run()


class GeneLoadings:
    """``gene_loadings``: standardised loadings of both decoders."""

    params = (CELLS, GENES, LAYOUTS)
    param_names = ["cells", "genes", "layout"]

    def setup(self, cells: int, genes: int, layout: str) -> None:
        """Random truth layer, embeddings and decoders."""
        self.adata = _adata(cells, genes, layout, predictions=False)
        self.module = _decoders(genes)
        from interscale.evaluation import gene_loadings

        self.fn = gene_loadings

    def _run(self) -> None:
        self.fn(self.adata, self.module, layer_key="truth")

    def time_gene_loadings(self, cells: int, genes: int, layout: str) -> None:
        """Wall time."""
        self._run()

    def peakmem_gene_loadings(self, cells: int, genes: int, layout: str) -> None:
        """Peak RSS over setup and the call."""
        self._run()


class DimImportance:
    """``calculate_dim_importance`` (full mode): needs loadings and the embedding only."""

    params = (CELLS, GENES)
    param_names = ["cells", "genes"]

    def setup(self, cells: int, genes: int) -> None:
        """Embeddings and random loadings in varm."""
        self.adata = _adata(cells, genes, None, predictions=False)
        rng = np.random.default_rng(1)
        self.adata.varm["_global_std_gene_loadings"] = rng.standard_normal((genes, N_EMBED))

        from interscale.evaluation import calculate_dim_importance

        self.fn = calculate_dim_importance

    def _run(self) -> None:
        self.fn(self.adata)

    def time_calculate_dim_importance(self, cells: int, genes: int) -> None:
        """Wall time."""
        self._run()

    def peakmem_calculate_dim_importance(self, cells: int, genes: int) -> None:
        """Peak RSS over setup and the call."""
        self._run()


class GenesDim:
    """``get_genes_dim``: top 20 genes of three dims with the expression filters on a layer."""

    params = (CELLS, GENES, LAYOUTS)
    param_names = ["cells", "genes", "layout"]

    def setup(self, cells: int, genes: int, layout: str) -> None:
        """Random truth layer, embeddings and loadings."""
        self.adata = _adata(cells, genes, layout, predictions=False)
        rng = np.random.default_rng(1)
        self.adata.varm["_global_std_gene_loadings"] = rng.standard_normal((genes, N_EMBED))

        from interscale.evaluation import get_genes_dim

        self.fn = get_genes_dim

    def _run(self) -> None:
        self.fn(self.adata, [0, 1, 2], which="global", n_top=20, X_layer="truth")

    def time_get_genes_dim(self, cells: int, genes: int, layout: str) -> None:
        """Wall time."""
        self._run()

    def peakmem_get_genes_dim(self, cells: int, genes: int, layout: str) -> None:
        """Peak RSS over setup and the call."""
        self._run()


for _cls in (GeneRanks, GeneLoadings, DimImportance, GenesDim):
    for _name, _value in SLOW_ATTRS.items():
        setattr(_cls, _name, _value)
del _cls, _name, _value
