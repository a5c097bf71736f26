"""The AnnData accessors and checks every package shares (the lowest floor, no torch).

One layer accessor, one "is this an AnnData we may write into" check and one obs-column check,
so that the same mistake gets the same message whichever function the user called.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from interscale.names import Key

__all__ = [
    "CONSTANT_RTOL",
    "MIRRORED_SETUP_KEYS",
    "CellSelection",
    "check_anndata",
    "check_not_view",
    "layer_matrix",
    "obs_column_codes",
    "read_setup",
    "select_cells",
    "split_names",
]

#: A gene (column) whose sd within the scored cells is below this fraction of ``|mean|`` is
#: constant there, and its R^2 undefined: chunked float64 sums of a constant column can leave a
#: rounding-level, non-zero sum of squares. Applied by :func:`interscale._r2.r2_from_sums`, the
#: one rule of every per-gene R^2 (training, streaming, evaluation, bootstrap).
CONSTANT_RTOL = 1e-9

#: Setup fields also kept at the top level of ``uns["interscale"]`` (the documented contract).
MIRRORED_SETUP_KEYS = ("layer_key", "sample_key", "split_key")


def layer_matrix(adata: AnnData, layer_key: str | None):
    """Return ``adata.layers[layer_key]`` (``adata.X`` for ``None``), naming a missing layer.

    Raises
    ------
    KeyError
        If ``layer_key`` is not a layer; the message lists the available ones.
    """
    if layer_key is None:
        return adata.X
    if layer_key not in adata.layers:
        raise KeyError(
            f"layer {layer_key!r} is not in adata.layers; available layers: {list(adata.layers)}"
        )
    return adata.layers[layer_key]


def check_not_view(adata: AnnData, what: str) -> None:
    """Raise a ``TypeError`` for an AnnData view: what is written into a view is lost.

    Parameters
    ----------
    adata
        The AnnData a function is about to write into.
    what
        The function's name, which starts the message.
    """
    if getattr(adata, "is_view", False):
        raise TypeError(
            f"{what}: adata is a view of another AnnData; results written into a view are lost "
            "(anndata turns it into a copy), so pass adata[mask].copy()"
        )


def check_anndata(adata: Any, what: str, *, writable: bool = True) -> None:
    """Raise a ``TypeError`` unless ``adata`` is an AnnData (and, if ``writable``, not a view)."""
    if not isinstance(adata, AnnData):
        raise TypeError(f"{what}: adata must be an AnnData, got {type(adata).__name__}")
    if writable:
        check_not_view(adata, what)


def obs_column_codes(
    adata: AnnData, key: str, what: str = "library_key"
) -> tuple[np.ndarray, list[str]]:
    """Integer code per cell of ``adata.obs[key]`` and the sorted category names.

    Raises
    ------
    KeyError
        If ``key`` is not a column of ``adata.obs`` (the message lists the columns).
    ValueError
        If the column has missing values.
    """
    if key not in adata.obs.columns:
        raise KeyError(
            f"{what} {key!r} not found in adata.obs (available columns: {list(adata.obs.columns)})"
        )
    column = adata.obs[key]
    if column.isna().any():
        raise ValueError(f"adata.obs[{key!r}] has {int(column.isna().sum())} missing values")
    codes, uniques = pd.factorize(column, sort=True)
    return codes.astype(np.int64), [str(u) for u in uniques]


def read_setup(adata: AnnData) -> dict[str, Any] | None:
    """The setup recorded in ``adata``, or ``None`` when it was never set up.

    Files written before the record existed carry only the top-level keys; they are read as a
    setup of those keys.
    """
    info = adata.uns.get(Key.uns.ROOT)
    if not isinstance(info, Mapping):
        return None
    setup = info.get(Key.uns.SETUP)
    if isinstance(setup, Mapping):
        return dict(setup)
    legacy = {k: info[k] for k in MIRRORED_SETUP_KEYS if k in info}
    return legacy or None


@dataclass
class CellSelection:
    """The cells a score is read on: their rows, a description and their number.

    Attributes
    ----------
    rows
        Sorted integer rows of the selected cells, or ``None`` for all cells (in order).
    label
        ``"all"``, the split names joined by commas, or ``"mask (n cells)"``.
    n_cells
        Number of selected cells.
    """

    rows: np.ndarray | None
    label: str
    n_cells: int

    def mask(self, n_obs: int) -> np.ndarray:
        """The selection as a boolean mask over ``n_obs`` cells."""
        out = np.zeros(n_obs, dtype=bool)
        out[slice(None) if self.rows is None else self.rows] = True
        return out


def split_names(cells: Any) -> list[str] | None:
    """Split names requested by ``cells``, or ``None`` if ``cells`` is not a list of names.

    One string is split at commas (``"val,test"``); a list, a tuple or a string array gives
    its entries. Surrounding blanks and empty names are dropped.
    """
    if isinstance(cells, str):
        return [c.strip() for c in cells.split(",") if c.strip()]
    if isinstance(cells, list | tuple) and all(isinstance(c, str) for c in cells):
        return [c.strip() for c in cells if c.strip()]
    if isinstance(cells, np.ndarray) and cells.dtype.kind == "U":
        return [str(c).strip() for c in cells if str(c).strip()]
    return None


def select_cells(adata: AnnData, cells: Any, split_key: str, *, what: str) -> CellSelection:
    """Resolve ``cells`` to the selected rows of ``adata``.

    Parameters
    ----------
    adata
        The AnnData whose cells are selected.
    cells
        None or ``"all"`` (every cell), split names (values of ``adata.obs[split_key]``) as a
        list, a tuple or one comma-separated string (``["val", "test"]``, ``"val,test"``), or
        a boolean mask (array or Series) with one entry per cell.
    split_key
        obs column holding the split names (read only when ``cells`` names splits).
    what
        The calling function's name, which starts every message.

    Returns
    -------
    CellSelection

    Raises
    ------
    KeyError
        ``split_key`` is not an obs column, or a split name does not occur in it.
    ValueError
        The selection is empty, mixes ``"all"`` with split names, or the mask has the wrong
        length.
    TypeError
        ``cells`` is neither split names nor a boolean mask.
    """
    n_obs = adata.n_obs
    if cells is None:
        return CellSelection(None, "all", n_obs)
    names = split_names(cells)
    if names is not None:
        if not names:
            raise ValueError(f"{what}: cells={cells!r} names no split")
        names = list(dict.fromkeys(names))  # drop repeats, keep the order given
        if names == ["all"]:
            return CellSelection(None, "all", n_obs)
        if "all" in names:
            raise ValueError(f"{what}: 'all' cannot be combined with split names in cells")
        if not isinstance(split_key, str) or split_key not in adata.obs.columns:
            raise KeyError(
                f"{what}: split column {split_key!r} not found in adata.obs (columns: "
                f"{list(adata.obs.columns)}); pass split_key=<column> or a boolean mask as cells"
            )
        split = adata.obs[split_key].astype(str).to_numpy()
        present = sorted(pd.unique(split))
        unknown = [name for name in names if name not in present]
        if unknown:
            raise KeyError(
                f"{what}: split name(s) {unknown} not found in adata.obs[{split_key!r}]; "
                f"available: {present}"
            )
        mask = np.isin(split, names)
        label = ",".join(names)
    else:
        values = cells.to_numpy() if isinstance(cells, pd.Series) else np.asarray(cells)
        if values.dtype != np.bool_:
            raise TypeError(
                f"{what}: cells must be None, 'all', split names (e.g. ['val', 'test'] or "
                f"'val,test') or a boolean mask over the cells, got {type(cells).__name__} "
                f"of dtype {values.dtype}"
            )
        if values.ndim != 1 or values.shape[0] != n_obs:
            raise ValueError(
                f"{what}: the cells mask has shape {values.shape}, expected ({n_obs},) "
                "(one entry per cell)"
            )
        mask = values
        label = f"mask ({int(mask.sum())} cells)"
    n_sel = int(mask.sum())
    if n_sel == 0:
        raise ValueError(f"{what}: cells={cells!r} selects no cells")
    rows = None if n_sel == n_obs else np.flatnonzero(mask)
    return CellSelection(rows, label, n_sel)
