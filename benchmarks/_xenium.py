"""A generated Xenium-like dataset and the steps of an end-to-end run on it.

Xenium 5k and CosMx 6k panels measure about 5,000 genes in 100,000 to 1,000,000 cells, with
most counts zero. :func:`xenium_like` builds such an AnnData directly as CSR: for each block of
cells it draws the number of detected genes per cell, the genes (with gene-specific detection
rates) and their counts, removes the few duplicate (cell, gene) draws, and appends the block;
no dense cells x genes matrix is ever made. Cells are uniform random points, one square per
section, sized so that a radius graph has about ``MEAN_DEGREE`` neighbours per cell. A smooth
spatial program (a few genes whose counts rise along one axis of each section) gives the model
something to learn; the cost does not depend on it.

:class:`XeniumRun` runs the steps of the issue's closing-note table in order (normalise,
spatial graph, tiling, one training epoch with the ``neighbourhood`` attention scope, outputs,
gene R^2, gene loadings, genes per dimension); ``benchmarks/bench_xenium.py`` times them with
asv and ``scripts/bench_xenium.py`` runs them once in one process with a table of seconds and
peak RSS per step.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import numpy as np

from ._common import published_config, random_points

#: Genes of the panel.
N_GENES = 5_000
#: Fraction of non-zero entries.
DENSITY = 0.05
#: Radius of the spatial graph (micrometres) and the neighbours it gives per cell.
RADIUS = 25.0
MEAN_DEGREE = 8.0
#: Largest tile (``pp.tile``): a batch of 3 tiles is then about 30,000 dense cells x 5,000 genes.
MAX_TILE_CELLS = 10_000
#: Context ring of each tile (one graph radius).
HALO = RADIUS
#: Genes drawn per cell over the target: about 6 % of the draws repeat a gene of the cell.
DRAW_FACTOR = 1.065
#: Cells generated per block (bounds the generator's temporaries to a few hundred MB).
BLOCK_CELLS = 50_000


def _split_labels(n_sections: int) -> list[str]:
    """``train`` for all sections but the last two, which are ``val`` and ``test``."""
    if n_sections < 3:
        raise ValueError(f"need at least 3 sections (train, val, test), got {n_sections}")
    return ["train"] * (n_sections - 2) + ["val", "test"]


def _block_counts(
    rng: np.random.Generator,
    n_cells: int,
    n_genes: int,
    density: float,
    gene_p: np.ndarray,
    program: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR ``(indptr, indices, data)`` of one block of cells (sorted, no duplicate genes)."""
    # Draws that hit a gene twice in a cell are merged: draw a little more than ``density``.
    per_cell = rng.binomial(n_genes, min(1.0, density * DRAW_FACTOR), n_cells)
    cell = np.repeat(np.arange(n_cells, dtype=np.int64), per_cell)
    key = cell * n_genes + rng.choice(n_genes, size=cell.size, p=gene_p)
    del cell
    key.sort()  # by (cell, gene); np.unique's hash path is ~40x slower at this size
    first = np.empty(key.size, dtype=bool)
    first[:1] = True
    np.not_equal(key[1:], key[:-1], out=first[1:])
    cell, gene = np.divmod(key[first], n_genes)
    del key, first
    # counts: 1 + geometric tail, larger for the programme genes where the programme is high
    mean_extra = np.full(cell.size, 0.6)
    if program is not None:
        prog_genes = gene < 50
        mean_extra[prog_genes] += 3.0 * program[cell[prog_genes]]
    data = (1 + rng.poisson(mean_extra)).astype(np.float32)
    indptr = np.zeros(n_cells + 1, dtype=np.int64)
    np.cumsum(np.bincount(cell, minlength=n_cells), out=indptr[1:])
    return indptr, gene.astype(np.int32), data


def xenium_like(
    n_cells: int,
    n_sections: int,
    n_genes: int = N_GENES,
    density: float = DENSITY,
    seed: int = 0,
):
    """Raw counts of ``n_cells`` cells x ``n_genes`` genes in ``n_sections`` sections, as CSR.

    Parameters
    ----------
    n_cells
        Total number of cells, split evenly over the sections.
    n_sections
        Number of sections (at least 3): ``obs["library_id"]``; the last two are ``val`` and
        ``test`` in ``obs["split"]``, the others ``train``.
    n_genes
        Panel size.
    density
        Expected fraction of non-zero counts (a little lower after duplicate draws are merged).
    seed
        Seed of the numpy Generator.

    Returns
    -------
    anndata.AnnData
        ``X``: float32 CSR integer counts; ``obs``: ``library_id``, ``split``;
        ``obsm["spatial"]``: coordinates in micrometres.
    """
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    per = np.full(n_sections, n_cells // n_sections)
    per[: n_cells - per.sum()] += 1
    coords = np.concatenate(
        [random_points(int(m), MEAN_DEGREE, RADIUS, seed=seed + 1 + s) for s, m in enumerate(per)]
    )
    # each section's own x axis, scaled to [0, 1]: the spatial programme
    starts = np.concatenate([[0], np.cumsum(per)])
    program = np.empty(n_cells)
    for s in range(n_sections):  # a loop over sections, not cells
        x = coords[starts[s] : starts[s + 1], 0]
        program[starts[s] : starts[s + 1]] = (x - x.min()) / max(np.ptp(x), 1e-9)
    gene_p = rng.lognormal(0.0, 1.0, n_genes)
    gene_p /= gene_p.sum()

    indptrs, indices, data = [np.zeros(1, dtype=np.int64)], [], []
    offset = 0
    for lo in range(0, n_cells, BLOCK_CELLS):  # blocks of cells, not cells
        hi = min(lo + BLOCK_CELLS, n_cells)
        ptr, idx, val = _block_counts(rng, hi - lo, n_genes, density, gene_p, program[lo:hi])
        indptrs.append(ptr[1:] + offset)
        offset += int(ptr[-1])
        indices.append(idx)
        data.append(val)
    indptr = np.concatenate(indptrs)
    index_dtype = np.int32 if offset < np.iinfo(np.int32).max else np.int64
    x = sp.csr_matrix(
        (np.concatenate(data), np.concatenate(indices).astype(index_dtype, copy=False),
         indptr.astype(index_dtype)),
        shape=(n_cells, n_genes),
    )  # fmt: skip
    del indptrs, indices, data
    labels = [f"section{s}" for s in range(n_sections)]
    obs = pd.DataFrame(
        {
            "library_id": pd.Categorical(np.repeat(labels, per)),
            "split": pd.Categorical(np.repeat(_split_labels(n_sections), per)),
        },
        index=pd.RangeIndex(n_cells).astype(str),
    )
    var = pd.DataFrame(index=[f"G{g:04d}" for g in range(n_genes)])
    adata = ad.AnnData(X=x, obs=obs, var=var)
    adata.obsm["spatial"] = coords
    return adata


def bench_config(device: str = "cpu", **overrides: Any):
    """The published configuration with the ``neighbourhood`` attention scope.

    Parameters
    ----------
    device
        ``optim.accelerator``.
    **overrides
        Further dotted config keys.

    Returns
    -------
    interscale.config.Config
    """
    return published_config(
        device,
        **{
            "model.global_component.parameters.attention": "neighbourhood",
            **overrides,
        },
    )


def _takes(fn: Any, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class XeniumRun:
    """The steps of an end-to-end run on :func:`xenium_like` data, callable one by one.

    Parameters
    ----------
    n_cells, n_sections
        Size of the generated data.
    max_tile_cells
        Sections with more cells are split by :func:`interscale.pp.tile` (with a halo of
        ``HALO``).
    device
        Where to train and infer.
    seed
        Data seed.
    """

    #: Step names, in the order they must run.
    STEPS = (
        "generate",
        "normalize",
        "spatial_graph",
        "tile_and_setup",
        "train_epoch",
        "outputs",
        "gene_r2",
        "gene_loadings",
        "genes_per_dim",
    )

    def __init__(
        self,
        n_cells: int,
        n_sections: int,
        max_tile_cells: int = MAX_TILE_CELLS,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        self.n_cells = n_cells
        self.n_sections = n_sections
        self.max_tile_cells = max_tile_cells
        self.device = device
        self.seed = seed
        self.adata = None
        self.model = None
        self.notes: dict[str, str] = {}

    def run(self, step: str) -> None:
        """Run one step (the steps before it must have run)."""
        getattr(self, f"step_{step}")()

    def step_generate(self) -> None:
        self.adata = xenium_like(self.n_cells, self.n_sections, seed=self.seed)
        self.notes["generate"] = (
            f"nnz {self.adata.X.nnz:,} ({self.adata.X.nnz / self.n_cells / N_GENES:.1%})"
        )

    def step_normalize(self) -> None:
        import interscale as isc

        isc.pp.normalize(self.adata, key_added="log1p_norm")

    def step_spatial_graph(self) -> None:
        import interscale as isc

        isc.pp.spatial_neighbors(self.adata, radius=RADIUS, library_key="library_id")
        graph = self.adata.obsp["spatial_connectivities"]
        self.notes["spatial_graph"] = f"{graph.nnz / self.n_cells:.1f} neighbours per cell"

    def step_tile_and_setup(self) -> None:
        import interscale as isc
        from interscale.model import CombinedModel

        adata = self.adata
        sample_key, halo_key = "library_id", None
        largest = int(adata.obs["library_id"].value_counts().max())
        if largest > self.max_tile_cells:
            isc.pp.tile(
                adata,
                max_cells=self.max_tile_cells,
                library_key="library_id",
                key_added="tile",
                halo=HALO,
            )
            sample_key, halo_key = "tile", "tile_halo"
            self.notes["tile_and_setup"] = (
                f"{adata.obs['tile'].nunique()} tiles of <= {self.max_tile_cells:,} cells, "
                f"halo {HALO:g} um"
            )
        # the published name, which every commit asv measures has (setup_anndata is newer)
        CombinedModel._setup_anndata(
            adata,
            layer_key="log1p_norm",
            sample_key_list=[sample_key],
            split_key="split",
            halo_key=halo_key,
            view_registry=False,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model = CombinedModel(adata, bench_config(self.device))

    def step_train_epoch(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            history = self.model.train(max_epochs=1, progress_bar=False, early_stopping=False)
        row = history.iloc[-1]
        self.notes["train_epoch"] = (
            f"train loss {row['train_loss']:.4f}, val loss {row.get('val_loss', float('nan')):.4f}"
        )

    def _predictions_mode(self) -> str | None:
        return "none" if _takes(self.model.get_model_output, "predictions") else None

    def step_outputs(self) -> None:
        mode = self._predictions_mode()
        kwargs = {} if mode is None else {"predictions": mode}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model.get_model_output(self.adata, masked=True, **kwargs)
        self.notes["outputs"] = f"predictions={mode or 'dense (no predictions= option)'}"

    def step_gene_r2(self) -> None:
        cells = ["test"]  # held out: the val section picks the best epoch
        if hasattr(self.model, "gene_r2"):
            table = self.model.gene_r2(self.adata, cells=cells)
            how = "model.gene_r2 (streaming)"
        else:
            from interscale.evaluation import calculate_gene_ranks

            table = calculate_gene_ranks(
                self.adata,
                layers_local_pred="_y_pred_local",
                layers_global_pred="_y_pred_global",
                layer_true="log1p_norm",
                cells=cells,
            )
            how = "calculate_gene_ranks on stored predictions"
        cols = [c for c in table.columns if str(c).startswith("r2_")]
        means = ", ".join(f"{c} {np.nanmean(table[c]):.3f}" for c in cols)
        self.notes["gene_r2"] = f"{how}: {means}"

    def step_gene_loadings(self) -> None:
        from interscale.evaluation import gene_loadings

        gene_loadings(self.adata, self.model, layer_key="log1p_norm")

    def step_genes_per_dim(self) -> None:
        from interscale.evaluation import calculate_dim_importance, get_genes_dim

        imp = calculate_dim_importance(self.adata)
        dims = [int(d) for d in imp["dim_sorted"][:3]]
        table = get_genes_dim(self.adata, dims, X_layer="log1p_norm", n_top=20)
        self.notes["genes_per_dim"] = f"dims {dims}: {len(table)} genes"
