"""Offline gene-set over-representation analysis (hypergeometric test through gseapy)."""

from __future__ import annotations

import functools
import itertools
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from interscale.datasets import gene_set_libraries, gene_set_release, load_gene_sets, read_gmt

__all__ = ["empty_enrichment", "enrich"]

logger = logging.getLogger(__name__)

RESULT_COLUMNS = [
    "Gene_set",
    "Term",
    "Overlap",
    "P-value",
    "Adjusted P-value",
    "Odds Ratio",
    "Combined Score",
    "Genes",
]
_SUPPORTED_ORGANISMS = ("human",)
_N_NAMED = 10  # how many offending genes an error message spells out


def _as_gene_list(values: Any, what: str) -> list[str]:
    """Validate an iterable of gene identifiers and return it stripped, as a list."""
    if isinstance(values, str | bytes):
        raise TypeError(f"{what} must be a list of gene names, not a single string {values!r}")
    if isinstance(values, pd.DataFrame):
        raise TypeError(f"{what} must be a list of gene names, not a DataFrame")
    try:
        items = list(values)
    except TypeError:
        raise TypeError(
            f"{what} must be an iterable of gene names, got {type(values).__name__}"
        ) from None
    bad = [v for v in items if not isinstance(v, str)]
    if bad:
        raise TypeError(f"{what} must hold strings; got {bad[:_N_NAMED]!r}")
    return [v.strip() for v in items if v.strip()]


class _Encoded(NamedTuple):
    """A gene-set library as integer codes, so that matching never loops over genes."""

    names: list[str]  # set names
    sizes: np.ndarray  # genes per set, as listed
    codes: np.ndarray  # flattened membership: index into ``genes_upper`` per listed gene
    genes_upper: pd.Index  # distinct genes, upper-cased (may repeat after upper-casing)


def _encode(items: Iterable[tuple[str, Sequence[str]]]) -> _Encoded:
    items = list(items)
    names = [name for name, _ in items]
    sizes = np.fromiter((len(genes) for _, genes in items), dtype=np.int64, count=len(items))
    flat = np.fromiter(
        itertools.chain.from_iterable(genes for _, genes in items),
        dtype=object,
        count=int(sizes.sum()),
    )
    codes, uniques = pd.factorize(flat)
    # Upper-case the ~10^4 distinct symbols rather than the ~10^6 memberships.
    return _Encoded(names, sizes, codes, pd.Index(uniques, dtype=object).str.upper())


@functools.lru_cache(maxsize=4)
def _encoded_shipped(versioned: str) -> _Encoded:
    return _encode(load_gene_sets(versioned).items())


def _load_library(
    gene_sets: str | os.PathLike[str] | Mapping[str, Iterable[str]], organism: str
) -> tuple[str, _Encoded]:
    """Return (label for the Gene_set column, encoded library)."""
    if isinstance(gene_sets, Mapping):
        sets = {str(k): _as_gene_list(v, f"gene_sets[{k!r}]") for k, v in gene_sets.items()}
        return "custom", _encode(sets.items())
    if isinstance(gene_sets, str) and gene_sets in _shipped_names():
        if organism.lower() not in _SUPPORTED_ORGANISMS:
            raise ValueError(
                f"organism {organism!r} has no shipped gene-set library; supported: "
                f"{', '.join(_SUPPORTED_ORGANISMS)} (pass your own gene_sets for other species)"
            )
        versioned = gene_set_release(gene_sets)
        return versioned, _encoded_shipped(versioned)
    if isinstance(gene_sets, str | os.PathLike):
        path = os.fspath(gene_sets)
        if os.path.isfile(path):
            name = os.path.basename(path)
            for suffix in (".gz", ".gmt"):
                name = name.removesuffix(suffix)
            return name, _encode(read_gmt(path).items())
        if path.lower().endswith((".gmt", ".gmt.gz")):
            raise FileNotFoundError(f"gene_sets file {path!r} does not exist")
        available = ", ".join(gene_set_libraries()) or "none"
        raise ValueError(
            f"unknown gene-set library {path!r}; shipped libraries: {available} "
            "(or pass a .gmt/.gmt.gz path or a dict of gene sets)"
        )
    raise TypeError(
        "gene_sets must be a library name, a .gmt/.gmt.gz path or a dict {name: genes}, "
        f"got {type(gene_sets).__name__}"
    )


def _shipped_names() -> set[str]:
    names = set(gene_set_libraries())
    for name in list(names):
        names.add(gene_set_release(name))
    return names


def _background_genes(background: Any, library: _Encoded) -> tuple[pd.Index, str]:
    """Return (distinct upper-cased background genes, where they came from)."""
    if background is None:
        genes, source = library.genes_upper, "gene_sets"
    elif getattr(background, "var_names", None) is not None:
        names = _as_gene_list(pd.Index(background.var_names).astype(str), "background.var_names")
        genes, source = pd.Index(names, dtype=object).str.upper(), "var_names"
    else:
        names = _as_gene_list(background, "background")
        genes, source = pd.Index(names, dtype=object).str.upper(), "given"
    return pd.Index(genes.unique(), dtype=object), source


def empty_enrichment() -> pd.DataFrame:
    """The table :func:`enrich` returns when no gene set is hit: its columns, no rows.

    For reports that write an enrichment table even when there was no gene to test.

    Returns
    -------
    pandas.DataFrame
        No rows; the columns of :func:`enrich` (``Gene_set``, ``Term``, ``Overlap``,
        ``P-value``, ``Adjusted P-value``, ``Odds Ratio``, ``Combined Score``, ``Genes``),
        the p-values and scores as float64, the others as object.
    """
    numeric = {"P-value", "Adjusted P-value", "Odds Ratio", "Combined Score"}
    return pd.DataFrame(
        {c: pd.Series(dtype=float if c in numeric else object) for c in RESULT_COLUMNS}
    )


def enrich(
    gene_list: Iterable[str],
    gene_sets: str | os.PathLike[str] | Mapping[str, Iterable[str]] = "GO_Biological_Process",
    background: Iterable[str] | Any | None = None,
    organism: str = "human",
    *,
    cutoff: float = 1.0,
    min_size: int = 3,
    max_size: int = 500,
) -> pd.DataFrame:
    """Test gene sets for over-representation in a gene list, fully offline.

    Runs gseapy's local Enrichr-style hypergeometric test (``gseapy.enrichr`` with a gene-set
    dict and an explicit background, which never contacts a web service). Gene symbols are
    matched case-insensitively; each gene set is first restricted to the background, and only
    sets with ``min_size``..``max_size`` genes left in the background are tested.

    Parameters
    ----------
    gene_list
        Genes of interest (e.g. genes characterising a cluster or a scale), as symbols.
        Duplicates (also those differing only in case) count once. Genes absent from the
        background are dropped; they are listed in ``result.attrs["genes_not_in_background"]``.
    gene_sets
        A shipped library name (see :func:`interscale.datasets.gene_set_libraries`, e.g.
        ``"GO_Biological_Process"``), a path to a ``.gmt`` / ``.gmt.gz`` file, or a dict
        ``{set name: [genes]}``.
    background
        The universe the genes were drawn from. Pass the measured genes: an AnnData (its
        ``var_names`` are used) or a list of gene names. For a targeted panel this matters:
        testing panel genes against the genome inflates every panel-related term. With
        ``None`` the union of all genes in ``gene_sets`` is used (gseapy's default; for the
        shipped GO library that is ~16,000 annotated human genes), which is only right for
        genome-wide gene lists. ``result.attrs["background_source"]`` records the choice.
    organism
        Species of the shipped libraries; only ``"human"`` is shipped. It is ignored for
        custom ``gene_sets``. Mouse symbols often match their human orthologues
        case-insensitively, but that is no orthologue mapping, so other species raise.
    cutoff
        Keep rows with ``Adjusted P-value <= cutoff``; the default 1.0 keeps every tested set
        that shares at least one gene with the list.
    min_size, max_size
        Size limits on each gene set after restricting it to the background.

    Returns
    -------
    pandas.DataFrame
        gseapy's results table with columns ``Gene_set``, ``Term``, ``Overlap`` ("hits/set
        size in background"), ``P-value`` (hypergeometric upper tail), ``Adjusted P-value``
        (Benjamini-Hochberg over the sets with at least one hit, the gseapy/Enrichr
        convention), ``Odds Ratio`` (gseapy's Haldane-Anscombe corrected estimate),
        ``Combined Score`` and ``Genes`` (hits, ";"-joined, in the spelling of
        ``gene_list``), sorted by adjusted p-value, then p-value, then term. ``Gene_set``
        holds the versioned library name (e.g. ``"GO_Biological_Process_2022-07-01"``), the
        file name, or ``"custom"`` for a dict. ``attrs`` holds ``library``,
        ``background_source``, ``background_size``, ``n_genes_tested``,
        ``genes_not_in_background`` and ``n_sets_tested``.

    Raises
    ------
    ValueError
        If ``gene_list`` or the background is empty, no gene of ``gene_list`` is in the
        background (the message names them), no gene set has ``min_size``..``max_size``
        genes in the background, the library name is unknown (the message lists the shipped
        ones), ``organism`` has no shipped library, or ``cutoff``/sizes are out of range.
    TypeError
        If ``gene_list``, ``background`` or ``gene_sets`` has an unsupported type (a single
        string instead of a list of genes, for example).
    FileNotFoundError
        If ``gene_sets`` names a ``.gmt`` file that does not exist.
    """
    if not isinstance(organism, str):
        raise TypeError(f"organism must be a str, got {type(organism).__name__}")
    if not 0.0 < float(cutoff) <= 1.0:
        raise ValueError(f"cutoff must be in (0, 1], got {cutoff!r}")
    if int(min_size) != min_size or int(max_size) != max_size or not 1 <= min_size <= max_size:
        raise ValueError(f"need integers 1 <= min_size <= max_size, got {min_size}, {max_size}")

    query = _as_gene_list(gene_list, "gene_list")
    if not query:
        raise ValueError("gene_list is empty")
    label, library = _load_library(gene_sets, organism)
    if not library.names:
        raise ValueError(f"gene set library {label!r} holds no gene sets")
    bg_index, bg_source = _background_genes(background, library)
    n_bg = len(bg_index)
    if n_bg == 0:
        raise ValueError("background is empty")

    # Query: the first spelling of each case-insensitive symbol is what the output shows.
    query_upper = pd.Index(query, dtype=object).str.upper()
    first = np.flatnonzero(~query_upper.duplicated())
    query = [query[i] for i in first]
    q_pos = bg_index.get_indexer(query_upper[first])
    missing = [query[i] for i in np.flatnonzero(q_pos < 0)]
    if len(missing) == len(query):
        raise ValueError(
            f"none of the {len(query)} genes in gene_list is in the background "
            f"({n_bg} genes from {bg_source}); e.g. {missing[:_N_NAMED]!r}"
        )
    if missing:
        logger.info(
            "enrich: %d of %d genes are not in the background and are ignored: %s",
            len(missing),
            len(query),
            ", ".join(missing[:_N_NAMED]) + (" ..." if len(missing) > _N_NAMED else ""),
        )
    if bg_source == "gene_sets":
        logger.info(
            "enrich: background=None, testing against all %d genes of %s; pass the measured "
            "genes (e.g. adata) for a targeted panel",
            n_bg,
            label,
        )
    shown = [query[i] for i in np.flatnonzero(q_pos >= 0)]
    q_pos = q_pos[q_pos >= 0]

    # Membership as (set, background gene) pairs, restricted to the background. pd.unique
    # keeps first-seen order, so each set's pairs stay contiguous.
    gene_pos = bg_index.get_indexer(library.genes_upper)[library.codes]
    set_id = np.repeat(np.arange(len(library.names), dtype=np.int64), library.sizes)
    inside = gene_pos >= 0
    pairs = pd.unique(set_id[inside] * n_bg + gene_pos[inside])
    pair_set, pair_gene = pairs // n_bg, pairs % n_bg
    in_bg_size = np.bincount(pair_set, minlength=len(library.names))
    keep = (in_bg_size >= min_size) & (in_bg_size <= max_size)
    if not keep.any():
        raise ValueError(
            f"no gene set of {label!r} has {min_size}-{max_size} genes in the background "
            f"({n_bg} genes from {bg_source}); the largest has {int(in_bg_size.max())}"
        )

    # gseapy sniffs identifier types (all-digit lists switch it to integer Entrez ids; a
    # mostly lower-case list is upper-cased when the library is upper-case). Opaque tokens
    # of one form keep its test a plain set comparison; results are mapped back below.
    tokens = np.char.add("G", np.arange(n_bg).astype(str)).astype(object)
    pair_keep = keep[pair_set]
    kept_sets, kept_genes = pair_set[pair_keep], pair_gene[pair_keep]
    bounds = np.flatnonzero(np.diff(kept_sets)) + 1
    token_sets = {
        library.names[int(grp_sets[0])]: tokens[grp_genes].tolist()
        for grp_sets, grp_genes in zip(
            np.split(kept_sets, bounds), np.split(kept_genes, bounds), strict=True
        )
    }

    in_query = np.zeros(n_bg, dtype=bool)
    in_query[q_pos] = True
    if not in_query[kept_genes].any():
        # Nothing to test; gseapy would log an error and return no table.
        logger.info("enrich: no tested gene set contains a gene of gene_list")
        return _with_attrs(empty_enrichment(), label, bg_source, n_bg, len(q_pos), missing, keep)

    import gseapy  # slow to import (~2 s); only needed here

    enr = gseapy.enrichr(
        gene_list=tokens[q_pos].tolist(),
        gene_sets=token_sets,
        background=tokens.tolist(),
        organism="human",
        outdir=None,
        cutoff=1.0,
        no_plot=True,
        verbose=False,
    )
    try:
        raw = enr.results
    finally:
        enr.close()

    if not isinstance(raw, pd.DataFrame) or raw.empty:
        return _with_attrs(empty_enrichment(), label, bg_source, n_bg, len(q_pos), missing, keep)
    result = raw.loc[:, RESULT_COLUMNS].copy()
    display = dict(zip(tokens[q_pos], shown, strict=True))
    result["Gene_set"] = label
    result["Genes"] = [
        ";".join(sorted((display[t] for t in hits.split(";")), key=str.upper))
        for hits in result["Genes"]
    ]
    result = result.loc[result["Adjusted P-value"] <= cutoff]
    result = result.sort_values(["Adjusted P-value", "P-value", "Term"], kind="mergesort")
    result = result.reset_index(drop=True)
    return _with_attrs(result, label, bg_source, n_bg, len(q_pos), missing, keep)


def _with_attrs(
    result: pd.DataFrame,
    label: str,
    bg_source: str,
    n_bg: int,
    n_tested: int,
    missing: list[str],
    keep: np.ndarray,
) -> pd.DataFrame:
    result.attrs.update(
        {
            "library": label,
            "background_source": bg_source,
            "background_size": n_bg,
            "n_genes_tested": n_tested,
            "genes_not_in_background": missing,
            "n_sets_tested": int(keep.sum()),
        }
    )
    return result
