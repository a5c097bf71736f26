"""Tests for interscale.config.with_overrides and Config.replace: overrides, linked keys."""

from __future__ import annotations

import json

import pytest
from _config_helpers import CONFIG_DIR
from hypothesis import given, settings
from hypothesis import strategies as st

from interscale.config import (
    Config,
    ConfigError,
    ConfigTypeError,
    config_from_dict,
    load_config,
    with_overrides,
)

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
