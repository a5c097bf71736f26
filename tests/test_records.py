"""Metric records (write_metrics / read_metrics) and the per-program held-out metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import interscale as isc
from interscale.evaluation import heldout_program_metrics, read_metrics, write_metrics


def test_metrics_round_trip_through_one_flat_mapping(tmp_path):
    write_metrics({"b": np.float32(0.5), "a": 3, "term": None}, tmp_path / "m", 1)
    write_metrics({"auroc": float("nan"), "name": "GO:1"}, tmp_path / "m", "2")
    got = read_metrics(tmp_path / "m")
    assert list(got) == ["1.a", "1.b", "1.term", "2.auroc", "2.name"]
    assert got["1.b"] == 0.5 and got["1.a"] == 3 and got["1.term"] is None
    assert math.isnan(got["2.auroc"]) and got["2.name"] == "GO:1"
    assert not list((tmp_path / "m").glob(".*")), "no temp file is left behind"


def test_write_metrics_refuses_what_json_would_garble_and_leaves_the_old_file(tmp_path):
    path = write_metrics({"a": 1}, tmp_path, 0)
    with pytest.raises(TypeError, match="'v'.*ndarray"):
        write_metrics({"v": np.zeros(3)}, tmp_path, 0)
    with pytest.raises(TypeError, match="metric names must be strings"):
        write_metrics({1: 1}, tmp_path, 0)
    with pytest.raises(ValueError, match="name must be"):
        write_metrics({"a": 1}, tmp_path, "../x")
    assert json.loads(path.read_text()) == {"a": 1}


def test_read_metrics_names_a_bad_file(tmp_path):
    (tmp_path / "metrics_3.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="metrics_3.json must hold a JSON object"):
        read_metrics(tmp_path)
    (tmp_path / "metrics_3.json").write_text("{")
    with pytest.raises(ValueError, match="metrics_3.json is not valid JSON"):
        read_metrics(tmp_path)
    assert read_metrics(tmp_path / "missing") == {}


@pytest.fixture(scope="module")
def organoids():
    adata = isc.datasets.synthetic_organoids(n_samples=8, cells_per_sample=(120, 160), seed=3)
    isc.pp.normalize(adata, key_added="log1p_norm")
    isc.pp.spatial_neighbors(adata, radius=200, library_key="sample")
    return adata


def test_program_metrics_are_per_program_means_of_the_ranks_and_floors(organoids):
    adata = organoids.copy()
    truth = adata.layers["log1p_norm"]
    truth = truth.toarray() if hasattr(truth, "toarray") else np.asarray(truth)
    rng = np.random.default_rng(0)
    noise = rng.normal(scale=0.3, size=truth.shape).astype(np.float32)
    adata.layers["_y_pred_local"] = truth + noise
    adata.layers["_y_pred_global"] = truth + 2 * noise
    metrics, per_program = heldout_program_metrics(adata, layer="log1p_norm")
    ranks = isc.evaluation.calculate_gene_ranks(
        adata,
        layers_local_pred="_y_pred_local",
        layers_global_pred="_y_pred_global",
        layer_true="log1p_norm",
        cells=["test"],
    )
    program = adata.var["program"].astype(str).to_numpy()
    for prog in ("local", "global"):
        for head in ("local", "global"):
            want = float(ranks[f"r2_{head}"][program == prog].mean())
            assert metrics[f"heldout_r2_{head}_{prog}"] == pytest.approx(want, rel=1e-12)
    assert metrics["head_gap_local_genes"] == pytest.approx(
        per_program.loc["local", "r2_local"] - per_program.loc["local", "r2_global"]
    )
    assert metrics["head_gap_local_genes"] > 0  # the less noisy head is ahead
    assert metrics["floor_gap_global_genes"] == pytest.approx(
        per_program.loc["global", "sample"] - per_program.loc["global", "hop2"]
    )


def test_program_metrics_give_a_mean_predictor_no_head_gap(organoids):
    adata = organoids.copy()
    isc.evaluation.training_mean_predictions(adata, "log1p_norm")
    metrics, _ = heldout_program_metrics(adata, layer="log1p_norm")
    assert math.isnan(metrics["head_gap_local_genes"])
    assert math.isnan(metrics["head_gap_global_genes"])
    assert metrics["local_head_over_hop2_local_genes"] <= 0


def test_program_metrics_need_planted_programs(organoids):
    adata = organoids.copy()
    del adata.var["program"]
    with pytest.raises(KeyError, match=r"adata.var\['program'\]"):
        heldout_program_metrics(adata, layer="log1p_norm")
