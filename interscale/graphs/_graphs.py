"""AnnData -> one graph per sample, splits and batches of graphs."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from anndata import AnnData

from interscale.graphs._plan import GraphPlan
from interscale.graphs._types import GraphBatch, SampleGraph
from interscale.names import Key

__all__ = ["anndata_to_graphs", "batch_groups", "iter_graphs", "iterate_batches"]


def anndata_to_graphs(
    adata: AnnData,
    *,
    layer_key: str | None,
    sample_keys: Sequence[str],
    split_key: str | None = "split",
    connectivity_key: str = Key.obsp.spatial_connectivities(),
    features: np.ndarray | None = None,
    halo_key: str | None = None,
    defer_x: bool | None = None,
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
    defer_x
        Graphs hold row indices and densify ``x`` when it is read (``True``), hold a dense
        ``x`` (``False``), or decide by size (``None``, see
        :class:`~interscale.graphs.GraphPlan`).

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
        GraphPlan(
            adata,
            layer_key=layer_key,
            sample_keys=sample_keys,
            split_key=split_key,
            connectivity_key=connectivity_key,
            features=features,
            halo_key=halo_key,
            defer_x=defer_x,
        )
    )


def iter_graphs(
    adata: AnnData,
    *,
    layer_key: str | None,
    sample_keys: Sequence[str],
    split_key: str | None = "split",
    connectivity_key: str = Key.obsp.spatial_connectivities(),
    features: np.ndarray | None = None,
    halo_key: str | None = None,
    defer_x: bool | None = None,
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
    defer_x
        Graphs hold row indices and densify ``x`` when it is read (``True``), hold a dense
        ``x`` (``False``), or decide by size (``None``, see
        :class:`~interscale.graphs.GraphPlan`).

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
        GraphPlan(
            adata,
            layer_key=layer_key,
            sample_keys=sample_keys,
            split_key=split_key,
            connectivity_key=connectivity_key,
            features=features,
            halo_key=halo_key,
            defer_x=defer_x,
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
    for group in batch_groups(graphs, batch_size, shuffle=shuffle, generator=generator):
        yield GraphBatch.collate(group)


def batch_groups(
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
