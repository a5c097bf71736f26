"""Gene-set libraries shipped inside the package (GMT files in ``datasets/gene_sets/``).

The files are built by ``scripts/build_gene_sets.py``; see ``gene_sets/README.md`` for their
source, version and licence. Nothing here touches the network.
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import re
from importlib import resources
from importlib.resources.abc import Traversable

__all__ = ["gene_set_libraries", "gene_set_release", "load_gene_sets", "read_gmt"]

# Shipped files are named "<library>_<source release date>.gmt.gz".
_FILE_PATTERN = re.compile(r"^(?P<library>.+)_(?P<version>\d{4}-\d{2}-\d{2})\.gmt\.gz$")


def _library_dir() -> Traversable:
    return resources.files("interscale.datasets").joinpath("gene_sets")


def _shipped_files() -> dict[str, tuple[str, Traversable]]:
    """Map each library name to (versioned name, file), the newest release winning."""
    found: dict[str, tuple[str, str, Traversable]] = {}
    folder = _library_dir()
    if not folder.is_dir():
        return {}
    for entry in folder.iterdir():
        match = _FILE_PATTERN.match(entry.name)
        if match is None:
            continue
        library, version = match["library"], match["version"]
        # ISO dates sort chronologically as strings.
        if library not in found or version > found[library][0]:
            found[library] = (version, f"{library}_{version}", entry)
    return {lib: (versioned, entry) for lib, (_, versioned, entry) in found.items()}


def gene_set_libraries() -> list[str]:
    """List the gene-set libraries shipped with InterScale.

    Returns
    -------
    list of str
        Library names (e.g. ``"GO_Biological_Process"``), sorted. Each is accepted by
        :func:`load_gene_sets` and by ``interscale.tl.enrich(gene_sets=...)``. All shipped
        libraries use human gene symbols.
    """
    return sorted(_shipped_files())


def _resolve_library(name: str) -> tuple[str, Traversable]:
    """Return (versioned name, file) for a library name with or without its release date."""
    if not isinstance(name, str):
        raise TypeError(f"gene-set library name must be a str, got {type(name).__name__}")
    shipped = _shipped_files()
    if name in shipped:
        return shipped[name]
    for versioned, entry in shipped.values():
        if name in (versioned, entry.name):
            return versioned, entry
    available = ", ".join(sorted(shipped)) or "none"
    raise ValueError(f"unknown gene-set library {name!r}; shipped libraries: {available}")


def gene_set_release(name: str) -> str:
    """The versioned name of a shipped gene-set library: its name and source release date.

    Parameters
    ----------
    name
        Library name from :func:`gene_set_libraries` (e.g. ``"GO_Biological_Process"``), or
        already the versioned name or the file name.

    Returns
    -------
    str
        ``"<library>_<YYYY-MM-DD>"`` of the newest shipped release, e.g.
        ``"GO_Biological_Process_2022-07-01"``.

    Raises
    ------
    ValueError
        If no shipped library has this name; the message lists the shipped libraries.
    TypeError
        If ``name`` is not a string.
    """
    versioned, _ = _resolve_library(name)
    return versioned


def _parse_gmt(text: str, source: str) -> dict[str, list[str]]:
    """Parse GMT text: name TAB description TAB gene TAB gene ..., one set per line."""
    sets: dict[str, list[str]] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) < 2:
            raise ValueError(f"{source}, line {lineno}: a GMT line needs name TAB description")
        name = fields[0].strip()
        if not name:
            raise ValueError(f"{source}, line {lineno}: empty gene-set name")
        if name in sets:
            raise ValueError(f"{source}, line {lineno}: duplicate gene-set name {name!r}")
        # Keep first occurrence order; drop empty trailing fields some writers leave behind.
        sets[name] = list(dict.fromkeys(g.strip() for g in fields[2:] if g.strip()))
    return sets


def _read_gmt_bytes(data: bytes, source: str) -> dict[str, list[str]]:
    if data[:2] == b"\x1f\x8b":
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as fh:
            data = fh.read()
    return _parse_gmt(data.decode("utf-8"), source)


def read_gmt(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Read a GMT file (plain or gzip'd) into ``{set name: [genes]}``.

    Parameters
    ----------
    path
        Path to a ``.gmt`` or ``.gmt.gz`` file; gzip is recognised by content, not by name.

    Returns
    -------
    dict of str to list of str
        Gene sets in file order; genes keep their order with duplicates removed.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If a line is malformed or a set name occurs twice.
    """
    with open(path, "rb") as fh:
        return _read_gmt_bytes(fh.read(), os.fspath(path))


@functools.lru_cache(maxsize=4)
def _load_cached(versioned: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    _, entry = _resolve_library(versioned)
    sets = _read_gmt_bytes(entry.read_bytes(), entry.name)
    return tuple((name, tuple(genes)) for name, genes in sets.items())


def load_gene_sets(name: str = "GO_Biological_Process") -> dict[str, list[str]]:
    """Load a shipped gene-set library.

    Parameters
    ----------
    name
        Library name from :func:`gene_set_libraries` (e.g. ``"GO_Biological_Process"``), or
        the versioned name (``"GO_Biological_Process_2022-07-01"``).

    Returns
    -------
    dict of str to list of str
        ``{set name: [gene symbols]}``. GO set names read ``"term name (GO:id)"``. A new dict
        is returned on each call, so changing it does not affect later calls.

    Raises
    ------
    ValueError
        If no shipped library has this name; the message lists the shipped libraries.
    TypeError
        If ``name`` is not a string.
    """
    versioned, _ = _resolve_library(name)
    return {term: list(genes) for term, genes in _load_cached(versioned)}
