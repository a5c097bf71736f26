"""The whole config: :class:`Config`, and the one walk over the sections that parses a mapping,
writes the plain dict back and applies dotted-path overrides."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from interscale.names import CLASSIFICATION_LOSSES, REGRESSION_LOSSES

from ._checks import (
    ConfigError,
    ConfigTypeError,
    _as_bool,
    _as_str,
    _join,
    _kind,
    _optional,
    _Section,
    _sections,
    _show,
    _value,
)
from ._dataset import DatasetConfig
from ._model import ModelConfig
from ._optim import OptimConfig

__all__ = ["Config", "WandbConfig", "config_from_dict", "with_overrides"]


@dataclass(frozen=True)
class WandbConfig(_Section, path="wandb"):
    """``wandb``: accepted so that published configs load; InterScale ignores it.

    Attributes
    ----------
    use
        Compatibility only (default ``False``).
    project_name
        Compatibility only (default ``""``).
    """

    use: bool = _value(False, _as_bool)
    project_name: str = _value("", _optional(_as_str, unset=""))


@dataclass(frozen=True)
class Config(_Section):
    """A complete, validated InterScale configuration.

    Attributes
    ----------
    model
        :class:`ModelConfig`.
    optim
        :class:`OptimConfig`.
    dataset
        :class:`DatasetConfig`.
    wandb
        :class:`WandbConfig` (ignored).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def _validate(self) -> None:
        task, loss = self.dataset.prediction_task, self.optim.loss
        valid = REGRESSION_LOSSES if task == "regression" else CLASSIFICATION_LOSSES
        if loss not in valid:
            raise ConfigError(
                f"optim.loss {loss!r} does not fit dataset.prediction_task {task!r}; "
                f"choose one of {', '.join(map(repr, valid))}"
            )
        if task == "classification" and self.dataset.prediction_obs is None:
            raise ConfigError(
                "dataset.prediction_obs must name the obs column to predict when "
                "dataset.prediction_task is 'classification'"
            )

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as a plain nested dict with canonical key names.

        Returns
        -------
        dict
            Nested dict of ``str``, ``int``, ``float``, ``bool``, ``None``, lists and dicts only
            (JSON and ``yaml.safe_dump`` serialisable). ``config_from_dict(cfg.to_dict()) == cfg``.
        """
        return _plain(self)

    def replace(self, **overrides: Any) -> Config:
        """Return a new validated config with the values at dotted paths replaced.

        Parameters
        ----------
        **overrides
            Dotted path -> new value, e.g. ``cfg.replace(**{"optim.lr": 0.01})``.

        Returns
        -------
        Config
            A new config; ``self`` is unchanged.

        Raises
        ------
        ConfigError, ConfigTypeError
            As :func:`with_overrides`.
        """
        return with_overrides(self, overrides)


def _plain(value: Any) -> Any:
    if isinstance(value, _Section):
        return {
            f.name: (f.metadata.get("plain") or _plain)(getattr(value, f.name))
            for f in fields(value)
        }
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _section_label(path: str) -> str:
    return f"in section '{path}'" if path else "at the top level"


def _canonical(key: Any, cls: type[_Section], path: str) -> str:
    """The field name that ``key`` (or its published alias) stands for; else the error."""
    names = [f.name for f in fields(cls)]
    name = cls._ALIASES.get(key, key) if isinstance(key, str) else key
    if name in names:
        return name
    msg = f"unknown {'key' if path else 'section'} {str(key)!r} {_section_label(path)}"
    match = (
        difflib.get_close_matches(key, [*names, *cls._ALIASES], n=1) if isinstance(key, str) else []
    )
    if match:
        raise ConfigError(f"{msg}; did you mean {cls._ALIASES.get(match[0], match[0])!r}?")
    raise ConfigError(f"{msg}; valid keys: {', '.join(names)}")


def _parse(cls: type[_Section], raw: Any, path: str, base: _Section | None = None) -> Any:
    """Build section ``cls`` from the mapping ``raw``; the keys it lacks keep their values in
    ``base`` (an override) or their defaults (``base`` is ``None``)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        where = f"section '{path}'" if path else "the config"
        raise ConfigTypeError(
            f"{where} must be a mapping of keys to values, got {_show(raw)} ({_kind(raw)})"
        )
    given: dict[str, Any] = {}
    given_as: dict[str, Any] = {}
    for key, value in raw.items():
        name = _canonical(key, cls, path)
        if name in given:
            raise ConfigError(
                f"both {given_as[name]!r} and {key!r} are given {_section_label(path)}; "
                f"they are the same setting ({name!r}), keep one"
            )
        given[name], given_as[name] = value, key
    kwargs = {} if base is None else {f.name: getattr(base, f.name) for f in fields(base)}
    kwargs.update(given)
    for name, sub in _sections(cls).items():
        if name in given:
            old = None if base is None else getattr(base, name)
            kwargs[name] = _parse(sub, given[name], _join(path, name), old)
    cls._prepare(kwargs, set(given))
    return cls(**kwargs)


def config_from_dict(data: Mapping[str, Any] | None) -> Config:
    """Build and validate a config from a nested mapping (missing keys take their defaults).

    Parameters
    ----------
    data
        Nested mapping with the sections ``model``, ``optim``, ``dataset`` and ``wandb`` (all
        optional), in the published YAML layout or as produced by :meth:`Config.to_dict`.
        ``None`` gives the defaults.

    Returns
    -------
    Config
        The frozen, validated configuration.

    Raises
    ------
    ConfigTypeError
        A section is not a mapping or a value has the wrong type.
    ConfigError
        An unknown key (the message names the section and the closest valid key), an
        out-of-range value or inconsistent values.
    """
    return _parse(Config, data, "")


def with_overrides(cfg: Config, overrides: Mapping[str, Any]) -> Config:
    """Return a new validated config with values at dotted paths replaced.

    Parameters
    ----------
    cfg
        The config to start from (unchanged).
    overrides
        Dotted path -> value, e.g. ``{"optim.n_epochs": 10, "dataset.batch_size": 4}``. Aliases
        are accepted (``"optim.wd"``). A mapping value for a section path sets several keys of
        that section. Setting ``attention`` (or ``long_range_attention``) alone updates the
        other one to match; setting ``radius`` (or ``n_neighs``) to a value alone clears the
        other one.

    Returns
    -------
    Config
        The new configuration.

    Raises
    ------
    ConfigError
        Unknown path (with the closest valid key) or an invalid resulting config.
    ConfigTypeError
        A value of the wrong type.
    """
    if not isinstance(overrides, Mapping):
        raise ConfigTypeError(f"overrides must be a mapping, got {_kind(overrides)}")
    # Parsed like a file whose missing keys keep cfg's values: one path validates both.
    tree: dict[str, Any] = {}
    for dotted, value in overrides.items():
        _add_override(tree, dotted, value)
    return _parse(Config, tree, "", cfg)


def _add_override(tree: dict[str, Any], dotted: Any, value: Any) -> None:
    if not isinstance(dotted, str) or not dotted:
        raise ConfigTypeError(f"override keys must be dotted strings, got {dotted!r}")
    *parents, last = dotted.split(".")
    cls, node, path = Config, tree, ""
    for part in parents:
        name = _canonical(part, cls, path)
        if name not in _sections(cls):
            raise ConfigError(f"{dotted!r}: '{_join(path, name)}' is a value, not a section")
        cls, node, path = _sections(cls)[name], node.setdefault(name, {}), _join(path, name)
    name = _canonical(last, cls, path)
    if name not in _sections(cls):
        node[name] = value
    elif isinstance(value, Mapping):
        for key, sub in value.items():
            _add_override(tree, f"{_join(path, name)}.{key}", sub)
    else:
        raise ConfigTypeError(
            f"override {dotted!r} names a section; give a mapping of its keys, got {_kind(value)}"
        )
