"""CombinedModel, LocalModel and GlobalModel."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from interscale._anndata import layer_matrix
from interscale.model._base import BaseModel

__all__ = ["CombinedModel", "LocalModel", "GlobalModel"]


class CombinedModel(BaseModel):
    """Local GNN followed by a global Transformer, each with its own decoder.

    The local component (GCN or GIN over the spatial graph) embeds each cell from its
    neighbourhood; the global component (a Transformer over all cells of the sample plus a CLS
    token) refines these embeddings with tissue-wide context. Both embeddings are decoded back to
    the training layer, and training hides a random fraction of the cells (masked
    self-supervision) so that each head learns what the context predicts.

    Parameters
    ----------
    adata
        AnnData prepared with :meth:`CombinedModel.setup_anndata`. Its
        ``obsp["spatial_connectivities"]`` is the graph; without one, the graph of the config's
        ``dataset.spatial_neighbors_kwargs`` is built in memory and never written into ``adata``.
    cfg
        Config from :func:`interscale.config.load_config` (default: all defaults).

    Examples
    --------
    >>> CombinedModel.setup_anndata(adata, layer_key="log1p_norm", sample_key_list=["sample"])
    >>> model = CombinedModel(adata, cfg)
    >>> model.train(max_epochs=50)
    >>> model.get_model_output(adata)
    """

    _local = True
    _global = True


class LocalModel(BaseModel):
    """Only the local GNN component and its decoder (see :class:`CombinedModel`)."""

    _local = True
    _global = False


class GlobalModel(BaseModel):
    """Only the global Transformer component, reading a fixed per-cell input embedding.

    The input embedding is ``obsm[cfg.model.global_component.latent_obsm_key]`` when that key is
    set, otherwise a PCA of the training layer with ``n_embed`` components, fitted once on the
    training cells and stored with the model so that outputs are reproducible.
    """

    _local = False
    _global = True

    def _prepare_global_input(self, adata: AnnData) -> int:
        stored = self._global_input
        if stored is not None:
            self._global_input = stored
            if stored["kind"] == "obsm":
                return int(stored["dim"])
            return int(len(stored["components"]))
        key = getattr(self.cfg.model.global_component, "latent_obsm_key", None)
        if key:
            if key not in adata.obsm:
                raise KeyError(
                    f"latent_obsm_key {key!r} is not in adata.obsm; available: {list(adata.obsm)}"
                )
            emb = np.asarray(adata.obsm[key])
            if emb.ndim != 2 or not np.isfinite(emb).all():
                raise ValueError(f"adata.obsm[{key!r}] must be a finite 2-D array")
            self._global_input = {"kind": "obsm", "key": key, "dim": int(emb.shape[1])}
            return int(emb.shape[1])
        n_comp = int(self.cfg.model.n_embed)
        split = adata.obs[self.split_key].astype(str).to_numpy()
        matrix = layer_matrix(adata, self.layer_key)
        train_rows = np.flatnonzero(split == "train")
        x = matrix[train_rows]
        x = x.toarray() if sp.issparse(x) else np.asarray(x)
        x = x.astype(np.float64)
        mean = x.mean(axis=0)
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        comps = vt[:n_comp]
        # Fix each component's sign so that the decomposition is reproducible across LAPACKs.
        signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])
        comps = comps * signs[:, None]
        if len(comps) < n_comp:
            raise ValueError(
                f"PCA input needs at least n_embed={n_comp} genes and training cells; "
                f"got {x.shape[1]} genes and {x.shape[0]} cells"
            )
        self._global_input = {
            "kind": "pca",
            "mean": mean.astype(np.float32).tolist(),
            "components": comps.astype(np.float32).tolist(),
        }
        return n_comp

    def _global_features(self, adata: AnnData) -> np.ndarray:
        spec = self._global_input
        if spec["kind"] == "obsm":
            if spec["key"] not in adata.obsm:
                raise KeyError(f"input embedding {spec['key']!r} is not in adata.obsm")
            return np.asarray(adata.obsm[spec["key"]], dtype=np.float32)
        matrix = layer_matrix(adata, self.layer_key)
        mean = np.asarray(spec["mean"], dtype=np.float32)
        comps = np.asarray(spec["components"], dtype=np.float32)
        if sp.issparse(matrix):
            proj = np.asarray(matrix @ comps.T, dtype=np.float32) - mean @ comps.T
        else:
            proj = (np.asarray(matrix, dtype=np.float32) - mean) @ comps.T
        return np.ascontiguousarray(proj, dtype=np.float32)
