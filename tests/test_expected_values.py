"""The reproduction's expected values accept the shipped runs and reject models that never learned.

For each profile (quick: what CI runs; full: the README's main job) the metrics of the shipped
run (``reproduce/expected/<profile>_run.json``, gathered from the run the expected values were
recorded from) must pass ``reproduce/expected/<profile>.json``. Then the model-quality metrics
are replaced by those of sabotaged models, computed by the same code the notebooks use, on the
profile's own data: a model trained for one epoch, one trained with a learning rate of 1e-9,
and a predictor of the per-gene training mean. Each must fail the expected values, and on a
learning metric, not only on a bookkeeping one.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import yaml

from reproduce._metrics import HELDOUT, heldout_program_metrics, mean_predictions
from reproduce._runner import compare, load_expected

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = ROOT / "reproduce" / "expected"
PROFILES = ("quick", "full")
# Metrics that only a model that learned can meet; at least one must fail for each sabotage.
LEARNING = (
    "2.heldout_auroc",
    "2.heldout_r2_local_local",
    "2.heldout_r2_global_global",
    "2.head_gap_global_genes",
    "2.local_head_over_hop2_local_genes",
    "2.global_head_over_hop2_sample_global_genes",
)
SABOTAGE = {
    "one_epoch": {"optim.n_epochs": 1},
    "tiny_lr": {"optim.n_epochs": 2, "optim.lr": 1e-9},
    "mean": None,
}


def _recorded(profile: str) -> dict:
    return json.loads((EXPECTED / f"{profile}_run.json").read_text())


@pytest.mark.parametrize("profile", PROFILES)
def test_shipped_run_meets_its_expected_values(profile):
    rows = compare(_recorded(profile), load_expected(EXPECTED / f"{profile}.json"))
    failed = [r for r in rows if r["ok"] is False]
    assert not failed, failed
    checked = {r["metric"] for r in rows if r["ok"]}
    assert set(LEARNING) <= checked


@pytest.mark.parametrize("profile", PROFILES)
def test_every_band_can_fail(profile):
    """No expected value is always true: each range is bounded where values can fall."""
    for name, spec in load_expected(EXPECTED / f"{profile}.json").items():
        if "value" in spec:
            continue
        lo, hi = spec.get("min"), spec.get("max")
        assert lo is not None or hi is not None, name
        if name.endswith("auroc"):
            assert lo is not None and lo > 0.5, name
        if lo is not None and hi is not None:
            assert not (lo <= -1 and hi >= 1), name


@pytest.fixture(scope="module", params=PROFILES)
def profile_data(request):
    """The profile's data, preprocessed as notebook 0 does, and its config."""
    import interscale as isc
    from interscale.config import load_config

    profile = request.param
    params = yaml.safe_load((ROOT / "reproduce" / "profiles" / f"{profile}.yaml").read_text())
    adata = isc.datasets.synthetic_organoids(
        n_samples=params["n_samples"],
        cells_per_sample=(params["cells_per_sample_min"], params["cells_per_sample_max"]),
        seed=params["seed"],
    )
    isc.pp.qc(adata)
    isc.pp.normalize(adata, key_added="log1p_norm")
    isc.pp.spatial_neighbors(adata, radius=200, library_key="sample")
    cfg = load_config(str(ROOT / params["config_path"]))
    baselines = isc.tl.linear_baselines(adata, heldout=HELDOUT, key_added=None)
    return profile, adata, cfg, baselines


def _sabotaged_metrics(adata, cfg, baselines, kind: str) -> dict:
    import interscale as isc
    from interscale.config import with_overrides
    from interscale.evaluation import heldout_r2

    adata = adata.copy()
    layer, split_key = cfg.dataset.layer_key, cfg.dataset.split_key
    if SABOTAGE[kind] is None:
        mean_predictions(adata, layer=layer, split_key=split_key)
    else:
        c = with_overrides(cfg, {**SABOTAGE[kind], "optim.min_epochs": 0})
        isc.tl.set_full_reproducibility(c.optim.seed)
        isc.model.CombinedModel._setup_anndata(
            adata,
            layer_key=layer,
            sample_key_list=list(c.dataset.sample_key),
            split_key=split_key,
        )
        model = isc.model.CombinedModel(adata, c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.train(accelerator="cpu", progress_bar=False)
            model.get_model_output(adata)
    metrics = {}
    for head in ("local", "global"):
        for split, value in heldout_r2(adata, f"_y_pred_{head}", layer, split_key).items():
            metrics[f"1.r2_{head}_{split}"] = value
    program, _ = heldout_program_metrics(
        adata, layer=layer, split_key=split_key, baselines=baselines
    )
    metrics.update({f"2.{k}": v for k, v in program.items()})
    return metrics


@pytest.mark.parametrize("kind", list(SABOTAGE))
def test_models_that_never_learned_fail_the_expected_values(profile_data, kind):
    profile, adata, cfg, baselines = profile_data
    metrics = {**_recorded(profile), **_sabotaged_metrics(adata, cfg, baselines, kind)}
    rows = compare(metrics, load_expected(EXPECTED / f"{profile}.json"))
    failed = {r["metric"] for r in rows if r["ok"] is False}
    assert failed & set(LEARNING), (kind, sorted(failed))
