"""The model's contract at its seams: the user's AnnData, one graph rule, strict checkpoints."""

from __future__ import annotations

import copy
import hashlib
import pickle
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch
import yaml

import interscale as isc
from interscale.cli import main as cli_main
from interscale.config import load_config, with_overrides
from interscale.model import CombinedModel, GlobalModel
from interscale.names import Key

_OVERRIDES = {
    "optim.n_epochs": 1,
    "optim.seed": 3,
    "optim.min_epochs": 0,
    "optim.lr_warmup": 1,
    "dataset.batch_size": 2,
    "dataset.name": "contract",
    "dataset.pct_mask_nodes": 0.5,
    "dataset.spatial_neighbors_kwargs.radius": 200,
    "model.local_component.parameters.hidden_dim": 8,
    "model.global_component.parameters.dim_feedforward": 8,
    "model.n_embed": 8,
}


def _cfg(**extra):
    return with_overrides(load_config(None), {**_OVERRIDES, **extra})


def _data(graph: bool = True) -> ad.AnnData:
    adata = isc.datasets.synthetic_organoids(n_samples=4, cells_per_sample=(30, 40), seed=2)
    isc.pp.normalize(adata, key_added="log1p_norm")
    if graph:
        isc.pp.spatial_neighbors(adata, radius=200, library_key="sample")
    CombinedModel._setup_anndata(
        adata, layer_key="log1p_norm", sample_key_list=["sample"], view_registry=False
    )
    return adata


def _fingerprint(adata: ad.AnnData) -> str:
    """A digest of every slot of an AnnData (keys and values)."""
    digest = hashlib.sha256()
    for slot in ("obsm", "obsp", "layers", "varm"):
        for key in sorted(getattr(adata, slot)):
            value = getattr(adata, slot)[key]
            value = value.toarray() if sp.issparse(value) else np.asarray(value)
            digest.update(key.encode() + value.tobytes())
    digest.update(pickle.dumps(dict(adata.uns)))
    digest.update(adata.obs.to_csv().encode() + adata.var.to_csv().encode())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    adata = _data()
    model = CombinedModel(adata, _cfg())
    model.train(progress_bar=False)
    folder = tmp_path_factory.mktemp("ckpt")
    return model, adata, model.save(folder)


def test_constructing_a_model_leaves_the_anndata_as_it_was():
    adata = _data(graph=False)
    before = _fingerprint(adata)
    model = CombinedModel(adata, _cfg())
    assert _fingerprint(adata) == before
    assert Key.obsp.spatial_connectivities() not in adata.obsp
    assert model.graph_source_.startswith("built from the config (radius 200")
    model.train(progress_bar=False)
    assert Key.obsp.spatial_connectivities() not in adata.obsp


def test_the_in_memory_graph_is_the_stored_one():
    with_graph, without = _data(graph=True), _data(graph=False)
    stored = CombinedModel(with_graph, _cfg())
    built = CombinedModel(without, _cfg())
    assert stored.graph_source_ == "adata.obsp['spatial_connectivities']"
    for a, b in zip(stored._graphs(with_graph), built._graphs(without), strict=True):
        assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.x, b.x)


def test_graph_from_config_matches_spatial_neighbors_and_writes_only_when_asked():
    adata = _data(graph=False)
    cfg = _cfg()
    before = _fingerprint(adata)
    graph = isc.pp.spatial_graph_from_config(adata, cfg, ["sample"], key_added=None)
    assert _fingerprint(adata) == before
    isc.pp.spatial_neighbors(adata, radius=200, library_key="sample")
    assert (graph != adata.obsp["spatial_connectivities"]).nnz == 0
    # several sample keys separate their combinations (condition is constant per sample here)
    combined = isc.pp.spatial_graph_from_config(adata, cfg, ["condition", "sample"], key_added=None)
    assert (combined != graph).nnz == 0
    # a kNN rule and another coordinate key are honoured too
    adata.obsm["xy"] = adata.obsm.pop("spatial") * 2.0
    knn = _cfg(**{
        "dataset.spatial_neighbors_kwargs.radius": None,
        "dataset.spatial_neighbors_kwargs.n_neighs": 3,
        "dataset.spatial_neighbors_kwargs.spatial_key": "xy",
    })  # fmt: skip
    graph = isc.pp.spatial_graph_from_config(adata, knn, ["sample"], key_added="knn")
    assert adata.uns["knn_neighbors"]["params"]["spatial_key"] == "xy"
    assert (np.diff(graph.indptr) >= 3).all()
    with pytest.raises(KeyError, match="spatial"):
        isc.pp.spatial_graph_from_config(adata, cfg, ["sample"], key_added=None)


def test_cli_train_honours_the_configured_spatial_key(tmp_path):
    adata = isc.datasets.synthetic_organoids(n_samples=4, cells_per_sample=(30, 40), seed=2)
    adata.obsm["xy"] = adata.obsm.pop("spatial")
    h5ad = tmp_path / "mine.h5ad"
    adata.write_h5ad(h5ad)
    config = yaml.safe_load(Path("config_files/synthetic_example.yaml").read_text())
    config["dataset"]["spatial_neighbors_kwargs"]["spatial_key"] = "xy"
    config["model"]["n_embed"] = 8
    config["model"]["global_component"]["parameters"]["dim_feedforward"] = 8
    config_path = tmp_path / "xy.yaml"
    config_path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    argv = ["train", "--config", str(config_path), "--h5ad", str(h5ad), "--epochs", "1"]
    assert cli_main([*argv, "--out", str(out), "--quiet"]) == 0
    written = ad.read_h5ad(out / "preprocessed.h5ad")
    assert written.uns["spatial_neighbors"]["params"]["spatial_key"] == "xy"
    assert written.obsp["spatial_connectivities"].nnz > 0


def _published(state: dict) -> dict:
    prefixes = {
        "local_encoder": "local_module.",
        "global_encoder": "global_module.",
        "local_decoder": "local_module.decoder.",
        "global_decoder": "global_module.decoder.",
    }
    out = {}
    for key, value in state.items():
        if key != "mask_token":
            head, rest = key.split(".", 1)
            out[prefixes[head] + rest] = value.clone()
    return out


def test_a_transposed_published_weight_is_refused(trained, tmp_path):
    model, adata, _ = trained
    state = _published(model.module.state_dict())
    key = "local_module.decoder.decoder.weight"
    assert state[key].shape[0] != state[key].shape[1]
    torch.save({"state_dict": state}, tmp_path / "ok_model.pt")
    loaded = CombinedModel.load(
        tmp_path / "ok_model.pt", adata.copy(), cfg=model.cfg, verbose=False
    )
    assert torch.equal(
        loaded.module.local_decoder.decoder.weight, model.module.local_decoder.decoder.weight
    )
    state[key] = state[key].t().contiguous()
    torch.save({"state_dict": state}, tmp_path / "bad_model.pt")
    with pytest.raises(ValueError, match=r"local_decoder\.decoder\.weight'? \(8, 88\).*\(88, 8\)"):
        CombinedModel.load(tmp_path / "bad_model.pt", adata.copy(), cfg=model.cfg, verbose=False)


def test_a_reshaped_native_tensor_is_refused_naming_key_and_shapes(trained, tmp_path):
    model, adata, path = trained
    ckpt = torch.load(path, weights_only=True)
    weight = ckpt["state_dict"]["global_decoder.decoder.weight"]
    ckpt["state_dict"]["global_decoder.decoder.weight"] = weight.t().contiguous()
    torch.save(ckpt, tmp_path / "native_model.pt")
    key = "global_decoder.decoder.weight"
    expected = f"{key}: {tuple(weight.t().shape)} in the file, {tuple(weight.shape)}"
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        CombinedModel.load(tmp_path / "native_model.pt", adata.copy(), verbose=False)


def test_a_misspelt_load_argument_raises(trained):
    _, adata, path = trained
    with pytest.raises(TypeError, match="'acclerator'.*did you mean 'accelerator'"):
        CombinedModel.load(path, adata.copy(), acclerator="cpu", verbose=False)


def test_load_builds_through_the_constructor_and_reproduces_outputs(trained):
    model, adata, path = trained
    loaded = CombinedModel.load(path, adata.copy(), verbose=False)
    assert type(loaded) is CombinedModel and loaded.is_trained_
    a, b = model.get_model_output(adata.copy()), loaded.get_model_output(adata.copy())
    for key in a.layers:
        if key.startswith("_"):
            np.testing.assert_array_equal(a.layers[key], b.layers[key])


def _not_set_up(adata: ad.AnnData) -> ad.AnnData:
    fresh = adata.copy()
    del fresh.uns["interscale"]
    return fresh


def test_load_replays_the_stored_setup_on_an_anndata_not_set_up(trained):
    """load(path, adata) needs no setup call: the checkpoint's setup is replayed, and the
    outputs equal those of a load onto an AnnData set up by hand."""
    model, adata, path = trained
    assert CombinedModel._setup_anndata == CombinedModel.setup_anndata  # the published alias
    fresh = _not_set_up(adata)
    loaded = CombinedModel.load(path, fresh, verbose=False)
    assert fresh.uns["interscale"]["setup"] == adata.uns["interscale"]["setup"]
    by_hand = CombinedModel.load(path, adata.copy(), verbose=False)
    a, b = loaded.get_model_output(fresh), by_hand.get_model_output(adata.copy())
    for key in ("_y_pred_local", "_y_pred_global"):
        np.testing.assert_array_equal(a.layers[key], b.layers[key])


def test_a_load_whose_setup_replay_fails_names_it_and_leaves_the_anndata_alone(trained):
    model, adata, path = trained
    fresh = _not_set_up(adata)
    del fresh.obs["split"]
    before = _fingerprint(fresh)
    with pytest.raises(KeyError, match=r"replaying the setup stored in .*split_key='split'"):
        CombinedModel.load(path, fresh, verbose=False)
    assert _fingerprint(fresh) == before and "interscale" not in fresh.uns
    # a published-format state dict stores no setup: the error says to call setup_anndata
    torch.save({"state_dict": model.module.state_dict()}, path.with_name("pub_model.pt"))
    with pytest.raises(ValueError, match=r"stores no setup; call CombinedModel.setup_anndata"):
        CombinedModel.load(
            path.with_name("pub_model.pt"), _not_set_up(adata), cfg=model.cfg, verbose=False
        )


def test_global_model_keeps_its_input_embedding_through_save_and_load(tmp_path):
    adata = _data()
    model = GlobalModel(adata, _cfg())
    model.train(progress_bar=False)
    path = model.save(tmp_path)
    other = adata.copy()
    other.X = other.X * 0  # the stored PCA, not one refitted from this AnnData, must be used
    loaded = GlobalModel.load(path, other, verbose=False)
    assert loaded._global_input == model._global_input
    np.testing.assert_array_equal(loaded._global_features(adata), model._global_features(adata))


def test_outputs_of_an_untrained_model_warn():
    adata = _data()
    model = CombinedModel(adata, _cfg())
    with pytest.warns(UserWarning, match="never trained"):
        model.get_model_output(adata)


def test_batch_size_of_get_model_output_is_not_silently_ignored(trained):
    model, adata, _ = trained
    with pytest.warns(UserWarning, match="ignores batch_size"):
        model.get_model_output(adata.copy(), batch_size=4)


def test_the_setup_is_recorded_once_and_read_by_evaluation(trained):
    model, adata, _ = trained
    info = adata.uns["interscale"]
    setup = info["setup"]
    assert {k: info[k] for k in ("layer_key", "sample_key", "split_key")} == {
        k: setup[k] for k in ("layer_key", "sample_key", "split_key")
    }
    # outputs on an AnnData that was never set up record the setup they were made with
    bare = adata.copy()
    del bare.uns["interscale"]
    model.get_model_output(bare)
    assert bare.uns["interscale"]["setup"]["layer_key"] == "log1p_norm"
    ranks = isc.evaluation.calculate_gene_ranks(
        bare,
        layers_local_pred=Key.layers.y_pred("local"),
        layers_global_pred=Key.layers.y_pred("global"),
        cells="val",
    )
    assert len(ranks) == adata.n_vars
    # a re-setup replaces the record and its mirror together
    again = copy.deepcopy(adata)
    again.layers["other"] = again.layers["log1p_norm"].copy()
    CombinedModel._setup_anndata(
        again, layer_key="other", sample_key_list=["sample"], view_registry=False
    )
    assert again.uns["interscale"]["layer_key"] == again.uns["interscale"]["setup"]["layer_key"]
    assert again.uns["interscale"]["layer_key"] == "other"


def test_lr_scheduler_null_keeps_the_rate_and_plateau_is_refused():
    adata = _data()
    constant = CombinedModel(adata, _cfg(**{"optim.lr_scheduler": None, "optim.n_epochs": 3}))
    history = constant.train(progress_bar=False, early_stopping=False)
    assert (history["lr"] == constant.cfg.optim.lr).all()
    cosine = CombinedModel(adata, _cfg(**{"optim.n_epochs": 3}))
    assert (
        cosine.train(progress_bar=False, early_stopping=False)["lr"].iloc[-1] < cosine.cfg.optim.lr
    )
    plateau = CombinedModel(adata, _cfg(**{"optim.lr_scheduler": "ReduceLROnPlateau"}))
    with pytest.raises(ValueError, match="ReduceLROnPlateau"):
        plateau.train(progress_bar=False)


def test_the_kernel_setting_reaches_the_encoder_and_flex_agrees_on_cpu(trained):
    model, adata, path = trained
    flex_cfg = _cfg(**{"model.global_component.parameters.kernel": "flex"})
    flex = CombinedModel.load(path, adata.copy(), cfg=flex_cfg, verbose=False)
    assert flex.module.global_encoder.kernel == "flex"
    assert model.module.global_encoder.kernel == "auto"
    a = model.get_model_output(adata.copy(), masked=False)
    b = flex.get_model_output(adata.copy(), masked=False)
    for key in ("_global_emb", "_local_emb"):
        np.testing.assert_allclose(a.obsm[key], b.obsm[key], rtol=1e-5, atol=1e-5)
