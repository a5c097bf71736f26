"""Inference: a pure computation over sample graphs, and the writer that puts it into AnnData.

:func:`infer` runs a module over graphs built one at a time and returns numpy arrays; it never
touches an AnnData. :func:`write_outputs` writes those arrays under the keys of
:class:`interscale.names.Key`. Keeping the two apart lets one inference feed several consumers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from anndata import AnnData
from tqdm.auto import tqdm

from interscale.graphs import GraphBatch, SampleGraph
from interscale.names import Key
from interscale.train import fold_masks

__all__ = ["ModelOutputs", "check_output_memory", "infer", "write_outputs"]


@dataclass
class ModelOutputs:
    """Per-cell outputs of a module, rows in AnnData order (``None`` where a part is absent)."""

    local_emb: np.ndarray | None
    global_emb: np.ndarray | None
    y_local: np.ndarray | None
    y_global: np.ndarray | None
    cls_attention: np.ndarray | None
    attention: sp.csr_matrix | None


def physical_memory_bytes() -> int | None:
    """Total RAM of this machine, or None where the OS does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def check_output_memory(n_obs: int, n_genes: int, n_embed: int, top_k: int) -> None:
    """Refuse before inference when the dense outputs could never fit in this machine's RAM."""
    # two float32 prediction layers and two embeddings, the top-k attention triplets (int64
    # row/col + float32 value), and one prediction layer's worth of temporaries
    estimate = 4 * n_obs * (3 * n_genes + 2 * n_embed) + 20 * n_obs * top_k
    total = physical_memory_bytes()
    if total is not None and estimate > total:
        raise MemoryError(
            f"get_model_output would need about {estimate / 2**30:.1f} GiB for {n_obs} cells x "
            f"{n_genes} genes (dense float32 predictions), more than this machine's "
            f"{total / 2**30:.1f} GiB of RAM; run it on subsets of samples (adata[mask].copy())"
        )


def single_batch(graph: SampleGraph) -> GraphBatch:
    """A batch of one graph that shares the graph's tensors (no copy of a large sample's x)."""
    return GraphBatch(
        x=graph.x,
        edge_index=graph.edge_index,
        ptr=torch.tensor([0, graph.n_cells], dtype=torch.long),
        cell_index=graph.cell_index,
        names=[graph.name],
        features=graph.features,
        sizes=[graph.n_cells],
        core=graph.core,
    )


def _claim_core_rows(
    graph: SampleGraph, written: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """AnnData rows of the graph's core cells (and the core flags), marked as written once."""
    nodes = graph.cell_index.numpy()
    core = None if graph.core is None else graph.core.numpy()
    rows = nodes if core is None else nodes[core]
    if written[rows].any():
        raise RuntimeError(
            f"graph {graph.name!r} holds {int(written[rows].sum())} cell(s) that an earlier graph "
            "already wrote; every cell must be the core of exactly one graph"
        )
    written[rows] = True
    return rows, core


def _core_numpy(values: torch.Tensor, core: np.ndarray | None) -> np.ndarray:
    """float32 numpy rows of the core cells (all rows without a halo)."""
    out = values.float().cpu().numpy()
    return out if core is None else out[core]


def _attention_triplet(attention) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if attention is None:
        return (np.zeros(0, np.int64),) * 2 + (np.zeros(0, np.float32),)
    if isinstance(attention, torch.Tensor):
        attention = attention.coalesce() if attention.is_sparse else attention.to_sparse()
        idx = attention.indices().cpu().numpy()
        return idx[0], idx[1], attention.values().float().cpu().numpy()
    rows, cols, vals = attention
    return (
        torch.as_tensor(rows).cpu().numpy().astype(np.int64),
        torch.as_tensor(cols).cpu().numpy().astype(np.int64),
        torch.as_tensor(vals).float().cpu().numpy(),
    )


class _Buffers:
    """Preallocated output arrays, NaN until a graph writes its rows."""

    def __init__(self, module: torch.nn.Module, n_obs: int, n_genes: int) -> None:
        n_embed = module.n_embed

        def rows(width: int, present: bool) -> np.ndarray | None:
            return np.full((n_obs, width), np.nan, np.float32) if present else None

        self.local_emb = rows(n_embed, module.has_local)
        self.global_emb = rows(n_embed, module.has_global)
        self.y_local = rows(n_genes, module.local_decoder is not None)
        self.y_global = rows(n_genes, module.has_global)
        self.cls = np.full(n_obs, np.nan, np.float32) if module.has_global else None
        self.att_rows: list[np.ndarray] = []
        self.att_cols: list[np.ndarray] = []
        self.att_vals: list[np.ndarray] = []
        self.written = np.zeros(n_obs, dtype=bool)
        # scipy stores the attention's indices as int32 when they fit: keep the pieces as small
        self.index_dtype = np.int32 if n_obs < np.iinfo(np.int32).max else np.int64

    def add_attention(self, graph: SampleGraph, attention, core: np.ndarray | None) -> None:
        r, c, v = _attention_triplet(attention)
        if core is not None:
            # rows of core cells only; their columns may point at halo cells
            keep = core[r]
            r, c, v = r[keep], c[keep], v[keep]
        nodes = graph.cell_index.numpy()
        self.att_rows.append(nodes[r].astype(self.index_dtype))
        self.att_cols.append(nodes[c].astype(self.index_dtype))
        self.att_vals.append(v)

    def finish(self) -> ModelOutputs:
        if not self.written.all():
            raise RuntimeError(
                f"inference left {int((~self.written).sum())} cell(s) without outputs: they "
                "belong to no sample graph"
            )
        for name in ("local_emb", "global_emb", "y_local", "y_global"):
            arr = getattr(self, name)
            if arr is not None and not np.isfinite(arr).all():
                raise FloatingPointError(f"inference produced non-finite values in {name}")
        attention = None
        if self.global_emb is not None:
            n_obs = len(self.written)
            attention = sp.csr_matrix(
                (
                    np.concatenate(self.att_vals).astype(np.float32),
                    (np.concatenate(self.att_rows), np.concatenate(self.att_cols)),
                ),
                shape=(n_obs, n_obs),
            )
            attention.sort_indices()
        return ModelOutputs(
            self.local_emb, self.global_emb, self.y_local, self.y_global, self.cls, attention
        )


def _masked_predictions(module, batch, graph, pct_mask_nodes, generator, device, buffers) -> None:
    """Predict each cell in the pass where its fold is masked (the held-out predictions)."""
    nodes = graph.cell_index.numpy()
    for mask in fold_masks(graph.n_cells, pct_mask_nodes, generator, eligible=graph.core):
        mask_dev = mask.to(device)
        fold = module(batch.x, batch.edge_index, batch.ptr, mask=mask_dev, features=batch.features)
        sel = nodes[mask.numpy()]
        if buffers.y_local is not None:
            buffers.y_local[sel] = fold.y_local[mask_dev].float().cpu().numpy()
        if buffers.y_global is not None:
            buffers.y_global[sel] = fold.y_global[mask_dev].float().cpu().numpy()
        del fold


@torch.no_grad()
def infer(
    module: torch.nn.Module,
    graphs: Iterable[SampleGraph],
    *,
    n_obs: int,
    n_genes: int,
    masked: bool,
    pct_mask_nodes: float,
    fold_seed: int,
    attention_top_k: int,
    progress_bar: bool = False,
) -> ModelOutputs:
    """Run ``module`` over ``graphs`` in eval mode, one graph at a time.

    Parameters
    ----------
    module
        An :class:`~interscale.model._module.InterScaleModule`.
    graphs
        Sample (or tile) graphs whose core cells cover rows ``0 .. n_obs - 1`` exactly once.
    n_obs, n_genes
        Shape of the outputs.
    masked
        Held-out predictions (each cell predicted while masked, in ``ceil(1/pct_mask_nodes)``
        folds) instead of the unmasked reconstruction.
    pct_mask_nodes
        Fraction of cells masked per fold.
    fold_seed
        Seed of the fold assignment.
    attention_top_k
        Attention entries kept per cell.
    progress_bar
        Show progress over graphs.

    Returns
    -------
    The outputs as numpy arrays in AnnData row order.
    """
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    buffers = _Buffers(module, n_obs, n_genes)
    fold_gen = torch.Generator().manual_seed(fold_seed)
    try:
        for graph in tqdm(graphs, desc="inference", unit="sample", disable=not progress_bar):
            rows, core = _claim_core_rows(graph, buffers.written)
            batch = single_batch(graph).to(device)
            out = module(
                batch.x,
                batch.edge_index,
                batch.ptr,
                mask=None,
                features=batch.features,
                need_attention=module.has_global,
                attention_top_k=attention_top_k,
            )
            if buffers.local_emb is not None:
                buffers.local_emb[rows] = _core_numpy(out.local_emb, core)
            if buffers.global_emb is not None:
                buffers.global_emb[rows] = _core_numpy(out.global_emb, core)
                buffers.cls[rows] = _core_numpy(out.cls_attention, core)
                buffers.add_attention(graph, out.attention, core)
            if masked:
                _masked_predictions(module, batch, graph, pct_mask_nodes, fold_gen, device, buffers)
            else:
                if buffers.y_local is not None:
                    buffers.y_local[rows] = _core_numpy(out.y_local, core)
                if buffers.y_global is not None:
                    buffers.y_global[rows] = _core_numpy(out.y_global, core)
            del batch, out, graph
    finally:
        module.train(was_training)
    return buffers.finish()


def write_outputs(adata: AnnData, outputs: ModelOutputs, prefix: str = "") -> None:
    """Write ``outputs`` into ``adata`` under the keys of :class:`interscale.names.Key`."""
    for head, emb in (("local", outputs.local_emb), ("global", outputs.global_emb)):
        if emb is not None:
            adata.obsm[Key.obsm.embedding(head, prefix)] = emb
    for head, pred in (("local", outputs.y_local), ("global", outputs.y_global)):
        if pred is not None:
            adata.layers[Key.layers.y_pred(head, prefix)] = pred
    if outputs.attention is not None:
        adata.obsp[Key.obsp.attention(prefix)] = outputs.attention
    if outputs.cls_attention is not None:
        adata.obs[Key.obs.cls_attention(prefix)] = outputs.cls_attention
