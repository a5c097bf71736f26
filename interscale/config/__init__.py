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

Layout of the package: ``_checks`` (errors, value checks and the section base that runs each
field's check), ``_aliases`` (published spellings), ``_model``, ``_optim`` and ``_dataset`` (the
sections, one declaration line per key), ``_schema`` (:class:`Config` and the one walk over the
sections for parsing, :meth:`Config.to_dict` and overrides) and ``_yaml`` (files). The option
vocabularies come from :mod:`interscale.names`.
"""

from interscale.names import (
    ACCELERATORS,
    ACTIVATIONS,
    ATTENTION_SCOPES,
    CLASSIFICATION_LOSSES,
    DECODER_TYPES,
    GLOBAL_COMPONENTS,
    LOCAL_COMPONENTS,
    LR_SCHEDULERS,
    REGRESSION_LOSSES,
)

from ._checks import ConfigError, ConfigTypeError
from ._dataset import DatasetConfig, SpatialNeighborsConfig
from ._model import (
    DecoderConfig,
    GlobalComponentConfig,
    GlobalParameters,
    LocalComponentConfig,
    LocalParameters,
    ModelConfig,
)
from ._optim import OptimConfig
from ._schema import Config, WandbConfig, config_from_dict, with_overrides
from ._yaml import load_config, save_config, tutorial_config

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
    "tutorial_config",
    "with_overrides",
]
