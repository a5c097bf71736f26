"""Setting up an AnnData for a model: validation, and the one record of the setup in ``uns``.

The setup lives in ``adata.uns["interscale"]["setup"]``; the model, the evaluation functions and
the command line all read it through ``interscale._anndata.read_setup``. The top-level
``layer_key``, ``sample_key`` and ``split_key`` of ``uns["interscale"]`` (the documented AnnData
contract) are written from the same record by :func:`write_setup` and never read back when the
record exists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from interscale._anndata import MIRRORED_SETUP_KEYS, check_anndata, layer_matrix, read_setup
from interscale.graphs import halo_columns, sample_labels
from interscale.names import SPLITS, Key

__all__ = [
    "check_finite_layer",
    "check_same_genes",
    "read_setup",
    "setup_anndata",
    "write_setup",
]


def check_finite_layer(matrix, layer_key: str | None) -> None:
    """Raise if the layer is not numeric or holds NaN / infinite values."""
    data = matrix.data if sp.issparse(matrix) else np.asarray(matrix)
    if data.dtype.kind not in "biuf":
        raise TypeError(f"layer {layer_key!r} has a non-numeric dtype {data.dtype}")
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        n_bad = int((~np.isfinite(data)).sum())
        raise ValueError(f"layer {layer_key!r} holds {n_bad} NaN or infinite values")


def check_unique_genes(adata: AnnData) -> None:
    """Raise if ``adata`` has no genes or duplicated gene names."""
    if adata.n_vars < 1:
        raise ValueError("adata has no genes (n_vars == 0)")
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()].unique()
        raise ValueError(
            f"adata.var_names has duplicated genes, e.g. {list(dup[:5])}; "
            "make them unique (adata.var_names_make_unique())"
        )


def check_same_genes(adata: AnnData, genes: Sequence[str], whose: str = "the model's") -> None:
    """Raise a ``ValueError`` naming missing / unexpected genes when ``adata``'s differ."""
    mine = [str(g) for g in adata.var_names]
    genes = list(genes)
    if mine == genes:
        return
    missing = [g for g in genes if g not in set(mine)]
    extra = [g for g in mine if g not in set(genes)]
    raise ValueError(
        f"adata's genes do not match {whose} ({len(mine)} vs {len(genes)} genes; missing "
        f"{missing[:5]}, unexpected {extra[:5]}"
        + ("; same genes in another order" if not missing and not extra else "")
        + ")"
    )


def _check_split(adata: AnnData, split_key: str, labels: pd.Series) -> pd.Series:
    if split_key not in adata.obs.columns:
        raise KeyError(
            f"split column {split_key!r} is not in adata.obs; add one with train/val(/test) "
            "per sample (interscale.pp.split_samples)"
        )
    if adata.obs[split_key].isna().any():
        raise ValueError(f"split column {split_key!r} has missing values")
    split = adata.obs[split_key].astype(str).reset_index(drop=True)
    unknown = sorted(set(split) - set(SPLITS))
    if unknown:
        raise ValueError(
            f"split column {split_key!r} has unknown values {unknown}; allowed: {list(SPLITS)}"
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
    return split


def setup_anndata(
    adata: AnnData,
    *,
    model_name: str,
    layer_key: str | None,
    sample_key_list: Sequence[str] | str,
    prediction_task: str = "regression",
    prediction_obs: str | None = None,
    group_key: str | None = None,
    split_key: str = "split",
    view_registry: bool = True,
    halo_key: str | None = None,
) -> dict[str, Any]:
    """Validate ``adata`` for training and write the setup record (see ``setup_anndata``).

    Everything is checked before anything is written, so a failing call leaves ``adata`` as it
    was. Returns the record.
    """
    check_anndata(adata, f"{model_name}.setup_anndata")
    if prediction_task != "regression":
        raise ValueError(
            f"prediction_task {prediction_task!r} is not supported; InterScale reconstructs "
            "expression ('regression')"
        )
    sample_keys = [sample_key_list] if isinstance(sample_key_list, str) else list(sample_key_list)
    matrix = layer_matrix(adata, layer_key)
    check_unique_genes(adata)
    check_finite_layer(matrix, layer_key)
    labels = sample_labels(adata, sample_keys)
    if group_key is not None and group_key not in adata.obs.columns:
        raise KeyError(f"group_key {group_key!r} is not a column of adata.obs")
    split = _check_split(adata, split_key, labels)
    if halo_key is not None:
        halo_columns(adata, sample_keys, halo_key, pd.unique(labels))
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
    record = write_setup(adata, record)
    if view_registry:
        _print_registry(model_name, layer_key, sample_keys, sizes, adata, split, halo_key)
    return record


def write_setup(adata: AnnData, record: Mapping[str, Any]) -> dict[str, Any]:
    """Store ``record`` as the setup of ``adata`` (None values dropped; h5ad cannot hold them)."""
    record = {k: v for k, v in record.items() if v is not None}
    uns = dict(adata.uns.get(Key.uns.ROOT, {}))
    uns[Key.uns.SETUP] = record
    for key in MIRRORED_SETUP_KEYS:
        uns.pop(key, None)
        if key in record:
            uns[key] = record[key]
    adata.uns[Key.uns.ROOT] = uns
    return record


def _print_registry(model_name, layer_key, sample_keys, sizes, adata, split, halo_key) -> None:
    counts = split.value_counts()
    rows = [
        ("layer", "X" if layer_key is None else f"layers[{layer_key!r}]"),
        ("sample keys", ", ".join(sample_keys)),
        ("samples", f"{len(sizes)} ({sizes.min()}-{sizes.max()} cells)"),
        ("cells / genes", f"{adata.n_obs} / {adata.n_vars}"),
        ("split", ", ".join(f"{k}: {int(counts.get(k, 0))}" for k in SPLITS)),
    ]
    if halo_key is not None:
        rows.append(("halo", f"obsm[{halo_key!r}]"))
    width = max(len(k) for k, _ in rows)
    print(f"InterScale setup ({model_name})")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


# The arguments of setup_anndata that a checkpoint stores, so that load() can replay the setup.
_REPLAYED = ("layer_key", "sample_key", "split_key", "prediction_task", "group_key", "halo_key")


def setup_arguments(record: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a setup record that :func:`replay_setup` needs (what a checkpoint stores)."""
    return {k: record[k] for k in _REPLAYED if record.get(k) is not None}


def replay_setup(cls, adata: AnnData, stored: Mapping[str, Any], source: str) -> None:
    """Run ``cls.setup_anndata`` on ``adata`` with a checkpoint's stored setup arguments.

    Raises the error of the setup, of the same type, prefixed with what was replayed and from
    where, so that the user sees which column or layer the checkpoint expects.
    """
    args = {
        "layer_key": stored.get("layer_key"),
        "sample_key_list": list(stored["sample_key"]),
        "split_key": stored.get("split_key", "split"),
        "prediction_task": stored.get("prediction_task", "regression"),
        "group_key": stored.get("group_key"),
        "halo_key": stored.get("halo_key"),
    }
    try:
        cls.setup_anndata(adata, **args, view_registry=False)
    except (KeyError, ValueError, TypeError) as exc:
        told = ", ".join(f"{k}={v!r}" for k, v in args.items() if v is not None)
        message = exc.args[0] if exc.args else str(exc)
        raise type(exc)(
            f"adata is not set up, and replaying the setup stored in {source} "
            f"({cls.__name__}.setup_anndata({told})) failed: {message}"
        ) from exc
