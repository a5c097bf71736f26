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
    "iter_graphs",
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
    core
        Boolean ``(n_cells,)``: the graph's own cells, ``False`` for halo (context) cells that
        are encoded but never masked, scored or written as outputs of this graph. ``None``: all
        cells are core.
    """

    name: str
    split: str
    x: torch.Tensor
    edge_index: torch.Tensor
    cell_index: torch.Tensor
    features: torch.Tensor | None = None
    core: torch.Tensor | None = None

    @property
    def n_cells(self) -> int:
        return int(self.x.shape[0])


@dataclass
class GraphBatch:
    """Several sample graphs concatenated; cells of a sample are contiguous.

    ``core`` concatenates the graphs' core flags (graphs without flags count as all core); it is
    ``None`` when no graph of the batch has a halo.
    """

    x: torch.Tensor
    edge_index: torch.Tensor
    ptr: torch.Tensor
    cell_index: torch.Tensor
    names: list[str]
    features: torch.Tensor | None = None
    sizes: list[int] = field(default_factory=list)
    core: torch.Tensor | None = None

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
            core=None if self.core is None else self.core.to(device),
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
        core = None
        if any(g.core is not None for g in graphs):
            core = torch.cat(
                [
                    torch.ones(g.n_cells, dtype=torch.bool) if g.core is None else g.core
                    for g in graphs
                ]
            )
        return cls(
            x=torch.cat([g.x for g in graphs], dim=0),
            edge_index=edge_index,
            ptr=torch.as_tensor(offsets, dtype=torch.long),
            cell_index=torch.cat([g.cell_index for g in graphs]),
            names=[g.name for g in graphs],
            features=features,
            sizes=sizes,
            core=core,
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


def _halo_columns(adata: AnnData, sample_keys: Sequence[str], halo_key: str, uniques) -> tuple:
    """Validate a halo membership matrix; return it as CSC and the column of every graph."""
    if halo_key not in adata.obsm:
        raise KeyError(
            f"halo key {halo_key!r} is not in adata.obsm (available: {list(adata.obsm)}); "
            "write it with interscale.pp.tile(..., halo=...)"
        )
    if len(sample_keys) != 1:
        raise ValueError(
            f"a halo ({halo_key!r}) needs exactly one sample key, the tile column; got "
            f"{list(sample_keys)}"
        )
    key = sample_keys[0]
    column = adata.obs[key]
    if isinstance(column.dtype, pd.CategoricalDtype):
        tiles = pd.Index(column.cat.categories.astype(str))
        codes = np.asarray(column.cat.codes, dtype=np.int64)
    else:
        codes, tiles = pd.factorize(column.astype(str), sort=True)
        tiles = pd.Index(tiles)
    raw = adata.obsm[halo_key]
    halo = sp.csc_matrix(raw if sp.issparse(raw) else np.asarray(raw)).astype(bool)
    halo.eliminate_zeros()
    halo.sort_indices()
    if halo.shape != (adata.n_obs, len(tiles)):
        raise ValueError(
            f"adata.obsm[{halo_key!r}] has shape {halo.shape}; expected (n_obs, n_tiles) = "
            f"({adata.n_obs}, {len(tiles)}), one column per category of obs[{key!r}] (rerun "
            "interscale.pp.tile after subsetting cells)"
        )
    own = halo.tocoo()
    clash = codes[own.row] == own.col
    if clash.any():
        cell = adata.obs_names[own.row[clash][0]]
        raise ValueError(
            f"adata.obsm[{halo_key!r}] puts {int(clash.sum())} cell(s) (e.g. {cell!r}) in the "
            f"halo of their own tile of obs[{key!r}]"
        )
    graph_columns = tiles.get_indexer(pd.Index(uniques).astype(str))
    return halo, graph_columns


class _GraphPlan:
    """What every sample's graph needs, computed once; each graph's dense ``x`` is made on demand.

    Iterating builds the graphs one at a time, so only one sample's expression is densified at
    once (streaming inference on large sections).
    """

    def __init__(
        self,
        adata: AnnData,
        *,
        layer_key: str | None,
        sample_keys: Sequence[str],
        split_key: str | None,
        connectivity_key: str,
        features: np.ndarray | None,
        halo_key: str | None,
    ) -> None:
        if connectivity_key not in adata.obsp:
            raise KeyError(
                f"spatial graph {connectivity_key!r} is not in adata.obsp; "
                "build it with interscale.pp.spatial_neighbors"
            )
        if isinstance(sample_keys, str):
            sample_keys = [sample_keys]
        self.matrix = layer_matrix(adata, layer_key)
        self.features = features
        self.split_key = split_key
        labels = sample_labels(adata, sample_keys)
        codes, uniques = pd.factorize(labels, sort=False)
        self.names = [str(u) for u in uniques]
        self.order = np.argsort(codes, kind="stable")
        counts = np.bincount(codes, minlength=len(uniques))
        self.starts = np.concatenate([[0], np.cumsum(counts)])

        if split_key is not None and split_key in adata.obs.columns:
            self.split_values = adata.obs[split_key].astype(str).to_numpy()
        else:
            self.split_values = np.full(adata.n_obs, "", dtype=object)

        self.halo: sp.csc_matrix | None = None
        if halo_key is not None:
            self.halo, self.halo_columns = _halo_columns(adata, sample_keys, halo_key, uniques)
            self.adjacency = sp.csr_matrix(adata.obsp[connectivity_key])
            self.sizes = counts + np.diff(self.halo.indptr)[self.halo_columns]
            return

        self.sizes = counts
        # Permute the graph so that samples are contiguous; within-sample edges then lie in
        # diagonal blocks and each sample's edges are one contiguous range of the sorted rows.
        order, starts = self.order, self.starts
        adj = sp.csr_matrix(adata.obsp[connectivity_key])[order][:, order].tocoo()
        rows = adj.row.astype(np.int64)
        cols = adj.col.astype(np.int64)
        row_graph = np.searchsorted(starts, rows, side="right") - 1
        col_graph = np.searchsorted(starts, cols, side="right") - 1
        keep = (row_graph == col_graph) & (rows != cols)
        rows, cols, row_graph = rows[keep], cols[keep], row_graph[keep]
        edge_sort = np.lexsort((cols, rows))
        self.rows, self.cols = rows[edge_sort], cols[edge_sort]
        row_graph = row_graph[edge_sort]
        self.edge_starts = np.searchsorted(row_graph, np.arange(len(uniques) + 1), side="left")

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[SampleGraph]:
        for g in range(len(self)):
            yield self.build(g)

    def _split(self, g: int, core_rows: np.ndarray) -> str:
        split = pd.unique(self.split_values[core_rows])
        if len(split) > 1:
            raise ValueError(
                f"sample {self.names[g]!r} spans several splits {list(split)} in "
                f"obs[{self.split_key!r}]; a split must assign whole samples"
            )
        return str(split[0])

    def _halo_edges(self, g: int, core_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        col = self.halo_columns[g]
        halo_rows = self.halo.indices[self.halo.indptr[col] : self.halo.indptr[col + 1]]
        nodes = np.concatenate([core_rows, halo_rows.astype(np.int64)])
        sub = self.adjacency[nodes][:, nodes].tocoo()
        rows, cols = sub.row.astype(np.int64), sub.col.astype(np.int64)
        keep = (rows != cols) & (sub.data != 0)
        rows, cols = rows[keep], cols[keep]
        edge_sort = np.lexsort((cols, rows))
        edge_index = np.stack([cols[edge_sort], rows[edge_sort]])
        return nodes, edge_index

    def build(self, g: int) -> SampleGraph:
        """The graph of the ``g``-th sample (order of first appearance in ``adata.obs``)."""
        core_rows = self.order[self.starts[g] : self.starts[g + 1]]
        split = self._split(g, core_rows)
        core = None
        if self.halo is None:
            nodes = core_rows
            e0, e1 = self.edge_starts[g], self.edge_starts[g + 1]
            # Rows are targets of the CSR; PyG expects [source, target]: the graph is symmetric,
            # so (cols, rows) and (rows, cols) hold the same edges.
            edge_index = np.stack([self.cols[e0:e1], self.rows[e0:e1]]) - self.starts[g]
        else:
            nodes, edge_index = self._halo_edges(g, core_rows)
            core = torch.zeros(len(nodes), dtype=torch.bool)
            core[: len(core_rows)] = True
        features = None
        if self.features is not None:
            features = torch.from_numpy(
                np.ascontiguousarray(self.features[nodes], dtype=np.float32)
            )
        return SampleGraph(
            name=self.names[g],
            split=split,
            x=torch.from_numpy(_rows_dense(self.matrix, nodes)),
            edge_index=torch.from_numpy(np.ascontiguousarray(edge_index)),
            cell_index=torch.from_numpy(nodes.astype(np.int64)),
            features=features,
            core=core,
        )


def anndata_to_graphs(
    adata: AnnData,
    *,
    layer_key: str | None,
    sample_keys: Sequence[str],
    split_key: str | None = "split",
    connectivity_key: str = "spatial_connectivities",
    features: np.ndarray | None = None,
    halo_key: str | None = None,
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
    halo_key
        obsm key of a boolean ``n_obs x n_tiles`` halo membership matrix (written by
        :func:`interscale.pp.tile`), one column per category of the single sample key. Each
        graph then holds its own cells followed by its halo cells, with every edge of
        ``obsp[connectivity_key]`` among them, and ``core`` marks its own cells.

    Returns
    -------
    Graphs in the order of the samples' first appearance in ``adata.obs``.

    Raises
    ------
    KeyError
        If the spatial graph, the layer, a sample key or the halo key is missing.
    ValueError
        If a sample spans several splits or the halo matrix does not fit the sample key.
    """
    return list(
        _GraphPlan(
            adata,
            layer_key=layer_key,
            sample_keys=sample_keys,
            split_key=split_key,
            connectivity_key=connectivity_key,
            features=features,
            halo_key=halo_key,
        )
    )


def iter_graphs(
    adata: AnnData,
    *,
    layer_key: str | None,
    sample_keys: Sequence[str],
    split_key: str | None = "split",
    connectivity_key: str = "spatial_connectivities",
    features: np.ndarray | None = None,
    halo_key: str | None = None,
) -> Iterator[SampleGraph]:
    """Like :func:`anndata_to_graphs`, but build each graph only when it is reached.

    Inputs are validated at the call; the iterator then holds one sample's dense expression at
    a time, so memory stays near the size of the largest sample.

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
    halo_key
        obsm key of a boolean ``n_obs x n_tiles`` halo membership matrix (written by
        :func:`interscale.pp.tile`), one column per category of the single sample key. Each
        graph then holds its own cells followed by its halo cells, with every edge of
        ``obsp[connectivity_key]`` among them, and ``core`` marks its own cells.

    Returns
    -------
    An iterator over the same graphs, in the same order, as :func:`anndata_to_graphs`.

    Raises
    ------
    KeyError
        If the spatial graph, the layer, a sample key or the halo key is missing.
    ValueError
        If the halo matrix does not fit the sample key (a sample spanning several splits is
        reported when its graph is reached).
    """
    return iter(
        _GraphPlan(
            adata,
            layer_key=layer_key,
            sample_keys=sample_keys,
            split_key=split_key,
            connectivity_key=connectivity_key,
            features=features,
            halo_key=halo_key,
        )
    )


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
    for group in _batch_groups(graphs, batch_size, shuffle=shuffle, generator=generator):
        yield GraphBatch.collate(group)


def _batch_groups(
    graphs: Sequence[SampleGraph],
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
) -> Iterator[list[SampleGraph]]:
    """The graphs of each batch of :func:`iterate_batches`, uncollated.

    Data-parallel training calls this on every rank with identically seeded generators, so all
    ranks see the same global batches without collating the graphs of other ranks.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shuffle:
        order = torch.randperm(len(graphs), generator=generator).tolist()
    else:
        order = list(range(len(graphs)))
    for start in range(0, len(order), batch_size):
        yield [graphs[i] for i in order[start : start + batch_size]]
