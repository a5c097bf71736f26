"""Finding, reading and translating checkpoint files."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

import torch

__all__ = ["resolve_checkpoint_path", "read_checkpoint", "map_published_state_dict"]

_SUFFIXES = (".pt", ".ckpt", ".pth")


def resolve_checkpoint_path(dir_path, model_name, cls, cfg) -> Path:
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
            ds = cfg.dataset
            local = cfg.model.local_component.name if cls._local else ""
            glob = cfg.model.global_component.name if cls._global else ""
            dual = "dual_" if cfg.model.decoder.dual_decoder and cls._local and cls._global else ""
            candidates.append(
                base / f"{dual}{ds.name}_{ds.prediction_task[:4]}_{ds.prediction_level}_"
                f"{cfg.optim.seed}_{local}_{glob}_model.pt"
            )
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
    from interscale.model._base import CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION

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
        # The published CLS token is stored as [1, 1, E], ours as [E]: same values, other shape.
        return ours[mine].shape == tensor.shape or ours[mine].numel() == tensor.numel()

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
