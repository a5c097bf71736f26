"""``model.linear_part``: each head's closed-form ridge, its deep part and the shrinkage of it.

The linear part is checked against independent computations (dense numpy neighbourhoods,
sklearn's Ridge, the floors of ``tl.linear_baselines``); the model around it for save/load,
determinism and the published default (off); the deep part for what it learns on real tissue.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from _linear_part_helpers import _FLOOR_OF, _dense_features, _linear_cfg
from conftest import organoids, setup_model_anndata, tiny_config

import interscale as isc
from interscale.config import ConfigError, load_config, tutorial_config, with_overrides
from interscale.model import CombinedModel
from interscale.model._linear import HEAD_DESIGNS, fit_linear_part
from interscale.nn import FEATURE_BLOCKS, neighbourhood_features


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_neighbourhood_features_match_a_dense_reference(seed):
    rng = np.random.default_rng(seed)
    sizes = [7, 1, 12]  # a lone cell: no neighbours, no other cell of its sample
    n, g = sum(sizes), 4
    x = rng.normal(size=(n, g))
    adj = np.zeros((n, n))
    start = 0
    for s in sizes:
        block = rng.random((s, s)) < 0.3
        adj[start : start + s, start : start + s] = block | block.T
        start += s
    adj[3, :] = adj[:, 3] = 0  # an isolated cell inside a sample
    adj[5, 5] = 1  # a self loop must be ignored
    rows, cols = np.nonzero(adj)
    # edge_index is (source, target): the target i aggregates its row's columns
    edge_index = torch.as_tensor(np.stack([cols, rows]))
    edge_index = torch.cat([edge_index, edge_index[:, :3]], dim=1)  # duplicate edges too
    ptr = torch.as_tensor(np.concatenate([[0], np.cumsum(sizes)]))
    fill = rng.normal(size=g)
    got = neighbourhood_features(torch.as_tensor(x), edge_index, ptr, torch.as_tensor(fill))
    want = _dense_features(adj, x, sizes, fill)
    assert set(got) == set(FEATURE_BLOCKS)
    for name in FEATURE_BLOCKS:
        np.testing.assert_allclose(got[name].numpy(), want[name], rtol=1e-12, atol=1e-12)


@pytest.fixture(scope="module")
def organoid_data():
    adata = organoids(n_samples=6, cells=(120, 180), seed=1)
    setup_model_anndata(adata)
    return adata


def test_the_linear_part_is_sklearns_ridge_on_the_same_features(organoid_data):
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    adata = organoid_data
    model = CombinedModel(adata, _linear_cfg())
    graphs = model._graphs(adata)
    train = [g for g in graphs if g.split == "train"]
    report = fit_linear_part(model.module, train)
    part = model.module.linear_part
    layer = adata.layers["log1p_norm"]
    layer = layer.toarray() if sp.issparse(layer) else np.asarray(layer)
    train_mean = layer[(adata.obs["split"] == "train").to_numpy()].astype(np.float64).mean(0)
    np.testing.assert_allclose(part.fill.numpy(), train_mean, rtol=1e-6)
    for head in ("local", "global"):
        designs, alphas = report[head]["design"], report[head]["alpha"]
        assert len(designs) == len(alphas) == adata.n_vars
        weight = getattr(part, f"{head}_weight").double().numpy()
        bias = getattr(part, f"{head}_bias").double().numpy()
        feats = []
        for graph in train:
            batch = isc.graphs.GraphBatch.collate([graph])
            f = neighbourhood_features(
                batch.x.double(), batch.edge_index, batch.ptr, part.fill.double()
            )
            feats.append({b: f[b].numpy() for b in FEATURE_BLOCKS} | {"y": batch.x.numpy()})
        blocks = {b: np.vstack([f[b] for f in feats]) for b in FEATURE_BLOCKS}
        y = np.vstack([f["y"] for f in feats]).astype(np.float64)
        options = sorted(set(zip(designs, alphas, strict=True)))
        for design, alpha in options:
            genes = [j for j in range(adata.n_vars) if (designs[j], alphas[j]) == (design, alpha)]
            assert tuple(design.split("+")) in HEAD_DESIGNS[head]
            f = np.hstack([blocks[b] for b in design.split("+")])
            scaler = StandardScaler().fit(f)
            ridge = Ridge(alpha=alpha).fit(scaler.transform(f), y[:, genes])
            want = ridge.predict(scaler.transform(f))
            got = bias[genes] + sum(
                blocks[b] @ weight[FEATURE_BLOCKS.index(b)][:, genes] for b in FEATURE_BLOCKS
            )
            # float32 buffers: agreement to float32 rounding of the predictions
            np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())
        used = {b for d in designs for b in d.split("+")}
        assert part.blocks(head) == [b for b in FEATURE_BLOCKS if b in used]


def test_cross_validation_picks_the_penalty_the_floors_pick(organoid_data):
    adata = organoid_data
    model = CombinedModel(adata, _linear_cfg())
    train = [g for g in model._graphs(adata) if g.split == "train"]
    report = fit_linear_part(model.module, train, per_gene=False)
    floors = isc.tl.linear_baselines(adata, key_added="lb", heldout=("test",))
    assert floors.shape[0] == adata.n_vars
    for head in ("local", "global"):
        (name,) = set(report[head]["design"])
        (alpha,) = set(report[head]["alpha"])
        assert alpha == pytest.approx(adata.uns["lb"]["alpha_chosen"][_FLOOR_OF[name]])


def test_with_the_deep_part_off_each_head_is_its_floor(organoid_data):
    adata = organoid_data.copy()
    model = CombinedModel(adata, _linear_cfg())
    model.train(progress_bar=False)
    # one design and penalty for all genes, as the floors choose them
    train = [g for g in model._graphs(adata) if g.split == "train"]
    report = fit_linear_part(model.module, train, per_gene=False)
    part = model.module.linear_part
    for head in part.heads:
        part.gamma(head).zero_()
    model.get_model_output(adata)
    floors = isc.tl.linear_baselines(adata, heldout=("test",), key_added=None)
    ranks = isc.evaluation.calculate_gene_ranks(
        adata, layers_local_pred="_y_pred_local", layers_global_pred="_y_pred_global",
        cells="test",
    ).set_index("gene")  # fmt: skip
    for head in ("local", "global"):
        floor = floors[_FLOOR_OF[report[head]["design"][0]]]
        np.testing.assert_allclose(ranks.loc[floor.index, f"r2_{head}"], floor, rtol=0, atol=2e-5)


def test_gamma_lies_in_the_unit_interval_and_save_load_round_trips(organoid_data, tmp_path):
    adata = organoid_data.copy()
    model = CombinedModel(adata, _linear_cfg())
    model.train(progress_bar=False)
    gammas = model.linear_fit_["gamma"]
    for values in gammas.values():
        values = np.asarray(values)
        assert values.shape == (adata.n_vars,)
        assert ((values >= 0) & (values <= 1)).all()
    model.get_model_output(adata)
    before = adata.layers["_y_pred_global"].copy()
    path = model.save(tmp_path)
    loaded = CombinedModel.load(path, adata, verbose=False)
    state, back = model.module.state_dict(), loaded.module.state_dict()
    assert [k for k in back if k.startswith("linear_part.")]
    for key in state:
        assert torch.equal(state[key], back[key]), key
    loaded.get_model_output(adata)
    np.testing.assert_array_equal(adata.layers["_y_pred_global"], before)
    # a config that disagrees on the linear part is refused by name
    other = with_overrides(model.cfg, {"model.linear_part": False})
    with pytest.raises(ValueError, match="model.linear_part"):
        CombinedModel.load(path, adata, other, verbose=False)


def test_seeded_training_with_the_linear_part_is_bit_identical(organoid_data):
    outs = []
    for _ in range(2):
        adata = organoid_data.copy()
        model = CombinedModel(adata, _linear_cfg())
        model.train(progress_bar=False)
        model.get_model_output(adata)
        outs.append((model.module.state_dict(), adata.layers["_y_pred_local"].copy()))
    (s1, y1), (s2, y2) = outs
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    np.testing.assert_array_equal(y1, y2)


def test_the_option_is_off_by_default_and_validated():
    assert load_config(None).model.linear_part is False
    assert load_config("config_files/legnini_example.yaml").model.linear_part is False
    with pytest.raises(ConfigError, match="model.linear_part"):
        with_overrides(load_config(None), {"model.linear_part": "often"})
    adata = organoids(n_samples=3, cells=(60, 80), seed=2)
    setup_model_anndata(adata)
    model = CombinedModel(adata, tiny_config())
    assert model.module.linear_part is None
    assert not [k for k in model.module.state_dict() if k.startswith("linear_part")]


def test_tutorial_config_turns_it_on():
    assert tutorial_config().model.linear_part is True


def test_one_training_sample_is_refused_with_the_reason():
    adata = organoids(n_samples=3, cells=(60, 80), seed=2)
    adata.obs["split"] = np.array(["train", "val", "test"])[adata.obs["sample"].cat.codes]
    setup_model_anndata(adata)
    model = CombinedModel(adata, _linear_cfg())
    with pytest.raises(ValueError, match="at least 2"):
        model.train(progress_bar=False)


def test_a_sparse_layer_gives_the_dense_layers_linear_part(organoid_data):
    sparse = organoid_data.copy()
    dense = organoid_data.copy()
    layer = dense.layers["log1p_norm"]
    assert sp.issparse(layer)
    dense.layers["log1p_norm"] = layer.toarray()
    fits = []
    for adata in (dense, sparse):
        model = CombinedModel(adata, _linear_cfg())
        train = [g for g in model._graphs(adata) if g.split == "train"]
        fit_linear_part(model.module, train)
        fits.append(model.module.linear_part.state_dict())
    for key in fits[0]:
        assert torch.equal(fits[0][key], fits[1][key]), key


# --------------------------------------------------------------------------- real tissue
# osmFISH through the own-data path of issue 23 (16 tiles, 50/25/25 split of whole tiles,
# 10-NN graph, tutorial config), scored on the test tiles. The full run records 1.035-1.038 x
# the best floor (hop1) for both heads over training seeds 3, 5 and 11
# (scripts/osmfish_floor.py). What clears the floor is the closed-form part (design and penalty
# per gene); on these tiles the deep part adds about 1e-4 R^2 on the test tiles, so no claim of
# it is made here and gradient sabotage (1 epoch, lr 1e-9) does not move the claim below.
_RECORDED_RATIO = 1.02  # below every recorded ratio, above 1.00 x the best floor


@pytest.fixture(scope="module")
def osmfish_tiles():
    adata = isc.datasets.osmfish()
    isc.pp.tile(adata, max_cells=410, library_key="section", key_added="tile")
    isc.pp.normalize(adata)
    isc.pp.split_samples(adata, "tile", fractions=(0.5, 0.25, 0.25), seed=0)
    isc.pp.spatial_neighbors(adata, n_neighs=10, library_key="tile")
    CombinedModel.setup_anndata(
        adata, layer_key="log1p_norm", sample_key_list=["tile"], view_registry=False
    )
    floors = isc.tl.linear_baselines(
        adata, library_key="tile", heldout=("test",), key_added=None
    ).mean()
    return adata, floors


def _test_ratios(model, adata, floors) -> dict[str, float]:
    r2 = model.gene_r2(adata, cells="test").mean()
    best = max(floors[n] for n in ("hop1", "hop2", "hop2_sample"))
    return {h: float(r2[f"r2_{h}"]) / best for h in ("local", "global")}


def _claim_holds(ratios: dict[str, float], r2_over_mean: float) -> bool:
    return min(ratios.values()) >= _RECORDED_RATIO and r2_over_mean > 0.1


def test_on_osmfish_test_tiles_both_heads_clear_the_best_ridge_floor(osmfish_tiles):
    adata, floors = osmfish_tiles
    cfg = with_overrides(tutorial_config(), {"optim.seed": 3})
    model = CombinedModel(adata, cfg)
    model.train(max_epochs=1, progress_bar=False)  # the claim is the closed-form part's
    ratios = _test_ratios(model, adata, floors)
    r2 = model.gene_r2(adata, cells="test").mean()
    assert _claim_holds(ratios, float(r2.min()) - floors["mean"]), ratios
    # sabotage: the mean predictor (no fitted linear part, no deep part) fails the claim
    part = model.module.linear_part
    with torch.no_grad():
        for head in part.heads:
            getattr(part, f"{head}_weight").zero_()
            getattr(part, f"{head}_bias").copy_(part.fill)
            part.gamma(head).zero_()
    ratios = _test_ratios(model, adata, floors)
    r2 = model.gene_r2(adata, cells="test").mean()
    assert not _claim_holds(ratios, float(r2.min()) - floors["mean"]), ratios
