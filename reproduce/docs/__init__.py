"""The documentation site: README, API reference and the executed tutorial notebooks.

``python -m reproduce.docs [--profile quick|full|auto] [--out DIR] [--check/--no-check]`` stages
the Sphinx sources of this folder, the README and the notebooks executed by the last
``python -m reproduce`` run under ``reproduce/_build/docs/src``, builds the HTML site with
Sphinx + myst-nb (notebooks are never re-executed) into ``reproduce/_build/docs/html`` and opens
the index and one tutorial in headless Chromium to check that the figures loaded
(screenshots in ``reproduce/_build/docs/screenshots``).
"""

from reproduce.docs._browser import (
    BrowserCheckError,
    PageReport,
    check_page,
    check_png,
    check_site,
    find_chromium,
    parse_image_attributes,
)
from reproduce.docs._builder import (
    DocsError,
    DocsResult,
    build_docs,
    executed_notebooks,
    find_build,
    main,
    run_sphinx,
    stage_sources,
)

__all__ = [
    "BrowserCheckError",
    "DocsError",
    "DocsResult",
    "PageReport",
    "build_docs",
    "check_page",
    "check_png",
    "check_site",
    "executed_notebooks",
    "find_build",
    "find_chromium",
    "main",
    "parse_image_attributes",
    "run_sphinx",
    "stage_sources",
]
