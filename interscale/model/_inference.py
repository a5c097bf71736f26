"""Inference: a pure computation over sample graphs, and the writer that puts it into AnnData.

One loop (:func:`run_inference`) runs a module over graphs built one at a time, in eval mode,
and hands each graph's embeddings and each cell's prediction to a consumer; it never touches
an AnnData. Two consumers share it: the output buffers of :func:`infer` (embeddings, attention
and the prediction layers, in the chosen dtype or none at all) and the per-gene R^2 accumulator
of :func:`interscale.model._streaming.stream_gene_r2`, which keeps sufficient statistics
instead of predictions. :func:`write_outputs` writes :class:`ModelOutputs` under the keys of
:class:`interscale.names.Key`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import scipy.sparse as sp
import torch
from anndata import AnnData
from tqdm.auto import tqdm

from interscale.graphs import GraphBatch, SampleGraph
from interscale.model._module import InterScaleModule, ModuleOutput
from interscale.names import PREDICTION_MODES, Key
from interscale.train import autocast, fold_masks

__all__ = [
    "DENSE_PREDICTIONS_MAX_BYTES",
    "InferenceConsumer",
    "PREDICTION_MODES",
    "ModelOutputs",
    "check_output_memory",
    "infer",
    "physical_memory_bytes",
    "run_inference",
    "write_outputs",
]


#: Largest size in bytes of the float32 prediction layers (all heads together) that
#: ``get_model_output`` writes without being asked: above it, the default refuses and asks for
#: ``predictions="float16"`` or ``"none"`` (or an explicit ``"dense"``). 2 GiB is 100,000
#: cells x 2,700 genes with two heads.
DENSE_PREDICTIONS_MAX_BYTES: int = 2 * 2**30


_PREDICTION_DTYPES = {"dense": np.float32, "float16": np.float16}


_BYTES_PER_PREDICTION = {"dense": 4, "float16": 2, "none": 0}


@dataclass
class ModelOutputs:
    """Per-cell outputs of a module, rows in AnnData order (``None`` where a part is absent).

    ``pred_heads`` names the heads that predict, whose layer is ``None`` only when the
    predictions were not kept (``predictions="none"``).
    """

    local_emb: np.ndarray | None
    global_emb: np.ndarray | None
    y_local: np.ndarray | None
    y_global: np.ndarray | None
    cls_attention: np.ndarray | None
    attention: sp.csr_matrix | None
    pred_heads: tuple[str, ...] = ()


class InferenceConsumer(Protocol):
    """What :func:`run_inference` hands each graph's outputs to (``_Buffers``, the R^2 sums).

    ``needs_full_pass``: the consumer reads embeddings and attention, so every graph it
    wants gets an unmasked pass even for held-out predictions.
    """

    needs_full_pass: bool

    def wants(self, rows: np.ndarray) -> bool:
        """Whether the graph whose core cells are AnnData ``rows`` is to be run at all."""
        ...

    def full(
        self, graph: SampleGraph, rows: np.ndarray, core: np.ndarray | None, out: ModuleOutput
    ) -> None:
        """The unmasked pass ``out`` over ``graph`` (core cells ``rows``, flags ``core``)."""
        ...

    def predictions(self, rows: np.ndarray, preds: dict[str, np.ndarray]) -> None:
        """Finite float32 predictions of AnnData ``rows``, by head."""
        ...

    def finish(self) -> object:
        """The result, once every graph has been run."""
        ...


def physical_memory_bytes() -> int | None:
    """Total RAM of this machine, or None where the OS does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def check_output_memory(
    n_obs: int,
    n_genes: int,
    n_embed: int,
    top_k: int,
    predictions: str = "dense",
    n_pred_layers: int = 2,
) -> None:
    """Refuse before inference when the outputs could never fit in this machine's RAM.

    The estimate counts ``n_pred_layers`` prediction layers in the dtype of ``predictions``
    (none for ``"none"``), two float32 embeddings and the top-k attention triplets (int64
    row/col + float32 value); every temporary is per graph, not per AnnData.
    """
    layers = _BYTES_PER_PREDICTION[predictions] * n_obs * n_genes * n_pred_layers
    estimate = layers + 4 * n_obs * 2 * n_embed + 20 * n_obs * top_k
    total = physical_memory_bytes()
    if total is not None and estimate > total:
        raise MemoryError(
            f"get_model_output would need about {estimate / 2**30:.1f} GiB for {n_obs} cells x "
            f"{n_genes} genes (predictions={predictions!r}), more than this machine's "
            f"{total / 2**30:.1f} GiB of RAM; pass predictions='float16' or 'none', or run it "
            "on subsets of samples (adata[mask].copy())"
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


def _finite(values: np.ndarray, name: str) -> np.ndarray:
    if not np.isfinite(values).all():
        raise FloatingPointError(f"inference produced non-finite values in {name}")
    return values


def _finite_predictions(preds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    for head, values in preds.items():
        _finite(values, f"y_{head}")
    return preds


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
    """Consumer of :func:`run_inference`: preallocated outputs, NaN until a graph writes them.

    The prediction layers are allocated in the dtype of ``predictions`` (none for ``"none"``);
    each block is cast on its own, so no float32 array of the layers' size ever exists.
    """

    needs_full_pass = True

    def __init__(
        self, module: InterScaleModule, n_obs: int, n_genes: int, predictions: str = "dense"
    ) -> None:
        n_embed = module.n_embed

        def rows(width: int, present: bool, dtype=np.float32) -> np.ndarray | None:
            return np.full((n_obs, width), np.nan, dtype) if present else None

        self.n_obs = n_obs
        self.heads = module.heads
        dtype = _PREDICTION_DTYPES.get(predictions)
        self.local_emb = rows(n_embed, module.has_local)
        self.global_emb = rows(n_embed, module.has_global)
        self.y = {head: rows(n_genes, dtype is not None, dtype) for head in self.heads}
        self.cls = np.full(n_obs, np.nan, np.float32) if module.has_global else None
        self.att_rows: list[np.ndarray] = []
        self.att_cols: list[np.ndarray] = []
        self.att_vals: list[np.ndarray] = []
        # scipy stores the attention's indices as int32 when they fit: keep the pieces as small
        self.index_dtype = np.int32 if n_obs < np.iinfo(np.int32).max else np.int64

    def wants(self, rows: np.ndarray) -> bool:
        return True

    def full(
        self, graph: SampleGraph, rows: np.ndarray, core: np.ndarray | None, out: ModuleOutput
    ) -> None:
        """Embeddings, CLS attention and attention of a graph's core cells."""
        if self.local_emb is not None:
            self.local_emb[rows] = _finite(_core_numpy(out.local_emb, core), "local_emb")
        if self.global_emb is not None:
            self.global_emb[rows] = _finite(_core_numpy(out.global_emb, core), "global_emb")
            self.cls[rows] = _core_numpy(out.cls_attention, core)
            self.add_attention(graph, out.attention, core)

    def predictions(self, rows: np.ndarray, preds: dict[str, np.ndarray]) -> None:
        """Finite float32 predictions of cells ``rows``, stored in the layers' dtype."""
        for head, layer in self.y.items():
            if layer is None:
                continue
            block = preds[head]
            if block.dtype != layer.dtype:
                with np.errstate(over="ignore"):  # overflow is refused just below
                    block = block.astype(layer.dtype)
                if not np.isfinite(block).all():
                    raise FloatingPointError(
                        f"y_{head} has predictions beyond the float16 range (|value| > 65504); "
                        "pass predictions='dense'"
                    )
            layer[rows] = block

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
        attention = None
        if self.global_emb is not None:
            n_obs = self.n_obs
            attention = sp.csr_matrix(
                (
                    np.concatenate(self.att_vals).astype(np.float32),
                    (np.concatenate(self.att_rows), np.concatenate(self.att_cols)),
                ),
                shape=(n_obs, n_obs),
            )
            attention.sort_indices()
        return ModelOutputs(
            self.local_emb,
            self.global_emb,
            self.y.get("local"),
            self.y.get("global"),
            self.cls,
            attention,
            self.heads,
        )


@torch.no_grad()
def run_inference(
    module: InterScaleModule,
    graphs: Iterable[SampleGraph],
    consumer: InferenceConsumer,
    *,
    n_obs: int,
    masked: bool,
    pct_mask_nodes: float,
    fold_seed: int,
    attention_top_k: int,
    progress_bar: bool,
    precision: str = "32",
) -> None:
    """The per-graph inference loop shared by every consumer.

    The fold draws advance on every graph in the same order, so a consumer that skips graphs
    (none of its cells there) sees the same folds as one that does not. Under
    ``precision="bf16-mixed"`` the forward passes run in bfloat16 autocast; every output
    handed to the consumer is float32 all the same.
    """
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    heads = module.heads
    written = np.zeros(n_obs, dtype=bool)
    fold_gen = torch.Generator().manual_seed(fold_seed)
    try:
        for graph in tqdm(graphs, desc="inference", unit="sample", disable=not progress_bar):
            rows, core = _claim_core_rows(graph, written)
            if not consumer.wants(rows):
                if masked:  # draw this graph's folds all the same
                    fold_masks(graph.n_cells, pct_mask_nodes, fold_gen, eligible=graph.core)
                continue
            batch = single_batch(graph).to(device)
            if consumer.needs_full_pass or not masked:
                with autocast(precision, device):
                    out = module(
                        batch.x,
                        batch.edge_index,
                        batch.ptr,
                        mask=None,
                        features=batch.features,
                        need_attention=module.has_global,
                        attention_top_k=attention_top_k,
                    )
                consumer.full(graph, rows, core, out)
                if not masked:
                    preds = {h: _core_numpy(getattr(out, f"y_{h}"), core) for h in heads}
                    consumer.predictions(rows, _finite_predictions(preds))
                del out
            if masked:
                nodes = graph.cell_index.numpy()
                for mask in fold_masks(graph.n_cells, pct_mask_nodes, fold_gen, graph.core):
                    mask_dev = mask.to(device)
                    with autocast(precision, device):
                        fold = module(
                            batch.x,
                            batch.edge_index,
                            batch.ptr,
                            mask=mask_dev,
                            features=batch.features,
                        )
                    preds = {
                        h: getattr(fold, f"y_{h}")[mask_dev].float().cpu().numpy() for h in heads
                    }
                    consumer.predictions(nodes[mask.numpy()], _finite_predictions(preds))
                    del fold, preds
            del batch, graph
    finally:
        module.train(was_training)
    if not written.all():
        raise RuntimeError(
            f"inference left {int((~written).sum())} cell(s) without outputs: they "
            "belong to no sample graph"
        )


def infer(
    module: InterScaleModule,
    graphs: Iterable[SampleGraph],
    *,
    n_obs: int,
    n_genes: int,
    masked: bool,
    pct_mask_nodes: float,
    fold_seed: int,
    attention_top_k: int,
    progress_bar: bool = False,
    predictions: str = "dense",
    precision: str = "32",
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
    predictions
        ``"dense"`` (float32 layers), ``"float16"`` (float16 layers) or ``"none"`` (no
        prediction layers; ``y_local``/``y_global`` are None).
    precision
        ``"32"`` or ``"bf16-mixed"`` (forward passes under bfloat16 autocast; the outputs are
        float32 either way).

    Returns
    -------
    The outputs as numpy arrays in AnnData row order.
    """
    buffers = _Buffers(module, n_obs, n_genes, predictions)
    run_inference(
        module,
        graphs,
        buffers,
        n_obs=n_obs,
        masked=masked,
        pct_mask_nodes=pct_mask_nodes,
        fold_seed=fold_seed,
        attention_top_k=attention_top_k,
        progress_bar=progress_bar,
        precision=precision,
    )
    return buffers.finish()


def write_outputs(adata: AnnData, outputs: ModelOutputs, prefix: str = "") -> None:
    """Write ``outputs`` into ``adata`` under the keys of :class:`interscale.names.Key`.

    A predicting head without a layer (``predictions="none"``) has any layer an earlier call
    left under the same key removed, so that no stored prediction disagrees with the new
    embeddings.
    """
    for head, emb in (("local", outputs.local_emb), ("global", outputs.global_emb)):
        if emb is not None:
            adata.obsm[Key.obsm.embedding(head, prefix)] = emb
    for head, pred in (("local", outputs.y_local), ("global", outputs.y_global)):
        key = Key.layers.y_pred(head, prefix)
        if pred is not None:
            adata.layers[key] = pred
        elif head in outputs.pred_heads and key in adata.layers:
            del adata.layers[key]
    if outputs.attention is not None:
        adata.obsp[Key.obsp.attention(prefix)] = outputs.attention
    if outputs.cls_attention is not None:
        adata.obs[Key.obs.cls_attention(prefix)] = outputs.cls_attention
