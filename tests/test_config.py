"""Tests for interscale.config: defaults, shipped YAMLs, strict validation, round trips."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from interscale.config import (
    Config,
    ConfigError,
    ConfigTypeError,
    DatasetConfig,
    GlobalParameters,
    LocalParameters,
    SpatialNeighborsConfig,
    config_from_dict,
    load_config,
    save_config,
    with_overrides,
)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config_files"

# The defaults of the published yacs schema (theislab/interscale, src/interscale/config/*.py,
# with the GCN and self-attn-transformer component blocks), transcribed by hand. Two values are
# deliberately different in InterScale and are listed in _INTENTIONAL below.
PUBLISHED = {
    "wandb": {"use": False, "project_name": ""},
    "model": {
        "n_embed": 16,
        "local_component": {
            "name": "GCN",
            "parameters": {"hidden_dim": 256, "num_layers": 2, "dropout_local": 0.1},
        },
        "global_component": {
            "name": "self-attn-transformer",
            "parameters": {
                "n_heads": 4,
                "dim_feedforward": 256,
                "dropout_global": 0.1,
                "activation_func": "relu",
                "num_layers": 2,
                "max_seq_len": 2000,
                "long_range_attention": False,
                "long_range_mask_hops": 0,
                "type_gex_embedding": None,
            },
            "latent_obsm_key": None,
        },
        "save": None,
        "loss": None,
        "decoder": {
            "type": "linear",
            "hidden_dims": [256, 128],
            "dropout_decoder": 0.1,
            "dual_decoder": False,
        },
    },
    "optim": {
        "accelerator": "auto",
        "lr": 0.001,
        "lr_scheduler": "CosineWarmupScheduler",
        "lr_warmup": 20,
        "lr_max_epochs": 100,
        "wd": 1e-4,
        "loss": "GaussianNLL",
        "seed": 40,
        "cross_corr": "cell",
        "n_epochs": 100,
        "early_stopping": True,
        "patience": 5,
        "min_delta": 0.0,
        "min_epochs": 40,
        "monitor": "auto",
    },
    "dataset": {
        "h5ad_data": "",
        "name": "",
        "description": "",
        "prediction_task": "regression",
        "prediction_obs": None,
        "prediction_level": "node",
        "layer_key": None,
        "sample_key": [],
        "group_label": "",
        "split_key": "split",
        "spatial_neigbors_kwargs": {
            "radius": 50,
            "coord_type": "generic",
            "library_key": "",
            "n_neighs": 6,
        },
        "batch_size": 32,
        "train_size": 0.7,
        "val_size": 0.2,
        "test_size": 0.1,
        "num_features": -1,
        "num_classes": -1,
        "stratify_group": None,
        "pct_mask_nodes": 0.2,
        "segmentation_robustness": None,
    },
}
# path -> (published default, InterScale default)
_INTENTIONAL = {
    ("model", "decoder", "dual_decoder"): (False, True),
    ("dataset", "spatial_neigbors_kwargs", "n_neighs"): (6, None),
}
_ALIASES = {"wd": "weight_decay", "spatial_neigbors_kwargs": "spatial_neighbors_kwargs"}


def _leaves(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def _get(tree, path):
    for key in path:
        tree = tree[_ALIASES.get(key, key)]
    return tree


def _write(tmp_path: Path, data, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
    path.write_text(text)
    return path


def _nested(dotted: str, value):
    out = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


# ------------------------------------------------------------------------------- defaults


def test_defaults_equal_published_ones():
    got = load_config(None).to_dict()
    checked = 0
    for path, published in _leaves(PUBLISHED):
        expected = _INTENTIONAL[path][1] if path in _INTENTIONAL else published
        if expected == "" and path[-1] not in ("name", "description", "project_name"):
            expected = None  # unset optional names are stored as None
        assert _get(got, path) == expected, path
        checked += 1
    assert checked == len(list(_leaves(PUBLISHED)))
    # InterScale additions
    assert got["model"]["mask_token"] is True
    assert got["model"]["global_component"]["parameters"]["attention"] == "full"
    assert got["optim"]["grad_clip"] is None
    assert got["dataset"]["spatial_neighbors_kwargs"]["spatial_key"] == "spatial"


def test_load_none_is_default_and_full_published_tree_loads():
    assert load_config(None) == Config()
    tree = json.loads(json.dumps(PUBLISHED))
    # squidpy used the radius when both were set; InterScale wants exactly one of the two
    tree["dataset"]["spatial_neigbors_kwargs"]["n_neighs"] = None
    cfg = config_from_dict(tree)
    assert cfg.optim.weight_decay == 1e-4
    assert cfg.dataset.spatial_neighbors_kwargs.radius == 50.0
    # older published keys are accepted too
    old = {"dataset": {"fine_tuning": ["x"], "subset_dict": {"region": ["a", "b"]}, "k_folds": 3}}
    cfg = config_from_dict(old)
    assert cfg.dataset.fine_tuning == ("x",)
    assert cfg.to_dict()["dataset"]["subset_dict"] == {"region": ["a", "b"]}


def test_gin_has_the_same_defaults():
    cfg = config_from_dict({"model": {"local_component": {"name": "GIN"}}})
    assert cfg.model.local_component.name == "GIN"
    assert cfg.model.local_component.parameters == LocalParameters(256, 2, 0.1)


# ---------------------------------------------------------------------------- shipped files


def test_legnini_example_loads_with_published_values():
    path = CONFIG_DIR / "legnini_example.yaml"
    raw = yaml.safe_load(path.read_text())
    assert "spatial_neigbors_kwargs" in raw["dataset"]  # published spelling kept in the file
    cfg = load_config(path)
    m, o, d = cfg.model, cfg.optim, cfg.dataset
    assert m.local_component.name == "GCN"
    assert m.global_component.name == "self-attn-transformer"
    assert m.global_component.parameters.max_seq_len == 4299
    assert m.decoder.type == "linear" and m.decoder.dual_decoder is True
    assert m.save == "results/legnini23/"
    assert (o.lr, o.loss, o.seed, o.accelerator) == (0.001, "SmoothL1", 44, "cpu")
    assert d.h5ad_data == "data/legnini23.h5ad" and not os.path.isabs(d.h5ad_data)
    assert d.name == "legnini23"
    assert (d.prediction_task, d.prediction_level) == ("regression", "node")
    assert d.layer_key == "log1p_norm"
    assert d.sample_key == ("sample",)
    assert d.spatial_neighbors_kwargs.radius == 200.0
    assert d.spatial_neighbors_kwargs.n_neighs is None
    assert d.spatial_neighbors_kwargs.library_key == "sample"
    assert d.batch_size == 3
    assert d.pct_mask_nodes == 0.3
    # everything not in the file keeps its default
    assert m.n_embed == 16 and o.n_epochs == 100 and o.weight_decay == 1e-4


def test_synthetic_example_loads():
    cfg = load_config(str(CONFIG_DIR / "synthetic_example.yaml"))
    d = cfg.dataset
    assert d.name == "synthetic_organoids"
    assert d.h5ad_data is None  # "" -> built-in dataset
    assert cfg.optim.accelerator == "auto"
    assert cfg.optim.n_epochs == 150 and cfg.optim.patience == 20
    assert cfg.optim.loss == "MSELoss"
    assert cfg.model.global_component.parameters.attention == "full"
    assert cfg.model.mask_token is True
    assert d.sample_key == ("sample",) and d.batch_size >= 1


@pytest.mark.parametrize("name", ["legnini_example.yaml", "synthetic_example.yaml"])
def test_shipped_files_round_trip(name, tmp_path):
    cfg = load_config(CONFIG_DIR / name)
    assert config_from_dict(cfg.to_dict()) == cfg
    assert load_config(save_config(cfg, tmp_path / name)) == cfg


# ------------------------------------------------------------------------------- aliases


def test_aliases_accepted():
    cfg = config_from_dict(
        {
            "optim": {"wd": 0.05},
            "dataset": {"spatial_neigbors_kwargs": {"radius": 12}, "library_key": ["s"]},
        }
    )
    assert cfg.optim.weight_decay == 0.05
    assert cfg.dataset.spatial_neighbors_kwargs.radius == 12.0
    assert cfg.dataset.sample_key == ("s",)
    # canonical keys in to_dict
    d = cfg.to_dict()
    assert "weight_decay" in d["optim"] and "wd" not in d["optim"]
    assert "spatial_neighbors_kwargs" in d["dataset"]
    assert "spatial_neigbors_kwargs" not in d["dataset"]


@pytest.mark.parametrize(
    ("data", "keys"),
    [
        ({"optim": {"wd": 0.1, "weight_decay": 0.1}}, ("wd", "weight_decay")),
        (
            {"dataset": {"spatial_neigbors_kwargs": {}, "spatial_neighbors_kwargs": {}}},
            ("spatial_neigbors_kwargs", "spatial_neighbors_kwargs"),
        ),
    ],
)
def test_alias_and_canonical_together_rejected(data, keys):
    with pytest.raises(ConfigError, match="both") as info:
        config_from_dict(data)
    assert all(k in str(info.value) for k in keys)


# ----------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("dotted", "section", "suggestion"),
    [
        ("optim.lrr", "optim", "lr"),
        ("model.n_embd", "model", "n_embed"),
        ("model.local_component.nmae", "model.local_component", "name"),
        ("model.local_component.parameters.hidden_dims", None, "hidden_dim"),
        ("model.global_component.parameters.n_head", None, "n_heads"),
        ("model.global_component.parameters.attentoin", None, "attention"),
        ("model.global_component.latent_obsm_keys", "model.global_component", "latent_obsm_key"),
        ("model.decoder.dual_decoders", "model.decoder", "dual_decoder"),
        ("dataset.batchsize", "dataset", "batch_size"),
        ("dataset.spatial_neigbors_kwargs.radious", None, "radius"),
        ("dataset.spatial_neighbours_kwargs", "dataset", "spatial_neighbors_kwargs"),
        ("wandb.usee", "wandb", "use"),
    ],
)
def test_unknown_key_names_key_section_and_suggestion(dotted, section, suggestion):
    parts = dotted.split(".")
    if section is None:
        section = ".".join(parts[:-1]).replace("neigbors", "neighbors")
    bad = parts[-1]
    with pytest.raises(ConfigError) as info:
        config_from_dict(_nested(dotted, 1))
    assert str(info.value) == (
        f"unknown key '{bad}' in section '{section}'; did you mean '{suggestion}'?"
    )


def test_unknown_top_level_section_and_no_close_match():
    with pytest.raises(ConfigError, match=r"unknown section 'optimm' at the top level.*'optim'"):
        config_from_dict({"optimm": {}})
    with pytest.raises(ConfigError) as info:
        config_from_dict({"optim": {"zzzzzz": 1}})
    msg = str(info.value)
    assert "unknown key 'zzzzzz' in section 'optim'; valid keys:" in msg
    assert "lr" in msg and "weight_decay" in msg


def test_unknown_key_in_file_mentions_file(tmp_path):
    path = _write(tmp_path, {"optim": {"lrr": 0.1}})
    with pytest.raises(ConfigError, match="did you mean 'lr'") as info:
        load_config(path)
    assert any(str(path) in note for note in getattr(info.value, "__notes__", []))


# ------------------------------------------------------------------------------ wrong types


@pytest.mark.parametrize(
    ("dotted", "value", "shown"),
    [
        ("optim.lr", "0.001", "optim.lr"),
        ("model.n_embed", "16", "model.n_embed"),
        ("model.n_embed", 16.5, "model.n_embed"),
        ("model.n_embed", True, "model.n_embed"),
        ("optim.early_stopping", "True", "optim.early_stopping"),
        ("model.mask_token", 1, "model.mask_token"),
        ("model.decoder.dual_decoder", "yes", "model.decoder.dual_decoder"),
        ("model.global_component.parameters.long_range_attention", "False", "long_range"),
        ("dataset.batch_size", "3", "dataset.batch_size"),
        ("dataset.sample_key", 5, "dataset.sample_key"),
        ("dataset.sample_key", ["a", 1], "dataset.sample_key[1]"),
        ("model.decoder.hidden_dims", "256", "model.decoder.hidden_dims"),
        ("model.decoder.hidden_dims", [256, "128"], "model.decoder.hidden_dims[1]"),
        ("dataset.spatial_neighbors_kwargs.radius", "200", "spatial_neighbors_kwargs.radius"),
        ("dataset.layer_key", 3, "dataset.layer_key"),
        ("model.local_component.name", 3, "model.local_component.name"),
        ("optim", 5, "section 'optim'"),
        ("model.local_component.parameters", [1, 2], "model.local_component.parameters"),
    ],
)
def test_wrong_type_is_type_error_naming_path(dotted, value, shown):
    with pytest.raises(TypeError) as info:
        config_from_dict(_nested(dotted, value))
    assert isinstance(info.value, ConfigTypeError)
    assert shown in str(info.value)


def test_integral_float_accepted_for_int():
    cfg = config_from_dict({"model": {"n_embed": 32.0}, "dataset": {"batch_size": 2.0}})
    assert cfg.model.n_embed == 32 and isinstance(cfg.model.n_embed, int)
    assert cfg.dataset.batch_size == 2 and isinstance(cfg.dataset.batch_size, int)
    cfg = config_from_dict({"optim": {"lr": 1}})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)


# ---------------------------------------------------------------------------- value ranges


@pytest.mark.parametrize(
    ("dotted", "value", "message"),
    [
        ("optim.lr", -1, "optim.lr must be a positive number, got -1"),
        ("optim.lr", 0, "optim.lr must be a positive number, got 0"),
        ("optim.lr", math.nan, "optim.lr must be a finite number, got nan"),
        ("dataset.pct_mask_nodes", 0, "dataset.pct_mask_nodes must be in (0, 1), got 0"),
        ("dataset.pct_mask_nodes", 1, "dataset.pct_mask_nodes must be in (0, 1), got 1"),
        ("dataset.pct_mask_nodes", 1.5, "dataset.pct_mask_nodes must be in (0, 1), got 1.5"),
        ("dataset.batch_size", 0, "dataset.batch_size must be a positive integer, got 0"),
        ("optim.n_epochs", 0, "optim.n_epochs must be a positive integer, got 0"),
        ("optim.weight_decay", -0.1, "optim.weight_decay must be a non-negative number, got -0.1"),
        ("optim.lr_warmup", -1, "optim.lr_warmup must be a non-negative integer, got -1"),
        ("optim.seed", -3, "optim.seed must be a non-negative integer, got -3"),
        ("optim.grad_clip", 0, "optim.grad_clip must be a positive number, got 0"),
        (
            "model.decoder.dropout_decoder",
            1.0,
            "model.decoder.dropout_decoder must be in [0, 1), got 1.0",
        ),
        (
            "model.local_component.parameters.num_layers",
            0,
            "model.local_component.parameters.num_layers must be a positive integer, got 0",
        ),
        (
            "dataset.spatial_neighbors_kwargs.radius",
            -5,
            "dataset.spatial_neighbors_kwargs.radius must be a positive number, got -5",
        ),
    ],
)
def test_out_of_range_is_value_error_with_message(dotted, value, message):
    with pytest.raises(ValueError) as info:
        config_from_dict(_nested(dotted, value))
    assert not isinstance(info.value, TypeError)
    assert str(info.value) == message


def test_n_embed_not_divisible_by_n_heads():
    data = {"model": {"global_component": {"parameters": {"n_heads": 5}}}}
    with pytest.raises(ValueError) as info:
        config_from_dict(data)
    assert str(info.value) == (
        "model.n_embed (16) must be divisible by model.global_component.parameters.n_heads (5)"
    )
    data["model"]["n_embed"] = 20
    assert config_from_dict(data).model.n_embed == 20


def test_nonlinear_decoder_needs_hidden_dims():
    with pytest.raises(ValueError, match="model.decoder.hidden_dims must not be empty"):
        config_from_dict({"model": {"decoder": {"type": "nonlinear", "hidden_dims": []}}})
    cfg = config_from_dict({"model": {"decoder": {"type": "linear", "hidden_dims": []}}})
    assert cfg.model.decoder.hidden_dims == ()


# ------------------------------------------------------------------------- choices, names


@pytest.mark.parametrize("name", ["SCVI", "Precomputed"])
def test_published_but_unsupported_local_components(name):
    with pytest.raises(ValueError) as info:
        config_from_dict({"model": {"local_component": {"name": name}}})
    msg = str(info.value)
    assert "model.local_component.name" in msg and "'GCN', 'GIN'" in msg
    assert "not supported" in msg


def test_unknown_component_names():
    with pytest.raises(ValueError, match="did you mean 'GCN'"):
        config_from_dict({"model": {"local_component": {"name": "gcn"}}})
    with pytest.raises(ValueError) as info:
        config_from_dict({"model": {"global_component": {"name": "performer"}}})
    assert "model.global_component.name" in str(info.value)
    assert "'self-attn-transformer'" in str(info.value)


@pytest.mark.parametrize(
    ("dotted", "value", "fragment"),
    [
        ("model.global_component.parameters.attention", "global", "'full', 'neighbourhood'"),
        ("model.global_component.parameters.attention", "neighborhood", "'neighbourhood'?"),
        ("model.global_component.parameters.activation_func", "tanh", "'relu', 'gelu'"),
        ("model.decoder.type", "mlp", "'linear', 'nonlinear', 'linear-lse'"),
        ("optim.loss", "L1", "optim.loss must be one of"),
        ("optim.loss", "SCELoss", "does not support"),
        ("optim.accelerator", "tpu", "'auto', 'cpu', 'cuda'"),
        ("optim.lr_scheduler", "Cosine", "'CosineWarmupScheduler'"),
        ("dataset.prediction_task", "regresion", "did you mean 'regression'"),
        ("dataset.prediction_level", "cell", "'node', 'graph'"),
        ("dataset.spatial_neighbors_kwargs.coord_type", "hex", "'generic', 'grid'"),
    ],
)
def test_invalid_choice(dotted, value, fragment):
    with pytest.raises(ValueError) as info:
        config_from_dict(_nested(dotted, value))
    assert dotted.split(".")[-1] in str(info.value)
    assert fragment in str(info.value)


@pytest.mark.parametrize(("given", "stored"), [("gpu", "cuda"), ("GPU", "cuda"), ("CPU", "cpu")])
def test_accelerator_normalised(given, stored):
    assert config_from_dict({"optim": {"accelerator": given}}).optim.accelerator == stored


def test_loss_must_fit_prediction_task():
    with pytest.raises(ValueError, match="optim.loss 'CrossEntropy' does not fit"):
        config_from_dict({"optim": {"loss": "CrossEntropy"}})
    with pytest.raises(ValueError, match="dataset.prediction_obs"):
        config_from_dict(
            {"optim": {"loss": "CrossEntropy"}, "dataset": {"prediction_task": "classification"}}
        )
    cfg = config_from_dict(
        {
            "optim": {"loss": "CrossEntropy"},
            "dataset": {"prediction_task": "classification", "prediction_obs": "cell_type"},
        }
    )
    assert cfg.dataset.prediction_obs == "cell_type"


# ------------------------------------------------------------------------------ attention


def _attn(**params):
    cfg = config_from_dict({"model": {"global_component": {"parameters": params}}})
    p = cfg.model.global_component.parameters
    return p.attention, p.long_range_attention


def test_attention_from_long_range_attention():
    assert _attn() == ("full", False)
    assert _attn(long_range_attention=True) == ("long_range", True)
    assert _attn(long_range_attention=False) == ("full", False)
    assert _attn(attention="long_range") == ("long_range", True)
    assert _attn(attention="neighbourhood") == ("neighbourhood", False)
    assert _attn(attention="long_range", long_range_attention=True) == ("long_range", True)
    assert _attn(attention=None, long_range_attention=True) == ("long_range", True)


@pytest.mark.parametrize(
    ("attention", "lra"), [("full", True), ("neighbourhood", True), ("long_range", False)]
)
def test_contradicting_attention_keys(attention, lra):
    with pytest.raises(ValueError) as info:
        _attn(attention=attention, long_range_attention=lra)
    msg = str(info.value)
    assert "model.global_component.parameters.long_range_attention" in msg
    assert "model.global_component.parameters.attention" in msg
    with pytest.raises(ValueError):
        GlobalParameters(attention=attention, long_range_attention=lra)


# ------------------------------------------------------------------------ spatial graph


def test_radius_and_n_neighs_exactly_one():
    section = "dataset.spatial_neighbors_kwargs"
    with pytest.raises(ValueError, match=f"{section}: set exactly one of 'radius' and 'n_neighs'"):
        config_from_dict(_nested(section, {"radius": 100, "n_neighs": 6}))
    with pytest.raises(ValueError, match="exactly one"):
        config_from_dict(_nested(section, {"radius": None}))
    knn = config_from_dict(_nested(section, {"n_neighs": 8})).dataset.spatial_neighbors_kwargs
    assert (knn.radius, knn.n_neighs) == (None, 8)
    rad = config_from_dict(_nested(section, {"radius": 30})).dataset.spatial_neighbors_kwargs
    assert (rad.radius, rad.n_neighs) == (30.0, None)
    with pytest.raises(ValueError):
        SpatialNeighborsConfig(radius=10.0, n_neighs=3)


# ------------------------------------------------------------------------------ YAML files


@pytest.mark.parametrize("text", ["- model\n- optim\n", "just a string\n", "42\n"])
def test_yaml_not_a_mapping(tmp_path, text):
    path = _write(tmp_path, text)
    with pytest.raises(TypeError) as info:
        load_config(path)
    assert "must hold a mapping" in str(info.value) and str(path) in str(info.value)


def test_empty_yaml_gives_defaults_and_empty_sections_too(tmp_path):
    assert load_config(_write(tmp_path, "")) == Config()
    assert load_config(_write(tmp_path, "model:\noptim:\n", "b.yaml")) == Config()


def test_missing_file_and_directory(tmp_path):
    missing = tmp_path / "nope" / "cfg.yaml"
    with pytest.raises(FileNotFoundError) as info:
        load_config(missing)
    assert str(missing) in str(info.value)
    with pytest.raises(IsADirectoryError):
        load_config(tmp_path)


def test_invalid_yaml_and_duplicate_keys(tmp_path):
    bad = _write(tmp_path, "optim:\n  lr: [0.1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    dup = _write(tmp_path, "optim:\n  lr: 0.1\n  seed: 1\n  lr: 0.2\n", "dup.yaml")
    with pytest.raises(ConfigError, match="duplicate key 'lr' at line 4"):
        load_config(dup)


def test_yaml_conveniences(tmp_path):
    text = (
        "model:\n  save: None\n"
        "optim:\n  wd: 1e-4\n  lr: 5E-3\n  lr_scheduler: None\n"
        "dataset:\n  h5ad_data: ''\n  sample_key: sample\n  layer_key: ''\n"
    )
    cfg = load_config(_write(tmp_path, text))
    assert cfg.optim.weight_decay == 1e-4 and cfg.optim.lr == 5e-3
    assert cfg.model.save is None and cfg.optim.lr_scheduler is None
    assert cfg.dataset.h5ad_data is None and cfg.dataset.layer_key is None
    assert cfg.dataset.sample_key == ("sample",)


# ---------------------------------------------------------------------- frozen, round trip


def test_frozen_and_hashable():
    cfg = load_config(CONFIG_DIR / "legnini_example.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.lr = 0.1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model = None  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.dataset.spatial_neighbors_kwargs.radius = 1.0  # type: ignore[misc]
    assert hash(cfg) == hash(load_config(CONFIG_DIR / "legnini_example.yaml"))
    assert isinstance(cfg.dataset.sample_key, tuple)
    assert isinstance(cfg.model.decoder.hidden_dims, tuple)


def test_to_dict_is_plain_and_round_trips(tmp_path):
    cfg = config_from_dict(
        {
            "dataset": {
                "subset_dict": {"region": ["a", 1]},
                "segmentation_robustness": [0.1, 0.2],
                "sample_key": ["donor", "sample"],
            },
            "optim": {"grad_clip": 1.0},
        }
    )
    d = cfg.to_dict()
    text = json.dumps(d)
    assert config_from_dict(json.loads(text)) == cfg
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(d))) == cfg
    assert d["dataset"]["sample_key"] == ["donor", "sample"]
    assert d["dataset"]["subset_dict"] == {"region": ["a", 1]}
    d["optim"]["lr"] = 123.0  # a copy: the config is untouched
    assert cfg.optim.lr == 1e-3
    out = save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(out) == cfg
    assert [p.name for p in tmp_path.iterdir()] == ["saved.yaml"]  # no temp file left


# -------------------------------------------------------------------------------- overrides


def test_with_overrides_and_replace():
    cfg = load_config(CONFIG_DIR / "legnini_example.yaml")
    new = with_overrides(cfg, {"optim.n_epochs": 5, "optim.wd": 0.0, "dataset.batch_size": 1})
    assert (new.optim.n_epochs, new.optim.weight_decay, new.dataset.batch_size) == (5, 0.0, 1)
    assert cfg.optim.n_epochs == 100  # original untouched
    assert new.dataset.layer_key == cfg.dataset.layer_key
    assert cfg.replace(**{"optim.n_epochs": 5, "optim.wd": 0.0, "dataset.batch_size": 1}) == new
    assert with_overrides(cfg, {"optim": {"lr": 0.01}}).optim.lr == 0.01
    alias = with_overrides(cfg, {"dataset.spatial_neigbors_kwargs.radius": 10})
    assert alias.dataset.spatial_neighbors_kwargs.radius == 10.0
    assert with_overrides(cfg, {}) == cfg


def test_with_overrides_linked_keys():
    cfg = Config()
    lr = with_overrides(cfg, {"model.global_component.parameters.attention": "long_range"})
    assert lr.model.global_component.parameters.long_range_attention is True
    back = with_overrides(lr, {"model.global_component.parameters.long_range_attention": False})
    assert back.model.global_component.parameters.attention == "full"
    knn = with_overrides(cfg, {"dataset.spatial_neighbors_kwargs.n_neighs": 10})
    assert knn.dataset.spatial_neighbors_kwargs.radius is None
    rad = with_overrides(knn, {"dataset.spatial_neighbors_kwargs.radius": 20})
    assert rad.dataset.spatial_neighbors_kwargs.n_neighs is None


def test_with_overrides_null_graph_kind_keeps_the_other():
    # Only a value clears the other kind; null leaves it as it was (here the file's radius).
    cfg = load_config(CONFIG_DIR / "legnini_example.yaml")
    new = with_overrides(cfg, {"dataset.spatial_neighbors_kwargs.n_neighs": None})
    assert new == cfg
    knn = with_overrides(cfg, {"dataset.spatial_neighbors_kwargs": {"n_neighs": 4}})
    assert (knn.dataset.spatial_neighbors_kwargs.radius, knn.dataset.sample_key) == (
        None,
        cfg.dataset.sample_key,
    )


_LEAVES = sorted(".".join(path) for path, _ in _leaves(Config().to_dict()))


@pytest.mark.parametrize("dotted", _LEAVES)
def test_every_key_is_type_checked_naming_its_path(dotted):
    # A key declared without a real check would store any value silently.
    with pytest.raises(ConfigTypeError) as info:
        config_from_dict(_nested(dotted, object()))
    assert dotted in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "exc", "fragment"),
    [
        ({"optim.lrr": 1.0}, ConfigError, "did you mean 'lr'"),
        ({"optimm.lr": 1.0}, ConfigError, "did you mean 'optim'"),
        ({"optim.lr.x": 1.0}, ConfigError, "'optim.lr' is a value, not a section"),
        ({"optim.lr": -1}, ConfigError, "optim.lr must be a positive number, got -1"),
        ({"optim.n_epochs": "10"}, ConfigTypeError, "optim.n_epochs"),
        ({"optim": 3}, ConfigTypeError, "names a section"),
    ],
)
def test_with_overrides_errors(overrides, exc, fragment):
    with pytest.raises(exc, match=None) as info:
        with_overrides(Config(), overrides)
    assert fragment in str(info.value)


def test_direct_construction_validates():
    with pytest.raises(ValueError, match="dataset.batch_size must be a positive integer"):
        DatasetConfig(batch_size=0)
    with pytest.raises(ConfigTypeError, match="section 'optim'"):
        Config(optim={"lr": 0.1})  # type: ignore[arg-type]


_positive = st.floats(min_value=1e-8, max_value=10.0, allow_nan=False, allow_infinity=False)


@settings(max_examples=40, deadline=None)
@given(
    lr=_positive,
    wd=st.floats(min_value=0.0, max_value=1.0),
    batch_size=st.integers(min_value=1, max_value=512),
    pct=st.floats(min_value=1e-6, max_value=1 - 1e-6),
    n_heads=st.sampled_from([1, 2, 4, 8]),
    mult=st.integers(min_value=1, max_value=16),
    radius=st.one_of(st.none(), _positive),
    n_epochs=st.integers(min_value=1, max_value=10_000),
)
def test_round_trip_property(lr, wd, batch_size, pct, n_heads, mult, radius, n_epochs):
    overrides = {
        "optim.lr": lr,
        "optim.weight_decay": wd,
        "optim.n_epochs": n_epochs,
        "dataset.batch_size": batch_size,
        "dataset.pct_mask_nodes": pct,
        "model.global_component.parameters.n_heads": n_heads,
        "model.n_embed": n_heads * mult,
    }
    if radius is None:
        overrides["dataset.spatial_neighbors_kwargs.n_neighs"] = mult
    else:
        overrides["dataset.spatial_neighbors_kwargs.radius"] = radius
    cfg = with_overrides(Config(), overrides)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.n_epochs) == (lr, wd, n_epochs)
    assert (cfg.dataset.batch_size, cfg.dataset.pct_mask_nodes) == (batch_size, pct)
    assert cfg.model.n_embed % cfg.model.global_component.parameters.n_heads == 0
    assert config_from_dict(cfg.to_dict()) == cfg
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    graph = cfg.dataset.spatial_neighbors_kwargs
    assert (graph.radius is None) != (graph.n_neighs is None)


def _compatibility_only_fields(section, prefix: str = "") -> list[str]:
    """Dotted paths of the fields whose docstring entry starts with "Compatibility only"."""
    lines = (type(section).__doc__ or "").split("\n")
    marked: set[str] = set()
    for line, following in zip(lines, lines[1:], strict=False):
        names = line.strip()
        if line.startswith("    ") and not line.startswith("     ") and names:
            if following.strip().startswith("Compatibility only"):
                marked.update(n.strip() for n in names.split(","))
    out = []
    for field in dataclasses.fields(section):
        value = getattr(section, field.name)
        if dataclasses.is_dataclass(value):
            out += _compatibility_only_fields(value, f"{prefix}{field.name}.")
        elif field.name in marked:
            out.append(prefix + field.name)
    return out


def test_readme_lists_exactly_the_compatibility_only_fields():
    """The README's compatibility section is the one list of keys stored but never used."""
    fields = set(_compatibility_only_fields(load_config(None)))
    assert len(fields) >= 15, sorted(fields)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Compatibility with the published API", 1)[1].split("\n## ", 1)[0]
    paragraph = section.split("InterScale does not use them:", 1)[1]
    listed = {m.strip("`") for m in paragraph.replace("\n", " ").split(", ")}
    listed = {x.strip().rstrip(".").strip("`") for x in listed}
    assert listed == fields
