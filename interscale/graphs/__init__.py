"""AnnData -> per-sample graphs, splits and batches."""

from interscale.graphs._graphs import (
    GraphBatch,
    SampleGraph,
    anndata_to_graphs,
    iter_graphs,
    iterate_batches,
    layer_matrix,
    sample_labels,
)

__all__ = [
    "GraphBatch",
    "SampleGraph",
    "anndata_to_graphs",
    "iter_graphs",
    "iterate_batches",
    "layer_matrix",
    "sample_labels",
]
