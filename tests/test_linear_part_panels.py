"""``model.linear_part`` on large panels (principal components) and on 3-D coordinates."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from _linear_part_helpers import _FLOOR_OF, _dense_features, _linear_cfg
from conftest import setup_model_anndata

import interscale as isc
from interscale.model import CombinedModel
from interscale.model._linear import fit_linear_part
from interscale.nn import FEATURE_BLOCKS, LinearPart

# --------------------------------------------------------------------------- large panels
# Above 256 genes the linear part averages the top 256 principal components of the training
# cells, as linear_baselines(n_components="auto") does: the ridge on the standardised gene
# averages restricted to that subspace. The numerical tests lower the rule's component count
# (R_SMALL, through interscale._components.AUTO_COMPONENTS, which both the model's construction
# and its loading read) to keep the designs small; the thousand-gene panel runs the rule as is.
R_SMALL = 40


@pytest.fixture
def small_rule(monkeypatch):
    monkeypatch.setattr("interscale._components.AUTO_COMPONENTS", R_SMALL)


def _panel(n_genes, *, n_samples=6, cells=110, rank=None, dims=2, seed=0):
    """Spatially smooth programs plus noise (of full rank, or of ``rank``), one graph each."""
    rng = np.random.default_rng(seed)
    sample = np.repeat(np.arange(n_samples), cells)
    n = sample.size
    coords = rng.uniform(0, 10, size=(n, dims))
    k = 6
    fields = np.sin(coords @ rng.normal(scale=0.6, size=(dims, k)) + rng.uniform(0, 6, k))
    fields += 0.5 * rng.normal(size=(n_samples, k))[sample]  # sample-level signal too
    if rank is None:
        noise = rng.normal(size=(n, n_genes))
    else:
        noise = rng.normal(size=(n, rank)) @ rng.normal(size=(rank, n_genes)) / np.sqrt(rank)
    layer = 2.0 + fields @ rng.normal(size=(k, n_genes)) + noise
    obs = pd.DataFrame(
        {"sample": pd.Categorical([f"s{s}" for s in sample])}, index=[f"c{i}" for i in range(n)]
    )
    adata = ad.AnnData(obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))
    adata.layers["log1p_norm"] = layer.astype(np.float32)
    adata.obsm["spatial"] = coords
    isc.pp.split_samples(adata, "sample", seed=0)
    isc.pp.spatial_neighbors(adata, n_neighs=6, library_key="sample")
    setup_model_anndata(adata)
    return adata


def _predict(part, graphs):
    """The linear part's prediction of every cell of ``graphs``, rows in adata order."""
    out = {h: [] for h in part.heads}
    for graph in graphs:
        batch = isc.graphs.GraphBatch.collate([graph])
        pred = part(batch.x.double(), batch.edge_index, batch.ptr)
        for head in part.heads:
            out[head].append(pred[head].numpy())
    return {h: np.vstack(v) for h, v in out.items()}


def _train_graphs(model, adata):
    return [g for g in model._graphs(adata) if g.split == "train"]


@pytest.fixture(scope="module")
def wide_panel():
    return _panel(300)  # 330 training cells of full rank: the components do not span them


def test_a_large_panel_is_the_ridge_on_the_projected_averages(wide_panel, small_rule):
    adata = wide_panel
    model = CombinedModel(adata, _linear_cfg())
    graphs = model._graphs(adata)
    report = fit_linear_part(model.module, _train_graphs(model, adata))
    part = model.module.linear_part
    assert report["features"]["averaged"] == "components"
    assert report["features"]["n_components"] == R_SMALL == part.basis.shape[1]
    assert 0.1 < report["features"]["explained_variance"] < 1.0
    assert tuple(part.local_weight.shape) == (len(FEATURE_BLOCKS), R_SMALL, adata.n_vars)
    # independent reference: dense neighbourhoods of the genes, numpy's eigenvectors of the
    # training covariance, the averages projected onto the top 256, StandardScaler, ridge
    x = adata.layers["log1p_norm"].astype(np.float64)
    train = (adata.obs["split"] == "train").to_numpy()
    mean = x[train].mean(0)
    lam, vecs = np.linalg.eigh((x[train] - mean).T @ (x[train] - mean))
    v = vecs[:, np.argsort(lam)[::-1][:R_SMALL]]
    adj = adata.obsp["spatial_connectivities"].toarray()
    sizes = adata.obs["sample"].value_counts(sort=False).tolist()
    blocks = _dense_features(adj, x, sizes, mean)
    projected = {b: mean + (blocks[b] - mean) @ v @ v.T for b in FEATURE_BLOCKS}
    got = _predict(part, graphs)
    for head in ("local", "global"):
        designs, alphas = report[head]["design"], report[head]["alpha"]
        for design, alpha in sorted(set(zip(designs, alphas, strict=True))):
            genes = [j for j in range(adata.n_vars) if (designs[j], alphas[j]) == (design, alpha)]
            f = np.hstack([projected[b] for b in design.split("+")])
            mu, sd = f[train].mean(0), f[train].std(0)
            s = (f - mu) / sd
            y = x[train][:, genes]
            w = np.linalg.solve(s[train].T @ s[train] + alpha * np.eye(s.shape[1]),
                                s[train].T @ (y - y.mean(0)))  # fmt: skip
            want = s @ w + y.mean(0)
            # float32 buffers (weights and axes): agreement to their rounding
            np.testing.assert_allclose(
                got[head][:, genes], want, rtol=0, atol=2e-4 * np.abs(want).max()
            )


def test_components_spanning_the_layer_give_the_exact_linear_part(small_rule, monkeypatch):
    # components above 60 genes here, so that the exact path's designs stay small too
    monkeypatch.setattr("interscale._components.AUTO_MAX_GENES", 60)
    adata = _panel(80, rank=12)  # rank <= 12 + 6 programs + mean < R_SMALL
    fits = {}
    for n_components in ("auto", None):
        model = CombinedModel(adata, _linear_cfg())
        part = LinearPart(adata.n_vars, model.module.linear_part.heads, n_components)
        model.module.linear_part = part
        report = fit_linear_part(model.module, _train_graphs(model, adata))
        fits[n_components] = (report, _predict(part, model._graphs(adata)))
    (auto, got), (exact, want) = fits["auto"], fits[None]
    assert auto["features"]["averaged"] == "components"
    assert exact["features"] == {
        "averaged": "genes", "n_components": 80, "explained_variance": 1.0, "pca": "none"
    }  # fmt: skip
    np.testing.assert_allclose(auto["features"]["explained_variance"], 1.0, rtol=1e-9)
    for head in got:
        assert auto[head]["design"] == exact[head]["design"]
        assert auto[head]["alpha"] == exact[head]["alpha"]
        np.testing.assert_allclose(got[head], want[head], rtol=0, atol=2e-4)


def test_the_rule_follows_the_floors_and_is_validated():
    assert LinearPart(256, ["local"]).n_components is None
    assert not hasattr(LinearPart(256, ["local"]), "basis")
    assert LinearPart(257, ["local"]).n_components == 256
    assert LinearPart(300, ["local"], 300).n_components is None
    with pytest.raises(ValueError, match="n_components"):
        LinearPart(300, ["local"], "many")
    with pytest.raises(ValueError, match="n_components"):
        LinearPart(300, ["local"], 0)
    with pytest.raises(TypeError, match="n_components"):
        LinearPart(300, ["local"], 2.5)


def test_a_large_panel_round_trips_and_a_gene_state_dict_still_loads(
    wide_panel, small_rule, tmp_path
):
    adata = wide_panel.copy()
    model = CombinedModel(adata, _linear_cfg())
    model.train(progress_bar=False)
    assert model.linear_fit_["features"]["n_components"] == R_SMALL
    model.get_model_output(adata)
    before = adata.layers["_y_pred_local"].copy()
    loaded = CombinedModel.load(model.save(tmp_path), adata, verbose=False)
    state, back = model.module.state_dict(), loaded.module.state_dict()
    assert "linear_part.basis" in back
    assert all(torch.equal(state[k], back[k]) for k in state)
    loaded.get_model_output(adata)
    np.testing.assert_array_equal(adata.layers["_y_pred_local"], before)
    # a state dict of the genes' form (no basis: written before components) loads as such
    genes = LinearPart(adata.n_vars, model.module.linear_part.heads, None)
    genes.local_weight.normal_()
    part = loaded.module.linear_part
    part.load_state_dict(genes.state_dict())
    assert part.n_components is None and "basis" not in part.state_dict()
    assert torch.equal(part.local_weight, genes.local_weight)


def test_three_dimensional_coordinates_train_end_to_end():
    adata = _panel(12, n_samples=6, cells=80, dims=3, seed=4)
    assert adata.obsm["spatial"].shape[1] == 3
    model = CombinedModel(adata, _linear_cfg())
    model.train(progress_bar=False)
    train = _train_graphs(model, adata)
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
        assert floor.mean() > 0.1  # the 3-D neighbourhoods carry the programs
        np.testing.assert_allclose(ranks.loc[floor.index, f"r2_{head}"], floor, rtol=0, atol=2e-5)


def _spots(n_spots=2000, n_genes=1000, n_samples=6, seed=0):
    """Spot-like counts: sparse Poisson draws of smooth programs at a low depth, normalised."""
    rng = np.random.default_rng(seed)
    sample = np.repeat(np.arange(n_samples), n_spots // n_samples)
    n = sample.size
    coords = rng.uniform(0, 30, size=(n, 2))
    k = 8
    fields = np.sin(coords @ rng.normal(scale=0.25, size=(2, k)) + rng.uniform(0, 6, k))
    fields += 0.3 * rng.normal(size=(n_samples, k))[sample]
    rate = np.exp(
        rng.normal(-1.0, 1.0, n_genes) + fields @ rng.normal(scale=0.6, size=(k, n_genes))
    )
    counts = sp.csr_matrix(rng.poisson(np.minimum(rate, 50.0)).astype(np.float32))
    obs = pd.DataFrame(
        {"sample": pd.Categorical([f"s{s}" for s in sample])}, index=[f"c{i}" for i in range(n)]
    )
    adata = ad.AnnData(counts, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))
    adata.obsm["spatial"] = coords
    isc.pp.normalize(adata)
    isc.pp.split_samples(adata, "sample", seed=0)
    isc.pp.spatial_neighbors(adata, n_neighs=6, library_key="sample")
    setup_model_anndata(adata)
    return adata


@pytest.mark.slow
def test_a_thousand_gene_spot_panel_trains_and_clears_the_best_floor():
    adata = _spots()
    assert sp.issparse(adata.layers["log1p_norm"])
    floors = isc.tl.linear_baselines(adata, heldout=("test",), key_added=None).mean()
    best = max(floors[n] for n in ("hop1", "hop2", "hop2_sample"))
    assert best > floors["mean"] + 0.05  # the neighbourhoods explain something
    model = CombinedModel(adata, _linear_cfg())
    model.train(progress_bar=False)
    assert model.linear_fit_["features"]["averaged"] == "components"
    r2 = model.gene_r2(adata, cells="test").mean()
    # measured (seed 3, 2 epochs): local 0.3119 against hop1 0.3123, 0.999 x: the per-gene
    # choice of design and penalty costs a little on unseen samples here, so the bar is 0.99 x
    ratios = {h: float(r2[f"r2_{h}"]) / best for h in ("local", "global")}
    print(ratios)
    assert min(ratios.values()) >= 0.99, (ratios, dict(floors))
    # sabotage: the training-mean predictor misses the floor
    part = model.module.linear_part
    with torch.no_grad():
        for head in part.heads:
            getattr(part, f"{head}_weight").zero_()
            getattr(part, f"{head}_bias").copy_(part.fill)
            part.gamma(head).zero_()
    r2 = model.gene_r2(adata, cells="test").mean()
    assert max(r2[f"r2_{h}"] for h in ("local", "global")) < best
