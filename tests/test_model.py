"""CombinedModel end to end: setup, training, held-out outputs, determinism, save/load."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from conftest import organoids, setup_model_anndata, tiny_config

import interscale as isc
from interscale.config import load_config, with_overrides
from interscale.model import CombinedModel, GlobalModel, LocalModel


def _cfg(**overrides):
    """This file's training: 3 epochs, seed 7, SmoothL1, width 32 (dotted overrides win)."""
    return tiny_config(overrides, n_epochs=3, seed=7, loss="SmoothL1", width=32)


@pytest.fixture(scope="module")
def trained():
    adata = organoids()
    setup_model_anndata(adata)
    model = CombinedModel(adata, _cfg())
    model.train(progress_bar=False)
    model.get_model_output(adata)
    return model, adata


def test_outputs_follow_the_anndata_contract(trained):
    model, adata = trained
    n, g, e = adata.n_obs, adata.n_vars, model.cfg.model.n_embed
    for key in ("_local_emb", "_global_emb"):
        assert adata.obsm[key].shape == (n, e)
        assert adata.obsm[key].dtype == np.float32
        assert np.isfinite(adata.obsm[key]).all()
    for key in ("_y_pred_local", "_y_pred_global"):
        assert adata.layers[key].shape == (n, g)
        assert adata.layers[key].dtype == np.float32
        assert np.isfinite(adata.layers[key]).all()
    attn = adata.obsp["_attn_matrix"]
    assert sp.issparse(attn) and attn.format == "csr" and attn.dtype == np.float32
    assert attn.shape == (n, n)
    # top-k per row, within sample, never self
    assert (np.diff(attn.indptr) <= 32).all()
    coo = attn.tocoo()
    samples = adata.obs["sample"].to_numpy()
    assert (samples[coo.row] == samples[coo.col]).all()
    assert (coo.row != coo.col).all()
    assert np.isfinite(adata.obs["_cls_attention"]).all()
    # CLS attention is a distribution over the cells of each sample (+ CLS itself)
    per_sample = adata.obs.groupby("sample", observed=True)["_cls_attention"].sum()
    assert (per_sample <= 1.0 + 1e-5).all() and (per_sample > 0.5).all()
    uns = adata.uns["interscale"]
    assert uns["layer_key"] == "log1p_norm"
    assert uns["version"] == isc.__version__
    assert "config" in uns and "training" in uns


def test_obs_names_untouched_and_history(trained):
    model, adata = trained
    fresh = organoids()
    assert list(adata.obs_names) == list(fresh.obs_names)
    h = model.history_
    assert list(h["epoch"]) == [0, 1, 2]
    for col in ("train_loss_local", "train_loss_global", "val_loss_local", "val_r2_global", "lr"):
        assert col in h.columns
        assert np.isfinite(h[col]).all()
    ax = model.plot_history()
    assert ax.get_xlabel() == "epoch"


def test_inference_is_repeatable(trained):
    model, adata = trained
    first = {k: adata.layers[k].copy() for k in ("_y_pred_local", "_y_pred_global")}
    emb = adata.obsm["_global_emb"].copy()
    model.get_model_output(adata)
    for k, v in first.items():
        np.testing.assert_array_equal(adata.layers[k], v)
    np.testing.assert_array_equal(adata.obsm["_global_emb"], emb)


def test_heldout_prediction_ignores_the_cells_own_input(trained):
    """A cell's masked prediction must not see its own expression."""
    model, adata = trained
    other = adata.copy()
    cell = 5
    layer = other.layers["log1p_norm"]
    layer = layer.toarray() if sp.issparse(layer) else np.array(layer)
    layer[cell] = layer[cell] + 3.0
    other.layers["log1p_norm"] = layer
    model.get_model_output(other)
    np.testing.assert_allclose(
        other.layers["_y_pred_global"][cell], adata.layers["_y_pred_global"][cell], atol=1e-5
    )
    np.testing.assert_allclose(
        other.layers["_y_pred_local"][cell], adata.layers["_y_pred_local"][cell], atol=1e-5
    )
    # ... while the unmasked embedding of that cell does change
    assert not np.allclose(other.obsm["_local_emb"][cell], adata.obsm["_local_emb"][cell])


def test_unmasked_reconstruction_differs(trained):
    model, adata = trained
    other = adata.copy()
    model.get_model_output(other, masked=False, prefix="u")
    assert "u_y_pred_local" in other.layers
    assert not np.allclose(other.layers["u_y_pred_local"], adata.layers["_y_pred_local"])


def test_training_is_bit_identical_for_the_same_seed():
    outs = []
    for _ in range(2):
        adata = organoids()
        setup_model_anndata(adata)
        model = CombinedModel(adata, _cfg(**{"optim.n_epochs": 2}))
        model.train(progress_bar=False)
        model.get_model_output(adata)
        outs.append((model.module.state_dict(), adata))
    (s1, a1), (s2, a2) = outs
    for key in s1:
        assert torch.equal(s1[key], s2[key]), key
    for key in ("_y_pred_local", "_y_pred_global"):
        np.testing.assert_array_equal(a1.layers[key], a2.layers[key])
    np.testing.assert_array_equal(a1.obsm["_global_emb"], a2.obsm["_global_emb"])


def test_save_load_round_trip(trained, tmp_path):
    model, adata = trained
    path = model.save(tmp_path)
    assert path.name == "dual_tiny_regr_node_7_GCN_self-attn-transformer_model.pt"
    with pytest.raises(FileExistsError):
        model.save(tmp_path)
    other = adata.copy()
    loaded = CombinedModel.load(
        tmp_path, other, local_component=True, global_component=True, verbose=False
    )
    loaded.get_model_output(other)
    for key in ("_y_pred_local", "_y_pred_global"):
        np.testing.assert_array_equal(other.layers[key], adata.layers[key])
    np.testing.assert_array_equal(other.obsm["_local_emb"], adata.obsm["_local_emb"])
    assert loaded.history_ is not None and len(loaded.history_) == len(model.history_)


def test_load_rejects_bad_files(trained, tmp_path):
    model, adata = trained
    path = model.save(tmp_path / "ok")
    data = path.read_bytes()
    bad = tmp_path / "trunc"
    bad.mkdir()
    (bad / "m.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        CombinedModel.load(bad, adata.copy(), verbose=False)
    rnd = tmp_path / "random"
    rnd.mkdir()
    (rnd / "m.pt").write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        CombinedModel.load(rnd, adata.copy(), verbose=False)
    with pytest.raises(FileNotFoundError):
        CombinedModel.load(tmp_path / "missing", adata.copy(), verbose=False)
    fewer = adata[:, adata.var_names[:-1]].copy()
    with pytest.raises(ValueError, match="genes"):
        CombinedModel.load(path, fewer, verbose=False)
    with pytest.raises(ValueError, match="n_embed"):
        CombinedModel.load(
            path,
            adata.copy(),
            cfg=_cfg(**{"model.n_embed": 8, "model.global_component.parameters.n_heads": 4}),
            verbose=False,
        )
    with pytest.raises(ValueError, match="LocalModel|local="):
        LocalModel.load(path, adata.copy(), verbose=False)


@pytest.mark.parametrize("style", ["published", "lightning", "bare"])
def test_published_state_dicts_load(trained, tmp_path, style):
    model, adata = trained
    ours = model.module.state_dict()
    renamed = {}
    for key, value in ours.items():
        if key == "mask_token":
            continue
        head, rest = key.split(".", 1)
        new = {
            "local_encoder": "local_module.",
            "global_encoder": "global_module.",
            "local_decoder": "local_module.decoder.",
            "global_decoder": "global_module.decoder.",
        }[head] + rest
        renamed[new] = value.clone()
    # published layouts keep the CLS token as [1, 1, E]
    cls_key = "global_module.cls_embedding"
    renamed[cls_key] = renamed[cls_key].reshape(1, 1, -1)
    if style == "lightning":
        renamed = {f"module.{k}": v for k, v in renamed.items()}
    payload = renamed if style == "bare" else {"state_dict": renamed}
    folder = tmp_path / style
    folder.mkdir()
    torch.save(payload, folder / "published_model.pt")
    loaded = CombinedModel.load(folder, adata.copy(), cfg=model.cfg, verbose=False)
    for key, value in ours.items():
        if key != "mask_token":
            assert torch.equal(loaded.module.state_dict()[key], value), key


def test_early_stopping_restores_the_best_epoch(monkeypatch):
    import interscale.train._trainer as trainer

    adata = organoids()
    setup_model_anndata(adata)
    model = CombinedModel(adata, _cfg(**{"optim.n_epochs": 8}))
    losses = iter([1.0, 0.5, 0.9, 0.95, 0.99, 1.2, 1.3, 1.4])
    snapshots = []

    def fake_eval(module, graphs, **kwargs):
        snapshots.append(copy.deepcopy(module.state_dict()))
        return {"loss": next(losses), "loss_local": 0.0, "loss_global": 0.0}

    monkeypatch.setattr(trainer, "evaluate_masked", fake_eval)
    history = model.train(progress_bar=False, patience=3)
    assert model.best_epoch_ == 1
    assert len(history) == 5  # epochs 2, 3, 4 brought no improvement -> stop after epoch 4
    for key, value in snapshots[1].items():
        assert torch.equal(model.module.state_dict()[key], value), key
    assert not all(torch.equal(model.module.state_dict()[k], v) for k, v in snapshots[-1].items())


def test_resume_after_interruption_gives_the_same_weights(tmp_path, monkeypatch):
    import interscale.train._epoch as epoch_module

    cfg = _cfg(**{"optim.n_epochs": 4})
    adata = organoids()
    setup_model_anndata(adata)
    reference = CombinedModel(adata, cfg)
    reference.train(progress_bar=False, early_stopping=False)
    ref_state = reference.module.state_dict()

    adata2 = organoids()
    setup_model_anndata(adata2)
    model = CombinedModel(adata2, cfg)
    real_draw = epoch_module.draw_mask
    calls = {"n": 0}

    def interrupting_draw(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:  # mid-way through the third epoch (3 batches per epoch)
            raise KeyboardInterrupt
        return real_draw(*args, **kwargs)

    monkeypatch.setattr(epoch_module, "draw_mask", interrupting_draw)
    with pytest.raises(KeyboardInterrupt):
        model.train(progress_bar=False, early_stopping=False, checkpoint_dir=tmp_path)
    monkeypatch.setattr(epoch_module, "draw_mask", real_draw)
    model2 = CombinedModel(adata2, cfg)
    model2.train(progress_bar=False, early_stopping=False, checkpoint_dir=tmp_path, resume=True)
    for key, value in ref_state.items():
        assert torch.equal(model2.module.state_dict()[key], value), key
    assert list(model2.history_["epoch"]) == [0, 1, 2, 3]


def test_setup_errors_name_the_problem():
    adata = organoids()
    before = adata.copy()
    with pytest.raises(KeyError, match="nope"):
        CombinedModel.setup_anndata(adata, layer_key="nope", sample_key_list=["sample"])
    with pytest.raises(KeyError, match="organ"):
        CombinedModel.setup_anndata(adata, layer_key="log1p_norm", sample_key_list=["organ"])
    no_val = adata.copy()
    no_val.obs["split"] = pd.Categorical(["train"] * no_val.n_obs)
    with pytest.raises(ValueError, match="'val'"):
        CombinedModel.setup_anndata(no_val, layer_key="log1p_norm", sample_key_list=["sample"])
    odd = adata.copy()
    odd.obs["split"] = odd.obs["split"].astype(str).replace({"test": "holdout"})
    with pytest.raises(ValueError, match="holdout"):
        CombinedModel.setup_anndata(odd, layer_key="log1p_norm", sample_key_list=["sample"])
    with pytest.raises(TypeError, match="view"):
        CombinedModel.setup_anndata(adata[:50], layer_key="log1p_norm", sample_key_list=["sample"])
    assert "interscale" not in adata.uns
    assert adata.obs.equals(before.obs)
    with pytest.raises(ValueError, match="setup_anndata"):
        CombinedModel(adata, _cfg())


def test_samples_larger_than_max_seq_len_are_not_truncated():
    adata = organoids(n_samples=3, cells=(300, 320))
    setup_model_anndata(adata)
    cfg = _cfg(**{"model.global_component.parameters.max_seq_len": 100, "optim.n_epochs": 1})
    model = CombinedModel(adata, cfg)
    with pytest.warns(UserWarning, match="max_seq_len"):
        model.train(progress_bar=False)
    model.get_model_output(adata)
    assert np.isfinite(adata.obsm["_global_emb"]).all()


def test_local_and_global_models_train_and_write_their_keys():
    adata = organoids(n_samples=4)
    setup_model_anndata(adata, LocalModel)
    local = LocalModel(adata, _cfg(**{"optim.n_epochs": 1}))
    local.train(progress_bar=False)
    local.get_model_output(adata)
    assert "_local_emb" in adata.obsm and "_global_emb" not in adata.obsm
    glob = GlobalModel(adata, _cfg(**{"optim.n_epochs": 1}))
    glob.train(progress_bar=False)
    glob.get_model_output(adata, prefix="g")
    assert "g_global_emb" in adata.obsm and "g_y_pred_global" in adata.layers
    assert np.isfinite(adata.layers["g_y_pred_global"]).all()


def _heldout_program_r2(overrides: dict) -> dict:
    """Train on a small discriminating dataset; held-out R^2 per (head, program) and floor."""
    adata = isc.datasets.synthetic_organoids(n_samples=10, cells_per_sample=(300, 400), seed=0)
    isc.pp.qc(adata)
    isc.pp.normalize(adata, key_added="log1p_norm")
    isc.pp.spatial_neighbors(adata, radius=200, library_key="sample")
    setup_model_anndata(adata)
    base = {
        "optim.seed": 7,
        "optim.min_epochs": 0,
        "optim.loss": "MSELoss",
        "optim.lr": 5e-3,
        "optim.lr_warmup": 1,
        "dataset.batch_size": 1,
    }
    config = Path(__file__).resolve().parents[1] / "config_files" / "synthetic_example.yaml"
    cfg = with_overrides(load_config(str(config)), {**base, **overrides})
    model = CombinedModel(adata, cfg)
    model.train(progress_bar=False, early_stopping=False)
    model.get_model_output(adata)
    split = adata.obs["split"].astype(str).to_numpy()
    held, train = np.isin(split, ["val", "test"]), split == "train"
    truth = adata.layers["log1p_norm"]
    truth = np.asarray(truth.toarray() if sp.issparse(truth) else truth, dtype=np.float64)
    y = truth[held]
    ss_tot = ((y - y.mean(axis=0)) ** 2).sum(axis=0)

    def r2(pred: np.ndarray) -> np.ndarray:
        return 1.0 - ((y - pred) ** 2).sum(axis=0) / ss_tot

    program = adata.var["program"].astype(str).to_numpy()
    out = {
        ("mean", p): float(r2(truth[train].mean(axis=0))[program == p].mean())
        for p in ("local", "global")
    }
    for head in ("local", "global"):
        per_gene = r2(np.asarray(adata.layers[f"_y_pred_{head}"], dtype=np.float64)[held])
        for p in ("local", "global"):
            out[head, p] = float(per_gene[program == p].mean())
    return out


def _learned_both_scales(r2: dict) -> bool:
    """Held-out organoids: each head beats the training-mean floor on its own program by 0.1,
    and the global head adds over the local one on global genes."""
    return (
        r2["local", "local"] > r2["mean", "local"] + 0.1
        and r2["global", "global"] > r2["mean", "global"] + 0.1
        and r2["global", "global"] > r2["local", "global"] + 0.03
    )


def test_learning_beats_the_training_mean_on_heldout_organoids():
    """On held-out organoids, the trained heads clear the per-gene training mean by a margin."""
    r2 = _heldout_program_r2({"optim.n_epochs": 100})
    assert _learned_both_scales(r2), r2


def test_the_learning_check_fails_for_a_model_that_did_not_learn():
    """The same check rejects a model trained with a learning rate of 1e-9."""
    r2 = _heldout_program_r2({"optim.n_epochs": 5, "optim.lr": 1e-9})
    assert not _learned_both_scales(r2), r2
