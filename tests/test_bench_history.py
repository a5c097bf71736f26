"""benchmarks._history: the offline benchmark history drawn from asv result files."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks import _history as hist

COLUMNS = ["result", "params", "version", "started_at", "duration"]
EPOCH = "bench_training.TrainEpoch.time_epoch"
CORE = "bench_training.AttentionCore.time_forward_backward"
PEAK = "bench_training.TrainEpoch.peakmem_epoch"


def _index() -> dict:
    return {
        EPOCH: {"unit": "seconds", "param_names": ["device"], "params": [["'cpu'", "'cuda'"]]},
        PEAK: {"unit": "bytes", "param_names": ["device"], "params": [["'cpu'", "'cuda'"]]},
        CORE: {
            "unit": "seconds",
            "param_names": ["cells", "kernel"],
            "params": [["2578", "4318"], ["'cpu'", "'flash'"]],
        },
        "version": 2,
    }


def _run(folder: Path, machine: str, commit: str, date: int, scale: float) -> None:
    """One asv-format result file (version 2) of three benchmarks."""
    cuda = scale if machine == "gpu-box" else None  # skipped on the CPU machine
    results = {
        EPOCH: [[1.5 * scale, cuda], [["'cpu'", "'cuda'"]], "v", date, 3.0],
        PEAK: [[2.0**30 * scale, None], [["'cpu'", "'cuda'"]], "v", date, 3.0],
        CORE: [
            [0.1 * scale, 0.2 * scale, float("nan"), 0.4 * scale],  # one failed combination
            [["2578", "4318"], ["'cpu'", "'flash'"]],
            "v",
            date,
            1.0,
        ],
    }
    data = {
        "commit_hash": commit,
        "env_name": "virtualenv-py3.11",
        "date": date,
        "params": {"machine": machine},
        "python": "3.11",
        "requirements": {},
        "env_vars": {},
        "result_columns": COLUMNS,
        "results": results,
        "durations": {},
        "version": 2,
    }
    (folder / machine).mkdir(parents=True, exist_ok=True)
    (folder / machine / f"{commit[:8]}-virtualenv-py3.11.json").write_text(json.dumps(data))


def write_fake_results(folder: Path) -> Path:
    """Two machines, three commits (the GPU box has the last two only), written out of order."""
    folder.mkdir(parents=True)
    (folder / "benchmarks.json").write_text(json.dumps(_index()))
    commits = ["a" * 40, "b" * 40, "c" * 40]
    for i in (2, 0, 1):
        _run(folder, "cpu-box", commits[i], 1_000 * (i + 1), 1.0 + i)
    for i in (1, 2):
        _run(folder, "gpu-box", commits[i], 1_000 * (i + 1), 0.1 * (i + 1))
    (folder / "cpu-box" / "machine.json").write_text(
        json.dumps({"machine": "cpu-box", "num_cpu": "2", "cpu": "Test CPU"})
    )
    (folder / "cpu-box" / "commands.txt").write_text("asv run --machine cpu-box A..B\n")
    return folder


@pytest.fixture
def results(tmp_path) -> Path:
    return write_fake_results(tmp_path / "results")


def test_every_commit_and_machine_is_read_in_commit_order(results):
    history = hist.load_history(results)
    assert history.order == ["a" * 40, "b" * 40, "c" * 40]  # by date, not by file order
    assert sorted(history.machines) == ["cpu-box", "gpu-box"]
    epoch = hist.series(history, EPOCH)
    assert epoch[("'cpu'",)] == {
        "cpu-box": [(0, 1.5), (1, 3.0), (2, 4.5)],
        "gpu-box": [(1, pytest.approx(0.3)), (2, pytest.approx(0.45))],
    }
    assert epoch[("'cuda'",)] == {"gpu-box": [(1, 0.2), (2, pytest.approx(0.3))]}
    core = hist.series(history, CORE)
    assert ("4318", "'cpu'") not in core  # NaN (failed) everywhere: no panel
    assert len(core) == 3


def test_page_has_every_commit_machine_and_figure(results, tmp_path):
    out = tmp_path / "page"
    history = hist.write_page(results, out)
    page = (out / "index.md").read_text()
    for commit in history.order:
        assert f"`{commit[:8]}`" in page
    assert "### cpu-box" in page and "### gpu-box" in page
    assert "asv run --machine cpu-box A..B" in page  # the command of that result set
    assert "no `commands.txt`" in page  # the GPU box recorded none
    for name in (EPOCH, PEAK, CORE):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![{name}]({name}.png)" in page
    # the table row of the CPU epoch holds one value per commit, the GPU row two
    rows = [line for line in page.splitlines() if line.startswith("| device=cpu |")]
    assert "| device=cpu | cpu-box | 1.50 s | 3.00 s | 4.50 s |" in rows
    assert "| device=cpu | gpu-box |  | 300.0 ms | 450.0 ms |" in rows
    assert "| device=cpu | cpu-box | 1,024 MiB | 2,048 MiB | 3,072 MiB |" in rows


def test_figure_has_one_line_per_machine_and_all_points(results):
    history = hist.load_history(results)
    fig = hist.draw(history, EPOCH)
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert sorted(panels) == ["device=cpu", "device=cuda"]
    lines = {line.get_label(): list(line.get_xdata()) for line in panels["device=cpu"].lines}
    assert lines == {"cpu-box": [0, 1, 2], "gpu-box": [1, 2]}
    ticks = [t.get_text() for t in panels["device=cpu"].get_xticklabels()]
    assert ticks == ["aaaaaaaa", "bbbbbbbb", "cccccccc"]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_order_wins_over_dates(results, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env |= {"GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], env=env, check=True, capture_output=True, text=True
        ).stdout.strip()

    git("init", "-q")
    shas = []
    for i in range(2):
        git("commit", "-q", "--allow-empty", "-m", f"c{i}")
        shas.append(git("rev-parse", "HEAD"))
    # result files whose dates say the opposite of the history
    folder = tmp_path / "git-results"
    (folder).mkdir()
    _run(folder, "cpu-box", shas[0], 2_000, 1.0)
    _run(folder, "cpu-box", shas[1], 1_000, 2.0)
    assert hist.load_history(folder).order == [shas[1], shas[0]]
    assert hist.load_history(folder, repo=str(repo)).order == shas


def test_empty_and_malformed_results(tmp_path):
    out = tmp_path / "page"
    history = hist.write_page(tmp_path / "none", out)
    assert history.runs == [] and "No results recorded yet." in (out / "index.md").read_text()
    bad = tmp_path / "bad" / "m"
    bad.mkdir(parents=True)
    (bad / "abc-env.json").write_text(json.dumps({"results": {}}))
    with pytest.raises(ValueError, match="not an asv result file"):
        hist.load_history(tmp_path / "bad")
    data = {"commit_hash": "x", "env_name": "e", "result_columns": COLUMNS, "date": 1}
    data["results"] = {EPOCH: [[1.0], [["'cpu'", "'cuda'"]], "v", 1, 1.0]}
    (bad / "abc-env.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="1 values for 2 parameter sets"):
        hist.load_history(tmp_path / "bad")
