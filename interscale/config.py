"""Typed, validated configuration: YAML in the published format -> frozen dataclasses.

A configuration has four sections, each a frozen dataclass:

``model``
    :class:`ModelConfig`: embedding size, the local (GNN) and global (Transformer) components,
    the decoder(s), the mask token.
``optim``
    :class:`OptimConfig`: optimiser, schedule, loss, seed, device, early stopping.
``dataset``
    :class:`DatasetConfig`: data location, AnnData keys, batching, masking, spatial graph.
``wandb``
    :class:`WandbConfig`: accepted so that published configs load; InterScale never logs to
    Weights & Biases.

:func:`load_config` reads a YAML file (the format of the published
``config_files/legnini_example.yaml``), :func:`config_from_dict` takes a nested mapping,
:meth:`Config.to_dict` gives the canonical nested dict back and :func:`with_overrides` /
:meth:`Config.replace` return a new validated config with some values changed (dotted paths).

Validation is strict. Unknown keys are errors that name the key, its section and the closest valid
key; wrong types raise :class:`ConfigTypeError` (a ``TypeError``), out-of-range values and
inconsistent combinations raise :class:`ConfigError` (a ``ValueError``); every message names the
full dotted path of the offending value.

Published spellings that are accepted as aliases of the canonical names:

- ``dataset.spatial_neigbors_kwargs`` (sic) -> ``dataset.spatial_neighbors_kwargs``
- ``optim.wd`` -> ``optim.weight_decay``
- ``dataset.library_key`` (early published versions) -> ``dataset.sample_key``

Other conventions:

- ``None``, ``null`` and, for compatibility with the published yacs loader, the string ``"None"``
  all mean "not set" where a value is optional; an empty string does too for optional names and
  paths (``h5ad_data``, ``layer_key``, ``save``, ...), which are then stored as ``None``.
- Integer fields accept integral floats (``2.0`` -> ``2``) but never strings or booleans; boolean
  fields accept only YAML booleans (``true``/``True``), never quoted strings.
- In YAML files, numbers in exponent notation without a dot (``1e-4``) are read as floats (plain
  YAML 1.1 would read them as strings). Duplicate keys in a mapping are an error.
- Relative paths (``dataset.h5ad_data``, ``model.save``) are stored as written and are relative to
  the current working directory of the process that uses them, not to the YAML file.
- Keys marked "compatibility only" below are accepted, type-checked and stored with the published
  default so that published configs load, but InterScale does not use them.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import math
import numbers
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml

from interscale._io import atomic_write_text

__all__ = [
    "ACCELERATORS",
    "ACTIVATIONS",
    "ATTENTION_SCOPES",
    "CLASSIFICATION_LOSSES",
    "DECODER_TYPES",
    "GLOBAL_COMPONENTS",
    "LOCAL_COMPONENTS",
    "LR_SCHEDULERS",
    "REGRESSION_LOSSES",
    "Config",
    "ConfigError",
    "ConfigTypeError",
    "DatasetConfig",
    "DecoderConfig",
    "GlobalComponentConfig",
    "GlobalParameters",
    "LocalComponentConfig",
    "LocalParameters",
    "ModelConfig",
    "OptimConfig",
    "SpatialNeighborsConfig",
    "WandbConfig",
    "config_from_dict",
    "load_config",
    "save_config",
    "with_overrides",
]

LOCAL_COMPONENTS: tuple[str, ...] = ("GCN", "GIN")
GLOBAL_COMPONENTS: tuple[str, ...] = ("self-attn-transformer",)
ATTENTION_SCOPES: tuple[str, ...] = ("full", "neighbourhood", "long_range")
ACTIVATIONS: tuple[str, ...] = ("relu", "gelu")
DECODER_TYPES: tuple[str, ...] = ("linear", "nonlinear", "linear-lse")
REGRESSION_LOSSES: tuple[str, ...] = ("GaussianNLL", "MSELoss", "SmoothL1")
CLASSIFICATION_LOSSES: tuple[str, ...] = ("CrossEntropy", "WeightedCE")
ACCELERATORS: tuple[str, ...] = ("auto", "cpu", "cuda")
LR_SCHEDULERS: tuple[str, ...] = ("CosineWarmupScheduler", "ReduceLROnPlateau")

# Names the published package accepted but InterScale does not implement; they get a message of
# their own instead of a bare "not one of".
_UNSUPPORTED_LOCAL = ("SCVI", "Precomputed")
_UNSUPPORTED_LOSSES = ("BalancedPearsonCorrelationLoss", "SCELoss", "SCE_EntropyATT_Loss")


class ConfigError(ValueError):
    """An invalid configuration: unknown key, out-of-range value or inconsistent values."""


class ConfigTypeError(ConfigError, TypeError):
    """A configuration value of the wrong type (also a ``TypeError``)."""


# ---------------------------------------------------------------------------------------------
# Value checks. Each takes the full dotted path so that every message can name it.
# ---------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _kind(value: Any) -> str:
    return type(value).__name__


def _is_unset(value: Any, *, empty_is_unset: bool = False) -> bool:
    # "None" is what the published yacs loader turned into None via literal_eval.
    if value is None or (isinstance(value, str) and value == "None"):
        return True
    return empty_is_unset and isinstance(value, str) and value == ""


def _suggest(value: str, choices: Iterable[str]) -> str | None:
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    if value.lower() in lowered:
        return lowered[value.lower()]
    match = difflib.get_close_matches(value.lower(), list(lowered), n=1)
    return lowered[match[0]] if match else None


def _as_bool(value: Any, path: str) -> bool:
    if isinstance(value, bool):
        return value
    hint = " (write true or false without quotes)" if isinstance(value, str) else ""
    raise ConfigTypeError(f"{path} must be a boolean, got {_show(value)} ({_kind(value)}){hint}")


def _as_int(value: Any, path: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigTypeError(f"{path} must be an integer, got {_show(value)} ({_kind(value)})")
    if not isinstance(value, numbers.Integral):
        if not (math.isfinite(float(value)) and float(value).is_integer()):
            raise ConfigTypeError(f"{path} must be an integer, got {_show(value)}")
    out = int(value)
    if minimum is not None and out < minimum:
        what = {0: "a non-negative integer", 1: "a positive integer"}.get(
            minimum, f"an integer >= {minimum}"
        )
        raise ConfigError(f"{path} must be {what}, got {_show(value)}")
    return out


def _as_float(
    value: Any,
    path: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigTypeError(f"{path} must be a number, got {_show(value)} ({_kind(value)})")
    out = float(value)
    if not math.isfinite(out):
        raise ConfigError(f"{path} must be a finite number, got {_show(value)}")
    too_low = low is not None and (out <= low if low_open else out < low)
    too_high = high is not None and (out >= high if high_open else out > high)
    if too_low or too_high:
        if low == 0 and high is None:
            what = "a positive number" if low_open else "a non-negative number"
        elif high is None:
            what = f"a number {'>' if low_open else '>='} {low:g}"
        elif low is None:
            what = f"a number {'<' if high_open else '<='} {high:g}"
        else:
            left, right = ("(" if low_open else "["), (")" if high_open else "]")
            what = f"in {left}{low:g}, {high:g}{right}"
        raise ConfigError(f"{path} must be {what}, got {_show(value)}")
    return out


def _as_str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise ConfigTypeError(f"{path} must be a string, got {_show(value)} ({_kind(value)})")
    return value


def _as_opt_str(value: Any, path: str) -> str | None:
    return None if _is_unset(value, empty_is_unset=True) else _as_str(value, path)


def _as_choice(value: Any, path: str, choices: Iterable[str], *, note: str = "") -> str:
    choices = tuple(choices)
    if not isinstance(value, str):
        raise ConfigTypeError(
            f"{path} must be one of {', '.join(map(repr, choices))}, "
            f"got {_show(value)} ({_kind(value)})"
        )
    if value not in choices:
        hint = _suggest(value, choices)
        msg = f"{path} must be one of {', '.join(map(repr, choices))}, got {value!r}"
        if hint is not None:
            msg += f"; did you mean {hint!r}?"
        raise ConfigError(msg + note)
    return value


def _as_str_tuple(value: Any, path: str) -> tuple[str, ...]:
    # A lone string is the common shorthand for a one-element list (`sample_key: sample`).
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list | tuple):
        raise ConfigTypeError(
            f"{path} must be a list of strings, got {_show(value)} ({_kind(value)})"
        )
    for i, item in enumerate(value):
        _as_str(item, f"{path}[{i}]")
    return tuple(value)


def _as_int_tuple(value: Any, path: str, *, minimum: int) -> tuple[int, ...]:
    if not isinstance(value, list | tuple):
        raise ConfigTypeError(
            f"{path} must be a list of integers, got {_show(value)} ({_kind(value)})"
        )
    return tuple(_as_int(v, f"{path}[{i}]", minimum=minimum) for i, v in enumerate(value))


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | bool | int | float)


def _as_subset(value: Any, path: str) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    # Stored as pairs rather than a dict so that the frozen config stays hashable.
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, list | tuple):
        items = list(value)
        for item in items:
            if not (isinstance(item, list | tuple) and len(item) == 2):
                raise ConfigTypeError(
                    f"{path} must be a mapping of obs column -> list of values, got {_show(value)}"
                )
    else:
        raise ConfigTypeError(
            f"{path} must be a mapping of obs column -> list of values, "
            f"got {_show(value)} ({_kind(value)})"
        )
    out = []
    for key, vals in items:
        _as_str(key, f"{path} key")
        vals = tuple(vals) if isinstance(vals, list | tuple) else (vals,)
        for i, v in enumerate(vals):
            if not _is_scalar(v):
                raise ConfigTypeError(
                    f"{path}.{key}[{i}] must be a string, number or boolean, got {_kind(v)}"
                )
        out.append((key, vals))
    return tuple(out)


def _require(obj: Any, name: str, cls: type, path: str) -> None:
    value = getattr(obj, name)
    if not isinstance(value, cls):
        raise ConfigTypeError(
            f"{path}.{name} must be a {cls.__name__} (a mapping in YAML), got {_kind(value)}"
        )


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


# ---------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------


class _Section:
    """Mixin: where the section lives, its aliases, nested sections and a pre-parse hook."""

    _PATH: ClassVar[str] = ""
    _ALIASES: ClassVar[dict[str, str]] = {}
    _NESTED: ClassVar[dict[str, Callable[[], type]]] = {}

    @classmethod
    def _prepare(cls, kwargs: dict[str, Any]) -> None:
        """Fill values that depend on which keys the user gave (before construction)."""


@dataclass(frozen=True)
class LocalParameters(_Section):
    """``model.local_component.parameters``: the GNN (same defaults for GCN and GIN).

    Attributes
    ----------
    hidden_dim
        Width of the hidden graph-convolution layers (default 256).
    num_layers
        Number of graph-convolution layers, >= 1 (default 2).
    dropout_local
        Dropout after each hidden layer, in [0, 1) (default 0.1).
    """

    _PATH: ClassVar[str] = "model.local_component.parameters"

    hidden_dim: int = 256
    num_layers: int = 2
    dropout_local: float = 0.1

    def __post_init__(self) -> None:
        p = self._PATH
        _set(self, "hidden_dim", _as_int(self.hidden_dim, f"{p}.hidden_dim", minimum=1))
        _set(self, "num_layers", _as_int(self.num_layers, f"{p}.num_layers", minimum=1))
        _set(
            self,
            "dropout_local",
            _as_float(self.dropout_local, f"{p}.dropout_local", low=0, high=1, high_open=True),
        )


@dataclass(frozen=True)
class LocalComponentConfig(_Section):
    """``model.local_component``.

    Attributes
    ----------
    name
        ``"GCN"`` (default) or ``"GIN"``. The published ``SCVI`` and ``Precomputed`` local
        components are not supported.
    parameters
        :class:`LocalParameters`.
    """

    _PATH: ClassVar[str] = "model.local_component"
    _NESTED: ClassVar[dict[str, Callable[[], type]]] = {"parameters": lambda: LocalParameters}

    name: str = "GCN"
    parameters: LocalParameters = field(default_factory=LocalParameters)

    def __post_init__(self) -> None:
        note = ""
        if self.name in _UNSUPPORTED_LOCAL:
            note = " (the published 'SCVI' and 'Precomputed' local components are not supported)"
        _as_choice(self.name, f"{self._PATH}.name", LOCAL_COMPONENTS, note=note)
        _require(self, "parameters", LocalParameters, self._PATH)


@dataclass(frozen=True)
class GlobalParameters(_Section):
    """``model.global_component.parameters``: the Transformer encoder.

    Attributes
    ----------
    n_heads
        Attention heads (default 4); ``model.n_embed`` must be divisible by it.
    dim_feedforward
        Width of the feed-forward block (default 256).
    dropout_global
        Dropout inside the encoder layers, in [0, 1) (default 0.1).
    activation_func
        ``"relu"`` (default) or ``"gelu"``.
    num_layers
        Number of encoder layers (default 2).
    max_seq_len
        Compatibility only (default 2000). The published model truncated each sample to this many
        cells; InterScale never truncates, every cell gets a global embedding.
    long_range_attention
        Published switch (default ``False``); ``True`` is the same as ``attention: long_range``.
        Always consistent with ``attention`` after loading.
    attention
        Attention scope: ``"full"`` (default, as published: every other cell of the sample and
        the CLS token), ``"neighbourhood"`` (spatial neighbours and CLS) or ``"long_range"``
        (every cell that is neither the cell itself nor one of its neighbours, and CLS).
    long_range_mask_hops
        Compatibility only (default 0).
    type_gex_embedding
        Compatibility only (default ``None``).
    """

    _PATH: ClassVar[str] = "model.global_component.parameters"

    n_heads: int = 4
    dim_feedforward: int = 256
    dropout_global: float = 0.1
    activation_func: str = "relu"
    num_layers: int = 2
    max_seq_len: int = 2000
    long_range_attention: bool = False
    attention: str = "full"
    long_range_mask_hops: int = 0
    type_gex_embedding: str | None = None

    @classmethod
    def _prepare(cls, kwargs: dict[str, Any]) -> None:
        # The published boolean and the new scope describe the same thing: whichever one the user
        # gave determines the other; giving both is checked for agreement in __post_init__.
        if _is_unset(kwargs.get("attention")):
            kwargs.pop("attention", None)
            if kwargs.get("long_range_attention") is True:
                kwargs["attention"] = "long_range"
        elif "long_range_attention" not in kwargs and kwargs["attention"] == "long_range":
            kwargs["long_range_attention"] = True

    def __post_init__(self) -> None:
        p = self._PATH
        _set(self, "n_heads", _as_int(self.n_heads, f"{p}.n_heads", minimum=1))
        _set(
            self,
            "dim_feedforward",
            _as_int(self.dim_feedforward, f"{p}.dim_feedforward", minimum=1),
        )
        _set(
            self,
            "dropout_global",
            _as_float(self.dropout_global, f"{p}.dropout_global", low=0, high=1, high_open=True),
        )
        _as_choice(self.activation_func, f"{p}.activation_func", ACTIVATIONS)
        _set(self, "num_layers", _as_int(self.num_layers, f"{p}.num_layers", minimum=1))
        _set(self, "max_seq_len", _as_int(self.max_seq_len, f"{p}.max_seq_len", minimum=1))
        _as_bool(self.long_range_attention, f"{p}.long_range_attention")
        _as_choice(self.attention, f"{p}.attention", ATTENTION_SCOPES)
        if self.long_range_attention != (self.attention == "long_range"):
            raise ConfigError(
                f"{p}.long_range_attention ({self.long_range_attention}) contradicts "
                f"{p}.attention ({self.attention!r}): long_range_attention: true means "
                "attention: long_range; set only one of the two keys"
            )
        _set(
            self,
            "long_range_mask_hops",
            _as_int(self.long_range_mask_hops, f"{p}.long_range_mask_hops", minimum=0),
        )
        _set(
            self,
            "type_gex_embedding",
            _as_opt_str(self.type_gex_embedding, f"{p}.type_gex_embedding"),
        )


@dataclass(frozen=True)
class GlobalComponentConfig(_Section):
    """``model.global_component``.

    Attributes
    ----------
    name
        ``"self-attn-transformer"`` (the only global component).
    parameters
        :class:`GlobalParameters`.
    latent_obsm_key
        Compatibility only (default ``None``).
    """

    _PATH: ClassVar[str] = "model.global_component"
    _NESTED: ClassVar[dict[str, Callable[[], type]]] = {"parameters": lambda: GlobalParameters}

    name: str = "self-attn-transformer"
    parameters: GlobalParameters = field(default_factory=GlobalParameters)
    latent_obsm_key: str | None = None

    def __post_init__(self) -> None:
        _as_choice(self.name, f"{self._PATH}.name", GLOBAL_COMPONENTS)
        _require(self, "parameters", GlobalParameters, self._PATH)
        _set(
            self,
            "latent_obsm_key",
            _as_opt_str(self.latent_obsm_key, f"{self._PATH}.latent_obsm_key"),
        )


@dataclass(frozen=True)
class DecoderConfig(_Section):
    """``model.decoder``.

    Attributes
    ----------
    type
        ``"linear"`` (default), ``"nonlinear"`` or ``"linear-lse"``.
    hidden_dims
        Hidden widths of the nonlinear decoder (default ``(256, 128)``); must not be empty
        when ``type`` is ``"nonlinear"``.
    dropout_decoder
        Dropout of the nonlinear decoder, in [0, 1) (default 0.1).
    dual_decoder
        One decoder per component (default ``True``; the published default was ``False``, but
        the local/global attribution needs one decoder per component).
    """

    _PATH: ClassVar[str] = "model.decoder"

    type: str = "linear"
    hidden_dims: tuple[int, ...] = (256, 128)
    dropout_decoder: float = 0.1
    dual_decoder: bool = True

    def __post_init__(self) -> None:
        p = self._PATH
        _as_choice(self.type, f"{p}.type", DECODER_TYPES)
        dims = _as_int_tuple(self.hidden_dims, f"{p}.hidden_dims", minimum=1)
        if self.type == "nonlinear" and not dims:
            raise ConfigError(f"{p}.hidden_dims must not be empty when {p}.type is 'nonlinear'")
        _set(self, "hidden_dims", dims)
        _set(
            self,
            "dropout_decoder",
            _as_float(self.dropout_decoder, f"{p}.dropout_decoder", low=0, high=1, high_open=True),
        )
        _as_bool(self.dual_decoder, f"{p}.dual_decoder")


@dataclass(frozen=True)
class ModelConfig(_Section):
    """``model``.

    Attributes
    ----------
    n_embed
        Embedding size of both components (default 16).
    local_component
        :class:`LocalComponentConfig`.
    global_component
        :class:`GlobalComponentConfig`.
    decoder
        :class:`DecoderConfig`.
    mask_token
        Replace masked inputs with a learnable token (default ``True``); ``False`` zeroes them as
        the published model did.
    save
        Output directory written by the published training script (default ``None``); kept as
        written, relative to the current working directory.
    loss
        Compatibility only (default ``None``); the loss is ``optim.loss``.
    """

    _PATH: ClassVar[str] = "model"
    _NESTED: ClassVar[dict[str, Callable[[], type]]] = {
        "local_component": lambda: LocalComponentConfig,
        "global_component": lambda: GlobalComponentConfig,
        "decoder": lambda: DecoderConfig,
    }

    n_embed: int = 16
    local_component: LocalComponentConfig = field(default_factory=LocalComponentConfig)
    global_component: GlobalComponentConfig = field(default_factory=GlobalComponentConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    mask_token: bool = True
    save: str | None = None
    loss: str | None = None

    def __post_init__(self) -> None:
        p = self._PATH
        _set(self, "n_embed", _as_int(self.n_embed, f"{p}.n_embed", minimum=1))
        _require(self, "local_component", LocalComponentConfig, p)
        _require(self, "global_component", GlobalComponentConfig, p)
        _require(self, "decoder", DecoderConfig, p)
        n_heads = self.global_component.parameters.n_heads
        if self.n_embed % n_heads:
            raise ConfigError(
                f"{p}.n_embed ({self.n_embed}) must be divisible by "
                f"{GlobalParameters._PATH}.n_heads ({n_heads})"
            )
        _as_bool(self.mask_token, f"{p}.mask_token")
        _set(self, "save", _as_opt_str(self.save, f"{p}.save"))
        _set(self, "loss", _as_opt_str(self.loss, f"{p}.loss"))


@dataclass(frozen=True)
class OptimConfig(_Section):
    """``optim``: optimiser (AdamW), schedule, loss, seed, device and early stopping.

    Attributes
    ----------
    accelerator
        ``"auto"`` (default), ``"cpu"`` or ``"cuda"``; ``"gpu"`` is stored as ``"cuda"``.
    lr
        Peak learning rate, > 0 (default 1e-3).
    lr_scheduler
        ``"CosineWarmupScheduler"`` (default), ``"ReduceLROnPlateau"`` or ``None`` (constant).
    lr_warmup
        Length of the linear warm-up, >= 0 (default 20). Published semantics: epochs (the
        published scheduler was stepped once per epoch).
    lr_max_epochs
        Compatibility only (default 100); the published trainer used ``n_epochs`` as the cosine
        period instead.
    weight_decay
        AdamW weight decay, >= 0 (default 1e-4). Published name: ``wd`` (accepted as an alias).
    loss
        ``"GaussianNLL"`` (default), ``"MSELoss"`` or ``"SmoothL1"`` for regression;
        ``"CrossEntropy"`` or ``"WeightedCE"`` for classification.
    seed
        Random seed, >= 0 (default 40).
    cross_corr
        Compatibility only (``"cell"`` (default) or ``"gene"``).
    n_epochs
        Maximum number of epochs, >= 1 (default 100).
    early_stopping
        Stop when the validation loss stops improving (default ``True``).
    patience
        Epochs without improvement before stopping, >= 1 (default 5).
    min_delta
        Relative improvement of the validation loss that counts as an improvement: a new loss
        must be below ``best * (1 - min_delta)``; >= 0 (default 0.0).
    min_epochs
        Early stopping never stops before this many epochs (default 40, as published; a run
        with fewer ``n_epochs`` simply runs them all).
    monitor
        Compatibility only (default ``"auto"``); InterScale monitors the validation loss.
    grad_clip
        Maximum gradient norm, > 0, or ``None`` for no clipping (default).
    """

    _PATH: ClassVar[str] = "optim"
    _ALIASES: ClassVar[dict[str, str]] = {"wd": "weight_decay"}

    accelerator: str = "auto"
    lr: float = 1e-3
    lr_scheduler: str | None = "CosineWarmupScheduler"
    lr_warmup: int = 20
    lr_max_epochs: int = 100
    weight_decay: float = 1e-4
    loss: str = "GaussianNLL"
    seed: int = 40
    cross_corr: str = "cell"
    n_epochs: int = 100
    early_stopping: bool = True
    patience: int = 5
    min_delta: float = 0.0
    min_epochs: int = 40
    monitor: str = "auto"
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        p = self._PATH
        acc = self.accelerator.lower() if isinstance(self.accelerator, str) else self.accelerator
        acc = "cuda" if acc == "gpu" else acc
        _set(self, "accelerator", _as_choice(acc, f"{p}.accelerator", ACCELERATORS))
        _set(self, "lr", _as_float(self.lr, f"{p}.lr", low=0, low_open=True))
        sched = self.lr_scheduler
        if _is_unset(sched, empty_is_unset=True) or sched == "none":
            sched = None
        else:
            _as_choice(sched, f"{p}.lr_scheduler", LR_SCHEDULERS)
        _set(self, "lr_scheduler", sched)
        _set(self, "lr_warmup", _as_int(self.lr_warmup, f"{p}.lr_warmup", minimum=0))
        _set(self, "lr_max_epochs", _as_int(self.lr_max_epochs, f"{p}.lr_max_epochs", minimum=1))
        _set(self, "weight_decay", _as_float(self.weight_decay, f"{p}.weight_decay", low=0))
        note = ""
        if self.loss in _UNSUPPORTED_LOSSES:
            note = f" ({self.loss!r} is a published loss that InterScale does not support)"
        _as_choice(self.loss, f"{p}.loss", REGRESSION_LOSSES + CLASSIFICATION_LOSSES, note=note)
        _set(self, "seed", _as_int(self.seed, f"{p}.seed", minimum=0))
        _as_choice(self.cross_corr, f"{p}.cross_corr", ("cell", "gene"))
        _set(self, "n_epochs", _as_int(self.n_epochs, f"{p}.n_epochs", minimum=1))
        _as_bool(self.early_stopping, f"{p}.early_stopping")
        _set(self, "patience", _as_int(self.patience, f"{p}.patience", minimum=1))
        _set(self, "min_delta", _as_float(self.min_delta, f"{p}.min_delta", low=0))
        _set(self, "min_epochs", _as_int(self.min_epochs, f"{p}.min_epochs", minimum=0))
        _as_str(self.monitor, f"{p}.monitor")
        clip = self.grad_clip
        if not _is_unset(clip):
            clip = _as_float(clip, f"{p}.grad_clip", low=0, low_open=True)
        _set(self, "grad_clip", None if _is_unset(clip) else clip)


@dataclass(frozen=True)
class SpatialNeighborsConfig(_Section):
    """``dataset.spatial_neighbors_kwargs`` (published spelling ``spatial_neigbors_kwargs``).

    Exactly one of ``radius`` and ``n_neighs`` is set. Giving only ``n_neighs`` in a file selects
    a k-nearest-neighbour graph (``radius`` becomes ``None``); giving both is an error.

    Attributes
    ----------
    radius
        Radius graph: connect cells closer than this, in the units of ``obsm[spatial_key]``
        (default 50.0, as published), or ``None``.
    n_neighs
        k-nearest-neighbour graph with this many neighbours, or ``None`` (default).
    coord_type
        Compatibility only: ``"generic"`` (default), ``"grid"`` or ``None``.
    library_key
        obs column whose values separate samples when the graph is built; ``None`` (default)
        means the sample keys (``dataset.sample_key``).
    spatial_key
        obsm key of the coordinates (default ``"spatial"``).
    """

    _PATH: ClassVar[str] = "dataset.spatial_neighbors_kwargs"

    radius: float | None = 50.0
    n_neighs: int | None = None
    coord_type: str | None = "generic"
    library_key: str | None = None
    spatial_key: str = "spatial"

    @classmethod
    def _prepare(cls, kwargs: dict[str, Any]) -> None:
        # The default radius must not collide with a user who asks for a kNN graph.
        if "radius" not in kwargs and not _is_unset(kwargs.get("n_neighs")):
            kwargs["radius"] = None

    def __post_init__(self) -> None:
        p = self._PATH
        radius = None if _is_unset(self.radius) else self.radius
        if radius is not None:
            radius = _as_float(radius, f"{p}.radius", low=0, low_open=True)
        n_neighs = None if _is_unset(self.n_neighs) else self.n_neighs
        if n_neighs is not None:
            n_neighs = _as_int(n_neighs, f"{p}.n_neighs", minimum=1)
        if (radius is None) == (n_neighs is None):
            hint = ""
            if radius is not None:
                # Published configs carried both (defaults 50 and 6); squidpy then used radius.
                hint = "; set n_neighs: null for a radius graph or radius: null for a kNN graph"
            raise ConfigError(
                f"{p}: set exactly one of 'radius' and 'n_neighs', got radius={radius} and "
                f"n_neighs={n_neighs}{hint}"
            )
        _set(self, "radius", radius)
        _set(self, "n_neighs", n_neighs)
        coord = None if _is_unset(self.coord_type) else self.coord_type
        if coord is not None:
            _as_choice(coord, f"{p}.coord_type", ("generic", "grid"))
        _set(self, "coord_type", coord)
        _set(self, "library_key", _as_opt_str(self.library_key, f"{p}.library_key"))
        _as_str(self.spatial_key, f"{p}.spatial_key")
        if not self.spatial_key:
            raise ConfigError(f"{p}.spatial_key must not be empty")


@dataclass(frozen=True)
class DatasetConfig(_Section):
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
    sample_key
        obs columns whose value combinations define the samples (one graph each); a single
        string is accepted and wrapped (default ``()``). Early published versions called this
        ``library_key`` (accepted as an alias).
    group_label
        Compatibility only (default ``None``).
    split_key
        obs column holding the train/val/test split (default ``"split"``).
    spatial_neighbors_kwargs
        :class:`SpatialNeighborsConfig`.
    batch_size
        Graphs (samples) per batch, >= 1 (default 32).
    train_size, val_size, test_size
        Compatibility only (defaults 0.7, 0.2, 0.1); each in [0, 1] with
        ``train_size + val_size <= 1``.
    num_features, num_classes
        Compatibility only (default -1; the published code filled them in at run time).
    k_folds
        Compatibility only (default 0).
    stratify_group
        Compatibility only (default ``None``).
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

    _PATH: ClassVar[str] = "dataset"
    _ALIASES: ClassVar[dict[str, str]] = {
        "spatial_neigbors_kwargs": "spatial_neighbors_kwargs",
        "library_key": "sample_key",
    }
    _NESTED: ClassVar[dict[str, Callable[[], type]]] = {
        "spatial_neighbors_kwargs": lambda: SpatialNeighborsConfig
    }

    h5ad_data: str | None = None
    name: str = ""
    description: str = ""
    prediction_task: str = "regression"
    prediction_obs: str | None = None
    prediction_level: str = "node"
    layer_key: str | None = None
    sample_key: tuple[str, ...] = ()
    group_label: str | None = None
    split_key: str = "split"
    spatial_neighbors_kwargs: SpatialNeighborsConfig = field(default_factory=SpatialNeighborsConfig)
    batch_size: int = 32
    train_size: float = 0.7
    val_size: float = 0.2
    test_size: float = 0.1
    num_features: int = -1
    num_classes: int = -1
    k_folds: int = 0
    stratify_group: str | None = None
    pct_mask_nodes: float = 0.2
    segmentation_robustness: tuple[float, float] | None = None
    fine_tuning: tuple[str, ...] = ()
    subset_dict: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    obs_split: str | None = None

    def __post_init__(self) -> None:
        p = self._PATH
        for name in ("h5ad_data", "prediction_obs", "layer_key", "group_label"):
            _set(self, name, _as_opt_str(getattr(self, name), f"{p}.{name}"))
        for name in ("stratify_group", "obs_split"):
            _set(self, name, _as_opt_str(getattr(self, name), f"{p}.{name}"))
        _as_str(self.name, f"{p}.name")
        _as_str(self.description, f"{p}.description")
        _as_choice(self.prediction_task, f"{p}.prediction_task", ("regression", "classification"))
        _as_choice(self.prediction_level, f"{p}.prediction_level", ("node", "graph"))
        _set(self, "sample_key", _as_str_tuple(self.sample_key, f"{p}.sample_key"))
        if any(not k for k in self.sample_key):
            raise ConfigError(f"{p}.sample_key must not contain empty names, got {self.sample_key}")
        if len(set(self.sample_key)) != len(self.sample_key):
            raise ConfigError(f"{p}.sample_key has repeated names: {list(self.sample_key)}")
        _as_str(self.split_key, f"{p}.split_key")
        if not self.split_key:
            raise ConfigError(f"{p}.split_key must not be empty")
        _require(self, "spatial_neighbors_kwargs", SpatialNeighborsConfig, p)
        _set(self, "batch_size", _as_int(self.batch_size, f"{p}.batch_size", minimum=1))
        for name in ("train_size", "val_size", "test_size"):
            value = _as_float(getattr(self, name), f"{p}.{name}", low=0, high=1)
            _set(self, name, value)
        if self.train_size + self.val_size > 1 + 1e-9:
            raise ConfigError(
                f"{p}.train_size + {p}.val_size must be <= 1, got "
                f"{self.train_size} + {self.val_size}"
            )
        _set(self, "num_features", _as_int(self.num_features, f"{p}.num_features", minimum=-1))
        _set(self, "num_classes", _as_int(self.num_classes, f"{p}.num_classes", minimum=-1))
        _set(self, "k_folds", _as_int(self.k_folds, f"{p}.k_folds", minimum=0))
        pct = _as_float(
            self.pct_mask_nodes, f"{p}.pct_mask_nodes", low=0, high=1, low_open=True, high_open=True
        )
        _set(self, "pct_mask_nodes", pct)
        seg = self.segmentation_robustness
        if _is_unset(seg):
            seg = None
        else:
            path = f"{p}.segmentation_robustness"
            if not isinstance(seg, list | tuple) or len(seg) != 2:
                raise ConfigTypeError(
                    f"{path} must be null or a list [node_fraction, overflow_fraction], "
                    f"got {_show(seg)}"
                )
            seg = tuple(_as_float(v, f"{path}[{i}]", low=0, high=1) for i, v in enumerate(seg))
        _set(self, "segmentation_robustness", seg)
        _set(self, "fine_tuning", _as_str_tuple(self.fine_tuning, f"{p}.fine_tuning"))
        subset = () if _is_unset(self.subset_dict) else self.subset_dict
        _set(self, "subset_dict", _as_subset(subset, f"{p}.subset_dict"))


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


# ---------------------------------------------------------------------------------------------
# YAML
# ---------------------------------------------------------------------------------------------


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
