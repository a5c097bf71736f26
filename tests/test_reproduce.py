"""The reproduce runner: metric comparison, and exit codes with tiny fake notebooks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nbformat.v4 import new_code_cell, new_notebook

from reproduce import check_metrics, compare, load_expected

ROOT = Path(__file__).resolve().parents[1]


def _write_nb(path: Path, body: str) -> None:
    params = new_code_cell("out_dir = 'm'\ndata_dir = 'd'\ndevice = 'cpu'\nvalue = 1.0")
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(
        cells=[params, new_code_cell(body)],
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
    )
    nbformat.write(nb, path)


_WRITE_METRICS = (
    "import json, pathlib\n"
    "p = pathlib.Path(out_dir); p.mkdir(parents=True, exist_ok=True)\n"
    "(p / 'metrics_0.json').write_text(json.dumps({'value': value, 'name': 'x'}))\n"
)


def _run(tmp_path: Path, body: str, expected: dict) -> subprocess.CompletedProcess:
    nbs = tmp_path / "nbs"
    profiles = tmp_path / "profiles"
    nbs.mkdir()
    profiles.mkdir()
    _write_nb(nbs / "0_tiny.ipynb", body)
    (profiles / "tiny.yaml").write_text("value: 2.5\n")
    exp = tmp_path / "expected.json"
    exp.write_text(json.dumps(expected))
    # papermill's kernel needs loopback sockets, which conftest blocks in this process only
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "reproduce",
            "--profile",
            "tiny",
            "--notebooks",
            str(nbs),
            "--profiles",
            str(profiles),
            "--expected",
            str(exp),
            "--out",
            str(tmp_path / "build"),
            "--cwd",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_passing_notebook_exits_zero_and_writes_html(tmp_path):
    expected = {
        "0.value": {"value": 2.5, "rtol": 1e-9, "reason": "profile parameter reaches the notebook"},
        "0.name": {"value": "x", "reason": "strings compare exactly"},
    }
    proc = _run(tmp_path, _WRITE_METRICS, expected)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "build" / "0_tiny.ipynb").is_file()
    assert (tmp_path / "build" / "0_tiny.html").is_file()
    assert "reproduce: OK" in proc.stdout


def test_metric_miss_exits_one(tmp_path):
    expected = {"0.value": {"min": 3.0, "max": 4.0, "reason": "deliberately wrong"}}
    proc = _run(tmp_path, _WRITE_METRICS, expected)
    assert proc.returncode == 1
    assert "MISS" in proc.stdout


def test_raising_notebook_exits_one(tmp_path):
    expected = {"0.value": {"value": 2.5, "reason": "never written"}}
    proc = _run(tmp_path, "raise RuntimeError('boom')", expected)
    assert proc.returncode == 1
    assert "0_tiny.ipynb" in proc.stderr and "boom" in proc.stderr


def test_compare_against_hand_made_metrics():
    expected = {
        "a": {"value": 1.0, "rtol": 0.1, "reason": ""},
        "b": {"min": 0.0, "max": 1.0, "reason": ""},
        "c": {"value": 5, "atol": 0.5, "reason": ""},
        "d": {"value": None, "reason": "no term"},
        "missing": {"min": 0, "reason": ""},
    }
    metrics = {"a": 1.09, "b": 1.5, "c": 5.4, "d": None, "extra": 3}
    rows = {r["metric"]: r for r in compare(metrics, expected)}
    assert rows["a"]["ok"] is True
    assert rows["b"]["ok"] is False
    assert rows["c"]["ok"] is True
    assert rows["d"]["ok"] is True
    assert rows["missing"]["ok"] is False and rows["missing"]["got"] == "MISSING"
    assert rows["extra"]["ok"] is None
    assert check_metrics(float("nan"), {"min": 0.0}) is False
    assert check_metrics(None, {"value": 1.0, "atol": 1.0}) is False
    assert check_metrics(1.11, {"value": 1.0, "rtol": 0.1}) is False


@settings(max_examples=40, deadline=None)
@given(
    want=st.floats(-1e6, 1e6),
    got=st.floats(-1e6, 1e6),
    rtol=st.floats(0, 1),
    atol=st.floats(0, 10),
)
def test_tolerance_matches_brute_force(want, got, rtol, atol):
    spec = {"value": want, "rtol": rtol, "atol": atol}
    assert check_metrics(got, spec) == (abs(got - want) <= atol + rtol * abs(want))


def test_bad_expected_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"x": {"reason": "neither value nor range"}}))
    with pytest.raises(ValueError, match="'x'"):
        load_expected(bad)
    with pytest.raises(FileNotFoundError):
        load_expected(tmp_path / "absent.json")


def test_shipped_expected_files_are_valid():
    for name in ("quick", "full"):
        specs = load_expected(ROOT / "reproduce" / "expected" / f"{name}.json")
        assert specs
        assert all(isinstance(s.get("reason"), str) and s["reason"] for s in specs.values())


def _run_args(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "reproduce",
            "--profile",
            "tiny",
            "--notebooks",
            str(tmp_path / "nbs"),
        ]
        + ["--profiles", str(tmp_path / "profiles"), "--expected", str(tmp_path / "expected.json")]
        + ["--out", str(tmp_path / "build"), "--cwd", str(tmp_path), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_only_runs_one_notebook_and_checks_its_metrics(tmp_path):
    """--only N executes notebook N alone, keeps the other notebooks' metrics and checks only
    the N.* bands."""
    (tmp_path / "nbs").mkdir()
    (tmp_path / "profiles").mkdir()
    _write_nb(tmp_path / "nbs" / "0_tiny.ipynb", _WRITE_METRICS)
    second = _WRITE_METRICS.replace("metrics_0", "metrics_1")
    _write_nb(tmp_path / "nbs" / "1_other.ipynb", second)
    (tmp_path / "profiles" / "tiny.yaml").write_text("value: 2.5\n")
    metrics = tmp_path / "build" / "metrics"
    metrics.mkdir(parents=True)
    (metrics / "metrics_0.json").write_text(json.dumps({"value": 9.0}))
    (metrics / "metrics_1.json").write_text(json.dumps({"value": 9.0}))
    (tmp_path / "expected.json").write_text(
        json.dumps(
            {
                "0.value": {"value": 100.0, "reason": "notebook 0 is not run: never checked"},
                "1.value": {"value": 2.5, "reason": "the profile's parameter reaches notebook 1"},
            }
        )
    )
    proc = _run_args(tmp_path, "--only", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (tmp_path / "build" / "0_tiny.ipynb").exists()
    assert json.loads((metrics / "metrics_0.json").read_text()) == {"value": 9.0}
    assert json.loads((metrics / "metrics_1.json").read_text())["value"] == 2.5
    assert "0.value" not in proc.stdout
    proc = _run_args(tmp_path, "--only", "7")
    assert proc.returncode != 0 and "numbered 7" in proc.stderr


def test_a_parameter_no_notebook_declares_stops_the_run(tmp_path):
    (tmp_path / "nbs").mkdir()
    (tmp_path / "profiles").mkdir()
    _write_nb(tmp_path / "nbs" / "0_tiny.ipynb", _WRITE_METRICS)
    (tmp_path / "profiles" / "tiny.yaml").write_text("value: 2.5\nvalu: 3\n")
    (tmp_path / "expected.json").write_text("{}")
    proc = _run_args(tmp_path)
    assert proc.returncode != 0
    assert "['valu']" in proc.stderr and not (tmp_path / "build" / "0_tiny.ipynb").exists()
