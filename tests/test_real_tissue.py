"""Notebook 4 on real tissue (osmFISH): models that never learned miss its bands.

The good run of notebook 4 is checked against the same bands by ``python -m reproduce
--profile quick`` (CI); that both heads beat the training mean and reach the ridge floor on the
test tiles is also tested directly in ``tests/test_linear_part.py``.

Every run here executes ``notebooks/4_real_tissue.ipynb`` itself through ``python -m
reproduce --only 4``, with a profile's parameters (its ``tissue_config_overrides`` included) and,
for a sabotage, a few of them changed on top: one epoch; two epochs at a learning rate of 1e-9;
both heads replaced by each gene's training mean (``tissue_sabotage: training_mean``); the
cells' coordinates permuted before tiling (``tissue_sabotage: shuffled_coordinates``, trained
for the quick profile's epochs in both profiles, to keep CI short). The metrics are those the
sabotaged notebook wrote; nothing is taken from a good run.

On osmFISH the model's held-out accuracy comes from the closed-form linear part that
``tutorial_config()`` switches on (``model.linear_part``: each head starts as the ridge on its
neighbourhood means, fitted before the first epoch). A 1-epoch or a learning-rate-1e-9 model
has that part too, so it meets the accuracy bands; what misses them is a model that learned
nothing (the training mean) or one whose neighbourhoods mean nothing (shuffled coordinates).
The test says so: those two must each miss an accuracy band, the other two the band on the
epochs run.

The 4.* bands of ``reproduce/expected/<profile>.json`` come in two groups. A band with
``"group": "set-up"`` is a property of the data, the tiles, the split and the floors: the same
for every model, so no sabotage can miss it, and it is checked only against the good run. Every
other band is a model band and must be missed by at least one sabotage.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reproduce._runner import check_metrics, load_expected

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = ROOT / "reproduce" / "expected"
PROFILES = ("quick", "full")
SETUP_GROUP = "set-up"
# Parameters each sabotage changes on top of the profile's; min_epochs 0 lets a 1- or 2-epoch
# run end where it is told to.
SABOTAGE = {
    "one_epoch": {"tissue_epochs": 1, "overrides": {"optim.min_epochs": 0}},
    "tiny_lr": {"tissue_epochs": 2, "overrides": {"optim.min_epochs": 0, "optim.lr": 1e-9}},
    "mean": {
        "tissue_epochs": 1,
        "overrides": {"optim.min_epochs": 0},
        "tissue_sabotage": "training_mean",
    },
    "shuffled": {"overrides": {}, "tissue_sabotage": "shuffled_coordinates"},
}
# Sabotages that remove what the accuracy bands measure; each must miss one of LEARNING. The
# others (the linear part survives them, see above) must miss TRAINING.
REMOVE_SIGNAL = ("mean", "shuffled")
TRAINING = "4.epochs_run"
LEARNING = (
    "4.local_over_mean_floor",
    "4.global_over_mean_floor",
    "4.local_over_best_floor",
    "4.global_over_best_floor",
)

pytestmark = pytest.mark.slow


def _profile(profile: str) -> dict:
    return yaml.safe_load((ROOT / "reproduce" / "profiles" / f"{profile}.yaml").read_text())


def _bands(profile: str) -> dict:
    specs = load_expected(EXPECTED / f"{profile}.json")
    return {k: v for k, v in specs.items() if k.startswith("4.")}


def _sabotaged_params(profile: str, kind: str) -> dict:
    params = _profile(profile)
    change = dict(SABOTAGE[kind])
    change.setdefault("tissue_epochs", _profile("quick")["tissue_epochs"])
    overrides = {**(params.get("tissue_config_overrides") or {}), **change.pop("overrides")}
    params.update(change, tissue_config_overrides=overrides)
    return params


def _run_notebook_4(params: dict, folder: Path) -> dict:
    """Execute notebook 4 with these parameters; the metrics it wrote (``4.<name>``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "profiles").mkdir(exist_ok=True)
    (folder / "profiles" / "run.yaml").write_text(yaml.safe_dump(params))
    (folder / "expected.json").write_text("{}")
    # papermill's kernel needs loopback sockets, which conftest blocks in this process only
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "reproduce",
            "--profile",
            "run",
            "--profiles",
            str(folder / "profiles"),
            "--expected",
            str(folder / "expected.json"),
            "--out",
            str(folder / "build"),
            "--only",
            "4",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    result = json.loads((folder / "build" / "metrics.json").read_text())
    assert result["failed"] is None, (result["error"], proc.stdout[-3000:], proc.stderr[-3000:])
    return {k: v for k, v in result["metrics"].items() if k.startswith("4.")}


_RUNS: dict[str, dict] = {}


def _cached_run(key: str, params: dict, tmp_path_factory) -> dict:
    # The sabotaged runs of the two profiles differ only where their parameters do.
    token = json.dumps(params, sort_keys=True)
    if token not in _RUNS:
        _RUNS[token] = _run_notebook_4(params, tmp_path_factory.mktemp(key))
    return _RUNS[token]


@pytest.mark.parametrize("profile", PROFILES)
def test_every_band_is_grouped_and_can_fail(profile):
    bands = _bands(profile)
    assert bands, f"{profile}.json has no band for notebook 4"
    for name, spec in bands.items():
        assert spec.get("reason"), name
        assert spec.get("group", SETUP_GROUP) in (SETUP_GROUP, "model") and "group" in spec, name
        if "value" not in spec:
            assert spec.get("min") is not None or spec.get("max") is not None, name
    for name in LEARNING:
        assert bands[name]["group"] == "model", name


@pytest.mark.parametrize("profile", PROFILES)
def test_each_model_band_misses_a_sabotaged_model(profile, tmp_path_factory):
    bands = _bands(profile)
    runs = {
        kind: _cached_run(kind, _sabotaged_params(profile, kind), tmp_path_factory)
        for kind in SABOTAGE
    }
    table, unmissed = [], []
    for name, spec in bands.items():
        missed_by = [k for k, m in runs.items() if not check_metrics(m.get(name, "MISSING"), spec)]
        table.append((name, spec.get("group"), {k: runs[k].get(name) for k in runs}, missed_by))
        if spec["group"] == "model" and not missed_by:
            unmissed.append(name)
    print(f"\n{profile}: band, group, value per sabotage, missed by")
    for row in table:
        print(*row, sep="  ")
    assert not unmissed, f"model bands no sabotage misses: {unmissed}"
    for kind, metrics in runs.items():
        if kind in REMOVE_SIGNAL:
            names = LEARNING
        else:
            names = (TRAINING,)
        failed = {n for n in names if not check_metrics(metrics.get(n, "MISSING"), bands[n])}
        assert failed, (kind, {n: metrics.get(n) for n in names})
