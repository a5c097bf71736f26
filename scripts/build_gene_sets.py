#!/usr/bin/env python3
"""Build the gene-set libraries shipped in ``interscale/datasets/gene_sets/``.

The Gene Ontology Biological Process library for human is derived from two Debian packages
that carry Bioconductor's annotation databases as plain SQLite files:

* ``r-bioc-go.db``       -> ``GO.sqlite`` (terms and the BP parent/offspring graph)
* ``r-bioc-org.hs.eg.db`` -> ``org.Hs.eg.sqlite`` (Entrez genes, symbols, GO annotations)

Steps: ``apt-get update`` (once), ``apt-get download`` both packages into a temporary folder,
unpack them with ``dpkg -x``, read the SQLite files with Python's ``sqlite3`` (R is not needed),
take the annotations already propagated to every ancestor term (``go_bp_all``), check that
table against an independent propagation over ``go_bp_parents`` on a sample of terms, keep the
sets of ``--min-size``..``--max-size`` distinct gene symbols and write a gzip'd GMT file plus a
README. Output is byte-for-byte reproducible from the same packages (sorted lines, gzip
``mtime=0``, no file name stored in the gzip header).

Run as root (``apt-get`` needs it)::

    python scripts/build_gene_sets.py                 # download, build, write
    python scripts/build_gene_sets.py --debs-dir DIR  # reuse already downloaded .deb files
"""

from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import io
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "interscale" / "datasets" / "gene_sets"
PACKAGES = ("r-bioc-go.db", "r-bioc-org.hs.eg.db")
LIBRARY_STEM = "GO_Biological_Process"
# "ND" (no biological data available) only ever points at the BP root; it says nothing about
# a gene's function, so it must not make a gene a member of any set.
EXCLUDED_EVIDENCE = ("ND",)
N_VERIFY_TERMS = 60


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, cwd=cwd, check=True)


def _download(workdir: Path, update: bool) -> list[Path]:
    if shutil.which("apt-get") is None:
        raise SystemExit("apt-get not found: run on Debian/Ubuntu or pass --debs-dir")
    if update:
        _run(["apt-get", "update"])
    _run(["apt-get", "download", *PACKAGES], cwd=workdir)
    return _find_debs(workdir)


def _find_debs(folder: Path) -> list[Path]:
    debs = []
    for pkg in PACKAGES:
        hits = sorted(folder.glob(f"{pkg}_*.deb"))
        if len(hits) != 1:
            raise SystemExit(f"expected exactly one {pkg}_*.deb in {folder}, found {len(hits)}")
        debs.append(hits[0])
    return debs


def _deb_field(deb: Path, field: str) -> str:
    out = subprocess.run(
        ["dpkg-deb", "-f", str(deb), field], check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _find_one(root: Path, name: str) -> Path:
    hits = sorted(root.rglob(name))
    if len(hits) != 1:
        raise SystemExit(f"expected exactly one {name} under {root}, found {len(hits)}")
    return hits[0]


def _metadata(con: sqlite3.Connection) -> dict[str, str]:
    return dict(con.execute("SELECT name, value FROM metadata"))


def _offspring_by_parents(go: sqlite3.Connection) -> dict[str, set[str]]:
    """Map each BP term to its children, from the direct parent table only."""
    children: dict[str, set[str]] = collections.defaultdict(set)
    rows = go.execute(
        "SELECT c.go_id, p.go_id FROM go_bp_parents AS e "
        "JOIN go_term AS c ON c._id = e._id JOIN go_term AS p ON p._id = e._parent_id"
    )
    for child, parent in rows:
        children[parent].add(child)
    return children


def _verify_propagation(
    go: sqlite3.Connection, org: sqlite3.Connection, propagated: dict[str, set[int]]
) -> int:
    """Recompute annotations of a deterministic sample of terms from direct annotations.

    A gene belongs to a term when it is annotated directly to the term or to any descendant
    reachable through ``go_bp_parents`` (all relationship types, as GO.db's ancestor tables).
    Raises SystemExit on the first disagreement with ``go_bp_all``.
    """
    children = _offspring_by_parents(go)
    direct: dict[str, set[int]] = collections.defaultdict(set)
    placeholders = ",".join("?" * len(EXCLUDED_EVIDENCE))
    for gene, term in org.execute(
        f"SELECT _id, go_id FROM go_bp WHERE evidence NOT IN ({placeholders})", EXCLUDED_EVIDENCE
    ):
        direct[term].add(gene)
    terms = sorted(propagated)
    step = max(1, len(terms) // N_VERIFY_TERMS)
    # A stride through the sorted ids plus a few well-known terms of very different depth.
    sample = terms[::step] + ["GO:0007224", "GO:0007399", "GO:0006915"]
    for term in sample:
        seen, stack, genes = {term}, [term], set()
        while stack:
            node = stack.pop()
            genes |= direct.get(node, set())
            for child in children.get(node, ()):
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
        if genes != propagated.get(term, set()):
            raise SystemExit(
                f"go_bp_all disagrees with propagation over go_bp_parents for {term}: "
                f"{len(propagated.get(term, set()))} vs {len(genes)} genes"
            )
    return len(sample)


def _build_sets(
    go_path: Path, org_path: Path, min_size: int, max_size: int
) -> tuple[list[tuple[str, str, list[str]]], dict[str, object]]:
    go = sqlite3.connect(f"file:{go_path}?mode=ro", uri=True)
    org = sqlite3.connect(f"file:{org_path}?mode=ro", uri=True)
    try:
        go_meta, org_meta = _metadata(go), _metadata(org)
        if go_meta.get("GOSOURCEDATE") != org_meta.get("GOSOURCEDATE"):
            raise SystemExit(
                f"GO release differs: GO.db {go_meta.get('GOSOURCEDATE')} vs "
                f"org.Hs.eg.db {org_meta.get('GOSOURCEDATE')}"
            )
        names = dict(go.execute("SELECT go_id, term FROM go_term WHERE ontology = 'BP'"))
        symbols = dict(org.execute("SELECT _id, symbol FROM gene_info"))
        placeholders = ",".join("?" * len(EXCLUDED_EVIDENCE))
        propagated: dict[str, set[int]] = collections.defaultdict(set)
        for gene, term in org.execute(
            f"SELECT _id, go_id FROM go_bp_all WHERE evidence NOT IN ({placeholders})",
            EXCLUDED_EVIDENCE,
        ):
            propagated[term].add(gene)
        n_verified = _verify_propagation(go, org, propagated)
    finally:
        go.close()
        org.close()

    unknown = sorted(t for t in propagated if t not in names)
    sets = []
    for term in sorted(propagated):
        if term not in names:
            continue
        # Several Entrez ids can share one symbol; a set is a set of symbols.
        genes = sorted({symbols[g] for g in propagated[term] if g in symbols})
        if min_size <= len(genes) <= max_size:
            sets.append((f"{names[term]} ({term})", term, genes))
    info = {
        "go_release": go_meta["GOSOURCEDATE"],
        "go_url": go_meta.get("GOSOURCEURL", ""),
        "eg_date": org_meta.get("GOEGSOURCEDATE", ""),
        "n_terms_annotated": len(propagated),
        "n_terms_unknown": len(unknown),
        "n_verified": n_verified,
        "n_sets": len(sets),
        "n_genes": len({g for _, _, genes in sets for g in genes}),
        "sizes": sorted(len(genes) for _, _, genes in sets),
    }
    return sets, info


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _gmt_bytes(sets: Iterable[tuple[str, str, list[str]]]) -> bytes:
    text = "".join("\t".join([name, term, *genes]) + "\n" for name, term, genes in sets)
    buf = io.BytesIO()
    # filename="" and mtime=0 keep the gzip header free of anything that changes per build.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(text.encode("utf-8"))
    return buf.getvalue()


def _readme(info: dict[str, object], debs: list[dict[str, str]], gmt_name: str, args) -> str:
    sizes = info["sizes"]
    median = sizes[len(sizes) // 2] if sizes else 0
    deb_rows = "\n".join(f"| `{d['package']}` | {d['version']} | `{d['sha256']}` |" for d in debs)
    return f"""# Gene-set libraries shipped with InterScale

Generated by `scripts/build_gene_sets.py`; do not edit by hand (rebuild instead).

## `{gmt_name}`

Gene Ontology Biological Process gene sets for human (library name `{LIBRARY_STEM}`).

- GO release: **{info["go_release"]}** ({info["go_url"]})
- Gene annotations: Entrez Gene gene2go, {info["eg_date"]}, via Bioconductor `org.Hs.eg.db`
- Sets: **{info["n_sets"]}** terms with {args.min_size}-{args.max_size} genes
  (median {median}); **{info["n_genes"]}** distinct genes in total
- Line format (GMT): `term name (GO:id)` TAB `GO:id` TAB gene symbols (sorted). Symbols are
  the official NCBI/HGNC ones in their own case (e.g. `C1orf43`); `interscale.tl.enrich`
  matches symbols case-insensitively.
- Propagation: a gene annotated to a term also belongs to every ancestor of that term along
  all relationships GO.db stores for BP (`is_a`, `part_of`, `regulates`, `positively
  regulates`, `negatively regulates`), which is the `go_bp_all` table of `org.Hs.eg.db` (the
  convention of Bioconductor's `GOALL` and clusterProfiler). The build recomputes this for
  {info["n_verified"]} terms from the direct annotations (`go_bp`) and the parent graph
  (`go_bp_parents`) and stops on any disagreement. Consequently a process term also holds
  genes annotated to the regulation of that process.
- Evidence: all evidence codes, including electronic (IEA); `ND` ("no data") annotations are
  dropped. The source tables carry no qualifier column, so annotations are taken as given.
  Size limits apply to distinct symbols after propagation; Entrez ids sharing a symbol are
  merged.

### Source packages (Debian archive)

| package | version | SHA-256 of the .deb |
|---|---|---|
{deb_rows}

### Licences

- Gene Ontology data: Creative Commons Attribution 4.0 (CC BY 4.0), © Gene Ontology
  Consortium (http://geneontology.org/docs/go-citation-policy/).
- Bioconductor annotation packages `GO.db` and `org.Hs.eg.db`: Artistic License 2.0
  (Marc Carlson, Bioconductor); the GMT file is a derived, reformatted extract (GMT text
  instead of SQLite, filtered by set size), not the packages themselves.
- NCBI places no restrictions on Entrez Gene data (symbols, ids); the gene-to-GO
  annotations it redistributes come from GO annotation files, which are CC BY 4.0.

Cite the Gene Ontology (Ashburner et al. 2000, Nat Genet; The Gene Ontology Consortium 2023,
Genetics) when publishing results obtained with this library.

### Rebuild

As root on Debian/Ubuntu (needs `apt-get` and `dpkg`, not R):

```bash
python scripts/build_gene_sets.py                  # apt-get update + download + build
python scripts/build_gene_sets.py --debs-dir DIR   # reuse downloaded .deb files
```

The same .deb files give byte-identical output (sorted lines; gzip with `mtime=0`). A newer
package release changes the GO date in the file name; delete the older GMT so that only one
version per library is shipped.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--debs-dir", type=Path, help="folder already holding both .deb files")
    parser.add_argument("--skip-update", action="store_true", help="do not run apt-get update")
    parser.add_argument("--min-size", type=int, default=5)
    parser.add_argument("--max-size", type=int, default=500)
    args = parser.parse_args(argv)
    if not 1 <= args.min_size <= args.max_size:
        parser.error("need 1 <= --min-size <= --max-size")

    with tempfile.TemporaryDirectory(prefix="interscale_gene_sets_") as tmp:
        workdir = Path(tmp)
        if args.debs_dir is not None:
            debs = _find_debs(args.debs_dir)
        else:
            debs = _download(workdir, update=not args.skip_update)
        unpacked = workdir / "root"
        for deb in debs:
            _run(["dpkg", "-x", str(deb), str(unpacked)])
        go_path = _find_one(unpacked, "GO.sqlite")
        org_path = _find_one(unpacked, "org.Hs.eg.sqlite")
        sets, info = _build_sets(go_path, org_path, args.min_size, args.max_size)
        deb_info = [
            {
                "package": _deb_field(d, "Package"),
                "version": _deb_field(d, "Version"),
                "sha256": _sha256(d),
            }
            for d in debs
        ]

    gmt_name = f"{LIBRARY_STEM}_{info['go_release']}.gmt.gz"
    args.output_dir.mkdir(parents=True, exist_ok=True)
    gmt_path = args.output_dir / gmt_name
    _atomic_write(gmt_path, _gmt_bytes(sets))
    readme = _readme(info, deb_info, gmt_name, args)
    _atomic_write(args.output_dir / "README.md", readme.encode("utf-8"))
    print(
        f"wrote {gmt_path} ({gmt_path.stat().st_size / 1e6:.2f} MB): {info['n_sets']} sets, "
        f"{info['n_genes']} genes; {info['n_terms_unknown']} annotated ids not BP terms; "
        f"propagation verified on {info['n_verified']} terms",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
