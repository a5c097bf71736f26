"""The bodies of ``BaseModel.get_model_output`` and ``gene_r2``: argument checks, the choice of
how predictions are stored, then the pure parts; and the ``uns`` record of the outputs."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from typing import Any

import pandas as pd
from anndata import AnnData

from interscale._anndata import (
    check_anndata,
    layer_matrix,
    read_setup,
    select_cells,
)
from interscale._version import __version__
from interscale.model._inference import (
    DENSE_PREDICTIONS_MAX_BYTES,
    PREDICTION_MODES,
    check_output_memory,
    infer,
    prediction_heads,
    write_outputs,
)
from interscale.model._setup import check_finite_layer, check_same_genes, write_setup
from interscale.model._streaming import gene_r2_frame, scored_heads, stream_gene_r2
from interscale.names import Key

__all__ = [
    "choose_predictions",
    "fold_settings",
    "model_gene_r2",
    "model_output",
    "record_outputs",
    "warn_if_untrained",
]


def choose_predictions(predictions: str | None, n_obs: int, n_genes: int, n_layers: int) -> str:
    """Validate ``predictions``; ``None`` gives ``"dense"`` below the size limit, else raises.

    Raises
    ------
    TypeError
        If ``predictions`` is neither None nor a string.
    ValueError
        If it is not one of :data:`PREDICTION_MODES`, or it is None and the float32 layers
        would exceed :data:`DENSE_PREDICTIONS_MAX_BYTES` (the message gives their size).
    """
    if predictions is None:
        size = 4 * n_obs * n_genes * n_layers
        if size <= DENSE_PREDICTIONS_MAX_BYTES:
            return "dense"
        raise ValueError(
            f"get_model_output: the float32 prediction layers would take about "
            f"{size / 2**30:.1f} GiB ({n_layers} layer(s) of {n_obs} cells x {n_genes} genes), "
            f"more than the {DENSE_PREDICTIONS_MAX_BYTES / 2**30:g} GiB written by default "
            "(DENSE_PREDICTIONS_MAX_BYTES). Pass predictions='float16' (half the memory, about "
            "1e-3 relative precision) or predictions='none' (embeddings and attention only), "
            "and score genes without stored predictions with model.gene_r2(adata, cells=...) "
            "or interscale.evaluation.gene_ranks_from_model(model, adata, cells=...); "
            "predictions='dense' writes them anyway"
        )
    if not isinstance(predictions, str):
        raise TypeError(
            f"predictions must be None or one of {list(PREDICTION_MODES)}, "
            f"got {type(predictions).__name__}"
        )
    if predictions not in PREDICTION_MODES:
        raise ValueError(
            f"predictions must be one of {list(PREDICTION_MODES)} (or None), got {predictions!r}"
        )
    return predictions


def fold_settings(cfg: Any) -> dict[str, Any]:
    """The fold fraction and seed of the held-out predictions (one source for every consumer)."""
    return {"pct_mask_nodes": cfg.dataset.pct_mask_nodes, "fold_seed": cfg.optim.seed + 3}


def warn_if_untrained(model: Any, stacklevel: int = 3) -> None:
    """Warn that an untrained model's outputs come from its random initial weights."""
    if not model.is_trained_:
        warnings.warn(
            f"this {type(model).__name__} was never trained (call train() or load a "
            "checkpoint): its outputs come from randomly initialised weights",
            UserWarning,
            stacklevel=stacklevel,
        )


# ------------------------------------------------------------------ the model methods' bodies
def model_output(
    model: Any,
    adata: AnnData | None,
    *,
    prefix: str,
    masked: bool,
    batch_size: int | None,
    attention_top_k: int,
    progress_bar: bool,
    predictions: str | None,
) -> AnnData:
    """The body of :meth:`BaseModel.get_model_output` (documented there)."""
    adata = model.adata if adata is None else adata
    check_anndata(adata, "get_model_output")
    check_same_genes(adata, model.gene_names)
    n_genes, heads = len(model.gene_names), prediction_heads(model.module)
    mode = choose_predictions(predictions, adata.n_obs, n_genes, len(heads))
    check_finite_layer(layer_matrix(adata, model.layer_key), model.layer_key)
    if attention_top_k < 1:
        raise ValueError(f"attention_top_k must be >= 1, got {attention_top_k}")
    n_embed = int(model.module.n_embed)
    check_output_memory(adata.n_obs, n_genes, n_embed, attention_top_k, mode, len(heads))
    warn_if_untrained(model, stacklevel=4)
    if batch_size is not None:
        warnings.warn(
            "get_model_output ignores batch_size: samples are processed one at a time to "
            "bound memory",
            UserWarning,
            stacklevel=3,
        )
    outputs = infer(
        model.module,
        model._graphs(adata, lazy=True),
        n_obs=adata.n_obs,
        n_genes=n_genes,
        masked=masked,
        attention_top_k=attention_top_k,
        progress_bar=progress_bar,
        predictions=mode,
        **fold_settings(model.cfg),
        precision=model.cfg.optim.precision,
    )
    write_outputs(adata, outputs, prefix)
    model._record_uns(
        adata, prefix=prefix, masked=masked, attention_top_k=attention_top_k, predictions=mode
    )
    return adata


def model_gene_r2(
    model: Any,
    adata: AnnData | None,
    *,
    cells: Any,
    split_key: str | None,
    masked: bool,
    progress_bar: bool,
    heads: Sequence[str] | None,
) -> pd.DataFrame:
    """The body of :meth:`BaseModel.gene_r2` (documented there)."""
    adata = model.adata if adata is None else adata
    check_anndata(adata, "gene_r2", writable=False)
    check_same_genes(adata, model.gene_names)
    chosen = scored_heads(model.module, heads, type(model).__name__)
    if split_key is None:
        split_key = (read_setup(adata) or {}).get("split_key", model.split_key)
    selection = select_cells(adata, cells, split_key, what="gene_r2")
    truth = layer_matrix(adata, model.layer_key)
    check_finite_layer(truth, model.layer_key)
    warn_if_untrained(model, stacklevel=4)
    r2 = stream_gene_r2(
        model.module,
        model._graphs(adata, lazy=True),
        truth,
        selection.mask(adata.n_obs),
        heads=chosen,
        masked=masked,
        progress_bar=progress_bar,
        **fold_settings(model.cfg),
        precision=model.cfg.optim.precision,
    )
    return gene_r2_frame(r2, model.gene_names, selection, masked)


def record_outputs(model: Any, adata: AnnData, **extra: Any) -> None:
    """Record the model, its config, training summary and ``extra`` in ``uns["interscale"]``."""
    if read_setup(adata) is None:
        # outputs on data that was never set up: record the setup they were made with
        write_setup(adata, read_setup(model.adata) or {})
    uns = dict(adata.uns.get(Key.uns.ROOT, {}))
    uns.update(
        {
            "version": __version__,
            "model_class": type(model).__name__,
            # JSON text: h5ad cannot store the None values a config holds
            "config": json.dumps(model.cfg.to_dict(), sort_keys=True),
            "n_embed": int(model.module.n_embed),
            "output": dict(extra),
        }
    )
    history = model.history_
    if history is not None and not history.empty:
        summary = {"epochs_run": int(len(history)), "best_epoch": int(model.best_epoch_)}
        best = history[history["epoch"] == model.best_epoch_]
        for col in history.columns:
            if col.startswith(("val_", "train_")) and len(best):
                summary[col] = float(best[col].iloc[0])
        uns["training"] = summary
    adata.uns[Key.uns.ROOT] = uns
