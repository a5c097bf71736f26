"""The tutorial notebooks: one source each, and runnable where only the package is installed."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
PACKAGE_DIR = "interscale"
# what papermill users pass to notebooks 0-3 (the real-tissue notebook prefixes its own)
SHARED_PARAMETERS = {"n_samples", "epochs", "scope_epochs", "seed", "data_dir", "out_dir"}


def _sync_module():
    spec = importlib.util.spec_from_file_location("_notebook_sync", NOTEBOOKS / "_sync.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sources() -> list[Path]:
    return sorted(p for p in NOTEBOOKS.glob("*.py") if p.name[:1].isdigit())


def test_every_notebook_has_a_source_and_no_other_notebook_exists():
    sources = {p.stem for p in _sources()}
    notebooks = {p.stem for p in NOTEBOOKS.glob("*.ipynb")}
    assert sources, "no notebook sources (<digit>*.py) in notebooks/"
    assert notebooks == sources


def test_committed_notebooks_are_what_their_sources_give():
    pytest.importorskip("jupytext")
    stale = _sync_module().stale(NOTEBOOKS)
    assert not stale, f"run python notebooks/_sync.py: {[p.name for p in stale]} differ"


def test_the_source_check_fails_for_an_edited_source(tmp_path):
    pytest.importorskip("jupytext")
    sync = _sync_module()
    for path in [*_sources(), *(p.with_suffix(".ipynb") for p in _sources())]:
        shutil.copy(path, tmp_path / path.name)
    assert sync.stale(tmp_path) == []
    first = tmp_path / _sources()[0].name
    first.write_text(first.read_text(encoding="utf-8") + "\n# %%\nprint('edited')\n")
    assert sync.stale(tmp_path) == [first.with_suffix(".ipynb")]
    assert sync.write(tmp_path) == [first.with_suffix(".ipynb")]
    assert sync.stale(tmp_path) == []


def _notebook(path: Path) -> dict:
    return json.loads(path.with_suffix(".ipynb").read_text(encoding="utf-8"))


@pytest.mark.parametrize("source", _sources(), ids=lambda p: p.stem)
def test_notebook_is_committed_clean_with_a_parameters_cell(source):
    nb = _notebook(source)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    tagged = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters' (papermill injects after it)"
    names = {
        t.id
        for node in ast.parse("".join(tagged[0]["source"])).body
        if isinstance(node, ast.Assign)
        for t in node.targets
    }
    assert {"data_dir", "out_dir"} <= names
    if not source.stem.startswith("4"):
        assert SHARED_PARAMETERS <= names


@pytest.mark.parametrize("source", _sources(), ids=lambda p: p.stem)
def test_notebook_imports_only_installed_packages(source):
    # a notebook downloaded from the docs has no repository around it
    tree = ast.parse(source.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert not imported & {"reproduce", "tests", "benchmarks", "notebooks", "scripts"}
    text = source.read_text(encoding="utf-8")
    assert "config_files/" not in "".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")
    ), "a default path into the repository"


_OUTSIDE = textwrap.dedent(
    """
    import importlib.util
    import sys
    from pathlib import Path

    repo = Path(sys.argv[1])
    for name in ("reproduce", "tests"):
        assert importlib.util.find_spec(name) is None, f"{name} is importable here"
    import interscale
    # installed (site-packages, which may sit in the checkout's .tox), not the source tree
    assert Path(interscale.__file__).resolve().parent != repo / "interscale", interscale.__file__

    import papermill as pm
    params = dict(n_samples=4, cells_per_sample_min=150, cells_per_sample_max=200,
                  epochs=2, scope_epochs=2, seed=0)
    for name in sys.argv[2:]:
        pm.execute_notebook(name, "executed_" + name, parameters=params,
                            kernel_name="python3", progress_bar=False, cwd=".")
    print("ran", *sys.argv[2:])
    """
)


def _installed_elsewhere(env: dict[str, str], cwd: Path) -> bool:
    probe = (
        "import importlib.util, sys; spec = importlib.util.find_spec('interscale'); "
        "print(spec.origin if spec else '')"
    )
    origin = subprocess.run(
        [sys.executable, "-c", probe], cwd=cwd, env=env, capture_output=True, text=True
    ).stdout.strip()
    # site-packages may sit inside the checkout (tox's .tox/): only the source tree is refused
    return bool(origin) and Path(origin).resolve().parent != ROOT / PACKAGE_DIR


@pytest.mark.slow
def test_notebooks_run_from_a_folder_outside_the_repository(tmp_path):
    """Notebooks 0-2, copied to a temporary folder, run there with only the package installed."""
    pytest.importorskip("papermill")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    env["MPLBACKEND"] = "Agg"
    if not _installed_elsewhere(env, tmp_path):
        # tox always installs the package: there a skip would hide a check that stopped working
        assert "TOX_ENV_NAME" not in os.environ, "tox installed no interscale outside the source"
        pytest.skip("interscale is not installed outside this checkout (tox -e py installs it)")
    names = ["0_setup.ipynb", "1_model_training.ipynb", "2_gene_level_evaluation.ipynb"]
    for name in names:
        shutil.copy(NOTEBOOKS / name, tmp_path / name)
    (tmp_path / "outside.py").write_text(_OUTSIDE)
    run = subprocess.run(
        [sys.executable, "outside.py", str(ROOT), *names],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    from interscale.evaluation import read_metrics

    metrics = read_metrics(tmp_path / "metrics")
    assert {"0.n_cells", "1.epochs_run", "2.auroc", "2.heldout_auroc"} <= set(metrics)
    assert metrics["1.epochs_run"] == 2
    assert (tmp_path / "data" / "trained.h5ad").is_file()
