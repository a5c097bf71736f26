"""The ``dataset`` section: data location, AnnData keys, batching, masking, spatial graph."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ._aliases import DATASET_KEY_ALIASES
from ._checks import (
    ConfigError,
    ConfigTypeError,
    _as_bool,
    _as_choice,
    _as_float,
    _as_int,
    _as_opt_str,
    _as_str,
    _as_str_tuple,
    _as_subset,
    _is_unset,
    _require,
    _set,
    _show,
)
from ._section import _Section

__all__ = ["DatasetConfig", "SpatialNeighborsConfig"]


@dataclass(frozen=True)
class SpatialNeighborsConfig(_Section):
    """``dataset.spatial_neighbors_kwargs`` (published spelling ``spatial_neigbors_kwargs``).

    Exactly one of ``radius`` and ``n_neighs`` is set. Giving only ``n_neighs`` in a file selects
    a k-nearest-neighbour graph (``radius`` becomes ``None``); giving both is an error.

    Attributes
    ----------
    radius
        Radius graph: connect cells closer than this, in the units of ``obsm[spatial_key]``
        (default 50.0, as published), or ``None``.
    n_neighs
        k-nearest-neighbour graph with this many neighbours, or ``None`` (default).
    coord_type
        Compatibility only: ``"generic"`` (default), ``"grid"`` or ``None``.
    library_key
        obs column whose values separate samples when the graph is built; ``None`` (default)
        means the sample keys (``dataset.sample_key``).
    spatial_key
        obsm key of the coordinates (default ``"spatial"``).
    rebuild
        Build the graph from these settings even when ``obsp["spatial_connectivities"]``
        exists (e.g. from ``squidpy.gr.spatial_neighbors``); ``False`` (default) uses a stored
        graph as it is, and the model says which graph it used (``model.graph_source_``).
    """

    _PATH: ClassVar[str] = "dataset.spatial_neighbors_kwargs"

    radius: float | None = 50.0
    n_neighs: int | None = None
    coord_type: str | None = "generic"
    library_key: str | None = None
    spatial_key: str = "spatial"
    rebuild: bool = False

    @classmethod
    def _prepare(cls, kwargs: dict[str, Any]) -> None:
        # The default radius must not collide with a user who asks for a kNN graph.
        if "radius" not in kwargs and not _is_unset(kwargs.get("n_neighs")):
            kwargs["radius"] = None

    def __post_init__(self) -> None:
        p = self._PATH
        radius = None if _is_unset(self.radius) else self.radius
        if radius is not None:
            radius = _as_float(radius, f"{p}.radius", low=0, low_open=True)
        n_neighs = None if _is_unset(self.n_neighs) else self.n_neighs
        if n_neighs is not None:
            n_neighs = _as_int(n_neighs, f"{p}.n_neighs", minimum=1)
        if (radius is None) == (n_neighs is None):
            hint = ""
            if radius is not None:
                # Published configs carried both (defaults 50 and 6); squidpy then used radius.
                hint = "; set n_neighs: null for a radius graph or radius: null for a kNN graph"
            raise ConfigError(
                f"{p}: set exactly one of 'radius' and 'n_neighs', got radius={radius} and "
                f"n_neighs={n_neighs}{hint}"
            )
        _set(self, "radius", radius)
        _set(self, "n_neighs", n_neighs)
        coord = None if _is_unset(self.coord_type) else self.coord_type
        if coord is not None:
            _as_choice(coord, f"{p}.coord_type", ("generic", "grid"))
        _set(self, "coord_type", coord)
        _set(self, "library_key", _as_opt_str(self.library_key, f"{p}.library_key"))
        _as_str(self.spatial_key, f"{p}.spatial_key")
        if not self.spatial_key:
            raise ConfigError(f"{p}.spatial_key must not be empty")
        _as_bool(self.rebuild, f"{p}.rebuild")


@dataclass(frozen=True)
class DatasetConfig(_Section):
    """``dataset``.

    Attributes
    ----------
    h5ad_data
        Path of the ``.h5ad`` file, kept as written (relative to the current working directory);
        ``None`` (default; ``""`` is read as ``None``) means the built-in synthetic dataset.
    name
        Dataset name (default ``""``).
    description
        Compatibility only (default ``""``).
    prediction_task
        ``"regression"`` (default) or ``"classification"``.
    prediction_obs
        obs column to predict; required for classification (default ``None``).
    prediction_level
        ``"node"`` (default) or ``"graph"``.
    layer_key
        Layer the model reads and predicts; ``None`` (default) means ``.X``.
    counts_layer
        Where ``interscale train`` finds the counts it normalises into ``layer_key`` when that
        layer is missing: ``"auto"`` (default: ``layers["counts"]``, else ``layers["raw"]``,
        else ``X``), ``"X"``, or a layer name.
    sample_key
        obs columns whose value combinations define the samples (one graph each); a single
        string is accepted and wrapped (default ``()``). Early published versions called this
        ``library_key`` (accepted as an alias).
    group_label
        Compatibility only (default ``None``).
    split_key
        obs column holding the train/val/test split (default ``"split"``).
    tile_max_cells
        Cut each sample into spatially compact tiles of at most this many cells before
        splitting (:func:`interscale.pp.tile`, a k-d split at the median coordinates), for a
        file holding a single section; ``None`` (default) uses the samples as they are. The
        tiles then replace the samples as graph units and as the units that
        ``interscale train`` assigns to train / val / test, so no tile is in two splits. Needs
        a single ``sample_key``.
    tile_key
        obs column the tile labels (``"<sample>/<k>"``) are written to when ``tile_max_cells``
        is set (default ``"tile"``); must differ from ``sample_key`` and ``split_key``. A file
        that already holds this column is used as it is if :func:`interscale.pp.tile` wrote it
        with the same ``tile_max_cells`` and sample column, and refused otherwise.
    spatial_neighbors_kwargs
        :class:`SpatialNeighborsConfig`.
    batch_size
        Graphs (samples) per batch, >= 1 (default 32).
    train_size, val_size, test_size
        Shares of whole samples that ``interscale train`` assigns to train / val / test with
        :func:`interscale.pp.split_samples` (seed ``optim.seed``) when the data has no
        ``split_key`` column (defaults 0.7, 0.2, 0.1); each in [0, 1] with
        ``train_size + val_size <= 1``.
    num_features, num_classes
        Compatibility only (default -1; the published code filled them in at run time).
    k_folds
        Compatibility only (default 0).
    stratify_group
        obs column (constant within each sample) that such a split is stratified by (default
        ``None``).
    pct_mask_nodes
        Fraction of the cells of every graph masked at each training step, in (0, 1)
        (default 0.2).
    segmentation_robustness
        Compatibility only: ``None`` (default) or ``[node_fraction, overflow_fraction]``.
    fine_tuning
        Compatibility only (default ``()``).
    subset_dict
        Compatibility only: obs column -> values to keep (default empty). Stored as a tuple of
        ``(column, values)`` pairs; :meth:`Config.to_dict` gives a mapping back.
    obs_split
        Compatibility only (default ``None``).
    """

    _PATH: ClassVar[str] = "dataset"
    _ALIASES: ClassVar[dict[str, str]] = DATASET_KEY_ALIASES
    _NESTED: ClassVar[dict[str, Callable[[], type]]] = {
        "spatial_neighbors_kwargs": lambda: SpatialNeighborsConfig
    }

    h5ad_data: str | None = None
    name: str = ""
    description: str = ""
    prediction_task: str = "regression"
    prediction_obs: str | None = None
    prediction_level: str = "node"
    layer_key: str | None = None
    counts_layer: str = "auto"
    sample_key: tuple[str, ...] = ()
    group_label: str | None = None
    split_key: str = "split"
    tile_max_cells: int | None = None
    tile_key: str = "tile"
    spatial_neighbors_kwargs: SpatialNeighborsConfig = field(default_factory=SpatialNeighborsConfig)
    batch_size: int = 32
    train_size: float = 0.7
    val_size: float = 0.2
    test_size: float = 0.1
    num_features: int = -1
    num_classes: int = -1
    k_folds: int = 0
    stratify_group: str | None = None
    pct_mask_nodes: float = 0.2
    segmentation_robustness: tuple[float, float] | None = None
    fine_tuning: tuple[str, ...] = ()
    subset_dict: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    obs_split: str | None = None

    def __post_init__(self) -> None:
        p = self._PATH
        for name in ("h5ad_data", "prediction_obs", "layer_key", "group_label"):
            _set(self, name, _as_opt_str(getattr(self, name), f"{p}.{name}"))
        for name in ("stratify_group", "obs_split"):
            _set(self, name, _as_opt_str(getattr(self, name), f"{p}.{name}"))
        _as_str(self.name, f"{p}.name")
        _as_str(self.counts_layer, f"{p}.counts_layer")
        if not self.counts_layer:
            raise ConfigError(f"{p}.counts_layer must not be empty (use 'auto' or 'X')")
        _as_str(self.description, f"{p}.description")
        _as_choice(self.prediction_task, f"{p}.prediction_task", ("regression", "classification"))
        _as_choice(self.prediction_level, f"{p}.prediction_level", ("node", "graph"))
        _set(self, "sample_key", _as_str_tuple(self.sample_key, f"{p}.sample_key"))
        if any(not k for k in self.sample_key):
            raise ConfigError(f"{p}.sample_key must not contain empty names, got {self.sample_key}")
        if len(set(self.sample_key)) != len(self.sample_key):
            raise ConfigError(f"{p}.sample_key has repeated names: {list(self.sample_key)}")
        _as_str(self.split_key, f"{p}.split_key")
        if not self.split_key:
            raise ConfigError(f"{p}.split_key must not be empty")
        self._check_tiling()
        _require(self, "spatial_neighbors_kwargs", SpatialNeighborsConfig, p)
        _set(self, "batch_size", _as_int(self.batch_size, f"{p}.batch_size", minimum=1))
        for name in ("train_size", "val_size", "test_size"):
            value = _as_float(getattr(self, name), f"{p}.{name}", low=0, high=1)
            _set(self, name, value)
        if self.train_size + self.val_size > 1 + 1e-9:
            raise ConfigError(
                f"{p}.train_size + {p}.val_size must be <= 1, got "
                f"{self.train_size} + {self.val_size}"
            )
        _set(self, "num_features", _as_int(self.num_features, f"{p}.num_features", minimum=-1))
        _set(self, "num_classes", _as_int(self.num_classes, f"{p}.num_classes", minimum=-1))
        _set(self, "k_folds", _as_int(self.k_folds, f"{p}.k_folds", minimum=0))
        pct = _as_float(
            self.pct_mask_nodes, f"{p}.pct_mask_nodes", low=0, high=1, low_open=True, high_open=True
        )
        _set(self, "pct_mask_nodes", pct)
        seg = self.segmentation_robustness
        if _is_unset(seg):
            seg = None
        else:
            path = f"{p}.segmentation_robustness"
            if not isinstance(seg, list | tuple) or len(seg) != 2:
                raise ConfigTypeError(
                    f"{path} must be null or a list [node_fraction, overflow_fraction], "
                    f"got {_show(seg)}"
                )
            seg = tuple(_as_float(v, f"{path}[{i}]", low=0, high=1) for i, v in enumerate(seg))
        _set(self, "segmentation_robustness", seg)
        _set(self, "fine_tuning", _as_str_tuple(self.fine_tuning, f"{p}.fine_tuning"))
        subset = () if _is_unset(self.subset_dict) else self.subset_dict
        _set(self, "subset_dict", _as_subset(subset, f"{p}.subset_dict"))

    def _check_tiling(self) -> None:
        p = self._PATH
        tile = self.tile_max_cells
        if not _is_unset(tile):
            tile = _as_int(tile, f"{p}.tile_max_cells", minimum=1)
        _set(self, "tile_max_cells", None if _is_unset(tile) else tile)
        _as_str(self.tile_key, f"{p}.tile_key")
        if not self.tile_key:
            raise ConfigError(f"{p}.tile_key must not be empty")
        if self.tile_max_cells is None:
            return
        if len(self.sample_key) > 1:
            raise ConfigError(
                f"{p}.tile_max_cells cuts the samples of one obs column into tiles; "
                f"{p}.sample_key names {len(self.sample_key)} ({list(self.sample_key)}): "
                "give a single column"
            )
        if self.tile_key in self.sample_key or self.tile_key == self.split_key:
            raise ConfigError(
                f"{p}.tile_key {self.tile_key!r} must differ from {p}.sample_key "
                f"{list(self.sample_key)} and {p}.split_key {self.split_key!r}: the tiles are "
                "written to a column of their own"
            )
