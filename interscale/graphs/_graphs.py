"""AnnData -> one graph per sample, splits and batches of graphs."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

__all__ = [
    "GraphBatch",
    "SampleGraph",
    "anndata_to_graphs",
    "iterate_batches",
    "layer_matrix",
    "sample_labels",
]


@dataclass
class SampleGraph:
    """The cells of one sample as a graph.

    Attributes
    ----------
    name
        Sample label (the values of the sample keys joined with ``"|"``).
    split
        Split of the sample (``"train"``, ``"val"``, ``"test"`` or ``""`` when there is no split).
    x
        Expression of the training layer, float32, shape ``(n_cells, n_genes)``.
    edge_index
        Spatial graph in local node indices, shape ``(2, n_edges)``, symmetric, no self loops.
    cell_index
        Row of each cell in the AnnData, so outputs map back without touching ``obs_names``.
    features
        Optional input features for the global component (e.g. PCA), ``(n_cells, n_embed)``.
    """

    name: str
    split: str
    x: torch.Tensor
    edge_index: torch.Tensor
    cell_index: torch.Tensor
    features: torch.Tensor | None = None

    @property
    def n_cells(self) -> int:
        return int(self.x.shape[0])


@dataclass
class GraphBatch:
    """Several sample graphs concatenated; cells of a sample are contiguous."""

    x: torch.Tensor
    edge_index: torch.Tensor
    ptr: torch.Tensor
    cell_index: torch.Tensor
    names: list[str]
    features: torch.Tensor | None = None
    sizes: list[int] = field(default_factory=list)

    @property
    def n_cells(self) -> int:
        return int(self.x.shape[0])

    def to(self, device: torch.device | str) -> GraphBatch:
        """Move every tensor of the batch to ``device``."""
        return GraphBatch(
            x=self.x.to(device),
            edge_index=self.edge_index.to(device),
            ptr=self.ptr.to(device),
            cell_index=self.cell_index,
            names=self.names,
            features=None if self.features is None else self.features.to(device),
            sizes=self.sizes,
        )

    @classmethod
    def collate(cls, graphs: Sequence[SampleGraph]) -> GraphBatch:
        """Concatenate graphs, shifting each graph's edges by the cells before it."""
        if not graphs:
            raise ValueError("cannot build a batch from zero graphs")
        sizes = [g.n_cells for g in graphs]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        edge_index = torch.cat(
            [g.edge_index + int(off) for g, off in zip(graphs, offsets[:-1], strict=True)], dim=1
        )
        features = None
        if graphs[0].features is not None:
            features = torch.cat([g.features for g in graphs], dim=0)
        return cls(
            x=torch.cat([g.x for g in graphs], dim=0),
            edge_index=edge_index,
            ptr=torch.as_tensor(offsets, dtype=torch.long),
            cell_index=torch.cat([g.cell_index for g in graphs]),
            names=[g.name for g in graphs],
            features=features,
            sizes=sizes,
        )


def sample_labels(adata: AnnData, sample_keys: Sequence[str]) -> pd.Series:
    """One label per cell combining the given obs columns.

    Parameters
    ----------
    adata
        The AnnData.
    sample_keys
        Columns of ``adata.obs`` whose combination identifies a graph.

    Returns
    -------
    A string Series aligned with ``adata.obs``.

    Raises
    ------
    KeyError
        If a key is not a column of ``adata.obs``.
    ValueError
        If a key has missing values.
    """
    if isinstance(sample_keys, str):
        sample_keys = [sample_keys]
    if len(sample_keys) == 0:
        raise ValueError("sample_key_list must name at least one obs column")
    for key in sample_keys:
        if key not in adata.obs.columns:
            raise KeyError(
                f"sample key {key!r} is not a column of adata.obs; "
                f"available columns: {list(adata.obs.columns)}"
            )
        if adata.obs[key].isna().any():
            n_missing = int(adata.obs[key].isna().sum())
            raise ValueError(f"sample key {key!r} has {n_missing} missing values in adata.obs")
    labels = adata.obs[sample_keys[0]].astype(str)
    for key in sample_keys[1:]:
        labels = labels + "|" + adata.obs[key].astype(str)
    return labels.reset_index(drop=True)


def layer_matrix(adata: AnnData, layer_key: str | None):
    """Return ``adata.layers[layer_key]`` (``adata.X`` for ``None``), naming a missing layer.

    Raises
    ------
    KeyError
        If ``layer_key`` is not a layer; the message lists the available ones.
    """
    if layer_key is None:
        return adata.X
    if layer_key not in adata.layers:
        raise KeyError(
            f"layer {layer_key!r} is not in adata.layers; available layers: {list(adata.layers)}"
        )
    return adata.layers[layer_key]


def _rows_dense(matrix, rows: np.ndarray) -> np.ndarray:
    sub = matrix[rows]
    if sp.issparse(sub):
        sub = sub.toarray()
    return np.ascontiguousarray(np.asarray(sub, dtype=np.float32))


def anndata_to_graphs(
    adata: AnnData,
    *,
    layer_key: str | None,
    sample_keys: Sequence[str],
    split_key: str | None = "split",
    connectivity_key: str = "spatial_connectivities",
    features: np.ndarray | None = None,
) -> list[SampleGraph]:
    """Turn an AnnData into one graph per sample.

    Parameters
    ----------
    adata
        AnnData holding the expression layer and the spatial graph in ``obsp[connectivity_key]``
        (build it with :func:`interscale.pp.spatial_neighbors`).
    layer_key
        Layer used as input and target; ``None`` uses ``adata.X``.
    sample_keys
        obs columns whose combination defines a graph.
    split_key
        obs column with ``train``/``val``/``test``; ``None`` or a missing column gives ``""``.
    connectivity_key
        obsp key of the spatial graph. Edges between different samples are dropped.
    features
        Optional per-cell input features for the global component, ``(n_obs, d)``.

    Returns
    -------
    Graphs in the order of the samples' first appearance in ``adata.obs``.
    """
    if connectivity_key not in adata.obsp:
        raise KeyError(
            f"spatial graph {connectivity_key!r} is not in adata.obsp; "
            "build it with interscale.pp.spatial_neighbors"
        )
    matrix = layer_matrix(adata, layer_key)
    labels = sample_labels(adata, sample_keys)
    codes, uniques = pd.factorize(labels, sort=False)
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=len(uniques))
    starts = np.concatenate([[0], np.cumsum(counts)])

    if split_key is not None and split_key in adata.obs.columns:
        split_values = adata.obs[split_key].astype(str).to_numpy()
    else:
        split_values = np.full(adata.n_obs, "", dtype=object)

    # Permute the graph so that samples are contiguous; within-sample edges then lie in
    # diagonal blocks and each sample's edges are one contiguous range of the sorted rows.
    adj = sp.csr_matrix(adata.obsp[connectivity_key])[order][:, order].tocoo()
    rows = adj.row.astype(np.int64)
    cols = adj.col.astype(np.int64)
    row_graph = np.searchsorted(starts, rows, side="right") - 1
    col_graph = np.searchsorted(starts, cols, side="right") - 1
    keep = (row_graph == col_graph) & (rows != cols)
    rows, cols, row_graph = rows[keep], cols[keep], row_graph[keep]
    edge_sort = np.lexsort((cols, rows))
    rows, cols, row_graph = rows[edge_sort], cols[edge_sort], row_graph[edge_sort]
    edge_starts = np.searchsorted(row_graph, np.arange(len(uniques) + 1), side="left")

    graphs = []
    for g, name in enumerate(uniques):
        cell_rows = order[starts[g] : starts[g + 1]]
        split = pd.unique(split_values[cell_rows])
        if len(split) > 1:
            raise ValueError(
                f"sample {name!r} spans several splits {list(split)} in obs[{split_key!r}]; "
                "a split must assign whole samples"
            )
        e0, e1 = edge_starts[g], edge_starts[g + 1]
        # Rows are targets of the CSR; PyG expects [source, target]: the graph is symmetric,
        # so (cols, rows) and (rows, cols) hold the same edges.
        edge_index = np.stack([cols[e0:e1], rows[e0:e1]]) - starts[g]
        graphs.append(
            SampleGraph(
                name=str(name),
                split=str(split[0]),
                x=torch.from_numpy(_rows_dense(matrix, cell_rows)),
                edge_index=torch.from_numpy(np.ascontiguousarray(edge_index)),
                cell_index=torch.from_numpy(cell_rows.astype(np.int64)),
                features=None
                if features is None
                else torch.from_numpy(np.ascontiguousarray(features[cell_rows], dtype=np.float32)),
            )
        )
    return graphs


def iterate_batches(
    graphs: Sequence[SampleGraph],
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
) -> Iterator[GraphBatch]:
    """Yield batches of ``batch_size`` graphs (the last one may be smaller).

    Parameters
    ----------
    graphs
        Graphs to batch.
    batch_size
        Graphs per batch, at least 1.
    shuffle
        Draw a new order of graphs from ``generator``.
    generator
        Seeded generator used when ``shuffle`` is true.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shuffle:
        order = torch.randperm(len(graphs), generator=generator).tolist()
    else:
        order = list(range(len(graphs)))
    for start in range(0, len(order), batch_size):
        yield GraphBatch.collate([graphs[i] for i in order[start : start + batch_size]])
