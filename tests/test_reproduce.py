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
        "0.value": {
            "value": 2.5,
            "rtol": 1e-9,
            "reason": "profile parameter reaches the notebook",
            "group": "model",
        },
        "0.name": {"value": "x", "reason": "strings compare exactly", "group": "set-up"},
    }
    proc = _run(tmp_path, _WRITE_METRICS, expected)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "build" / "0_tiny.ipynb").is_file()
    assert (tmp_path / "build" / "0_tiny.html").is_file()
    assert "reproduce: OK" in proc.stdout


def test_metric_miss_exits_one(tmp_path):
    expected = {
        "0.value": {"min": 3.0, "max": 4.0, "reason": "deliberately wrong", "group": "model"}
    }
    proc = _run(tmp_path, _WRITE_METRICS, expected)
    assert proc.returncode == 1
    assert "MISS" in proc.stdout


def test_raising_notebook_exits_one(tmp_path):
    expected = {"0.value": {"value": 2.5, "reason": "never written", "group": "model"}}
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
    bad.write_text(json.dumps({"x": {"reason": "neither value nor range", "group": "model"}}))
    with pytest.raises(ValueError, match="'x'"):
        load_expected(bad)
    bad.write_text(json.dumps({"y": {"min": 0, "reason": "no group"}}))
    with pytest.raises(ValueError, match="'y' has group None"):
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
                "0.value": {
                    "value": 100.0,
                    "reason": "notebook 0 is not run: never checked",
                    "group": "model",
                },
                "1.value": {
                    "value": 2.5,
                    "reason": "the profile's parameter reaches notebook 1",
                    "group": "model",
                },
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


_SABOTAGE_NB_PARAMS = (
    "out_dir = 'm'\ndata_dir = 'd'\ndevice = 'cpu'\nepochs = 5\nconfig_overrides = {}\n"
    "sabotage = 'none'"
)
_SABOTAGE_BODY = (
    "import json, pathlib\n"
    "p = pathlib.Path(out_dir); p.mkdir(parents=True, exist_ok=True)\n"
    "lr = config_overrides.get('optim.lr', 0.01)\n"
    "m = {'epochs': epochs, 'lr': lr, 'mean': sabotage == 'training_mean', 'n': 3}\n"
    "(p / 'metrics_0.json').write_text(json.dumps(m))\n"
)


def _sabotage_setup(tmp_path: Path, expected: dict) -> None:
    (tmp_path / "nbs").mkdir()
    (tmp_path / "profiles").mkdir()
    params = new_code_cell(_SABOTAGE_NB_PARAMS)
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(
        cells=[params, new_code_cell(_SABOTAGE_BODY)],
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
    )
    nbformat.write(nb, tmp_path / "nbs" / "0_tiny.ipynb")
    (tmp_path / "profiles" / "tiny.yaml").write_text("epochs: 7\nconfig_overrides: {}\n")
    (tmp_path / "expected.json").write_text(json.dumps(expected))


def test_sabotaged_runs_use_their_own_metrics_and_each_model_band_must_be_missed(tmp_path):
    """--sabotage reruns the notebooks with the sabotage's parameters; a model band that no
    sabotaged run misses fails the run, a set-up band does not."""
    bands = {
        "0.epochs": {"min": 3, "reason": "trained long enough", "group": "model"},
        "0.lr": {"min": 1e-6, "reason": "a real learning rate", "group": "model"},
        "0.mean": {"value": False, "reason": "a model, not the mean", "group": "model"},
        "0.n": {"value": 3, "reason": "same for any model", "group": "set-up"},
    }
    _sabotage_setup(tmp_path, bands)
    record = tmp_path / "record.json"
    kinds = "one_epoch,tiny_lr,training_mean"
    proc = _run_args(tmp_path, "--sabotage", kinds, "--record", str(record))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = json.loads(record.read_text())
    assert runs["metrics"]["0.epochs"] == 7
    sabotaged = {k: v["metrics"] for k, v in runs["sabotage"].items()}
    assert sabotaged["one_epoch"]["0.epochs"] == 1 and sabotaged["tiny_lr"]["0.lr"] == 1e-9
    assert sabotaged["training_mean"]["0.mean"] is True
    assert runs["provenance"]["commit"] and "torch" in runs["provenance"]
    table = (tmp_path / "build" / "sabotage.md").read_text()
    assert "| 0.n | set-up | 3 | 3 | 3 | 3 | none |" in table
    # without the training-mean sabotage, nothing misses 0.mean: the run fails and says so
    proc = _run_args(tmp_path, "--sabotage", "one_epoch,tiny_lr")
    assert proc.returncode == 1
    assert "UNEARNED" in proc.stderr and "0.mean" in proc.stderr
    proc = _run_args(tmp_path, "--sabotage", "one_epoch,bogus")
    assert proc.returncode == 2 and "bogus" in proc.stderr
