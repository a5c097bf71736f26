"""Helpers of the bad-input tests: the AnnData fingerprint, small fresh AnnDatas, the check.

Each case builds its input from a small, fresh AnnData, calls one public function and checks
either (a) the exception type, a message naming the culprit and that the AnnData fingerprint
(X, layers, obs, var, obsm, obsp, uns, names) is unchanged, or (b) where the input is legal, that
the call works end to end with finite outputs.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import organoids, tiny_config

# ----------------------------------------------------------------------------- helpers


def _digest_value(value, h) -> None:
    """Feed a canonical byte form of ``value`` into the hash ``h``."""
    if sp.issparse(value):
        h.update(f"sparse:{value.format}:{value.shape}:{value.dtype}".encode())
        for part in ("data", "indices", "indptr"):
            if hasattr(value, part):
                h.update(np.ascontiguousarray(getattr(value, part)).tobytes())
        if value.format == "coo":
            h.update(np.ascontiguousarray(value.coords).tobytes())
    elif isinstance(value, np.ndarray):
        h.update(f"array:{value.shape}:{value.dtype}".encode())
        if value.dtype.kind == "O":
            h.update(pickle.dumps(value.tolist()))
        else:
            h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, pd.DataFrame | pd.Series | pd.Index):
        h.update(pickle.dumps(value))
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            h.update(f"key:{key}".encode())
            _digest_value(value[key], h)
    elif value is None:
        h.update(b"None")
    else:
        h.update(pickle.dumps(value))


def _fingerprint(adata: ad.AnnData) -> str:
    """Hash of everything a failed call must not change."""
    h = hashlib.sha256()
    h.update(f"{type(adata).__name__}:{adata.shape}:{adata.is_view}".encode())
    parts = {
        "X": adata.X,
        "layers": dict(adata.layers),
        "obs": adata.obs,
        "var": adata.var,
        "obs_names": adata.obs_names,
        "var_names": adata.var_names,
        "obsm": dict(adata.obsm),
        "obsp": dict(adata.obsp),
        "varm": dict(adata.varm),
        "uns": dict(adata.uns),
    }
    _digest_value(parts, h)
    return h.hexdigest()


_BASE: dict[str, ad.AnnData] = {}


def _prepared() -> ad.AnnData:
    """A small normalised AnnData with a radius graph (a fresh copy per call)."""
    if "prep" not in _BASE:
        _BASE["prep"] = organoids(4, (20, 30), 0, n_genes=10)
    return _BASE["prep"].copy()


def _cfg(**overrides):
    """One epoch, seed 3, width 16; two held-out folds keep get_model_output cheap."""
    return tiny_config({"dataset.pct_mask_nodes": 0.5, **overrides}, seed=3)


def _expect_failure(call: Callable, adata, exc: type[BaseException], match: str) -> None:
    before = _fingerprint(adata)
    with pytest.raises(exc, match=match):
        call(adata)
    assert _fingerprint(adata) == before, "the AnnData was modified by a failed call"


def _with_layer_value(adata, layer, value):
    m = adata.layers[layer]
    m = m.toarray() if sp.issparse(m) else np.array(m)
    m[0, 0] = value
    adata.layers[layer] = sp.csr_matrix(m)
    return adata
