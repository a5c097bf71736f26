"""Tests for interscale.config: defaults, shipped YAMLs, aliases, YAML files, frozen round trips."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import yaml
from _config_helpers import CONFIG_DIR, _leaves, _write

from interscale.config import (
    Config,
    ConfigError,
    LocalParameters,
    config_from_dict,
    load_config,
    save_config,
)

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


def _get(tree, path):
    for key in path:
        tree = tree[_ALIASES.get(key, key)]
    return tree


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
