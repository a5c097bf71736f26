"""The user-facing model: a thin class over setup, the torch module and checkpoints, each of
which lives in its own module, with the methods of training (``_training``) and of outputs
(``_outputs``) mixed in."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from interscale._anndata import check_anndata, layer_matrix, read_setup
from interscale._version import __version__
from interscale.config import Config, load_config
from interscale.graphs import GraphPlan, SampleGraph
from interscale.model._checkpoint import (
    checkpoint_file_name,
    checkpoint_payload,
    load_model,
    write_checkpoint,
)
from interscale.model._module import InterScaleModule, init_decoder_bias, module_from_config
from interscale.model._outputs import OutputsMixin
from interscale.model._setup import check_unique_genes
from interscale.model._setup import setup_anndata as record_setup
from interscale.model._training import TrainingMixin
from interscale.names import Key
from interscale.nn import describe_attention
from interscale.pp import spatial_graph_from_config

__all__ = ["BaseModel"]


class BaseModel(TrainingMixin, OutputsMixin):
    """Shared machinery of :class:`CombinedModel`, :class:`LocalModel` and :class:`GlobalModel`.

    Subclasses set ``_local`` and ``_global`` (which components exist).
    """

    _local: bool = True
    _global: bool = True

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup_anndata(
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

        The entry point before building a model. ``_setup_anndata`` is the same method under
        the published tutorials' name. :meth:`load` replays the setup stored in a checkpoint
        when ``adata`` is not set up yet.

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
            written as outputs of that tile. Halo cells of another split are left out, warned.

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
        record_setup(
            adata,
            model_name=cls.__name__,
            layer_key=layer_key,
            sample_key_list=sample_key_list,
            prediction_task=prediction_task,
            prediction_obs=prediction_obs,
            group_key=group_key,
            split_key=split_key,
            view_registry=view_registry,
            halo_key=halo_key,
        )

    # the published tutorials' spelling, kept working with exactly their arguments
    _setup_anndata = setup_anndata

    # ------------------------------------------------------------------ init
    def __init__(
        self, adata: AnnData, cfg: Config | None = None, *, global_input: dict | None = None
    ) -> None:
        """Build the model for a set-up AnnData; ``adata`` is not modified.

        Parameters
        ----------
        adata
            AnnData prepared with :meth:`setup_anndata`.
        cfg
            Config (default: all defaults).
        global_input
            The stored input embedding of a :class:`GlobalModel` (as a checkpoint holds it);
            ``None`` fits it from ``adata``.
        """
        check_anndata(adata, type(self).__name__)
        setup = (adata.uns.get(Key.uns.ROOT) or {}).get(Key.uns.SETUP)
        if setup is None:
            raise ValueError(
                f"adata is not set up; call {type(self).__name__}.setup_anndata(adata, "
                "layer_key=..., sample_key_list=[...]) first"
            )
        if cfg is None:
            cfg = load_config(None)
        if not isinstance(cfg, Config):
            raise TypeError(f"cfg must be an interscale.config.Config, got {type(cfg).__name__}")
        check_unique_genes(adata)
        self.adata = adata
        self.cfg = cfg
        self.layer_key = setup.get("layer_key")
        self.sample_keys = list(setup["sample_key"])
        self.split_key = setup["split_key"]
        self._setup = dict(setup)
        self.gene_names = [str(g) for g in adata.var_names]
        self.history_: pd.DataFrame | None = None
        self.best_epoch_: int | None = None
        self._global_input: dict | None = global_input
        self._warned_seq_len = False
        self._graph, self.graph_source_ = self._spatial_graph(adata)
        # Initial weights come from the config seed without disturbing the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(cfg.optim.seed))
            self.module = self._build_module()
        self._init_decoder_bias(adata)
        self.is_trained_ = False

    # ------------------------------------------------------------------ helpers
    def _build_module(self) -> InterScaleModule:
        global_input_dim = None
        if self._global and not self._local:
            global_input_dim = self._prepare_global_input(self.adata)
        return module_from_config(
            self.cfg.model, len(self.gene_names), self._local, self._global, global_input_dim
        )

    def _init_decoder_bias(self, adata: AnnData) -> None:
        split = adata.obs[self.split_key].astype(str).to_numpy()
        rows = np.flatnonzero(split == "train")
        matrix = layer_matrix(adata, self.layer_key)
        init_decoder_bias(self.module, np.asarray(matrix[rows].mean(axis=0)).ravel())

    def _prepare_global_input(self, adata: AnnData) -> int:
        """Global-only models read a fixed per-cell embedding (overridden by GlobalModel)."""
        raise NotImplementedError

    def _global_features(self, adata: AnnData) -> np.ndarray | None:
        return None

    def _spatial_graph(self, adata: AnnData):
        """The graph of ``adata`` and where it came from; never written into ``adata``.

        A stored ``obsp["spatial_connectivities"]`` is used as it is (referred to by its key)
        unless the config sets ``spatial_neighbors_kwargs.rebuild``; otherwise the config's
        graph is built in memory by
        :func:`interscale.pp.spatial_graph_from_config`.
        """
        key = Key.obsp.spatial_connectivities()
        kw = self.cfg.dataset.spatial_neighbors_kwargs
        if key in adata.obsp and not kw.rebuild:
            return key, f"adata.obsp[{key!r}]"
        graph = spatial_graph_from_config(adata, self.cfg, self.sample_keys, key_added=None)
        rule = f"radius {kw.radius}" if kw.radius is not None else f"{kw.n_neighs} nearest"
        return graph, f"built from the config ({rule}, obsm[{kw.spatial_key!r}])"

    def _halo_key(self, adata: AnnData) -> str | None:
        """The halo registered for ``adata`` (its own setup, else the model's training setup)."""
        setup = read_setup(adata)
        if setup is None:
            setup = read_setup(self.adata) or {}
        return setup.get("halo_key")

    def _graphs(
        self, adata: AnnData, lazy: bool = False, graph=None
    ) -> list[SampleGraph] | Iterator[SampleGraph]:
        """The sample (or tile) graphs of ``adata``; ``lazy`` builds each one when reached."""
        if graph is None:
            graph = self._graph if adata is self.adata else self._spatial_graph(adata)[0]
        plan = GraphPlan(
            adata,
            layer_key=self.layer_key,
            sample_keys=self.sample_keys,
            split_key=self.split_key,
            connectivity_key=graph,
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
        if self._global:
            lines.append(f"  {describe_attention(self.cfg, self.device)}")
        lines.append(f"  spatial graph: {self.graph_source_}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    # ------------------------------------------------------------------ save / load
    def _file_name(self, prefix: str | None = None) -> str:
        return checkpoint_file_name(self.cfg, self._local, self._global, prefix)

    def _checkpoint(self) -> dict:
        return checkpoint_payload(self)

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
        return write_checkpoint(self._checkpoint(), dir_path, self._file_name(prefix), overwrite)

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
        **kwargs: Any,
    ):
        """Load a checkpoint written by :meth:`save` (or a published-format state dict).

        Parameters
        ----------
        dir_path
            Folder holding the checkpoint, or the checkpoint file itself.
        adata
            AnnData whose genes match the checkpoint's. When it is not set up yet, the setup
            stored in the checkpoint (layer, sample and split keys, halo) is replayed on it, so
            no :meth:`setup_anndata` call is needed; when it is, its own setup is used.
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
        **kwargs
            None are accepted: a misspelt argument raises a ``TypeError`` naming it.

        Raises
        ------
        FileNotFoundError
            If no checkpoint is found.
        ValueError
            If the file is not a readable checkpoint or does not match the AnnData or config,
            or a tensor's shape differs from the model's (a transposed weight is refused); if
            ``adata`` is not set up and the checkpoint stores no setup (a published-format
            state dict). A failed load leaves ``adata`` as it was.
        TypeError
            On an unknown keyword argument.
        """
        return load_model(
            cls, dir_path, adata, cfg, model_name, local_component, global_component,
            accelerator, verbose, kwargs,
        )  # fmt: skip
