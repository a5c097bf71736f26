"""Per-gene R^2 without stored predictions: ``model.gene_r2`` against ``get_model_output`` +
``calculate_gene_ranks`` on 20,000 cells x 500 genes (8 organoids of 2,500 cells)."""

from __future__ import annotations

import warnings

from ._common import DEVICES, SLOW_ATTRS, SMOKE, published_config, require_device, sync

#: Organoids, cells per organoid and genes of the benchmark data (smoke: a reduced stand-in).
SHAPE: tuple[int, int, int] = (4, 500, 100) if SMOKE else (8, 2500, 500)
#: The cells scored: the held-out (test) organoids, as a gene-level claim is read.
CELLS: list[str] = ["test"]


def streaming_data():
    """Synthetic organoids of :data:`SHAPE`, normalised, with the radius-200 spatial graph.

    Returns
    -------
    anndata.AnnData
        With ``layers["log1p_norm"]``, ``obsp["spatial_connectivities"]`` and a whole-sample
        ``split`` column.
    """
    import interscale as isc

    n_samples, cells, n_genes = SHAPE
    adata = isc.datasets.synthetic_organoids(
        n_samples=n_samples, cells_per_sample=cells, n_genes=n_genes, seed=0
    )
    isc.pp.normalize(adata, key_added="log1p_norm")
    isc.pp.spatial_neighbors(adata, radius=200, library_key="sample")
    return adata


class GeneR2:
    """Held-out per-gene R^2 of both heads, two ways.

    ``streaming``: ``model.gene_r2(adata, cells=["test"])`` sums the R^2 statistics
    during inference and stores no prediction (only the held-out test organoids are run).
    ``stored``: ``get_model_output(adata)`` writes the two float32 prediction layers of all
    cells, then ``calculate_gene_ranks(..., cells=["test"])`` reads them back. Both give
    the same R^2 (to 1e-6, ``tests/test_streaming.py``). The model is untrained (weights from
    the config seed): the cost does not depend on the weights.
    """

    params = (DEVICES, ["streaming", "stored"])
    param_names = ["device", "path"]

    def setup(self, device: str, path: str) -> None:
        """Generate and register the data; build the model with the published config."""
        require_device(device)
        from ._common import setup_model

        self.adata = streaming_data()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model = setup_model(self.adata, published_config(device))
        self.model.module.to(device)
        import tqdm.auto  # noqa: F401  (imported lazily by the inference; keep it untimed)

        self.device = device

    def _run(self, path: str):
        from interscale.evaluation import calculate_gene_ranks

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if path == "streaming":
                table = self.model.gene_r2(self.adata, cells=CELLS)
            else:
                self.model.get_model_output(self.adata, predictions="dense")
                table = calculate_gene_ranks(
                    self.adata,
                    layers_local_pred="_y_pred_local",
                    layers_global_pred="_y_pred_global",
                    cells=CELLS,
                )
        sync(self.device)
        return table

    def time_gene_r2(self, device: str, path: str) -> None:
        """Wall time of the held-out per-gene R^2."""
        self._run(path)

    def peakmem_gene_r2(self, device: str, path: str) -> None:
        """Peak RSS over setup and one run."""
        self._run(path)


for _name, _value in SLOW_ATTRS.items():
    setattr(GeneR2, _name, _value)
del _name, _value
