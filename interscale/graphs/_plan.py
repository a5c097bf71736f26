"""Sample labels, halos, and the plan that builds each sample's graph on demand."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

from interscale._anndata import layer_matrix
from interscale.graphs._types import RowSource, SampleGraph, dense_rows

__all__ = ["DEFER_DENSE_BYTES", "GraphPlan", "halo_columns", "sample_labels"]


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


#: Above this many bytes of dense float32 expression over all graphs of a plan (1 GiB: about
#: 54,000 cells x 5,000 genes, or 3,000,000 cells x 88 genes), graphs defer their ``x``: each
#: graph keeps only its row indices into the AnnData's matrix, and the expression is densified
#: per batch when it is read (:class:`~interscale.graphs.RowSource`). The values are the same
#: either way; below the threshold ``x`` is made once and kept, as small data always had it.
DEFER_DENSE_BYTES = 1 << 30


def halo_columns(adata: AnnData, sample_keys: Sequence[str], halo_key: str, uniques) -> tuple:
    """Validate a halo membership matrix; return it as CSC and the column of every graph.

    Parameters
    ----------
    adata
        AnnData with the boolean ``n_obs x n_tiles`` matrix in ``obsm[halo_key]``.
    sample_keys
        The single tile column of ``adata.obs``.
    halo_key
        Key of the halo matrix (written by :func:`interscale.pp.tile`).
    uniques
        Graph names in graph order; the second value maps each to its halo column.

    Raises
    ------
    KeyError
        If ``halo_key`` is not in ``obsm``.
    ValueError
        If there is not exactly one sample key, the shape does not match the tiles, or a cell
        is in the halo of its own tile.
    """
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


class GraphPlan:
    """What every sample's graph needs, computed once; each graph's dense ``x`` is made on demand.

    Iterating builds the graphs one at a time, so only one sample's expression is densified at
    once (streaming inference on large sections). When the graphs' dense expression would
    exceed ``DEFER_DENSE_BYTES`` (or with ``defer_x=True``), the built graphs defer their ``x``:
    they hold row indices into the layer, and ``x`` is densified when read, one batch at a time
    (:meth:`GraphBatch.collate <interscale.graphs.GraphBatch.collate>`), so a list of all the
    graphs (training) never holds the layer densified.

    Parameters
    ----------
    adata
        Cells x genes.
    layer_key
        Layer of the node features (``None``: ``X``).
    sample_keys
        obs column(s) whose combination names each graph.
    split_key
        obs column with each sample's split (``None``: no split).
    connectivity_key
        Key of the spatial graph in ``adata.obsp``; or the cells x cells matrix itself, for a
        graph that is not stored in the AnnData.
    features
        Optional per-cell input features (global-only models).
    halo_key
        obsm key of the halo membership matrix, or ``None``. Halo cells whose split (in
        ``split_key``) differs from their tile's split are left out of that tile's graph, with
        one warning per plan giving their number: a halo never brings cells of another split
        into a graph. This happens when one section is cut into tiles with a halo
        (:func:`interscale.pp.tile`) and the tiles are then split
        (:func:`interscale.pp.split_samples`): without it a training tile would read
        held-out cells as context, and a test tile training cells.
    defer_x
        Build graphs with deferred expression (``True``), with dense expression (``False``),
        or decide by size (``None``: deferred above ``DEFER_DENSE_BYTES`` of float32 over all
        graphs, halo cells counted in every graph they are in).
    """

    def __init__(
        self,
        adata: AnnData,
        *,
        layer_key: str | None,
        sample_keys: Sequence[str],
        split_key: str | None,
        connectivity_key: str | sp.spmatrix | sp.sparray,
        features: np.ndarray | None,
        halo_key: str | None,
        defer_x: bool | None = None,
    ) -> None:
        if isinstance(connectivity_key, str):
            if connectivity_key not in adata.obsp:
                raise KeyError(
                    f"spatial graph {connectivity_key!r} is not in adata.obsp; "
                    "build it with interscale.pp.spatial_neighbors"
                )
            adjacency = adata.obsp[connectivity_key]
        else:
            adjacency = connectivity_key
            if adjacency.shape != (adata.n_obs, adata.n_obs):
                raise ValueError(
                    f"the spatial graph has shape {adjacency.shape}; expected (n_obs, n_obs) = "
                    f"({adata.n_obs}, {adata.n_obs})"
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
            halo, self.halo_columns = halo_columns(adata, sample_keys, halo_key, uniques)
            self.halo = self._same_split_halo(halo, halo_key)
            self.adjacency = sp.csr_matrix(adjacency)
            self.sizes = counts + np.diff(self.halo.indptr)[self.halo_columns]
            self.defer_x = self._decide_defer(defer_x)
            return

        self.sizes = counts
        self.defer_x = self._decide_defer(defer_x)
        # Permute the graph so that samples are contiguous; within-sample edges then lie in
        # diagonal blocks and each sample's edges are one contiguous range of the sorted rows.
        order, starts = self.order, self.starts
        adj = sp.csr_matrix(adjacency)[order][:, order].tocoo()
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

    def _same_split_halo(self, halo: sp.csc_matrix, halo_key: str) -> sp.csc_matrix:
        """``halo`` without the cells whose split differs from their tile's; warns if any.

        A tile's split is that of its first core cell (:meth:`build` refuses a tile whose core
        cells span several splits). Columns of tiles without cells are left as they are: no
        graph reads them.
        """
        codes, _ = pd.factorize(self.split_values)
        first_core = self.order[self.starts[:-1]]
        tile_split = np.full(halo.shape[1], -1, dtype=np.int64)
        tile_split[self.halo_columns] = codes[first_core]
        entry_col = np.repeat(np.arange(halo.shape[1]), np.diff(halo.indptr))
        entry_split = tile_split[entry_col]
        foreign = (entry_split >= 0) & (codes[halo.indices] != entry_split)
        n_foreign = int(foreign.sum())
        if n_foreign == 0:
            return halo
        keep = ~foreign
        counts = np.bincount(entry_col[keep], minlength=halo.shape[1])
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(halo.indptr.dtype)
        kept = sp.csc_matrix(
            (halo.data[keep], halo.indices[keep], indptr), shape=halo.shape, dtype=bool
        )
        per_tile = np.bincount(entry_col[foreign], minlength=halo.shape[1])
        n_tiles = int((per_tile > 0).sum())
        n_cells = int(np.unique(halo.indices[foreign]).size)
        warnings.warn(
            f"{n_foreign} halo cell(s) of adata.obsm[{halo_key!r}] ({n_cells} distinct cells, "
            f"in the halos of {n_tiles} tile(s)) belong to another split of "
            f"obs[{self.split_key!r}] than their tile and are left out of those tiles' graphs: "
            "a halo must not bring cells of another split into a graph (a training tile would "
            "read held-out cells as context). The other halo cells are kept.",
            UserWarning,
            stacklevel=3,
        )
        return kept

    def _decide_defer(self, defer_x: bool | None) -> bool:
        if defer_x is not None:
            return bool(defer_x)
        if getattr(self.matrix, "ndim", None) != 2:
            return False  # no matrix (empty X): building a graph reports it, as before
        dense_bytes = 4 * int(np.sum(self.sizes, dtype=np.int64)) * int(self.matrix.shape[1])
        return dense_bytes > DEFER_DENSE_BYTES

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
            x=RowSource(self.matrix, nodes)
            if self.defer_x
            else torch.from_numpy(dense_rows(self.matrix, nodes)),
            edge_index=torch.from_numpy(np.ascontiguousarray(edge_index)),
            cell_index=torch.from_numpy(nodes.astype(np.int64)),
            features=features,
            core=core,
        )
