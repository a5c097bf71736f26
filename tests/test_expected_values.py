"""The reproduction's bands earn their checks, and its records come from the current code.

Each profile (quick: what CI runs; full: the README's main job) has its bands,
``reproduce/expected/<profile>.json``, and its record, ``reproduce/expected/<profile>_run.json``,
written by ``python -m reproduce --profile <profile> --sabotage all --record``: the metrics of
the good run and those of the sabotaged runs of :data:`reproduce._sabotage.SABOTAGES` (one
epoch; a learning rate of 1e-9; both heads replaced by each gene's training mean; coordinates
shuffled within each sample; gene names and programs reassigned; the full profile records the
sabotages its bands name, every one but the last, to keep its record to about an hour), each
computed by the
notebooks themselves, with the profile's ``config_overrides`` applied; nothing is merged from
the good run. CI reruns the quick profile with ``--sabotage all`` and checks the same rules on
fresh metrics (``tox -e reproduce-quick``).

Here, on the records: the good run meets every band; every ``model`` band names the
sabotages it rejects (``rejects``) and each of them misses it; no ``model`` band is met by every
sabotage; and a record is stale, and fails, once a commit after it touched what decides its
numbers (:data:`reproduce._sabotage.NUMERICS_PATHS`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from reproduce import check_metrics, compare, load_expected
from reproduce._bands import summary_line
from reproduce._sabotage import (
    GROUPS,
    MODEL_GROUP,
    NUMERICS_PATHS,
    SABOTAGES,
    band_matrix,
    broken_claims,
    format_matrix,
    unearned,
)

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = ROOT / "reproduce" / "expected"
PROFILES = ("quick", "full")
# Claims of learning that must be model bands, each rejecting a sabotage.
LEARNING = (
    "1.r2_local_test",
    "1.r2_global_test",
    "2.heldout_auroc",
    "2.heldout_r2_local_local",
    "2.heldout_r2_global_global",
    "2.head_gap_global_genes",
    "2.head_gap_local_genes",
    "2.local_head_over_hop2_local_genes",
    "2.global_head_over_hop2_sample_global_genes",
    "4.local_over_mean_floor",
    "4.global_over_mean_floor",
    "4.local_over_best_floor",
    "4.global_over_best_floor",
)


def _bands(profile: str) -> dict:
    return load_expected(EXPECTED / f"{profile}.json")


def _record(profile: str) -> dict:
    return json.loads((EXPECTED / f"{profile}_run.json").read_text())


@pytest.mark.parametrize("profile", PROFILES)
def test_every_band_is_grouped_bounded_and_names_what_it_rejects(profile):
    for name, spec in _bands(profile).items():
        assert spec.get("reason"), name
        assert spec["group"] in GROUPS, name
        if "value" not in spec:
            lo, hi = spec.get("min"), spec.get("max")
            assert lo is not None or hi is not None, name
            assert not (lo is not None and hi is not None and lo <= -1 and hi >= 1), name
            if name.endswith("auroc"):
                assert lo is not None and lo > 0.5, name
        rejects = spec.get("rejects", [])
        assert set(rejects) <= set(SABOTAGES), (name, rejects)
        if spec["group"] == MODEL_GROUP:
            assert rejects, f"model band {name} names no sabotage it rejects"
        else:
            assert not rejects, f"{spec['group']} band {name} claims to reject {rejects}"
    assert {n for n in LEARNING if n in _bands(profile)} == set(LEARNING), profile
    assert all(_bands(profile)[n]["group"] == MODEL_GROUP for n in LEARNING)


@pytest.mark.parametrize("profile", PROFILES)
def test_the_recorded_good_run_meets_every_band(profile):
    rows = compare(_record(profile)["metrics"], _bands(profile))
    assert not [r for r in rows if r["ok"] is False], [r for r in rows if r["ok"] is False]
    assert "0 missed" in summary_line(rows)


@pytest.mark.parametrize("profile", PROFILES)
def test_each_model_band_misses_the_sabotaged_runs_it_names(profile):
    record, bands = _record(profile), _bands(profile)
    named = {k for spec in bands.values() for k in spec.get("rejects", [])}
    assert named <= set(record["sabotage"]), f"record the sabotages {sorted(named)}"
    if profile == "quick":  # what CI reruns: every sabotage
        assert set(record["sabotage"]) == set(SABOTAGES)
    runs = {k: r["metrics"] for k, r in record["sabotage"].items()}
    rows = band_matrix(bands, record["metrics"], runs)
    print(f"\n{profile}:\n{format_matrix(rows)}")
    assert not unearned(rows)
    assert not broken_claims(rows, bands)
    # the named non-learning references are really excluded: each value fails its band
    for name, spec in bands.items():
        for kind in spec.get("rejects", []):
            assert not check_metrics(runs[kind].get(name, "MISSING"), spec), (name, kind)


# "(0.094 recorded)", "97 recorded", "1,863 recorded", "12.3 s recorded"
_RECORDED = re.compile(r"(-?\d[\d,]*(?:\.\d+)?)(?: s)? recorded")


@pytest.mark.parametrize("profile", PROFILES)
def test_the_numbers_a_reason_cites_as_recorded_are_the_records(profile):
    """A reason that quotes the recorded value quotes the record, to the digits it prints."""
    metrics = _record(profile)["metrics"]
    stale = []
    for name, spec in _bands(profile).items():
        match = _RECORDED.search(spec["reason"])
        if match is None:
            continue
        text = match.group(1).replace(",", "")
        digits = len(text.split(".")[1]) if "." in text else 0
        got = metrics[name]
        if abs(float(got) - float(text)) > 0.5 * 10.0**-digits + 1e-12:
            stale.append(f"{name}: reason says {match.group(1)}, record has {got!r}")
    assert not stale, stale


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("profile", PROFILES)
def test_records_are_from_the_current_code(profile):
    """A record names a clean commit, and no later commit touched what decides its numbers."""
    prov = _record(profile)["provenance"]
    assert prov["dirty"] == [], f"{profile} recorded from uncommitted changes: {prov['dirty']}"
    for key in ("commit", "python", "torch", "numpy", "processor", "cpu_kernel", "command"):
        assert prov.get(key), (profile, key)
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("no git checkout: the record's commit cannot be compared with the history")
    last = _git("log", "-1", "--format=%H", "--", *NUMERICS_PATHS)
    assert last.returncode == 0, last.stderr
    if _git("cat-file", "-e", f"{prov['commit']}^{{commit}}").returncode != 0:
        pytest.fail(f"{profile}_run.json names commit {prov['commit']}, not in this history")
    ancestor = _git("merge-base", "--is-ancestor", last.stdout.strip(), prov["commit"])
    assert ancestor.returncode == 0, (
        f"{profile}_run.json was recorded at {prov['commit'][:10]}, before "
        f"{last.stdout.strip()[:10]} changed {', '.join(NUMERICS_PATHS)}: re-record it with "
        f"python -m reproduce --profile {profile} --sabotage all --record"
    )
