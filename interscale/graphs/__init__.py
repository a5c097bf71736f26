"""AnnData -> per-sample graphs, splits and batches."""

from interscale._anndata import layer_matrix
from interscale.graphs._graphs import anndata_to_graphs, batch_groups, iter_graphs, iterate_batches
from interscale.graphs._plan import GraphPlan, halo_columns, sample_labels
from interscale.graphs._types import GraphBatch, RowSource, SampleGraph

__all__ = [
    "GraphBatch",
    "GraphPlan",
    "RowSource",
    "SampleGraph",
    "anndata_to_graphs",
    "batch_groups",
    "halo_columns",
    "iter_graphs",
    "iterate_batches",
    "layer_matrix",
    "sample_labels",
]
