"""Checkpoints: the format, the file-name rule, writing, finding, reading and checking them.

A native checkpoint is one ``torch.save`` dictionary (:data:`CHECKPOINT_FORMAT`, version
:data:`CHECKPOINT_FORMAT_VERSION`) holding the state dict, the config, the genes, the setup
arguments (replayed by ``load`` on an AnnData not yet set up) and the training history. Every
version ever written must stay readable: ``tests/data/frozen_v1`` holds a version-1 file that
each release loads. Published-format state dicts (the reference implementation's, with or
without Lightning's ``module.`` prefix) are translated by explicit rules; a tensor is never
reshaped beyond dropping leading size-1 axes.
"""

from __future__ import annotations

import copy
import difflib
import io
import math
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from interscale._anndata import read_setup
from interscale._io import atomic_write_bytes
from interscale._version import __version__
from interscale.config import Config, config_from_dict
from interscale.model._setup import check_same_genes, replay_setup, setup_arguments
from interscale.names import Key
from interscale.train import resolve_device

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "check_config_agrees",
    "check_state_shapes",
    "checkpoint_file_name",
    "checkpoint_payload",
    "load_model",
    "map_published_state_dict",
    "plain_tree",
    "plain_value",
    "read_checkpoint",
    "resolve_checkpoint_path",
    "write_checkpoint",
]

CHECKPOINT_FORMAT = "interscale-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1

_SUFFIXES = (".pt", ".ckpt", ".pth")


def checkpoint_file_name(
    cfg: Config, has_local: bool, has_global: bool, prefix: str | None = None
) -> str:
    """The published file name rule, used both to write and to find a checkpoint.

    ``{prefix}{dual_}{dataset.name}_{task[:4]}_{level}_{seed}_{local}_{global}_model.pt``
    """
    ds = cfg.dataset
    local = cfg.model.local_component.name if has_local else ""
    glob = cfg.model.global_component.name if has_global else ""
    dual = "dual_" if cfg.model.decoder.dual_decoder and has_local and has_global else ""
    name = (
        f"{dual}{ds.name}_{ds.prediction_task[:4]}_{ds.prediction_level}_"
        f"{cfg.optim.seed}_{local}_{glob}_model.pt"
    )
    return f"{prefix}{name}" if prefix else name


def write_checkpoint(
    payload: Mapping[str, Any], folder: str | os.PathLike, name: str, overwrite: bool
) -> Path:
    """Write ``payload`` (with the format fields added) as ``folder/name``, atomically."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    document = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        **payload,
    }
    buffer = io.BytesIO()
    torch.save(document, buffer)
    atomic_write_bytes(buffer.getvalue(), path, fsync=True)
    return path


def plain_value(value):
    """A Python scalar for a numpy one and ``None`` for NaN (what a checkpoint stores)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def plain_tree(obj):
    """``obj`` with string keys and Python scalars throughout its dicts and lists."""
    if isinstance(obj, dict):
        return {str(k): plain_tree(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain_tree(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def resolve_checkpoint_path(
    dir_path, model_name: str | None, cfg: Config | None, has_local: bool, has_global: bool
) -> Path:
    """Find the checkpoint file from a folder, an optional name and the config's naming rule."""
    base = Path(dir_path)
    candidates: list[Path] = []
    if model_name is not None:
        name = Path(model_name)
        for root in [name] if name.is_absolute() else [base / name, name]:
            candidates.append(root)
            candidates.extend(root.with_name(root.name + s) for s in _SUFFIXES)
            candidates.append(root.with_name(root.name + "_model.pt"))
    elif base.is_file():
        return base
    else:
        if not base.exists():
            raise FileNotFoundError(f"checkpoint folder {base} does not exist")
        if cfg is not None:
            candidates.append(base / checkpoint_file_name(cfg, has_local, has_global))
        found = sorted(p for p in base.iterdir() if p.suffix in _SUFFIXES and p.is_file())
        for path in candidates:
            if path.is_file():
                return path
        if len(found) == 1:
            return found[0]
        if not found:
            raise FileNotFoundError(f"no checkpoint (*.pt, *.ckpt) in {base}")
        raise FileNotFoundError(
            f"several checkpoints in {base}: {[p.name for p in found]}; pass model_name="
        )
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"checkpoint {model_name!r} not found; looked for {[str(p) for p in candidates[:4]]}"
    )


def read_checkpoint(path: Path) -> dict:
    """Read a checkpoint and classify it.

    Returns a dict with ``kind`` (``"native"``, ``"published"``, ``"published-legacy"`` or
    ``"lightning"``), ``state_dict`` and ``description``; native checkpoints keep all their fields.
    """
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path} is empty, not a checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (
        RuntimeError,
        pickle.UnpicklingError,
        EOFError,
        zipfile.BadZipFile,
        ValueError,
        OSError,
    ) as exc:
        raise ValueError(
            f"{path} is not a readable checkpoint (truncated or corrupted file?): {exc}"
        ) from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a checkpoint dictionary")
    if obj.get("format") == CHECKPOINT_FORMAT:
        version = obj.get("format_version")
        if not isinstance(version, int) or version > CHECKPOINT_FORMAT_VERSION:
            raise ValueError(
                f"{path} has checkpoint format version {version!r}; this interscale reads "
                f"versions up to {CHECKPOINT_FORMAT_VERSION} (upgrade interscale)"
            )
        for key in ("state_dict", "config", "gene_names", "n_embed"):
            if key not in obj:
                raise ValueError(f"{path} is an interscale checkpoint without {key!r}")
        out = dict(obj)
        out["kind"] = "native"
        out["description"] = (
            f"{obj.get('model_class', 'model')} (format v{version}, written by interscale "
            f"{obj.get('interscale_version', '?')}, {len(obj['gene_names'])} genes, "
            f"n_embed {obj['n_embed']})"
        )
        return out
    state = obj.get("state_dict", obj)
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        raise ValueError(f"{path} is neither an interscale checkpoint nor a state dict")
    keys = list(state)
    if all(k.startswith("module.") for k in keys):
        kind = "lightning"
    elif any(k.startswith(("local_module.", "global_module.")) for k in keys):
        kind = "published"
    elif any(k.startswith(("local_layers.", "global_")) for k in keys):
        kind = "published-legacy"
    else:
        raise ValueError(
            f"{path} holds a state dict with unrecognised keys (e.g. {keys[:3]}); expected "
            "interscale, published (local_module.*/global_module.*) or Lightning (module.*) keys"
        )
    return {
        "kind": kind,
        "state_dict": state,
        "description": f"a {kind} state dict with {len(keys)} tensors",
    }


# Published layouts -> our module. Each rule rewrites a key prefix; keys are tried in order.
_PUBLISHED_RULES: list[tuple[str, str]] = [
    (r"^local_module\.decoder\.", "local_decoder."),
    (r"^global_module\.decoder\.", "global_decoder."),
    (r"^local_module\.(encoder\.)?", "local_encoder."),
    (r"^global_module\.(encoder\.)?", "global_encoder."),
    (r"^local_layers\.", "local_encoder."),
    (r"^local_decoder\.", "local_decoder."),
    (r"^global_decoder\.", "global_decoder."),
    (r"^global_encoder\.", "global_encoder."),
    (r"^global_", "global_encoder."),
]


def map_published_state_dict(state: dict, module: torch.nn.Module) -> dict:
    """Translate a published-format state dict to this package's parameter names.

    Prefixes are rewritten by explicit rules; inside a component, tensors are matched to ours by
    position and shape (both layouts register parameters in the same order). A tensor that finds
    no place of the same shape raises a ``ValueError`` naming it.
    """
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        # Lightning wraps the module as `module.`; strip that first, then apply one rule.
        new = key[len("module.") :] if key.startswith("module.") else key
        for pattern, repl in _PUBLISHED_RULES:
            if re.match(pattern, new):
                new = re.sub(pattern, repl, new, count=1)
                break
        renamed[new] = value
    ours = module.state_dict()
    mapped: dict[str, torch.Tensor] = {}

    def fits(mine: str, tensor: torch.Tensor) -> bool:
        return _same_up_to_leading_ones(tuple(tensor.shape), tuple(ours[mine].shape))

    for part in ("local_encoder", "global_encoder", "local_decoder", "global_decoder"):
        our_keys = [k for k in ours if k.startswith(part + ".")]
        their_keys = [k for k in renamed if k.startswith(part + ".")]
        if not their_keys:
            continue
        if all(k in ours and fits(k, renamed[k]) for k in their_keys) and len(their_keys) == len(
            our_keys
        ):
            mapped.update({k: renamed[k].reshape(ours[k].shape) for k in their_keys})
            continue
        if len(their_keys) != len(our_keys):
            raise ValueError(
                f"the published {part} has {len(their_keys)} tensors, ours {len(our_keys)}; "
                "the checkpoint was made with another architecture (check the config)"
            )
        for mine, theirs in zip(our_keys, their_keys, strict=True):
            if not fits(mine, renamed[theirs]):
                raise ValueError(
                    f"cannot place published tensor {theirs!r} {tuple(renamed[theirs].shape)}: "
                    f"{mine!r} has shape {tuple(ours[mine].shape)}"
                )
            mapped[mine] = renamed[theirs].reshape(ours[mine].shape)
    if "mask_token" in renamed and "mask_token" in ours:
        mapped["mask_token"] = renamed["mask_token"]
    return mapped


def _same_up_to_leading_ones(theirs: tuple[int, ...], mine: tuple[int, ...]) -> bool:
    """Equal shapes, or ones that differ by leading size-1 axes only.

    The published CLS token is stored as ``[1, 1, E]`` and ours as ``[E]``: the same values in
    the same order. A transposed or otherwise reshaped tensor never passes.
    """
    while len(theirs) > len(mine) and theirs[0] == 1:
        theirs = theirs[1:]
    return theirs == mine


def check_state_shapes(state: Mapping[str, torch.Tensor], module: torch.nn.Module, source: str):
    """Raise a ``ValueError`` naming every tensor whose shape is not exactly the module's.

    ``torch.nn.Module.load_state_dict`` would refuse most of these too, but only one at a time
    and not for tensors that a translation reshaped; this check runs first and names them all.
    """
    ours = module.state_dict()
    wrong = [
        f"{key}: {tuple(tensor.shape)} in the file, {tuple(ours[key].shape)} in the model"
        for key, tensor in state.items()
        if key in ours and tuple(tensor.shape) != tuple(ours[key].shape)
    ]
    if wrong:
        raise ValueError(
            f"{source} does not fit this architecture; tensors of another shape: "
            + "; ".join(wrong[:5])
            + (f" (and {len(wrong) - 5} more)" if len(wrong) > 5 else "")
        )


#: Config fields that define the architecture: a given config must agree with the checkpoint's.
ARCH_FIELDS = (
    "model.n_embed",
    "model.mask_token",
    "model.linear_part",
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


def check_config_agrees(cfg: Config, stored: Config, path: Path) -> None:
    """Raise a ``ValueError`` naming the first architecture field where two configs differ."""
    for field in ARCH_FIELDS:
        mine, theirs = _get_path(cfg, field), _get_path(stored, field)
        if mine != theirs:
            raise ValueError(
                f"config mismatch with checkpoint {path.name}: {field} is {mine!r} in the given "
                f"config but {theirs!r} in the checkpoint"
            )


_LOAD_ARGUMENTS = (
    "cfg",
    "model_name",
    "local_component",
    "global_component",
    "accelerator",
    "verbose",
)


def load_model(
    cls,
    dir_path,
    adata: AnnData,
    cfg: Config | None,
    model_name: str | None,
    local_component: bool,
    global_component: bool,
    accelerator: str | None,
    verbose: bool,
    unknown: Mapping[str, Any],
):
    """Build a ``cls`` model through its constructor and load a checkpoint's weights into it.

    The steps of :meth:`BaseModel.load <interscale.model._base.BaseModel.load>` (which documents
    the parameters); ``unknown`` holds keyword arguments the caller did not recognise.
    """
    if unknown:
        _raise_unknown_arguments(unknown)
    if (local_component or global_component) and (
        bool(local_component) != cls._local or bool(global_component) != cls._global
    ):
        raise ValueError(
            f"{cls.__name__} has local={cls._local}, global={cls._global}; the flags "
            f"local_component={local_component}, global_component={global_component} disagree"
        )
    path = resolve_checkpoint_path(dir_path, model_name, cfg, cls._local, cls._global)
    ckpt = read_checkpoint(path)
    if ckpt["kind"] == "native":
        cfg = _check_native_fits(cls, ckpt, adata, cfg, path)
    elif cfg is None:
        raise ValueError(
            f"{path.name} is a published-format state dict without a config; pass cfg="
        )
    before = copy.deepcopy(adata.uns.get(Key.uns.ROOT)) if Key.uns.ROOT in adata.uns else None
    try:  # a failed load leaves adata as it was, a replayed setup included
        return _load_into(cls, adata, cfg, ckpt, path, accelerator, verbose)
    except BaseException:
        if before is None:
            adata.uns.pop(Key.uns.ROOT, None)
        else:
            adata.uns[Key.uns.ROOT] = before
        raise


def _load_into(cls, adata, cfg, ckpt, path, accelerator, verbose):
    if read_setup(adata) is None:
        stored = ckpt.get("setup")
        if stored is None and ckpt["kind"] == "native":  # written before setups were stored
            stored = {"layer_key": ckpt.get("layer_key"), "sample_key": ckpt["sample_key"]}
        if stored is None:
            raise ValueError(
                f"adata is not set up and {path.name} ({ckpt['kind']}) stores no setup; call "
                f"{cls.__name__}.setup_anndata(adata, layer_key=..., sample_key_list=[...]) first"
            )
        replay_setup(cls, adata, stored, path.name)
        if verbose:
            print(f"Set up adata as {path.name} was: {setup_arguments(read_setup(adata))}")
    model = cls(adata, cfg, global_input=ckpt.get("global_input"))
    state = ckpt["state_dict"]
    if ckpt["kind"] != "native":
        state = map_published_state_dict(state, model.module)
    check_state_shapes(state, model.module, path.name)
    result = model.module.load_state_dict(state, strict=False)
    if ckpt["kind"] == "native" and (result.missing_keys or result.unexpected_keys):
        raise ValueError(
            f"{path.name} does not fit this architecture: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    non_mask = [k for k in result.missing_keys if k != "mask_token"]
    if ckpt["kind"] != "native" and non_mask:
        raise ValueError(f"{path.name} ({ckpt['kind']}) lacks weights for {non_mask[:5]}")
    model.module.to(resolve_device(accelerator))
    if ckpt.get("history"):
        model.history_ = pd.DataFrame(ckpt["history"])
        model.best_epoch_ = ckpt.get("best_epoch")
    model.is_trained_ = True
    if verbose:
        print(f"Loaded {ckpt['description']} from {path}")
    return model


def _raise_unknown_arguments(unknown: Mapping[str, Any]) -> None:
    name = next(iter(unknown))
    close = difflib.get_close_matches(name, _LOAD_ARGUMENTS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise TypeError(
        f"load() got an unexpected keyword argument {name!r}{hint} (it accepts dir_path, adata, "
        f"{', '.join(_LOAD_ARGUMENTS)})"
    )


def _check_native_fits(cls, ckpt: dict, adata: AnnData, cfg: Config | None, path: Path) -> Config:
    """The config to build with; raises where a native checkpoint does not fit the request."""
    stored_cfg = config_from_dict(ckpt["config"])
    if cfg is None:
        cfg = stored_cfg
    else:
        check_config_agrees(cfg, stored_cfg, path)
    comps = ckpt.get("components", {})
    if comps and (comps.get("local") != cls._local or comps.get("global") != cls._global):
        raise ValueError(
            f"{path.name} holds a {ckpt.get('model_class')} (local={comps.get('local')}, "
            f"global={comps.get('global')}), not a {cls.__name__}"
        )
    check_same_genes(adata, [str(g) for g in ckpt["gene_names"]], "the checkpoint's")
    if int(ckpt["n_embed"]) != cfg.model.n_embed:
        raise ValueError(
            f"n_embed mismatch: checkpoint {ckpt['n_embed']}, config {cfg.model.n_embed}"
        )
    return cfg


def checkpoint_payload(model) -> dict:
    """What :meth:`save` writes for a ``BaseModel`` (``write_checkpoint`` adds the format)."""
    history = None
    if model.history_ is not None:
        history = {c: [plain_value(v) for v in model.history_[c]] for c in model.history_}
    return {
        "interscale_version": __version__,
        "model_class": type(model).__name__,
        "components": {"local": model._local, "global": model._global},
        "state_dict": {k: v.detach().cpu() for k, v in model.module.state_dict().items()},
        "config": plain_tree(model.cfg.to_dict()),
        "gene_names": list(model.gene_names),
        "layer_key": model.layer_key,
        "sample_key": list(model.sample_keys),
        "setup": setup_arguments(model._setup),
        "n_embed": int(model.module.n_embed),
        "history": history,
        "best_epoch": model.best_epoch_,
        "global_input": model._global_input,
    }
