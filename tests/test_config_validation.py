"""Tests for interscale.config's strict validation: unknown keys, types, ranges, choices."""

from __future__ import annotations

import math

import pytest
from _config_helpers import _leaves, _write

from interscale.config import (
    Config,
    ConfigError,
    ConfigTypeError,
    DatasetConfig,
    GlobalParameters,
    SpatialNeighborsConfig,
    config_from_dict,
    load_config,
)


def _nested(dotted: str, value):
    out = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


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


# ------------------------------------------------------------------------ every key


_LEAVES = sorted(".".join(path) for path, _ in _leaves(Config().to_dict()))


@pytest.mark.parametrize("dotted", _LEAVES)
def test_every_key_is_type_checked_naming_its_path(dotted):
    # A key declared without a real check would store any value silently.
    with pytest.raises(ConfigTypeError) as info:
        config_from_dict(_nested(dotted, object()))
    assert dotted in str(info.value)


def test_direct_construction_validates():
    with pytest.raises(ValueError, match="dataset.batch_size must be a positive integer"):
        DatasetConfig(batch_size=0)
    with pytest.raises(ConfigTypeError, match="section 'optim'"):
        Config(optim={"lr": 0.1})  # type: ignore[arg-type]
