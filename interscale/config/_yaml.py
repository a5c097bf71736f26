"""YAML files in the published format: :func:`load_config` and :func:`save_config`."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from interscale._io import atomic_write_text

from ._checks import ConfigError, ConfigTypeError, _kind
from ._schema import Config, config_from_dict

__all__ = ["load_config", "save_config"]


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and reads ``1e-4`` as a float."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:
                continue  # unhashable key: the base class reports it
            if first != key_node.start_mark.line + 1:
                raise ConfigError(
                    f"duplicate key {key!r} at line {key_node.start_mark.line + 1} "
                    f"(first given at line {first})"
                )
        return super().construct_mapping(node, deep=deep)


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load and validate a YAML config file in the published format.

    Parameters
    ----------
    path
        YAML file with the sections ``model``, ``optim``, ``dataset`` and ``wandb`` (all
        optional; missing keys take their defaults). ``None`` returns the default config.

    Returns
    -------
    Config
        The frozen, validated configuration.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist (the message names it).
    IsADirectoryError
        ``path`` is a directory.
    ConfigTypeError
        The file does not hold a mapping, a section is not a mapping or a value has the wrong
        type.
    ConfigError
        Invalid YAML, duplicate or unknown keys (with the closest valid key), out-of-range or
        inconsistent values. The file name is attached as an exception note.
    """
    if path is None:
        return Config()
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(errno.ENOENT, "config file not found", str(p))
    if p.is_dir():
        raise IsADirectoryError(errno.EISDIR, "config path is a directory, not a file", str(p))
    try:
        raw = yaml.load(p.read_text(encoding="utf-8"), Loader=_ConfigLoader)  # noqa: S506
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{p}' is not valid YAML: {exc}") from exc
    except ConfigError as exc:
        raise ConfigError(f"config file '{p}': {exc}") from exc
    if raw is not None and not isinstance(raw, Mapping):
        raise ConfigTypeError(
            f"config file '{p}' must hold a mapping with the sections model, optim, dataset "
            f"and wandb, got a {_kind(raw)}"
        )
    try:
        return config_from_dict(raw)
    except ConfigError as exc:
        exc.add_note(f"in config file '{p}'")
        raise


def save_config(cfg: Config, path: str | os.PathLike[str]) -> Path:
    """Write a config as YAML (canonical key names), atomically.

    Parameters
    ----------
    cfg
        The config to write.
    path
        Destination file; its directory must exist.

    Returns
    -------
    pathlib.Path
        The path written. ``load_config(path) == cfg``.

    Raises
    ------
    FileNotFoundError
        The destination directory does not exist.
    """
    p = Path(path)
    if not p.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, "directory does not exist", str(p.parent))
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=False)
    atomic_write_text(text, p)
    return p


def tutorial_config() -> Config:
    """The configuration of the own-data path, shipped with the package.

    It is ``config_files/synthetic_example.yaml`` of the repository with one difference, kept
    so by a test: ``model.linear_part`` is on, so that each head nests the closed-form ridge on
    neighbourhood and sample means that ``interscale.tl.linear_baselines`` uses as a floor, and
    trains its deep part on what that ridge leaves. It gives the defaults of
    ``interscale train --h5ad FILE`` without ``--config`` and of the real-tissue tutorial.

    Returns
    -------
    Config
        The frozen, validated configuration.
    """
    path = Path(__file__).with_name("tutorial.yaml")
    return load_config(path)
