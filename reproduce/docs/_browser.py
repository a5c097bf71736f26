"""Open built pages in headless Chromium: did the figures load? Save screenshots."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# The flags every call uses: no sandbox (containers, root), no GPU, nothing fetched in the
# background; the pages are file:// URLs, so no network is needed at all.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
)
WINDOW_SIZE = (1280, 2000)
_CANDIDATES = ("chromium", "chromium-browser")
_INSTALL_HINT = (
    "install Debian's chromium (`sudo apt-get install -y chromium`) or set CHROMIUM to the "
    "browser binary; `--no-check` skips the browser check"
)
_BODY_TAG = re.compile(r"<body\b[^>]*>", re.IGNORECASE | re.DOTALL)
_ATTR = re.compile(r"""([\w:-]+)\s*=\s*(?:"([^"]*)"|'([^']*)')""")


class BrowserCheckError(RuntimeError):
    """Chromium is missing, failed, or a page's figures did not load."""


@dataclass
class PageReport:
    """What the browser saw on one page.

    Attributes
    ----------
    url
        The ``file://`` URL opened.
    images_total, images_loaded
        Number of ``<img>`` elements and of those that decoded with a non-zero width.
    failed
        ``src`` of the images that did not load.
    screenshot
        The PNG saved for the page.
    """

    url: str
    images_total: int
    images_loaded: int
    failed: list[str]
    screenshot: Path


def find_chromium(binary: str | None = None) -> str:
    """Locate the Chromium binary.

    Parameters
    ----------
    binary
        Explicit path or name; otherwise the ``CHROMIUM`` environment variable, then
        ``chromium`` and ``chromium-browser`` on ``PATH``.

    Returns
    -------
    str
        Absolute path of the binary.

    Raises
    ------
    BrowserCheckError
        None is found; the message says how to install it.
    """
    wanted = binary or os.environ.get("CHROMIUM")
    if wanted:
        path = shutil.which(wanted)
        if path is None:
            raise BrowserCheckError(f"Chromium binary {wanted!r} not found; {_INSTALL_HINT}")
        return path
    for name in _CANDIDATES:
        path = shutil.which(name)
        if path is not None:
            return path
    raise BrowserCheckError(f"no Chromium binary (chromium, chromium-browser); {_INSTALL_HINT}")


def parse_image_attributes(dom: str) -> dict[str, str]:
    """Read the ``data-images-*`` attributes that ``images-loaded.js`` puts on ``<body>``.

    Parameters
    ----------
    dom
        Serialised DOM (Chromium's ``--dump-dom`` output).

    Returns
    -------
    dict
        Attribute name without the ``data-images-`` prefix (``total``, ``loaded``, ``failed``,
        ``checked``) -> value.

    Raises
    ------
    BrowserCheckError
        The DOM has no ``<body>`` tag, or the script did not run (no ``data-images-checked``).
    """
    match = _BODY_TAG.search(dom)
    if match is None:
        raise BrowserCheckError("the dumped DOM has no <body> tag")
    attrs = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _ATTR.finditer(match.group(0))
    }
    out = {k[len("data-images-") :]: v for k, v in attrs.items() if k.startswith("data-images-")}
    if out.get("checked") != "1" or "total" not in out or "loaded" not in out:
        raise BrowserCheckError(
            "images-loaded.js did not report (no data-images-checked on <body>): the script is "
            "missing from the page or the page did not finish loading in time"
        )
    return out


def check_png(path: str | os.PathLike[str], min_colours: int = 8) -> tuple[int, int]:
    """Check that a screenshot is a real rendering, not a blank or flat image.

    Parameters
    ----------
    path
        PNG file.
    min_colours
        Least number of distinct pixel colours required.

    Returns
    -------
    tuple of int
        Height and width in pixels.

    Raises
    ------
    BrowserCheckError
        The file is missing, not a PNG, or has fewer than ``min_colours`` colours.
    """
    import matplotlib.image as mpimg
    import numpy as np

    path = Path(path)
    if not path.is_file() or path.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
        raise BrowserCheckError(f"screenshot {path} is missing or not a PNG")
    pixels = np.asarray(mpimg.imread(path))
    channels = pixels.reshape(pixels.shape[0], pixels.shape[1], -1)
    if channels.dtype.kind == "f":
        channels = np.round(channels * 255)
    # Pack each pixel's channels into one integer: a 1-D unique is much faster than axis=0.
    codes = np.zeros(channels.shape[:2], dtype=np.uint64)
    for c in range(channels.shape[2]):
        codes = (codes << np.uint64(8)) | channels[..., c].astype(np.uint64)
    n_colours = len(np.unique(codes))
    if n_colours < min_colours:
        raise BrowserCheckError(
            f"screenshot {path} has {n_colours} distinct colour(s): the page rendered blank"
        )
    return int(pixels.shape[0]), int(pixels.shape[1])


def _chromium(binary: str, profile: Path, extra: list[str], url: str, timeout: float) -> str:
    cmd = [
        binary,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--hide-scrollbars",
        f"--window-size={WINDOW_SIZE[0]},{WINDOW_SIZE[1]}",
        "--virtual-time-budget=15000",
        *extra,
        url,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BrowserCheckError(f"chromium timed out after {timeout:.0f} s on {url}") from exc
    if proc.returncode != 0:
        raise BrowserCheckError(
            f"chromium exited {proc.returncode} on {url}:\n{proc.stderr.strip()[-2000:]}"
        )
    return proc.stdout


def check_page(
    page: str | os.PathLike[str],
    screenshot: str | os.PathLike[str],
    require_images: bool = False,
    binary: str | None = None,
    timeout: float = 120.0,
) -> PageReport:
    """Open one local HTML page in headless Chromium, count its loaded images, screenshot it.

    Parameters
    ----------
    page
        HTML file of the built site (it must load ``images-loaded.js``).
    screenshot
        Where to save the PNG (``--window-size`` 1280x2000).
    require_images
        Require at least one image, and every image to have loaded.
    binary
        Chromium binary (see :func:`find_chromium`).
    timeout
        Seconds allowed per Chromium call.

    Returns
    -------
    PageReport
        Image counts and the screenshot path.

    Raises
    ------
    BrowserCheckError
        Chromium is missing or failed, the page's script did not report, an image did not load
        (any page), the page has no image although ``require_images``, or the screenshot is
        blank.
    """
    page, screenshot = Path(page).resolve(), Path(screenshot).resolve()
    if not page.is_file():
        raise BrowserCheckError(f"page not found: {page}")
    exe = find_chromium(binary)
    url = page.as_uri()
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    # Chromium writes the PNG itself: write next to the target, then move it into place.
    partial = screenshot.with_name(f".{screenshot.name}.partial.png")
    partial.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="interscale-chromium-") as tmp:
        # One call both dumps the DOM and screenshots, after the virtual-time budget let the
        # page and its images load.
        dom = _chromium(exe, Path(tmp), ["--dump-dom", f"--screenshot={partial}"], url, timeout)
    if not partial.is_file():
        raise BrowserCheckError(f"chromium wrote no screenshot for {url}")
    os.replace(partial, screenshot)
    attrs = parse_image_attributes(dom)
    total, loaded = int(attrs["total"]), int(attrs["loaded"])
    failed = attrs.get("failed", "").split()
    report = PageReport(url, total, loaded, failed, screenshot)
    if loaded != total:
        raise BrowserCheckError(
            f"{url}: only {loaded} of {total} images loaded; failed: {' '.join(failed)}"
        )
    if require_images and total < 1:
        raise BrowserCheckError(f"{url}: no <img> on the page, expected the notebook figures")
    check_png(screenshot)
    return report


def check_site(
    pages: Sequence[str | os.PathLike[str]],
    screenshots: str | os.PathLike[str],
    require_images: Sequence[str | os.PathLike[str]] = (),
    binary: str | None = None,
) -> list[PageReport]:
    """Check several pages with :func:`check_page`; screenshots are named after the pages.

    Parameters
    ----------
    pages
        HTML files to open.
    screenshots
        Folder for the PNGs (``<page stem>.png``; ``<folder>_<stem>.png`` for a repeated stem).
    require_images
        The pages (among ``pages``) that must show at least one image.
    binary
        Chromium binary (see :func:`find_chromium`).

    Returns
    -------
    list of PageReport
        One per page, in order.

    Raises
    ------
    BrowserCheckError
        See :func:`check_page`.
    """
    required = {Path(p).resolve() for p in require_images}
    binary = find_chromium(binary)
    names: list[str] = []
    for p in pages:  # a second "index" page is named after its folder: performance_index.png
        stem = Path(p).stem
        names.append(stem if stem not in names else f"{Path(p).parent.name}_{stem}")
    return [
        check_page(
            p,
            Path(screenshots) / f"{name}.png",
            require_images=Path(p).resolve() in required,
            binary=binary,
        )
        for p, name in zip(pages, names, strict=True)
    ]
