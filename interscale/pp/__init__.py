"""Preprocessing: normalisation, quality control, sample splits and spatial neighbour graphs."""

from interscale.pp._neighbors import (
    neighborhood_stats,
    spatial_graph_from_config,
    spatial_neighbors,
)
from interscale.pp._normalize import normalize
from interscale.pp._qc import qc
from interscale.pp._split import split_samples
from interscale.pp._tile import tile

__all__ = [
    "neighborhood_stats",
    "normalize",
    "qc",
    "spatial_graph_from_config",
    "spatial_neighbors",
    "split_samples",
    "tile",
]
