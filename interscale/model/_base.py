"""User-facing model classes: setup, train, outputs into AnnData, save and load."""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

from interscale._io import atomic_write_bytes
from interscale._version import __version__
from interscale.config import Config, config_from_dict, load_config
from interscale.graphs import SampleGraph, sample_labels
from interscale.graphs import layer_matrix as _layer
from interscale.graphs._graphs import _GraphPlan, _halo_columns
from interscale.model._module import InterScaleModule
from interscale.train import TrainSettings, evaluate_masked, fit, fold_masks, resolve_device

__all__ = ["BaseModel", "CHECKPOINT_FORMAT", "CHECKPOINT_FORMAT_VERSION"]

CHECKPOINT_FORMAT = "interscale-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
_UNS_KEY = "interscale"
_SPLITS = ("train", "val", "test")


def _is_view(adata: AnnData) -> bool:
    return bool(getattr(adata, "is_view", False))


def _check_adata(adata: Any, what: str = "adata") -> None:
    if not isinstance(adata, AnnData):
        raise TypeError(f"{what} must be an AnnData, got {type(adata).__name__}")
    if _is_view(adata):
        raise TypeError(
            f"{what} is a view of another AnnData; pass a copy (adata[mask].copy()) so that "
            "results can be written into it"
        )


def _check_finite_layer(matrix, layer_key: str | None) -> None:
    data = matrix.data if sp.issparse(matrix) else np.asarray(matrix)
    if data.dtype.kind not in "biuf":
        raise TypeError(f"layer {layer_key!r} has a non-numeric dtype {data.dtype}")
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        n_bad = int((~np.isfinite(data)).sum())
        raise ValueError(f"layer {layer_key!r} holds {n_bad} NaN or infinite values")


def _physical_memory_bytes() -> int | None:
    """Total RAM of this machine, or None where the OS does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def _check_output_memory(n_obs: int, n_genes: int, n_embed: int, top_k: int) -> None:
    """Refuse before inference when the dense outputs could never fit in this machine's RAM."""
    # two float32 prediction layers and two embeddings, the top-k attention triplets (int64
    # row/col + float32 value), and one prediction layer's worth of temporaries
    estimate = 4 * n_obs * (3 * n_genes + 2 * n_embed) + 20 * n_obs * top_k
    total = _physical_memory_bytes()
    if total is not None and estimate > total:
        raise MemoryError(
            f"get_model_output would need about {estimate / 2**30:.1f} GiB for {n_obs} cells x "
            f"{n_genes} genes (dense float32 predictions), more than this machine's "
            f"{total / 2**30:.1f} GiB of RAM; run it on subsets of samples (adata[mask].copy())"
        )


class BaseModel:
    """Shared machinery of :class:`CombinedModel`, :class:`LocalModel` and :class:`GlobalModel`.

    Subclasses set ``_local`` and ``_global`` (which components exist).
    """

    _local: bool = True
    _global: bool = True

    # ------------------------------------------------------------------ setup
    @classmethod
    def _setup_anndata(
        cls,
        adata: AnnData,
        *,
        layer_key: str | None,
        sample_key_list: list[str] | str,
        prediction_task: str = "regression",
        prediction_obs: str | None = None,
        group_key: str | None = None,
        split_key: str = "split",
        view_registry: bool = True,
        halo_key: str | None = None,
    ) -> None:
        """Validate an AnnData for training and record the setup in ``adata.uns["interscale"]``.

        Parameters
        ----------
        adata
            Cells x genes with spatial coordinates in ``obsm["spatial"]``.
        layer_key
            Layer used as input and reconstruction target (e.g. ``"log1p_norm"``); ``None``
            uses ``adata.X``.
        sample_key_list
            obs columns whose combination defines a sample (one graph each).
        prediction_task
            ``"regression"`` (reconstruct the layer); classification is not supported.
        prediction_obs
            Accepted for compatibility with the published API; unused for regression.
        group_key
            Optional obs column recorded for downstream plots.
        split_key
            obs column with ``train``/``val`` (and optionally ``test``) per whole sample.
        view_registry
            Print a short table of the setup.
        halo_key
            obsm key of a boolean ``n_obs x n_tiles`` halo membership matrix (as written by
            :func:`interscale.pp.tile` with ``halo > 0``: ``f"{key_added}_halo"``), one column
            per category of the single sample key (the tile column). Each tile's graph then also
            encodes its halo cells as context; they are never masked, never in the loss and never
            written as outputs of that tile.

        Raises
        ------
        KeyError
            If the layer or an obs column is missing.
        ValueError
            If the split lacks ``train`` or ``val``, has unknown values, or splits a sample; if
            the layer holds NaN / infinite values; if genes are missing or duplicated; if the halo
            matrix does not have one column per tile, there is more than one sample key, or a
            cell is in the halo of its own tile.
        TypeError
            If ``adata`` is not an AnnData or is a view.
        """
        _check_adata(adata)
        if prediction_task != "regression":
            raise ValueError(
                f"prediction_task {prediction_task!r} is not supported; InterScale reconstructs "
                "expression ('regression')"
            )
        sample_keys = (
            [sample_key_list] if isinstance(sample_key_list, str) else list(sample_key_list)
        )
        matrix = _layer(adata, layer_key)
        if adata.n_vars < 1:
            raise ValueError("adata has no genes (n_vars == 0)")
        if not adata.var_names.is_unique:
            dup = adata.var_names[adata.var_names.duplicated()].unique()
            raise ValueError(
                f"adata.var_names has duplicated genes, e.g. {list(dup[:5])}; "
                "make them unique (adata.var_names_make_unique())"
            )
        _check_finite_layer(matrix, layer_key)
        labels = sample_labels(adata, sample_keys)
        if group_key is not None and group_key not in adata.obs.columns:
            raise KeyError(f"group_key {group_key!r} is not a column of adata.obs")
        if split_key not in adata.obs.columns:
            raise KeyError(
                f"split column {split_key!r} is not in adata.obs; add one with train/val(/test) "
                "per sample"
            )
        if adata.obs[split_key].isna().any():
            raise ValueError(f"split column {split_key!r} has missing values")
        split = adata.obs[split_key].astype(str).reset_index(drop=True)
        unknown = sorted(set(split) - set(_SPLITS))
        if unknown:
            raise ValueError(
                f"split column {split_key!r} has unknown values {unknown}; allowed: {list(_SPLITS)}"
            )
        for needed in ("train", "val"):
            if not (split == needed).any():
                raise ValueError(f"split column {split_key!r} contains no {needed!r} cells")
        per_sample = pd.DataFrame({"s": labels, "split": split}).groupby("s")["split"].nunique()
        mixed = per_sample[per_sample > 1]
        if len(mixed):
            raise ValueError(
                f"samples {list(mixed.index[:5])} span several splits in {split_key!r}; "
                "assign whole samples to train/val/test"
            )
        if halo_key is not None:
            _halo_columns(adata, sample_keys, halo_key, pd.unique(labels))
        sizes = labels.value_counts()
        record = {
            "layer_key": layer_key,
            "sample_key": sample_keys,
            "split_key": split_key,
            "prediction_task": prediction_task,
            "prediction_obs": prediction_obs,
            "group_key": group_key,
            "n_samples": int(len(sizes)),
            "n_genes": int(adata.n_vars),
            "largest_sample": int(sizes.max()),
            "halo_key": halo_key,
        }
        uns = dict(adata.uns.get(_UNS_KEY, {}))
        uns.update({k: v for k, v in record.items() if v is not None})
        uns["setup"] = {k: v for k, v in record.items() if v is not None}
        adata.uns[_UNS_KEY] = uns
        if view_registry:
            counts = split.value_counts()
            rows = [
                ("layer", "X" if layer_key is None else f"layers[{layer_key!r}]"),
                ("sample keys", ", ".join(sample_keys)),
                ("samples", f"{len(sizes)} ({sizes.min()}-{sizes.max()} cells)"),
                ("cells / genes", f"{adata.n_obs} / {adata.n_vars}"),
                ("split", ", ".join(f"{k}: {int(counts.get(k, 0))}" for k in _SPLITS)),
            ]
            if halo_key is not None:
                rows.append(("halo", f"obsm[{halo_key!r}]"))
            width = max(len(k) for k, _ in rows)
            print(f"InterScale setup ({cls.__name__})")
            for key, value in rows:
                print(f"  {key:<{width}}  {value}")

    # ------------------------------------------------------------------ init
    def __init__(self, adata: AnnData, cfg: Config | None = None) -> None:
        _check_adata(adata)
        setup = adata.uns.get(_UNS_KEY, {}).get("setup")
        if setup is None:
            raise ValueError(
                f"adata is not set up; call {type(self).__name__}._setup_anndata(adata, "
                "layer_key=..., sample_key_list=[...]) first"
            )
        if cfg is None:
            cfg = load_config(None)
        if not isinstance(cfg, Config):
            raise TypeError(f"cfg must be an interscale.config.Config, got {type(cfg).__name__}")
        self.adata = adata
        self.cfg = cfg
        self.layer_key = setup.get("layer_key")
        self.sample_keys = list(setup["sample_key"])
        self.split_key = setup["split_key"]
        self.gene_names = [str(g) for g in adata.var_names]
        if len(set(self.gene_names)) != len(self.gene_names):
            dup = pd.Index(self.gene_names)[pd.Index(self.gene_names).duplicated()]
            raise ValueError(f"adata.var_names has duplicated genes, e.g. {list(dup[:5])}")
        self.history_: pd.DataFrame | None = None
        self._global_input: dict | None = None
        self._warned_seq_len = False
        self._ensure_graph(adata)
        # Initial weights come from the config seed without disturbing the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(cfg.optim.seed))
            self.module = self._build_module()
        self._init_decoder_bias(adata)
        self.is_trained_ = False

    # ------------------------------------------------------------------ helpers
    def _component_names(self) -> tuple[str, str]:
        local = self.cfg.model.local_component.name if self._local else ""
        glob = self.cfg.model.global_component.name if self._global else ""
        return local, glob

    def _build_module(self) -> InterScaleModule:
        m = self.cfg.model
        lp = m.local_component.parameters
        gp = m.global_component.parameters
        global_input_dim = None
        if self._global and not self._local:
            global_input_dim = self._prepare_global_input(self.adata)
        return InterScaleModule(
            n_genes=len(self.gene_names),
            n_embed=m.n_embed,
            local_component=m.local_component.name if self._local else None,
            global_component=self._global,
            local_kwargs={
                "hidden_dim": lp.hidden_dim,
                "num_layers": lp.num_layers,
                "dropout": lp.dropout_local,
            },
            global_kwargs={
                "n_heads": gp.n_heads,
                "dim_feedforward": gp.dim_feedforward,
                "dropout": gp.dropout_global,
                "activation": gp.activation_func,
                "num_layers": gp.num_layers,
                "attention": gp.attention,
            },
            decoder_kwargs={
                "kind": m.decoder.type,
                "hidden_dims": tuple(m.decoder.hidden_dims),
                "dropout": m.decoder.dropout_decoder,
            },
            dual_decoder=m.decoder.dual_decoder,
            mask_token=m.mask_token,
            global_input_dim=global_input_dim,
        )

    def _init_decoder_bias(self, adata: AnnData) -> None:
        """Start each decoder's output bias at the mean expression of the training cells.

        Without this the decoders start near zero while log-normalised expression sits around a
        few units, and the first epochs are spent learning the gene means.
        """
        split = adata.obs[self.split_key].astype(str).to_numpy()
        rows = np.flatnonzero(split == "train")
        matrix = _layer(adata, self.layer_key)
        mean = np.asarray(matrix[rows].mean(axis=0), dtype=np.float32).ravel()
        for decoder in (self.module.local_decoder, self.module.global_decoder):
            if decoder is None:
                continue
            bias = None
            for sub in decoder.modules():
                candidate = getattr(sub, "bias", None)
                if isinstance(candidate, torch.nn.Parameter) and candidate.shape == mean.shape:
                    bias = candidate
            if bias is not None:
                with torch.no_grad():
                    bias.copy_(torch.from_numpy(mean))

    def _prepare_global_input(self, adata: AnnData) -> int:
        """Global-only models read a fixed per-cell embedding (overridden by GlobalModel)."""
        raise NotImplementedError

    def _global_features(self, adata: AnnData) -> np.ndarray | None:
        return None

    def _ensure_graph(self, adata: AnnData) -> None:
        if "spatial_connectivities" in adata.obsp:
            return
        from interscale.pp import spatial_neighbors

        kwargs = self.cfg.dataset.spatial_neighbors_kwargs
        library_key = kwargs.library_key or self.sample_keys[0]
        if library_key not in adata.obs.columns:
            library_key = self.sample_keys[0]
        spatial_neighbors(
            adata,
            radius=kwargs.radius,
            n_neighs=kwargs.n_neighs,
            library_key=library_key,
            spatial_key=kwargs.spatial_key,
        )

    def _halo_key(self, adata: AnnData) -> str | None:
        """The halo registered for ``adata`` (its own setup, else the model's training setup)."""
        setup = adata.uns.get(_UNS_KEY, {}).get("setup")
        if setup is None:
            setup = self.adata.uns.get(_UNS_KEY, {}).get("setup", {})
        return setup.get("halo_key")

    def _graphs(
        self, adata: AnnData, lazy: bool = False
    ) -> list[SampleGraph] | Iterator[SampleGraph]:
        """The sample (or tile) graphs of ``adata``; ``lazy`` builds each one when reached."""
        plan = _GraphPlan(
            adata,
            layer_key=self.layer_key,
            sample_keys=self.sample_keys,
            split_key=self.split_key,
            connectivity_key="spatial_connectivities",
            features=self._global_features(adata),
            halo_key=self._halo_key(adata),
        )
        graphs = iter(plan) if lazy else list(plan)
        largest = int(max(plan.sizes))
        max_seq_len = self.cfg.model.global_component.parameters.max_seq_len
        if self._global and max_seq_len and largest > max_seq_len and not self._warned_seq_len:
            self._warned_seq_len = True
            warnings.warn(
                f"the largest sample has {largest} cells, more than max_seq_len={max_seq_len}; "
                "InterScale does not truncate: every cell is processed",
                UserWarning,
                stacklevel=3,
            )
        return graphs

    def _check_same_genes(self, adata: AnnData) -> None:
        genes = [str(g) for g in adata.var_names]
        if genes != self.gene_names:
            missing = [g for g in self.gene_names if g not in set(genes)]
            extra = [g for g in genes if g not in set(self.gene_names)]
            raise ValueError(
                f"adata's genes do not match the model's ({len(genes)} vs {len(self.gene_names)} "
                f"genes; missing {missing[:5]}, unexpected {extra[:5]}"
                + ("; same genes in another order" if not missing and not extra else "")
                + ")"
            )

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def summary(self) -> str:
        """A short description with the parameter count of each part."""

        def count(part) -> int:
            return 0 if part is None else sum(p.numel() for p in part.parameters())

        m = self.module
        parts = [
            ("local encoder", getattr(m, "local_encoder", None)),
            ("global encoder", getattr(m, "global_encoder", None)),
            ("local decoder", getattr(m, "local_decoder", None)),
            ("global decoder", getattr(m, "global_decoder", None)),
        ]
        lines = [f"{type(self).__name__} (interscale {__version__})"]
        for name, part in parts:
            if part is not None:
                lines.append(f"  {name:<15} {type(part).__name__:<22} {count(part):>9,d} params")
        if m.mask_token is not None:
            lines.append(
                f"  {'mask token':<15} {'Parameter':<22} {m.mask_token.numel():>9,d} params"
            )
        total = count(m)
        lines.append(f"  {'total':<38} {total:>9,d} params")
        gp = self.cfg.model.global_component.parameters
        if self._global:
            lines.append(f"  attention scope: {gp.attention}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    # ------------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int | None = None,
        early_stopping: bool | None = None,
        patience: int | None = None,
        batch_size: int | None = None,
        accelerator: str | None = None,
        progress_bar: bool = True,
        checkpoint_dir: str | os.PathLike | None = None,
        resume: bool = False,
        lr: float | None = None,
        min_delta: float | None = None,
        min_epochs: int | None = None,
        strategy: str | None = None,
    ) -> pd.DataFrame:
        """Train with masked self-supervision; the best-validation weights are kept.

        Parameters
        ----------
        max_epochs
            Epochs to run (default: ``optim.n_epochs`` of the config). The cosine schedule's
            horizon is exactly these epochs.
        early_stopping
            Stop when the validation loss has not improved (relatively, by ``min_delta``) for
            ``patience`` epochs. ``None`` takes the config's setting.
        patience
            Epochs without improvement before stopping (default: ``optim.patience``).
        batch_size
            Sample graphs per optimisation step (default: ``dataset.batch_size``).
        accelerator
            ``"auto"``, ``"cpu"`` or ``"cuda"`` (default: ``optim.accelerator``).
        progress_bar
            Show a tqdm bar with the current losses.
        checkpoint_dir
            Folder for a resumable training state, written atomically after every epoch.
        resume
            Continue from the state in ``checkpoint_dir`` (same seed -> same final weights as an
            uninterrupted run).
        lr
            Learning rate override (default: ``optim.lr``).
        min_delta
            Relative improvement that resets the patience counter (default: ``optim.min_delta``).
        min_epochs
            No early stop before this many epochs (default: ``optim.min_epochs``).
        strategy
            ``"single"`` (one process) or ``"ddp"`` (data-parallel, one process per device,
            launched with ``torchrun``; NCCL on GPUs, Gloo on CPU). ``None`` picks ``"ddp"`` when
            a ``torch.distributed`` process group is initialised or ``WORLD_SIZE`` > 1, else
            ``"single"``. Under ``"ddp"`` the global batch is still ``batch_size`` graphs, shared
            out over the ranks, so training matches one process up to floating-point rounding
            (dropout differs per rank); only rank 0 writes ``checkpoint_dir`` and shows the
            progress bar, and every rank ends with the best weights.

        Returns
        -------
        The training history (also in ``model.history_``).

        Raises
        ------
        ValueError
            On invalid settings, an unknown ``strategy``, or ``"ddp"`` outside ``torchrun`` and
            without an initialised process group.
        """
        optim = self.cfg.optim
        ds = self.cfg.dataset
        max_epochs = optim.n_epochs if max_epochs is None else max_epochs
        if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
            raise ValueError(f"max_epochs must be a positive integer, got {max_epochs!r}")
        batch_size = ds.batch_size if batch_size is None else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if early_stopping is None:
            early_stopping = bool(optim.early_stopping)
        patience = optim.patience if patience is None else patience
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        from interscale.train import resolve_strategy

        strategy = resolve_strategy(strategy)
        device = resolve_device(accelerator or optim.accelerator)
        graphs = self._graphs(self.adata)
        train_graphs = [g for g in graphs if g.split == "train"]
        val_graphs = [g for g in graphs if g.split == "val"]
        settings = TrainSettings(
            max_epochs=max_epochs,
            batch_size=batch_size,
            lr=optim.lr if lr is None else lr,
            weight_decay=optim.weight_decay,
            warmup_steps=_warmup_steps(optim.lr_warmup, max_epochs, len(train_graphs), batch_size),
            loss=optim.loss,
            pct_mask_nodes=ds.pct_mask_nodes,
            seed=optim.seed,
            early_stopping=bool(early_stopping),
            patience=int(patience),
            min_delta=optim.min_delta if min_delta is None else min_delta,
            min_epochs=optim.min_epochs if min_epochs is None else min_epochs,
            grad_clip=optim.grad_clip,
            progress_bar=progress_bar,
            checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir),
            resume=resume,
            strategy=strategy,
        )
        result = fit(self.module, train_graphs, val_graphs, settings, device)
        self.history_ = result.history
        self.best_epoch_ = result.best_epoch
        self.is_trained_ = True
        return self.history_

    def plot_history(self, ax=None, show: bool = False):
        """Plot training and validation losses per head against the epoch.

        Returns
        -------
        The matplotlib Axes.
        """
        if self.history_ is None or self.history_.empty:
            raise ValueError("no training history: call train() first")
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        h = self.history_
        for col, style in [
            ("train_loss_local", "C0--"),
            ("train_loss_global", "C1--"),
            ("val_loss_local", "C0-"),
            ("val_loss_global", "C1-"),
        ]:
            if col in h:
                ax.plot(h["epoch"], h[col], style, label=col.replace("_", " "))
        if "best" in h and h["best"].any():
            best = int(h.loc[h["best"].astype(bool), "epoch"].iloc[-1])
            ax.axvline(best, color="grey", lw=0.8, ls=":", label=f"best epoch ({best})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{self.cfg.optim.loss} loss (masked cells)")
        ax.set_title("Training history")
        ax.legend(frameon=False, fontsize=8)
        if show:
            plt.show()
        return ax

    def validation_metrics(self, split: str = "val", seed: int | None = None) -> dict[str, float]:
        """Loss and mean per-gene R^2 of each head on freshly masked cells of one split."""
        graphs = [g for g in self._graphs(self.adata) if g.split == split]
        if not graphs:
            raise ValueError(f"no samples in split {split!r}")
        return evaluate_masked(
            self.module,
            graphs,
            batch_size=self.cfg.dataset.batch_size,
            pct_mask_nodes=self.cfg.dataset.pct_mask_nodes,
            seed=self.cfg.optim.seed + 2 if seed is None else seed,
            loss=self.cfg.optim.loss,
            device=self.device,
        )

    # ------------------------------------------------------------------ outputs
    @torch.no_grad()
    def get_model_output(
        self,
        adata: AnnData | None = None,
        prefix: str = "",
        masked: bool = True,
        batch_size: int | None = None,
        attention_top_k: int = 32,
        progress_bar: bool = False,
    ) -> AnnData:
        """Write embeddings, held-out predictions and attention into ``adata``.

        Runs in eval mode without gradients, one sample at a time: each sample's graph is built
        only when it is reached and its rows are written straight into preallocated arrays, so
        memory stays near the size of the outputs. With a halo (``_setup_anndata(...,
        halo_key=...)``) a tile's halo cells are encoded as context, but only its own cells are
        masked and written; every cell is written by exactly one tile. Keys written (with
        ``prefix``): obsm ``_local_emb``/``_global_emb``, layers ``_y_pred_local``/
        ``_y_pred_global``, obsp ``_attn_matrix`` (top-k per row of the last layer's
        head-averaged attention), obs ``_cls_attention``, and ``uns["interscale"]``.

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
            Accepted for compatibility; samples are processed one at a time to bound memory.
        attention_top_k
            Attention entries kept per cell.
        progress_bar
            Show progress over samples.

        Returns
        -------
        The same AnnData object, updated in place.

        Raises
        ------
        TypeError
            If ``adata`` is not an AnnData or is a view.
        KeyError
            If the training layer is missing.
        ValueError
            If the genes differ from the model's or the layer holds NaN / infinite values.
        MemoryError
            If the dense outputs would not fit in this machine's RAM (the message gives the
            estimate); nothing is written then.
        """
        adata = self.adata if adata is None else adata
        _check_adata(adata)
        self._check_same_genes(adata)
        _check_finite_layer(_layer(adata, self.layer_key), self.layer_key)
        if attention_top_k < 1:
            raise ValueError(f"attention_top_k must be >= 1, got {attention_top_k}")
        _check_output_memory(
            adata.n_obs, len(self.gene_names), int(self.module.n_embed), attention_top_k
        )
        if adata is not self.adata:
            self._ensure_graph(adata)
        graphs = self._graphs(adata, lazy=True)
        module = self.module
        was_training = module.training
        module.eval()
        device = self.device
        n_obs, n_genes, n_embed = adata.n_obs, len(self.gene_names), module.n_embed
        local_emb = np.full((n_obs, n_embed), np.nan, np.float32) if module.has_local else None
        global_emb = np.full((n_obs, n_embed), np.nan, np.float32) if module.has_global else None
        y_local = (
            np.full((n_obs, n_genes), np.nan, np.float32)
            if module.local_decoder is not None
            else None
        )
        y_global = np.full((n_obs, n_genes), np.nan, np.float32) if module.has_global else None
        cls_att = np.full(n_obs, np.nan, np.float32) if module.has_global else None
        att_rows, att_cols, att_vals = [], [], []
        fold_gen = torch.Generator().manual_seed(self.cfg.optim.seed + 3)
        pct = self.cfg.dataset.pct_mask_nodes
        written = np.zeros(n_obs, dtype=bool)
        # scipy stores the attention's indices as int32 when they fit: keep the pieces as small
        index_dtype = np.int32 if n_obs < np.iinfo(np.int32).max else np.int64

        from tqdm.auto import tqdm

        # Graphs are built one at a time (only one sample's dense input in memory) and each
        # writes its own (core) cells' rows into the preallocated outputs; halo cells are
        # context only and are written by the tile they belong to.
        for graph in tqdm(graphs, desc="inference", unit="sample", disable=not progress_bar):
            rows, core = _claim_core_rows(graph, written)
            batch = _single_batch(graph).to(device)
            out = module(
                batch.x,
                batch.edge_index,
                batch.ptr,
                mask=None,
                features=batch.features,
                need_attention=module.has_global,
                attention_top_k=attention_top_k,
            )
            if local_emb is not None:
                local_emb[rows] = _core_numpy(out.local_emb, core)
            if global_emb is not None:
                global_emb[rows] = _core_numpy(out.global_emb, core)
                cls_att[rows] = _core_numpy(out.cls_attention, core)
                r, c, v = _attention_triplet(out.attention)
                if core is not None:
                    # rows of core cells only; their columns may point at halo cells
                    keep = core[r]
                    r, c, v = r[keep], c[keep], v[keep]
                nodes = graph.cell_index.numpy()
                att_rows.append(nodes[r].astype(index_dtype))
                att_cols.append(nodes[c].astype(index_dtype))
                att_vals.append(v)
            if not masked:
                if y_local is not None:
                    y_local[rows] = _core_numpy(out.y_local, core)
                if y_global is not None:
                    y_global[rows] = _core_numpy(out.y_global, core)
            else:
                nodes = graph.cell_index.numpy()
                eligible = graph.core
                for mask in fold_masks(graph.n_cells, pct, fold_gen, eligible=eligible):
                    mask_dev = mask.to(device)
                    fold = module(
                        batch.x, batch.edge_index, batch.ptr, mask=mask_dev, features=batch.features
                    )
                    sel = mask.numpy()
                    if y_local is not None:
                        y_local[nodes[sel]] = fold.y_local[mask_dev].float().cpu().numpy()
                    if y_global is not None:
                        y_global[nodes[sel]] = fold.y_global[mask_dev].float().cpu().numpy()
                    del fold
            del batch, out, graph
        module.train(was_training)
        if not written.all():
            raise RuntimeError(
                f"inference left {int((~written).sum())} cell(s) without outputs: they belong to "
                "no sample graph"
            )

        for name, arr in [
            ("local_emb", local_emb),
            ("global_emb", global_emb),
            ("y_local", y_local),
            ("y_global", y_global),
        ]:
            if arr is not None and not np.isfinite(arr).all():
                raise FloatingPointError(f"inference produced non-finite values in {name}")

        if local_emb is not None:
            adata.obsm[f"{prefix}_local_emb"] = local_emb
        if global_emb is not None:
            adata.obsm[f"{prefix}_global_emb"] = global_emb
        if y_local is not None:
            adata.layers[f"{prefix}_y_pred_local"] = y_local
        if y_global is not None:
            adata.layers[f"{prefix}_y_pred_global"] = y_global
        if global_emb is not None:
            attn = sp.csr_matrix(
                (
                    np.concatenate(att_vals).astype(np.float32),
                    (np.concatenate(att_rows), np.concatenate(att_cols)),
                ),
                shape=(n_obs, n_obs),
            )
            attn.sort_indices()
            adata.obsp[f"{prefix}_attn_matrix"] = attn
            adata.obs[f"{prefix}_cls_attention"] = cls_att
        self._record_uns(adata, prefix=prefix, masked=masked, attention_top_k=attention_top_k)
        return adata

    def _record_uns(self, adata: AnnData, **extra) -> None:
        uns = dict(adata.uns.get(_UNS_KEY, {}))
        uns.update(
            {
                "version": __version__,
                "model_class": type(self).__name__,
                "layer_key": self.layer_key,
                "sample_key": list(self.sample_keys),
                # JSON text: h5ad cannot store the None values a config holds
                "config": json.dumps(self.cfg.to_dict(), sort_keys=True),
                "n_embed": int(self.module.n_embed),
                "output": {k: v for k, v in extra.items()},
            }
        )
        if self.history_ is not None and not self.history_.empty:
            h = self.history_
            summary = {"epochs_run": int(len(h)), "best_epoch": int(self.best_epoch_)}
            best = h[h["epoch"] == self.best_epoch_]
            for col in h.columns:
                if col.startswith(("val_", "train_")) and len(best):
                    summary[col] = float(best[col].iloc[0])
            uns["training"] = summary
        adata.uns[_UNS_KEY] = uns

    # ------------------------------------------------------------------ save / load
    def _file_name(self, prefix: str | None = None) -> str:
        ds = self.cfg.dataset
        local, glob = self._component_names()
        dual = (
            "dual_" if self.cfg.model.decoder.dual_decoder and self._local and self._global else ""
        )
        name = (
            f"{dual}{ds.name}_{ds.prediction_task[:4]}_{ds.prediction_level}_"
            f"{self.cfg.optim.seed}_{local}_{glob}_model.pt"
        )
        return f"{prefix}{name}" if prefix else name

    def _checkpoint(self) -> dict:
        history = None
        if self.history_ is not None:
            history = {c: [_plain(v) for v in self.history_[c].tolist()] for c in self.history_}
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "interscale_version": __version__,
            "model_class": type(self).__name__,
            "components": {"local": self._local, "global": self._global},
            "state_dict": {k: v.detach().cpu() for k, v in self.module.state_dict().items()},
            "config": _yaml_safe(self.cfg.to_dict()),
            "gene_names": list(self.gene_names),
            "layer_key": self.layer_key,
            "sample_key": list(self.sample_keys),
            "n_embed": int(self.module.n_embed),
            "history": history,
            "best_epoch": getattr(self, "best_epoch_", None),
            "global_input": self._global_input,
        }

    def save(
        self, dir_path: str | os.PathLike, overwrite: bool = False, prefix: str | None = None
    ) -> Path:
        """Write one self-describing checkpoint file, atomically.

        Parameters
        ----------
        dir_path
            Folder (created if needed).
        overwrite
            Replace an existing file of the same name; otherwise raise.
        prefix
            Prepended to the published file name
            ``{dual_}{dataset.name}_{task[:4]}_{level}_{seed}_{local}_{global}_model.pt``.

        Returns
        -------
        The path of the file written.

        Raises
        ------
        FileExistsError
            If the file exists and ``overwrite`` is false.
        """
        folder = Path(dir_path)
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"{folder} exists and is not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self._file_name(prefix)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        buffer = io.BytesIO()
        torch.save(self._checkpoint(), buffer)
        atomic_write_bytes(buffer.getvalue(), path, fsync=True)
        return path

    @classmethod
    def load(
        cls,
        dir_path: str | os.PathLike,
        adata: AnnData,
        cfg: Config | None = None,
        model_name: str | None = None,
        local_component: bool = False,
        global_component: bool = False,
        accelerator: str | None = "cpu",
        verbose: bool = True,
        **_ignored,
    ):
        """Load a checkpoint written by :meth:`save` (or a published-format state dict).

        Parameters
        ----------
        dir_path
            Folder holding the checkpoint, or the checkpoint file itself.
        adata
            AnnData set up with ``_setup_anndata``; its genes must match the checkpoint's.
        cfg
            Config; default: the one stored in the checkpoint. When given, it must agree with the
            checkpoint on every architecture setting.
        model_name
            File name (or stem, or path) of the checkpoint inside ``dir_path``.
        local_component, global_component
            Published flags; when either is true they must match the class's components.
        accelerator
            Device to load onto.
        verbose
            Print one line about what was loaded.

        Raises
        ------
        FileNotFoundError
            If no checkpoint is found.
        ValueError
            If the file is not a readable checkpoint or does not match the AnnData or config.
        """
        from interscale.model._checkpoint import read_checkpoint, resolve_checkpoint_path

        if (local_component or global_component) and (
            bool(local_component) != cls._local or bool(global_component) != cls._global
        ):
            raise ValueError(
                f"{cls.__name__} has local={cls._local}, global={cls._global}; the flags "
                f"local_component={local_component}, global_component={global_component} disagree"
            )
        path = resolve_checkpoint_path(dir_path, model_name, cls, cfg)
        ckpt = read_checkpoint(path)
        if ckpt["kind"] == "native":
            stored_cfg = config_from_dict(ckpt["config"])
            if cfg is None:
                cfg = stored_cfg
            else:
                _check_config_agrees(cfg, stored_cfg, path)
            comps = ckpt.get("components", {})
            if comps and (comps.get("local") != cls._local or comps.get("global") != cls._global):
                raise ValueError(
                    f"{path.name} holds a {ckpt.get('model_class')} (local={comps.get('local')}, "
                    f"global={comps.get('global')}), not a {cls.__name__}"
                )
            genes = [str(g) for g in adata.var_names]
            if genes != list(ckpt["gene_names"]):
                stored = list(ckpt["gene_names"])
                missing = [g for g in stored if g not in set(genes)][:5]
                raise ValueError(
                    f"genes of adata ({len(genes)}) do not match the checkpoint's ({len(stored)}): "
                    f"missing from adata {missing}"
                    + ("; same genes in another order" if sorted(genes) == sorted(stored) else "")
                )
            if int(ckpt["n_embed"]) != cfg.model.n_embed:
                raise ValueError(
                    f"n_embed mismatch: checkpoint {ckpt['n_embed']}, config {cfg.model.n_embed}"
                )
        elif cfg is None:
            raise ValueError(
                f"{path.name} is a published-format state dict without a config; pass cfg="
            )
        model = cls.__new__(cls)
        model._global_input_from_checkpoint = ckpt.get("global_input")
        BaseModel.__init__(model, adata, cfg)
        if ckpt["kind"] == "native":
            state = ckpt["state_dict"]
        else:
            from interscale.model._checkpoint import map_published_state_dict

            state = map_published_state_dict(ckpt["state_dict"], model.module)
        result = model.module.load_state_dict(state, strict=False)
        problems = list(result.missing_keys) + list(result.unexpected_keys)
        if ckpt["kind"] == "native" and problems:
            raise ValueError(
                f"{path.name} does not fit this architecture: missing {result.missing_keys[:5]}, "
                f"unexpected {result.unexpected_keys[:5]}"
            )
        if ckpt["kind"] != "native" and result.missing_keys:
            non_mask = [k for k in result.missing_keys if k != "mask_token"]
            if non_mask:
                raise ValueError(f"{path.name} ({ckpt['kind']}) lacks weights for {non_mask[:5]}")
        model.module.to(resolve_device(accelerator))
        if ckpt.get("history"):
            model.history_ = pd.DataFrame(ckpt["history"])
            model.best_epoch_ = ckpt.get("best_epoch")
        model.is_trained_ = True
        if verbose:
            print(f"Loaded {ckpt['description']} from {path}")
        return model


def _warmup_steps(warmup_epochs: int | None, max_epochs: int, n_train: int, batch_size: int) -> int:
    """Warmup in optimisation steps.

    The published ``lr_warmup`` counts epochs. It is capped at half of the run so that a short run
    (fewer epochs than the warmup) still reaches the full learning rate before decaying.
    """
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    epochs = min(int(warmup_epochs or 0), max_epochs // 2)
    return epochs * steps_per_epoch


def _single_batch(graph: SampleGraph):
    """A batch of one graph that shares the graph's tensors (no copy of a large sample's x)."""
    from interscale.graphs import GraphBatch

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


def _plain(value):
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _yaml_safe(obj):
    if isinstance(obj, dict):
        return {str(k): _yaml_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_yaml_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None:
        return None
    return obj


_ARCH_FIELDS = (
    "model.n_embed",
    "model.mask_token",
    "model.local_component.name",
    "model.local_component.parameters.hidden_dim",
    "model.local_component.parameters.num_layers",
    "model.global_component.name",
    "model.global_component.parameters.n_heads",
    "model.global_component.parameters.dim_feedforward",
    "model.global_component.parameters.num_layers",
    "model.global_component.parameters.activation_func",
    "model.global_component.parameters.attention",
    "model.decoder.type",
    "model.decoder.hidden_dims",
    "model.decoder.dual_decoder",
)


def _get_path(cfg: Config, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return list(obj) if isinstance(obj, tuple) else obj


def _check_config_agrees(cfg: Config, stored: Config, path: Path) -> None:
    for field in _ARCH_FIELDS:
        mine, theirs = _get_path(cfg, field), _get_path(stored, field)
        if mine != theirs:
            raise ValueError(
                f"config mismatch with checkpoint {path.name}: {field} is {mine!r} in the given "
                f"config but {theirs!r} in the checkpoint"
            )
