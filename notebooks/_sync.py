"""Write each tutorial notebook (``<digit>*.ipynb``) from its source, ``<same name>.py``.

The sources are Python scripts in jupytext's percent format (``# %%`` starts a code cell,
``# %% [markdown]`` a markdown cell), so they are read, diffed and linted like the rest of the
code. The ``.ipynb`` files are committed without outputs, so that papermill and users who
download them can run them; they must be exactly what this script writes from the sources, which
``tests/test_notebooks.py`` checks.

Usage: ``python notebooks/_sync.py`` rewrites every notebook whose source changed;
``python notebooks/_sync.py --check`` only lists them and exits 1 if any differs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
_METADATA = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}


def sources(folder: Path = HERE) -> list[Path]:
    """The notebook sources of ``folder``: ``<digit>*.py``, sorted by name."""
    return sorted(p for p in folder.glob("*.py") if p.name[:1].isdigit())


def notebook_text(source: Path) -> str:
    """The ``.ipynb`` JSON text for one percent-format source: no outputs, stable cell ids."""
    import jupytext
    import nbformat

    nb = jupytext.reads(source.read_text(encoding="utf-8"), fmt="py:percent")
    nb.metadata = nbformat.from_dict(_METADATA)
    for i, cell in enumerate(nb.cells):
        # stable ids keep regenerated notebooks diff-free
        cell.id = f"cell-{i:02d}"
        cell.metadata = nbformat.from_dict(
            {"tags": cell.metadata["tags"]} if "tags" in cell.metadata else {}
        )
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def stale(folder: Path = HERE) -> list[Path]:
    """Notebooks of ``folder`` that are missing or differ from what their source gives."""
    out = []
    for source in sources(folder):
        target = source.with_suffix(".ipynb")
        if not target.is_file() or target.read_text(encoding="utf-8") != notebook_text(source):
            out.append(target)
    return out


def write(folder: Path = HERE) -> list[Path]:
    """Rewrite (atomically) every stale notebook of ``folder``; the ones written."""
    written = []
    for target in stale(folder):
        text = notebook_text(target.with_suffix(".py"))
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, target)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command line: write the stale notebooks, or with ``--check`` list them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="list stale notebooks, write none")
    args = parser.parse_args(argv)
    if args.check:
        bad = stale()
        for path in bad:
            print(f"stale: {path.name} (run python notebooks/_sync.py)")
        return 1 if bad else 0
    for path in write():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
