"""The ``dataset`` section: data location, AnnData keys, batching, masking, spatial graph."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._aliases import DATASET_KEY_ALIASES
from ._checks import (
    _OPT_STR,
    ConfigError,
    ConfigTypeError,
    _as_bool,
    _as_float,
    _as_str,
    _as_str_tuple,
    _as_subset,
    _choice,
    _float,
    _int,
    _is_unset,
    _nonempty,
    _optional,
    _Section,
    _show,
    _value,
)

__all__ = ["DatasetConfig", "SpatialNeighborsConfig"]


@dataclass(frozen=True)
class SpatialNeighborsConfig(_Section, path="dataset.spatial_neighbors_kwargs"):
    """``dataset.spatial_neighbors_kwargs`` (published spelling ``spatial_neigbors_kwargs``).

    Exactly one of ``radius`` and ``n_neighs`` is set. Giving only ``n_neighs`` in a file selects
    a k-nearest-neighbour graph (``radius`` becomes ``None``); giving both is an error.

    Attributes
    ----------
    radius
        Radius graph: connect cells closer than this, in the units of ``obsm[spatial_key]``
        (default 50.0), or ``None``.
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

    radius: float | None = _value(50.0, _optional(_float(low=0, low_open=True)))
    n_neighs: int | None = _value(None, _optional(_int(minimum=1)))
    coord_type: str | None = _value("generic", _optional(_choice(("generic", "grid"))))
    library_key: str | None = _value(None, _OPT_STR)
    spatial_key: str = _value("spatial", _nonempty())
    rebuild: bool = _value(False, _as_bool)

    @classmethod
    def _prepare(cls, kwargs: dict[str, Any], given: set[str]) -> None:
        # Giving one of the two graph kinds clears the other, so that the default radius (or an
        # overridden config's old one) does not collide with a kNN graph asked for.
        for key, other in (("n_neighs", "radius"), ("radius", "n_neighs")):
            if key in given and other not in given and not _is_unset(kwargs[key]):
                kwargs[other] = None

    def _validate(self) -> None:
        if (self.radius is None) == (self.n_neighs is None):
            hint = ""
            if self.radius is not None:
                # Published configs carried both (defaults 50 and 6); squidpy then used radius.
                hint = "; set n_neighs: null for a radius graph or radius: null for a kNN graph"
            raise ConfigError(
                f"{self._PATH}: set exactly one of 'radius' and 'n_neighs', got "
                f"radius={self.radius} and n_neighs={self.n_neighs}{hint}"
            )


def _sample_keys(value: Any, path: str) -> tuple[str, ...]:
    keys = _as_str_tuple(value, path)
    if any(not k for k in keys):
        raise ConfigError(f"{path} must not contain empty names, got {keys}")
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{path} has repeated names: {list(keys)}")
    return keys


def _fraction_pair(value: Any, path: str) -> tuple[float, ...]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ConfigTypeError(
            f"{path} must be null or a list [node_fraction, overflow_fraction], got {_show(value)}"
        )
    return tuple(_as_float(v, f"{path}[{i}]", low=0, high=1) for i, v in enumerate(value))


_SHARE = _float(low=0, high=1)


@dataclass(frozen=True)
class DatasetConfig(_Section, path="dataset", aliases=DATASET_KEY_ALIASES):
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

    h5ad_data: str | None = _value(None, _OPT_STR)
    name: str = _value("", _as_str)
    description: str = _value("", _as_str)
    prediction_task: str = _value("regression", _choice(("regression", "classification")))
    prediction_obs: str | None = _value(None, _OPT_STR)
    prediction_level: str = _value("node", _choice(("node", "graph")))
    layer_key: str | None = _value(None, _OPT_STR)
    counts_layer: str = _value("auto", _nonempty(" (use 'auto' or 'X')"))
    sample_key: tuple[str, ...] = _value((), _sample_keys)
    group_label: str | None = _value(None, _OPT_STR)
    split_key: str = _value("split", _nonempty())
    tile_max_cells: int | None = _value(None, _optional(_int(minimum=1)))
    tile_key: str = _value("tile", _nonempty())
    spatial_neighbors_kwargs: SpatialNeighborsConfig = field(default_factory=SpatialNeighborsConfig)
    batch_size: int = _value(32, _int(minimum=1))
    train_size: float = _value(0.7, _SHARE)
    val_size: float = _value(0.2, _SHARE)
    test_size: float = _value(0.1, _SHARE)
    num_features: int = _value(-1, _int(minimum=-1))
    num_classes: int = _value(-1, _int(minimum=-1))
    k_folds: int = _value(0, _int(minimum=0))
    stratify_group: str | None = _value(None, _OPT_STR)
    pct_mask_nodes: float = _value(0.2, _float(low=0, high=1, low_open=True, high_open=True))
    segmentation_robustness: tuple[float, float] | None = _value(None, _optional(_fraction_pair))
    fine_tuning: tuple[str, ...] = _value((), _as_str_tuple)
    subset_dict: tuple[tuple[str, tuple[Any, ...]], ...] = _value(
        (), _optional(_as_subset, unset=()), plain=lambda pairs: {k: list(v) for k, v in pairs}
    )
    obs_split: str | None = _value(None, _OPT_STR)

    def _validate(self) -> None:
        p = self._PATH
        if self.train_size + self.val_size > 1 + 1e-9:
            raise ConfigError(
                f"{p}.train_size + {p}.val_size must be <= 1, got "
                f"{self.train_size} + {self.val_size}"
            )
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
