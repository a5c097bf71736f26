"""The graph of one sample and a batch of them, as torch tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["GraphBatch", "SampleGraph"]


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
