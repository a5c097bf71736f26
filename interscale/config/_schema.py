"""The whole config: :class:`Config`, parsing from a mapping and dotted-path overrides."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from interscale.names import CLASSIFICATION_LOSSES, REGRESSION_LOSSES

from ._checks import ConfigError, ConfigTypeError, _as_bool, _as_str, _is_unset, _kind, _set, _show
from ._dataset import DatasetConfig, SpatialNeighborsConfig
from ._model import GlobalParameters, ModelConfig
from ._optim import OptimConfig
from ._section import _Section

__all__ = ["Config", "WandbConfig", "config_from_dict", "with_overrides"]


@dataclass(frozen=True)
class WandbConfig(_Section):
    """``wandb``: accepted so that published configs load; InterScale ignores it.

    Attributes
    ----------
    use
        Compatibility only (default ``False``).
    project_name
        Compatibility only (default ``""``).
    """

    _PATH: ClassVar[str] = "wandb"

    use: bool = False
    project_name: str = ""

    def __post_init__(self) -> None:
        _as_bool(self.use, "wandb.use")
        if _is_unset(self.project_name):
            _set(self, "project_name", "")
        _as_str(self.project_name, "wandb.project_name")


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

    _PATH: ClassVar[str] = ""
    _NESTED: ClassVar[dict[str, Callable[[], type]]] = {
        "model": lambda: ModelConfig,
        "optim": lambda: OptimConfig,
        "dataset": lambda: DatasetConfig,
        "wandb": lambda: WandbConfig,
    }

    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self) -> None:
        for name, factory in self._NESTED.items():
            value = getattr(self, name)
            if not isinstance(value, factory()):
                raise ConfigTypeError(
                    f"section '{name}' must be a {factory().__name__} (a mapping in YAML), "
                    f"got {_kind(value)}"
                )
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
        return _to_plain(self)

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


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


def _section_label(path: str) -> str:
    return f"in section '{path}'" if path else "at the top level"


def _unknown_key(key: Any, cls: type[_Section], path: str) -> ConfigError:
    names = [f.name for f in fields(cls)]
    what = "section" if not path else "key"
    msg = f"unknown {what} {str(key)!r} {_section_label(path)}"
    if isinstance(key, str):
        candidates = names + list(cls._ALIASES)
        match = difflib.get_close_matches(key, candidates, n=1)
        if match:
            return ConfigError(f"{msg}; did you mean {cls._ALIASES.get(match[0], match[0])!r}?")
    return ConfigError(f"{msg}; valid keys: {', '.join(names)}")


def _canonical(key: Any, cls: type[_Section], path: str) -> str:
    name = cls._ALIASES.get(key, key) if isinstance(key, str) else key
    if name not in {f.name for f in fields(cls)}:
        raise _unknown_key(key, cls, path)
    return name


def _parse_section(cls: type[_Section], raw: Any, path: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        where = f"section '{path}'" if path else "the config"
        raise ConfigTypeError(
            f"{where} must be a mapping of keys to values, got {_show(raw)} ({_kind(raw)})"
        )
    kwargs: dict[str, Any] = {}
    given_as: dict[str, Any] = {}
    for key, value in raw.items():
        name = _canonical(key, cls, path)
        if name in kwargs:
            raise ConfigError(
                f"both {given_as[name]!r} and {key!r} are given {_section_label(path)}; "
                f"they are the same setting ({name!r}), keep one"
            )
        kwargs[name] = value
        given_as[name] = key
    for name, factory in cls._NESTED.items():
        if name in kwargs:
            sub_path = f"{path}.{name}" if path else name
            kwargs[name] = _parse_section(factory(), kwargs[name], sub_path)
    cls._prepare(kwargs)
    return cls(**kwargs)


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        out = {}
        for f in fields(value):
            item = getattr(value, f.name)
            if f.name == "subset_dict":
                out[f.name] = {k: list(v) for k, v in item}
            else:
                out[f.name] = _to_plain(item)
        return out
    if isinstance(value, tuple | list):
        return [_to_plain(v) for v in value]
    return value


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
    return _parse_section(Config, data, "")


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
    data = cfg.to_dict()
    touched: dict[tuple[str, ...], set[str]] = {}

    def _apply(dotted: str, value: Any) -> None:
        if not isinstance(dotted, str) or not dotted:
            raise ConfigTypeError(f"override keys must be dotted strings, got {dotted!r}")
        parts = dotted.split(".")
        cls: type[_Section] = Config
        node = data
        path = ""
        for part in parts[:-1]:
            name = _canonical(part, cls, path)
            if name not in cls._NESTED:
                raise ConfigError(f"{dotted!r}: '{_join(path, name)}' is a value, not a section")
            cls = cls._NESTED[name]()
            node = node[name]
            path = _join(path, name)
        name = _canonical(parts[-1], cls, path)
        if name in cls._NESTED:
            if not isinstance(value, Mapping):
                raise ConfigTypeError(
                    f"override {dotted!r} names a section; give a mapping of its keys, "
                    f"got {_kind(value)}"
                )
            for key, sub in value.items():
                _apply(f"{_join(path, name)}.{key}", sub)
            return
        node[name] = value
        touched.setdefault(tuple(path.split(".")), set()).add(name)

    for dotted, value in overrides.items():
        _apply(dotted, value)
    _reconcile(data, touched)
    return config_from_dict(data)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _reconcile(data: dict[str, Any], touched: dict[tuple[str, ...], set[str]]) -> None:
    # Linked keys: when an override sets only one of a pair, the other follows it.
    gp = tuple(GlobalParameters._PATH.split("."))
    keys = touched.get(gp, set())
    params = data["model"]["global_component"]["parameters"]
    if "attention" in keys and "long_range_attention" not in keys:
        params.pop("long_range_attention")
    elif "long_range_attention" in keys and "attention" not in keys:
        params.pop("attention")
    sp = tuple(SpatialNeighborsConfig._PATH.split("."))
    keys = touched.get(sp, set())
    graph = data["dataset"]["spatial_neighbors_kwargs"]
    if "n_neighs" in keys and "radius" not in keys and not _is_unset(graph["n_neighs"]):
        graph["radius"] = None
    elif "radius" in keys and "n_neighs" not in keys and not _is_unset(graph["radius"]):
        graph["n_neighs"] = None
