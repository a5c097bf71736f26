"""The AnnData accessors and checks every package shares (the lowest floor, no torch).

One layer accessor, one "is this an AnnData we may write into" check and one obs-column check,
so that the same mistake gets the same message whichever function the user called.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from interscale.names import Key

__all__ = [
    "MIRRORED_SETUP_KEYS",
    "check_anndata",
    "check_not_view",
    "layer_matrix",
    "obs_column_codes",
    "read_setup",
]

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
