"""The graph of one sample and a batch of them, as torch tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["GraphBatch", "RowSource", "SampleGraph", "dense_rows"]


class RowSource:
    """Rows of an expression matrix, densified only when they are read.

    Holds a reference to the matrix (dense or sparse, as the AnnData stores it) and the row
    indices, never a copy of the values: a sample graph whose ``x`` is deferred costs only its
    row indices until a batch densifies it.

    Parameters
    ----------
    matrix
        Cells x genes (numpy array or scipy sparse matrix), shared, never modified.
    rows
        Rows of ``matrix``, in graph node order.
    """

    def __init__(self, matrix, rows: np.ndarray) -> None:
        self.matrix = matrix
        self.rows = np.asarray(rows, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_rows, n_genes)`` of the dense rows, known without densifying them."""
        return (len(self.rows), int(self.matrix.shape[1]))

    def dense(self) -> torch.Tensor:
        """The rows as a new dense float32 tensor."""
        return torch.from_numpy(dense_rows(self.matrix, self.rows))


def dense_rows(matrix, rows: np.ndarray) -> np.ndarray:
    """Rows of ``matrix`` (dense or sparse) as a C-contiguous float32 array."""
    sub = matrix[rows]
    if sp.issparse(sub):
        sub = sub.toarray()
    return np.ascontiguousarray(np.asarray(sub, dtype=np.float32))


class SampleGraph:
    """The cells of one sample as a graph.

    Attributes
    ----------
    name
        Sample label (the values of the sample keys joined with ``"|"``).
    split
        Split of the sample (``"train"``, ``"val"``, ``"test"`` or ``""`` when there is no split).
    x
        Expression of the training layer, float32, shape ``(n_cells, n_genes)``. When the graph
        was built with a :class:`RowSource` (deferred expression, see
        :class:`~interscale.graphs.GraphPlan`), every read of ``x`` densifies the rows afresh:
        the graph itself holds no dense copy, and in-place edits of such an ``x`` are not kept.
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

    __slots__ = ("_x", "cell_index", "core", "edge_index", "features", "name", "split")

    def __init__(
        self,
        name: str,
        split: str,
        x: torch.Tensor | RowSource,
        edge_index: torch.Tensor,
        cell_index: torch.Tensor,
        features: torch.Tensor | None = None,
        core: torch.Tensor | None = None,
    ) -> None:
        self.name = name
        self.split = split
        self._x = x
        self.edge_index = edge_index
        self.cell_index = cell_index
        self.features = features
        self.core = core

    @property
    def x(self) -> torch.Tensor:
        """Dense float32 expression ``(n_cells, n_genes)`` (made now when deferred)."""
        return self._x.dense() if isinstance(self._x, RowSource) else self._x

    @x.setter
    def x(self, value: torch.Tensor | RowSource) -> None:
        self._x = value

    @property
    def deferred(self) -> bool:
        """True when ``x`` is made from the AnnData's matrix on every read."""
        return isinstance(self._x, RowSource)

    @property
    def n_cells(self) -> int:
        """Nodes of the graph (halo cells included)."""
        return int(self._x.shape[0])

    @property
    def n_genes(self) -> int:
        """Columns of ``x`` (read without densifying a deferred ``x``)."""
        return int(self._x.shape[1])

    def __repr__(self) -> str:
        return (
            f"SampleGraph(name={self.name!r}, split={self.split!r}, n_cells={self.n_cells}, "
            f"n_genes={self.n_genes}, n_edges={int(self.edge_index.shape[1])}, "
            f"deferred={self.deferred}, halo={self.core is not None})"
        )


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
            x=_concat_x(graphs),
            edge_index=edge_index,
            ptr=torch.as_tensor(offsets, dtype=torch.long),
            cell_index=torch.cat([g.cell_index for g in graphs]),
            names=[g.name for g in graphs],
            features=features,
            sizes=sizes,
            core=core,
        )


def _concat_x(graphs: Sequence[SampleGraph]) -> torch.Tensor:
    """The graphs' expression stacked; deferred graphs of one matrix are densified in one go."""
    sources = [g._x for g in graphs]
    if all(isinstance(src, RowSource) for src in sources) and all(
        src.matrix is sources[0].matrix for src in sources
    ):
        rows = np.concatenate([src.rows for src in sources])
        return RowSource(sources[0].matrix, rows).dense()
    return torch.cat([g.x for g in graphs], dim=0)
