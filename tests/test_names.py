"""Every option vocabulary of interscale.names is what each implementation accepts, exactly.

For each vocabulary: the registry that implements it has exactly its names, every name builds and
runs, and a name outside it is refused; the config accepts every name at its dotted path and
refuses a misspelt one with a ConfigError naming the path. Plus the AnnData key builders.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import interscale.config
import interscale.names as names
from interscale.config import ConfigError, load_config, with_overrides
from interscale.names import Key

# ---------------------------------------------------------------------------------- the names

VOCABULARIES = {
    "LOCAL_COMPONENTS": names.LOCAL_COMPONENTS,
    "GLOBAL_COMPONENTS": names.GLOBAL_COMPONENTS,
    "ATTENTION_SCOPES": names.ATTENTION_SCOPES,
    "ACTIVATIONS": names.ACTIVATIONS,
    "DECODER_TYPES": names.DECODER_TYPES,
    "REGRESSION_LOSSES": names.REGRESSION_LOSSES,
    "CLASSIFICATION_LOSSES": names.CLASSIFICATION_LOSSES,
    "ACCELERATORS": names.ACCELERATORS,
    "STRATEGIES": names.STRATEGIES,
    "LR_SCHEDULERS": names.LR_SCHEDULERS,
    "SPLITS": names.SPLITS,
    "HEADS": names.HEADS,
}


@pytest.mark.parametrize("name", sorted(VOCABULARIES))
def test_vocabulary_is_a_tuple_of_distinct_nonempty_strings(name):
    vocab = VOCABULARIES[name]
    assert isinstance(vocab, tuple) and vocab
    assert all(isinstance(v, str) and v for v in vocab)
    assert len(set(vocab)) == len(vocab)
    assert name in names.__all__


def test_regression_and_classification_losses_do_not_overlap():
    assert not set(names.REGRESSION_LOSSES) & set(names.CLASSIFICATION_LOSSES)


def test_names_and_config_import_without_torch():
    code = (
        "import sys, interscale.names, interscale.config; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "name",
    [
        "ACCELERATORS",
        "ACTIVATIONS",
        "ATTENTION_SCOPES",
        "CLASSIFICATION_LOSSES",
        "DECODER_TYPES",
        "GLOBAL_COMPONENTS",
        "LOCAL_COMPONENTS",
        "LR_SCHEDULERS",
        "REGRESSION_LOSSES",
    ],
)
def test_config_reexports_the_names_objects(name):
    assert getattr(interscale.config, name) is getattr(names, name)


def test_old_module_level_names_are_the_names_objects():
    from interscale import nn as isnn
    from interscale import train
    from interscale.nn import _attention, _decoders
    from interscale.train import _distributed, _losses

    assert _attention.ATTENTION_SCOPES is names.ATTENTION_SCOPES
    assert isnn.ATTENTION_SCOPES is names.ATTENTION_SCOPES
    assert _decoders.DECODER_KINDS is names.DECODER_TYPES
    assert isnn.DECODER_KINDS is names.DECODER_TYPES
    assert _losses.LOSSES is names.REGRESSION_LOSSES
    assert train.LOSSES is names.REGRESSION_LOSSES
    assert _distributed.STRATEGIES is names.STRATEGIES
    assert train.STRATEGIES is names.STRATEGIES


# --------------------------------------------------------------------- the implementations


def _small_batch(n_embed: int = 8):
    """Two samples of three cells, each a path graph (symmetric edges, global indices)."""
    torch.manual_seed(0)
    h = torch.randn(6, n_embed)
    ptr = torch.tensor([0, 3, 6])
    src = torch.tensor([0, 1, 1, 2, 3, 4, 4, 5])
    dst = torch.tensor([1, 0, 2, 1, 4, 3, 5, 4])
    return h, ptr, torch.stack([src, dst])


def test_local_encoders_are_exactly_local_components():
    from torch_geometric.utils import to_undirected

    from interscale.nn import make_local_encoder
    from interscale.nn._local import _LOCAL_ENCODERS

    assert tuple(_LOCAL_ENCODERS) == names.LOCAL_COMPONENTS
    x = torch.randn(5, 7)
    edge_index = to_undirected(torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]]))
    for name in names.LOCAL_COMPONENTS:
        encoder = make_local_encoder(name, 7, n_embed=4, hidden_dim=8, num_layers=2)
        assert isinstance(encoder, _LOCAL_ENCODERS[name])
        assert encoder(x, edge_index).shape == (5, 4)
    with pytest.raises(ValueError, match=r"local encoder must be one of \('GCN', 'GIN'\)"):
        make_local_encoder("GAT", 7)


def test_global_encoder_accepts_exactly_the_attention_scopes():
    from interscale.nn import GlobalEncoder

    h, ptr, edge_index = _small_batch()
    for scope in names.ATTENTION_SCOPES:
        enc = GlobalEncoder(n_embed=8, n_heads=2, dim_feedforward=16, attention=scope).eval()
        out = enc(h, ptr, edge_index)
        assert out.embedding.shape == (6, 8) and out.cls.shape == (2, 8)
        assert torch.isfinite(out.embedding).all()
    with pytest.raises(ValueError, match="attention must be one of"):
        GlobalEncoder(n_embed=8, n_heads=2, attention="local")


def test_global_encoder_activations_are_exactly_activations():
    from interscale.nn import GlobalEncoder
    from interscale.nn._global import _ACTIVATIONS

    assert tuple(_ACTIVATIONS) == names.ACTIVATIONS
    h, ptr, edge_index = _small_batch()
    x = torch.linspace(-2, 2, 9)
    for name in names.ACTIVATIONS:
        enc = GlobalEncoder(n_embed=8, n_heads=2, dim_feedforward=16, activation=name).eval()
        layer = enc.transformer_encoder.layers[0]
        assert torch.equal(layer.activation(x), getattr(torch.nn.functional, name)(x))
        assert enc(h, ptr, edge_index).embedding.shape == (6, 8)
    with pytest.raises(ValueError, match="activation must be one of"):
        GlobalEncoder(n_embed=8, n_heads=2, activation="tanh")


def test_decoders_are_exactly_decoder_types():
    from interscale.nn import make_decoder
    from interscale.nn._decoders import _DECODERS

    assert tuple(_DECODERS) == names.DECODER_TYPES
    z = torch.randn(5, 4)
    for kind in names.DECODER_TYPES:
        decoder = make_decoder(kind, 4, 3, hidden_dims=(6,))
        assert type(decoder) is _DECODERS[kind]
        assert decoder(z).shape == (5, 3)
    with pytest.raises(ValueError, match="decoder kind must be one of"):
        make_decoder("mlp", 4, 3)


def test_make_loss_builds_exactly_the_regression_losses():
    from interscale.train import make_loss
    from interscale.train._losses import _LOSSES

    assert tuple(_LOSSES) == names.REGRESSION_LOSSES
    pred, target = torch.randn(4, 3), torch.randn(4, 3)
    for name in names.REGRESSION_LOSSES:
        value = make_loss(name)(pred, target)
        assert value.dim() == 0 and torch.isfinite(value)
    for name in ("L1Loss", *names.CLASSIFICATION_LOSSES):
        with pytest.raises(ValueError, match=rf"unknown loss '{name}'"):
            make_loss(name)


def test_strategies_are_exactly_strategies(monkeypatch):
    from interscale.train import resolve_strategy
    from interscale.train._distributed import check_strategy

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for name in names.STRATEGIES:
        assert check_strategy(name) == name
        assert resolve_strategy(name) == name
    assert resolve_strategy("auto") in names.STRATEGIES
    with pytest.raises(ValueError, match="unknown strategy 'horovod'"):
        check_strategy("horovod")


def test_resolve_device_accepts_every_accelerator():
    from interscale.train import resolve_device

    for name in names.ACCELERATORS:
        if name == "cuda" and not torch.cuda.is_available():
            with pytest.raises(ValueError, match="CUDA is not available"):
                resolve_device(name)
        else:
            assert resolve_device(name).type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="unknown accelerator 'tpu'"):
        resolve_device("tpu")


def test_synthetic_data_splits_are_the_splits():
    from interscale.datasets import synthetic_organoids

    adata = synthetic_organoids(n_samples=3, cells_per_sample=30, n_genes=5, seed=0)
    assert tuple(adata.obs["split"].cat.categories) == names.SPLITS


# ----------------------------------------------------------------------------------- config

# Dotted config path -> the vocabulary of its values.
CONFIG_PATHS = {
    "model.local_component.name": names.LOCAL_COMPONENTS,
    "model.global_component.name": names.GLOBAL_COMPONENTS,
    "model.global_component.parameters.attention": names.ATTENTION_SCOPES,
    "model.global_component.parameters.activation_func": names.ACTIVATIONS,
    "model.decoder.type": names.DECODER_TYPES,
    "optim.loss": names.REGRESSION_LOSSES + names.CLASSIFICATION_LOSSES,
    "optim.accelerator": names.ACCELERATORS,
    "optim.lr_scheduler": names.LR_SCHEDULERS,
    "optim.precision": names.PRECISIONS,
    "model.global_component.parameters.kernel": names.ATTENTION_KERNELS,
}

_CLASSIFICATION = {"dataset.prediction_task": "classification", "dataset.prediction_obs": "cls"}


@pytest.mark.parametrize(
    ("path", "value"), [(p, v) for p, vocab in CONFIG_PATHS.items() for v in vocab]
)
def test_config_accepts_every_name_at_its_path(path, value):
    extra = _CLASSIFICATION if value in names.CLASSIFICATION_LOSSES else {}
    cfg = with_overrides(load_config(None), {path: value, **extra})
    node = cfg
    for part in path.split("."):
        node = getattr(node, part)
    assert node == value


@pytest.mark.parametrize("path", sorted(CONFIG_PATHS))
def test_config_rejects_a_misspelt_name_naming_the_path(path):
    vocab = CONFIG_PATHS[path]
    misspelt = vocab[0] + "z"
    with pytest.raises(ConfigError) as info:
        with_overrides(load_config(None), {path: misspelt})
    listed = ", ".join(map(repr, vocab))
    assert str(info.value).startswith(f"{path} must be one of {listed}, got {misspelt!r}")
    assert f"did you mean {vocab[0]!r}?" in str(info.value)


def test_config_classification_losses_need_a_classification_task():
    with pytest.raises(ConfigError, match="does not fit dataset.prediction_task 'regression'"):
        with_overrides(load_config(None), {"optim.loss": names.CLASSIFICATION_LOSSES[0]})


# ------------------------------------------------------------------------------------- Key


def test_key_builders_without_prefix():
    assert Key.obsp.spatial_connectivities() == "spatial_connectivities"
    assert Key.obsp.spatial_distances() == "spatial_distances"
    assert Key.obsp.attention() == "_attn_matrix"
    assert Key.obsm.spatial() == "spatial"
    assert Key.obs.cls_attention() == "_cls_attention"
    assert Key.uns.ROOT == "interscale" and Key.uns.SETUP == "setup"
    assert [Key.obsm.embedding(h) for h in names.HEADS] == ["_local_emb", "_global_emb"]
    assert [Key.layers.y_pred(h) for h in names.HEADS] == ["_y_pred_local", "_y_pred_global"]


def test_key_builders_with_prefix():
    assert Key.obsp.attention(prefix="run1") == "run1_attn_matrix"
    assert Key.obs.cls_attention(prefix="run1") == "run1_cls_attention"
    assert Key.obsm.embedding("global", prefix="run1") == "run1_global_emb"
    assert Key.layers.y_pred("local", prefix="run1") == "run1_y_pred_local"


@pytest.mark.parametrize("build", [Key.obsm.embedding, Key.layers.y_pred])
def test_key_builders_refuse_an_unknown_head(build):
    with pytest.raises(ValueError, match=r"head must be one of \['local', 'global'\], got 'both'"):
        build("both")
    with pytest.raises(ValueError, match="head must be one of"):
        build("Local", prefix="run1")


def test_the_global_encoder_accepts_exactly_the_attention_kernels():
    from interscale.nn import GlobalEncoder
    from interscale.nn._attention import _KERNELS

    assert _KERNELS is names.ATTENTION_KERNELS
    for kernel in names.ATTENTION_KERNELS:
        assert GlobalEncoder(n_embed=8, n_heads=2, kernel=kernel).kernel == kernel
    with pytest.raises(ValueError, match="kernel"):
        GlobalEncoder(n_embed=8, n_heads=2, kernel="triton")
