"""``get_model_output`` and ``gene_r2`` of the model classes, with the checks before any work,
the choice of how predictions are stored and the ``uns`` record of the outputs.

Both methods run :func:`interscale.model._inference.run_inference` over the model's graphs:
``get_model_output`` through :func:`~interscale.model._inference.infer` (buffers written into
the AnnData), ``gene_r2`` through :func:`~interscale.model._streaming.stream_gene_r2` (per-gene
R^2 sums, nothing stored).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData

from interscale._anndata import (
    check_anndata,
    layer_matrix,
    read_setup,
    select_cells,
)
from interscale._version import __version__
from interscale.graphs import SampleGraph
from interscale.model._inference import (
    DENSE_PREDICTIONS_MAX_BYTES,
    PREDICTION_MODES,
    check_output_memory,
    infer,
    write_outputs,
)
from interscale.model._module import InterScaleModule
from interscale.model._setup import check_finite_layer, check_same_genes, write_setup
from interscale.model._streaming import gene_r2_frame, scored_heads, stream_gene_r2
from interscale.names import Key

if TYPE_CHECKING:
    from interscale.config import Config

__all__ = ["OutputsMixin", "choose_predictions", "fold_settings"]


class OutputsMixin:
    """``get_model_output`` and ``gene_r2`` of the model classes, and the record they leave.

    Reads the attributes declared below, which :class:`~interscale.model._base.BaseModel`
    sets, and builds graphs with its ``_graphs``.
    """

    adata: AnnData
    cfg: Config
    module: InterScaleModule
    gene_names: list[str]
    layer_key: str | None
    split_key: str
    is_trained_: bool
    history_: pd.DataFrame | None
    best_epoch_: int | None
    _graphs: Callable[..., Iterable[SampleGraph]]

    def get_model_output(
        self,
        adata: AnnData | None = None,
        prefix: str = "",
        masked: bool = True,
        batch_size: int | None = None,
        attention_top_k: int = 32,
        progress_bar: bool = False,
        predictions: str | None = None,
    ) -> AnnData:
        """Write embeddings, held-out predictions and attention into ``adata``.

        Runs in eval mode without gradients, one sample at a time, each sample's graph built
        when reached and its rows written straight into preallocated arrays (memory stays near
        the size of the outputs). With a halo (``setup_anndata(..., halo_key=...)``) a tile's
        halo cells are encoded as context, but only its own cells are masked and written; every
        cell is written by exactly one tile. Keys written (with ``prefix``): obsm
        ``_local_emb``/``_global_emb``, layers ``_y_pred_local``/``_y_pred_global``, obsp
        ``_attn_matrix`` (top-k per row of the last layer's head-averaged attention), obs
        ``_cls_attention``, ``uns["interscale"]`` (``["output"]["predictions"]``: the mode).

        Parameters
        ----------
        adata
            AnnData with the same genes (default: the training AnnData).
        prefix
            Prepended to every key.
        masked
            Held-out predictions: each sample's cells are split into ``ceil(1/pct_mask_nodes)``
            folds and each cell is predicted in the pass where its fold is masked. ``False``
            gives the unmasked reconstruction.
        batch_size
            Accepted for compatibility with the published API and ignored (with a warning):
            samples are processed one at a time to bound memory.
        attention_top_k
            Attention entries kept per cell.
        progress_bar
            Show progress over samples.
        predictions
            ``"dense"``: float32 layers. ``"float16"``: float16 layers, half the memory, about
            1e-3 relative precision (|value| <= 65504). ``"none"``: no prediction layers (those
            an earlier call left under the same keys are removed; :meth:`gene_r2` scores genes
            without them). ``None`` (default): ``"dense"`` while the float32 layers take at
            most ``DENSE_PREDICTIONS_MAX_BYTES`` (2 GiB for all heads, a constant of
            ``interscale.model._inference``), else a ``ValueError`` before any work.

        Returns
        -------
        The same AnnData object, updated in place.

        Raises
        ------
        TypeError
            If ``adata`` is not an AnnData or is a view, or ``predictions`` is not a string.
        KeyError
            If the training layer is missing.
        ValueError
            If the genes differ from the model's, the layer holds NaN / infinite values, or
            ``predictions`` is unknown or None above the limit (the message gives the size).
        MemoryError
            If the outputs would not fit in RAM (with the estimate). Errors write nothing.

        Warns
        -----
        UserWarning
            If the model was never trained (outputs from random weights) or ``batch_size`` is given.
        """
        adata = self.adata if adata is None else adata
        check_anndata(adata, "get_model_output")
        check_same_genes(adata, self.gene_names)
        n_genes, heads = len(self.gene_names), self.module.heads
        mode = choose_predictions(predictions, adata.n_obs, n_genes, len(heads))
        check_finite_layer(layer_matrix(adata, self.layer_key), self.layer_key)
        if attention_top_k < 1:
            raise ValueError(f"attention_top_k must be >= 1, got {attention_top_k}")
        n_embed = int(self.module.n_embed)
        check_output_memory(adata.n_obs, n_genes, n_embed, attention_top_k, mode, len(heads))
        self._warn_if_untrained()
        if batch_size is not None:
            warnings.warn(
                "get_model_output ignores batch_size: samples are processed one at a time to "
                "bound memory",
                UserWarning,
                stacklevel=2,
            )
        outputs = infer(
            self.module,
            self._graphs(adata, lazy=True),
            n_obs=adata.n_obs,
            n_genes=n_genes,
            masked=masked,
            attention_top_k=attention_top_k,
            progress_bar=progress_bar,
            predictions=mode,
            **fold_settings(self.cfg),
            precision=self.cfg.optim.precision,
        )
        write_outputs(adata, outputs, prefix)
        self._record_uns(
            adata, prefix=prefix, masked=masked, attention_top_k=attention_top_k, predictions=mode
        )
        return adata

    def gene_r2(
        self,
        adata: AnnData | None = None,
        cells: str | Sequence[str] | np.ndarray | pd.Series | None = None,
        split_key: str | None = None,
        masked: bool = True,
        progress_bar: bool = False,
        *,
        heads: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Per-gene R^2 of each head, summed up during inference: no prediction is stored.

        The inference (folds, seed) of :meth:`get_model_output`, summing per gene and head the
        count, sum and sum of squares of the truth and the squared residuals over the selected
        cells (float64; samples without one are not run): R^2 as ``calculate_gene_ranks`` gives
        it on the stored float32 predictions (NaN for a gene constant within the cells), and
        ``interscale.evaluation.gene_ranks_from_model`` makes its table. ``adata`` is unchanged.

        Parameters
        ----------
        adata
            AnnData with the same genes (default: the training AnnData); a view is accepted.
        cells
            Cells scored, as for ``calculate_gene_ranks``: None or ``"all"``, split names
            (``["test"]``, ``"val,test"``) or a boolean mask with one entry per cell; held out
            means ``"test"`` (the validation samples chose the best epoch).
        split_key
            obs column of the split names (default: the split key of the setup).
        masked, progress_bar
            As for :meth:`get_model_output`.
        heads
            Heads to score (default: every head with a decoder).

        Returns
        -------
        pandas.DataFrame
            Index ``gene`` (``adata.var_names`` order), a column ``r2_<head>`` per head scored;
            ``df.attrs``: ``cells`` (description), ``n_cells``, ``heads`` and ``masked``.

        Raises
        ------
        TypeError
            If ``adata`` is not an AnnData, or ``cells`` is neither split names nor a mask.
        KeyError
            If the training layer or the split column is missing, or a split name is absent.
        ValueError
            If the genes differ from the model's, the layer is not finite, ``cells`` selects
            nothing, or ``heads`` names a head the model lacks.
        """
        adata = self.adata if adata is None else adata
        check_anndata(adata, "gene_r2", writable=False)
        check_same_genes(adata, self.gene_names)
        chosen = scored_heads(self.module, heads, type(self).__name__)
        if split_key is None:
            split_key = (read_setup(adata) or {}).get("split_key", self.split_key)
        selection = select_cells(adata, cells, split_key, what="gene_r2")
        truth = layer_matrix(adata, self.layer_key)
        check_finite_layer(truth, self.layer_key)
        self._warn_if_untrained()
        r2 = stream_gene_r2(
            self.module,
            self._graphs(adata, lazy=True),
            truth,
            selection.mask(adata.n_obs),
            heads=chosen,
            masked=masked,
            progress_bar=progress_bar,
            **fold_settings(self.cfg),
            precision=self.cfg.optim.precision,
        )
        return gene_r2_frame(r2, self.gene_names, selection, masked)

    def _warn_if_untrained(self) -> None:
        """Warn, at the caller of the public method, that outputs come from random weights."""
        if not self.is_trained_:
            warnings.warn(
                f"this {type(self).__name__} was never trained (call train() or load a "
                "checkpoint): its outputs come from randomly initialised weights",
                UserWarning,
                stacklevel=3,
            )

    def _record_uns(self, adata: AnnData, **extra: Any) -> None:
        """Record the model, its config, training summary and ``extra`` in ``uns["interscale"]``."""
        if read_setup(adata) is None:
            # outputs on data that was never set up: record the setup they were made with
            write_setup(adata, read_setup(self.adata) or {})
        uns = dict(adata.uns.get(Key.uns.ROOT, {}))
        uns.update(
            {
                "version": __version__,
                "model_class": type(self).__name__,
                # JSON text: h5ad cannot store the None values a config holds
                "config": json.dumps(self.cfg.to_dict(), sort_keys=True),
                "n_embed": int(self.module.n_embed),
                "output": dict(extra),
            }
        )
        history = self.history_
        if history is not None and not history.empty:
            summary = {"epochs_run": int(len(history)), "best_epoch": int(self.best_epoch_)}
            best = history[history["epoch"] == self.best_epoch_]
            for col in history.columns:
                if col.startswith(("val_", "train_")) and len(best):
                    summary[col] = float(best[col].iloc[0])
            uns["training"] = summary
        adata.uns[Key.uns.ROOT] = uns


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


def fold_settings(cfg: Config) -> dict[str, Any]:
    """The fold fraction and seed of the held-out predictions (one source for every consumer)."""
    return {"pct_mask_nodes": cfg.dataset.pct_mask_nodes, "fold_seed": cfg.optim.seed + 3}
