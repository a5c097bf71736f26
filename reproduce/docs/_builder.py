"""Stage the Sphinx sources, the README and the executed notebooks; run sphinx-build."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from reproduce.docs._browser import BrowserCheckError, PageReport, check_site, find_chromium

ROOT = Path(__file__).resolve().parents[2]
SOURCES = Path(__file__).resolve().parent
BUILDS = ROOT / "reproduce" / "_build"
# The committed asv results that the "Performance across versions" page is drawn from.
HISTORY = ROOT / "benchmarks" / "results"
# Sphinx sources copied from reproduce/docs/ (the Python modules next to them are not sources).
_SOURCE_ITEMS = ("conf.py", "index.md", "api.md", "_static", "_templates")
# The tutorial pages the browser check opens when the build has them (else the first one).
_CHECKED_TUTORIALS = ("2_gene_level_evaluation", "4_real_tissue")
_NO_API = """# API reference

Not built: the site was built with `--no-api`. Run `python -m reproduce.docs` for the full site.
"""
_RUN_HINT = "python -m reproduce --profile quick  (or: tox -e reproduce-quick)"
_MD_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")


class DocsError(RuntimeError):
    """The documentation cannot be built (missing input, sphinx-build or browser failure)."""


@dataclass
class DocsResult:
    """What :func:`build_docs` produced.

    Attributes
    ----------
    html
        The site folder (open ``html/index.html``).
    notebooks
        The executed-notebook folder the tutorials came from.
    profile
        Name of that build (the folder name under ``reproduce/_build``).
    seconds
        Wall time of sphinx-build.
    warnings
        Warning lines sphinx-build emitted.
    pages
        Browser reports (empty without the check).
    """

    html: Path
    notebooks: Path
    profile: str
    seconds: float
    warnings: list[str] = field(default_factory=list)
    pages: list[PageReport] = field(default_factory=list)


def _is_executed(path: Path) -> bool:
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    cells = nb.get("cells", []) if isinstance(nb, dict) else []
    return any(c.get("cell_type") == "code" and c.get("execution_count") is not None for c in cells)


def executed_notebooks(folder: str | os.PathLike[str]) -> list[Path]:
    """The executed tutorial notebooks (``<digit>*.ipynb``) of one reproduce build folder.

    Parameters
    ----------
    folder
        A build folder such as ``reproduce/_build/quick``. A ``--check-determinism`` build keeps
        its notebooks in ``run1/``; that subfolder is used when the folder itself has none.

    Returns
    -------
    list of Path
        Sorted by name; empty when the folder holds no notebook with an executed code cell.
    """
    folder = Path(folder)
    for candidate in (folder, folder / "run1"):
        paths = sorted(p for p in candidate.glob("*.ipynb") if p.name[:1].isdigit())
        if paths and all(_is_executed(p) for p in paths):
            return paths
    return []


def find_build(profile: str = "auto", builds: str | os.PathLike[str] | None = None) -> Path:
    """Pick the reproduce build whose executed notebooks the site shows.

    Parameters
    ----------
    profile
        ``"auto"`` for the most recently executed build, else the profile name (``quick``,
        ``full``).
    builds
        Folder holding one subfolder per profile (default ``reproduce/_build``).

    Returns
    -------
    Path
        The folder holding the executed notebooks.

    Raises
    ------
    DocsError
        No executed notebooks exist for the requested profile (or for any, with ``"auto"``);
        the message names the command that produces them.
    """
    builds = Path(builds or BUILDS)
    if profile != "auto":
        paths = executed_notebooks(builds / profile)
        if not paths:
            raise DocsError(
                f"no executed notebooks for profile {profile!r} in {builds / profile}; run "
                f"`python -m reproduce --profile {profile}` first"
            )
        return paths[0].parent
    found = []
    if builds.is_dir():
        for sub in sorted(builds.iterdir()):
            if not sub.is_dir() or sub.name == "docs":
                continue
            paths = executed_notebooks(sub)
            if paths:
                found.append((max(p.stat().st_mtime for p in paths), paths[0].parent))
    if not found:
        raise DocsError(
            f"no executed notebooks in {builds}/<profile>/ (the docs show the notebooks of the "
            f"last reproduce run and never execute them); run `{_RUN_HINT}` first"
        )
    return max(found, key=lambda item: item[0])[1]


def _rewrite_readme(text: str, staged: set[str]) -> str:
    # The README's relative links point into the repository; on the site only staged pages
    # exist, so other relative links keep their text and lose the (broken) target.
    def repl(match: re.Match[str]) -> str:
        label, target = match.group(1), match.group(2)
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("#"):
            return match.group(0)
        rel = os.path.normpath(target.split("#", 1)[0])
        if rel in staged:
            return match.group(0)
        return f"{label} (`{target}`)"

    return _MD_LINK.sub(repl, text)


def _tutorials_index(notebooks: list[Path], profile: str, build: Path) -> str:
    executed = time.localtime(max(p.stat().st_mtime for p in notebooks))
    lines = [
        "# Tutorials",
        "",
        f"The notebooks of `notebooks/` as executed by `python -m reproduce --profile {profile}`",
        f"(build folder `{build.name}`, run at "
        f"{time.strftime('%Y-%m-%d %H:%M', executed)}"
        "). They are shown as they were executed; building the site does not re-run them.",
        "",
        "```{toctree}",
        ":maxdepth: 1",
        "",
        *[p.stem for p in notebooks],
        "```",
        "",
    ]
    return "\n".join(lines)


def stage_sources(
    notebooks: str | os.PathLike[str],
    staging: str | os.PathLike[str],
    readme: str | os.PathLike[str] | None = None,
    profile: str | None = None,
    api: bool = True,
    history: str | os.PathLike[str] | None = None,
) -> Path:
    """Assemble a Sphinx source folder.

    The folder is emptied, then filled with the sources of ``reproduce/docs`` (``conf.py``,
    ``index.md``, ``api.md``, ``_static``, ``_templates``), the README (as ``_readme.md``,
    included by ``index.md``) and byte-for-byte copies of the executed notebooks under
    ``tutorials/`` with a generated ``tutorials/index.md``, and the benchmark history page
    ``performance/index.md`` with its figures (:func:`benchmarks._history.write_page`).

    Parameters
    ----------
    notebooks
        Folder with executed notebooks (see :func:`executed_notebooks`).
    staging
        Folder to (re)create.
    readme
        README to include (default: the repository's ``README.md``).
    profile
        Profile name shown on the tutorials page (default: the notebook folder's name).
    api
        Include the API reference; without it ``api.md`` is a one-line placeholder (a quick
        preview of the tutorials, no import of ``interscale`` by autodoc).
    history
        asv results folder of the performance page (default: the committed
        ``benchmarks/results``).

    Returns
    -------
    Path
        The staging folder.

    Raises
    ------
    DocsError
        ``notebooks`` holds no executed notebook.
    """
    notebooks, staging = Path(notebooks), Path(staging)
    readme = Path(readme or ROOT / "README.md")
    paths = executed_notebooks(notebooks)
    if not paths:
        raise DocsError(f"no executed notebooks in {notebooks}; run `{_RUN_HINT}` first")
    build = paths[0].parent
    if profile is None:
        profile = build.parent.name if build.name.startswith("run") else build.name
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for name in _SOURCE_ITEMS:
        src = SOURCES / name
        if src.is_dir():
            shutil.copytree(src, staging / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, staging / name)
    tutorials = staging / "tutorials"
    tutorials.mkdir()
    for path in paths:
        shutil.copy2(path, tutorials / path.name)
    if not api:
        (staging / "api.md").write_text(_NO_API, encoding="utf-8")
    (tutorials / "index.md").write_text(_tutorials_index(paths, profile, build), encoding="utf-8")
    from benchmarks._history import write_page

    write_page(HISTORY if history is None else history, staging / "performance", repo=str(ROOT))
    staged = {"index.md", "api.md", *(f"tutorials/{p.name}" for p in paths)}
    text = _rewrite_readme(readme.read_text(encoding="utf-8"), staged)
    (staging / "_readme.md").write_text(text, encoding="utf-8")
    return staging


def run_sphinx(
    source: str | os.PathLike[str], out: str | os.PathLike[str], strict: bool = False
) -> tuple[float, list[str]]:
    """Run ``sphinx-build -b html`` in a subprocess and move the site into place.

    The site is built into a temporary sibling of ``out`` and replaces ``out`` only on success,
    so a failed build leaves the previous site intact.

    Parameters
    ----------
    source
        Staged source folder (see :func:`stage_sources`).
    out
        Site folder.
    strict
        Turn Sphinx warnings into errors (``-W``).

    Returns
    -------
    tuple of (float, list of str)
        Wall seconds and the warning lines.

    Raises
    ------
    DocsError
        sphinx-build (or myst-nb) is not installed, or the build failed.
    """
    source, out = Path(source), Path(out)
    try:
        import myst_nb  # noqa: F401
        import sphinx  # noqa: F401
    except ImportError as exc:
        raise DocsError(
            f"{exc.name} is not installed; install the docs extra: "
            'pip install -c constraints.txt -e ".[docs]"  (or use `tox -e docs`)'
        ) from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-", dir=out.parent) as tmp:
        tmp = Path(tmp)
        warn_file = tmp / "warnings.txt"
        cmd = [
            sys.executable,
            "-m",
            "sphinx",
            "-b",
            "html",
            "-q",
            "-E",
            "-d",
            str(tmp / "doctrees"),
            "-w",
            str(warn_file),
            "--keep-going",
            *(["-W"] if strict else []),
            str(source),
            str(tmp / "html"),
        ]
        env = {**os.environ, "MPLBACKEND": "Agg"}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, text=True, capture_output=True)
        seconds = time.perf_counter() - t0
        warnings = [
            line
            for line in (warn_file.read_text() if warn_file.is_file() else "").splitlines()
            if line.strip()
        ]
        if proc.returncode != 0:
            raise DocsError(
                f"sphinx-build failed (exit {proc.returncode}):\n"
                + "\n".join([*warnings, proc.stderr.strip(), proc.stdout.strip()[-2000:]])
            )
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp / "html", out)
    return seconds, warnings


def build_docs(
    profile: str = "auto",
    out: str | os.PathLike[str] | None = None,
    *,
    check: bool = True,
    strict: bool = False,
    builds: str | os.PathLike[str] | None = None,
    work: str | os.PathLike[str] | None = None,
    readme: str | os.PathLike[str] | None = None,
    chromium: str | None = None,
    api: bool = True,
    history: str | os.PathLike[str] | None = None,
) -> DocsResult:
    """Build the documentation site and, optionally, check it in headless Chromium.

    Parameters
    ----------
    profile
        Which reproduce build to show (``"auto"``: the most recent; see :func:`find_build`).
    out
        Site folder (default ``<work>/html``).
    check
        Open the index and the gene-level evaluation and real-tissue tutorials (whichever the
        build has; else its first tutorial) in headless Chromium, require each tutorial's
        figures to have loaded and save screenshots to ``<work>/screenshots``.
    strict
        Fail on any Sphinx warning.
    builds
        Folder with the reproduce builds (default ``reproduce/_build``).
    work
        Folder for the staged sources and the screenshots (default ``reproduce/_build/docs``).
    readme
        README to show on the index (default: the repository's).
    chromium
        Browser binary (default: see :func:`reproduce.docs.find_chromium`).
    api
        Build the API reference (see :func:`stage_sources`).
    history
        asv results of the performance page (see :func:`stage_sources`); the check also opens
        that page and requires its figures when it has any.

    Returns
    -------
    DocsResult
        Paths, timings, warnings and the browser reports.

    Raises
    ------
    DocsError
        No executed notebooks, or sphinx-build failed.
    BrowserCheckError
        Chromium is missing or failed, a figure did not load, or a screenshot is blank.
    """
    notebooks = find_build(profile, builds)
    if check:
        # Fail before the build, not after it, when the browser is missing.
        chromium = find_chromium(chromium)
    name = notebooks.parent.name if notebooks.name.startswith("run") else notebooks.name
    work = Path(work or BUILDS / "docs")
    out = Path(out or work / "html")
    staging = stage_sources(
        notebooks, work / "src", readme=readme, profile=name, api=api, history=history
    )
    seconds, warnings = run_sphinx(staging, out, strict=strict)
    result = DocsResult(out, notebooks, name, seconds, warnings)
    if check:
        tutorials = sorted((out / "tutorials").glob("[0-9]*.html"))
        checked = [p for p in tutorials if p.stem in _CHECKED_TUTORIALS] or tutorials[:1]
        if any((staging / "performance").glob("*.png")):
            checked.append(out / "performance" / "index.html")
        result.pages = check_site(
            [out / "index.html", *checked],
            work / "screenshots",
            require_images=checked,
            binary=chromium,
        )
    return result


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m reproduce.docs",
        description="Build the HTML documentation (README, API reference, executed notebooks) "
        "into reproduce/_build/docs/html and check it in headless Chromium.",
    )
    p.add_argument(
        "--profile",
        default="auto",
        help="reproduce build to show: quick, full or auto (the most recent; default)",
    )
    p.add_argument("--out", help="site folder (default reproduce/_build/docs/html)")
    p.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="open the index and tutorials 2 and 4 in headless Chromium, require the figures to "
        "load, save screenshots (default: on)",
    )
    p.add_argument("--strict", action="store_true", help="fail on any Sphinx warning")
    p.add_argument(
        "--no-api",
        action="store_false",
        dest="api",
        help="skip the API reference (a quick preview of the tutorials)",
    )
    p.add_argument("--builds", help="folder with the reproduce builds (default reproduce/_build)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; 0 on success, 1 with a message on stderr otherwise."""
    args = _parser().parse_args(argv)
    try:
        res = build_docs(
            args.profile,
            args.out,
            check=args.check,
            strict=args.strict,
            builds=args.builds,
            api=args.api,
        )
    except (DocsError, BrowserCheckError) as exc:
        print(f"docs: error: {exc}", file=sys.stderr)
        return 1
    for line in res.warnings:
        print(f"docs: warning: {line}", file=sys.stderr)
    print(
        f"docs: built from {res.notebooks} (profile {res.profile}) in {res.seconds:.1f} s, "
        f"{len(res.warnings)} warning(s): {res.html / 'index.html'}"
    )
    for page in res.pages:
        print(
            f"docs: chromium: {page.url}: {page.images_loaded}/{page.images_total} images "
            f"loaded; screenshot {page.screenshot}"
        )
    return 0
