"""Shipped gene-set libraries and the offline enrichment wrapper ``interscale.tl.enrich``."""

from __future__ import annotations

import gzip
import importlib.util
import re
import socket
from importlib import resources
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import false_discovery_control, hypergeom

from interscale.datasets._gene_sets import gene_set_libraries, load_gene_sets, read_gmt
from interscale.tl import enrich

GO = "GO_Biological_Process"
COLUMNS = [
    "Gene_set",
    "Term",
    "Overlap",
    "P-value",
    "Adjusted P-value",
    "Odds Ratio",
    "Combined Score",
    "Genes",
]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def go_sets() -> dict[str, list[str]]:
    return load_gene_sets(GO)


@pytest.fixture(scope="module")
def go_genes(go_sets) -> list[str]:
    return sorted({g for genes in go_sets.values() for g in genes})


def _reference(gene_list, sets, background, min_size=3, max_size=500):
    """Hypergeometric test + BH from scratch (sets/loops, scipy distributions)."""
    bg = {g.upper() for g in background}
    query = {g.upper() for g in gene_list} & bg
    rows = {}
    for name, genes in sets.items():
        members = {g.upper() for g in genes} & bg
        hits = members & query
        if not min_size <= len(members) <= max_size or not hits:
            continue
        rows[name] = (
            len(hits),
            len(members),
            hypergeom.sf(len(hits) - 1, len(bg), len(members), len(query)),
        )
    ref = pd.DataFrame.from_dict(rows, orient="index", columns=["x", "m", "p"])
    ref["q"] = false_discovery_control(ref["p"].to_numpy(dtype=float), method="bh") if rows else []
    return ref


def _assert_matches_reference(res, ref):
    assert sorted(res["Term"]) == sorted(ref.index)
    ref = ref.loc[res["Term"]]
    overlap = np.array([o.split("/") for o in res["Overlap"]], dtype=int).reshape(-1, 2)
    np.testing.assert_array_equal(overlap[:, 0], ref["x"].astype(int))
    np.testing.assert_array_equal(overlap[:, 1], ref["m"].astype(int))
    np.testing.assert_allclose(res["P-value"], ref["p"].astype(float), rtol=1e-9, atol=0)
    np.testing.assert_allclose(res["Adjusted P-value"], ref["q"], rtol=1e-9, atol=0)


# --- shipped library ------------------------------------------------------------------------


def test_shipped_library_is_listed_and_well_formed(go_sets):
    assert GO in gene_set_libraries()
    assert len(go_sets) > 1000
    sizes = np.array([len(g) for g in go_sets.values()])
    assert sizes.min() >= 5 and sizes.max() <= 500
    assert all(re.fullmatch(r".+ \(GO:\d{7}\)", name) for name in go_sets)
    assert all(len(set(g)) == len(g) for g in go_sets.values())


def test_shipped_library_holds_known_biology(go_sets):
    shh = set(go_sets["smoothened signaling pathway (GO:0007224)"])
    assert {"SHH", "PTCH1", "GLI1", "GLI2", "SMO"} <= shh
    # Annotations are propagated to ancestors: is_a ...
    assert set(go_sets["cilium assembly (GO:0060271)"]) <= set(
        go_sets["cilium organization (GO:0044782)"]
    )
    # ... and along "regulates", as in Bioconductor's GOALL (documented in the README).
    regulation = set(go_sets["regulation of smoothened signaling pathway (GO:0008589)"])
    assert set(go_sets["positive regulation of smoothened signaling pathway (GO:0045880)"]) <= (
        regulation
    )
    assert regulation <= shh


def test_shipped_file_names_version_and_readme():
    folder = resources.files("interscale.datasets").joinpath("gene_sets")
    gmts = [e.name for e in folder.iterdir() if e.name.endswith(".gmt.gz")]
    assert gmts == ["GO_Biological_Process_2022-07-01.gmt.gz"]
    data = folder.joinpath(gmts[0]).read_bytes()
    assert data[4:8] == b"\0\0\0\0"  # gzip mtime 0: rebuilds are byte-identical
    assert len(data) < 2_500_000
    readme = folder.joinpath("README.md").read_text()
    for needle in ("2022-07-01", "CC BY 4.0", "Artistic", "r-bioc-go.db", "r-bioc-org.hs.eg.db"):
        assert needle in readme


def test_load_gene_sets_returns_independent_copies_and_accepts_versioned_name(go_sets):
    first = load_gene_sets(GO)
    first.popitem()
    next(iter(first.values())).clear()
    assert load_gene_sets("GO_Biological_Process_2022-07-01") == go_sets


def test_unknown_library_name_lists_shipped_ones():
    with pytest.raises(ValueError, match="GO_Biological_Process"):
        load_gene_sets("KEGG_2021")
    with pytest.raises(ValueError, match=r"unknown gene-set library 'KEGG_2021'.*GO_Biological"):
        enrich(["SHH"], gene_sets="KEGG_2021")


def test_build_script_writes_reproducible_gmt(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "build_gene_sets", REPO / "scripts" / "build_gene_sets.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sets = [("b term (GO:0000002)", "GO:0000002", ["A", "B"]), ("a (GO:1)", "GO:1", ["C"])]
    blob = module._gmt_bytes(sets)
    assert blob == module._gmt_bytes(sets) and blob[4:8] == b"\0\0\0\0"
    path = tmp_path / "x.gmt.gz"
    module._atomic_write(path, blob)
    assert read_gmt(path) == {name: genes for name, _, genes in sets}
    assert [p.name for p in tmp_path.iterdir()] == ["x.gmt.gz"]  # no temp file left behind


# --- enrichment -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_synthetic_set_is_found_first(go_sets, go_genes, seed):
    rng = np.random.default_rng(seed)
    background = list(rng.choice(go_genes, size=2000, replace=False))
    planted = list(rng.choice(background, size=30, replace=False))
    noise = rng.choice(sorted(set(background) - set(planted)), size=20, replace=False)
    library = dict(go_sets, PLANTED=planted)
    gene_list = list(rng.permutation(planted[:20] + list(noise)))

    res = enrich(gene_list, gene_sets=library, background=background)

    assert list(res.columns) == COLUMNS
    assert res.loc[0, "Term"] == "PLANTED"
    assert res.loc[0, "Adjusted P-value"] < 1e-3
    assert res.loc[0, "Overlap"] == "20/30"
    assert set(res.loc[0, "Genes"].split(";")) == set(planted[:20])
    assert (res["Gene_set"] == "custom").all()
    assert res["Adjusted P-value"].is_monotonic_increasing


def test_planted_real_go_term_is_found_first_and_matches_scipy(go_sets, go_genes):
    rng = np.random.default_rng(7)
    background = set(rng.choice(go_genes, size=2000, replace=False))
    restricted = {t: frozenset(g) & background for t, g in go_sets.items()}
    counts = pd.Series(list(restricted.values())).value_counts()
    # A term of 15-40 background genes whose restricted set no other term shares (no ties).
    target = next(
        t
        for t in sorted(restricted)
        if 15 <= len(restricted[t]) <= 40 and counts[restricted[t]] == 1
    )
    noise = rng.choice(sorted(background - restricted[target]), size=30, replace=False)
    gene_list = sorted(restricted[target]) + list(noise)

    res = enrich(gene_list, background=sorted(background))

    assert res.loc[0, "Term"] == target
    assert res.loc[0, "Adjusted P-value"] < 1e-3
    assert res.loc[0, "Gene_set"] == "GO_Biological_Process_2022-07-01"
    assert res.attrs["background_size"] == 2000
    _assert_matches_reference(res, _reference(gene_list, go_sets, background))


def test_background_from_anndata_and_case_insensitive_matching(go_sets):
    shh = go_sets["smoothened signaling pathway (GO:0007224)"]
    others = go_sets["cilium assembly (GO:0060271)"] + go_sets["neuron migration (GO:0001764)"]
    panel = list(dict.fromkeys(shh[:40] + others))
    # A mouse-style panel spelling: matched case-insensitively against human symbols.
    var_names = [g.capitalize() for g in panel]
    adata = ad.AnnData(
        X=np.zeros((3, len(var_names)), dtype=np.float32),
        var=pd.DataFrame(index=var_names),
    )
    gene_list = var_names[:25]

    res = enrich(gene_list, background=adata)
    res_list = enrich([g.upper() for g in gene_list], background=panel)
    genome = enrich(gene_list)

    assert res.attrs["background_source"] == "var_names"
    assert res.attrs["background_size"] == adata.n_vars
    pd.testing.assert_series_equal(res["P-value"], res_list["P-value"])
    # Hits are reported in the caller's spelling.
    assert all(g in set(gene_list) for g in res.loc[0, "Genes"].split(";"))
    _assert_matches_reference(res, _reference(gene_list, go_sets, panel))
    # The panel background is far less significant than the genome for panel genes.
    top = res.loc[0, "Term"]
    assert genome.attrs["background_source"] == "gene_sets"
    assert genome.set_index("Term").loc[top, "P-value"] < res.loc[0, "P-value"] * 1e-3
    assert adata.n_vars == len(var_names)  # AnnData untouched


def test_gmt_path_and_dict_inputs_agree(tmp_path):
    sets = {"S1": ["A", "B", "C", "D"], "S2": ["C", "D", "E", "F", "G"], "S3": ["H", "I", "J"]}
    text = "".join(f"{k}\tdesc\t" + "\t".join(v) + "\n" for k, v in sets.items())
    plain = tmp_path / "mine.gmt"
    plain.write_text(text)
    packed = tmp_path / "mine.gmt.gz"
    packed.write_bytes(gzip.compress(text.encode()))
    background = list("ABCDEFGHIJKLMNOPQRST")
    base = enrich(["A", "B", "C", "E"], gene_sets=sets, background=background)
    for path in (plain, packed, str(plain)):
        res = enrich(["A", "B", "C", "E"], gene_sets=path, background=background)
        assert (res["Gene_set"] == "mine").all()
        pd.testing.assert_frame_equal(res.drop(columns="Gene_set"), base.drop(columns="Gene_set"))
    with pytest.raises(FileNotFoundError, match="missing.gmt"):
        enrich(["A"], gene_sets=tmp_path / "missing.gmt", background=background)


def test_entrez_like_numeric_ids_are_handled():
    # gseapy alone would switch to integer Entrez mode for all-digit lists.
    sets = {"S1": ["1", "2", "3", "4"], "S2": ["5", "6", "7"]}
    res = enrich(["1", "2", "3"], gene_sets=sets, background=[str(i) for i in range(1, 30)])
    assert res.loc[0, "Term"] == "S1"
    assert res.loc[0, "Genes"] == "1;2;3"
    _assert_matches_reference(res, _reference(["1", "2", "3"], sets, map(str, range(1, 30))))


def test_no_hit_gives_an_empty_table_with_gseapy_columns():
    sets = {"S1": ["A", "B", "C"], "S2": ["D", "E", "F"]}
    res = enrich(["G"], gene_sets=sets, background=list("ABCDEFGH"))
    assert list(res.columns) == COLUMNS and res.empty
    assert res["P-value"].dtype == float
    assert res.attrs["n_sets_tested"] == 2 and res.attrs["n_genes_tested"] == 1


def test_result_is_deterministic_and_cutoff_filters(go_sets, go_genes):
    rng = np.random.default_rng(3)
    background = list(rng.choice(go_genes, size=1500, replace=False))
    gene_list = list(rng.choice(background, size=60, replace=False))
    a = enrich(gene_list, background=background)
    b = enrich(list(reversed(gene_list)), background=background)
    pd.testing.assert_frame_equal(a, b)
    strict = enrich(gene_list, background=background, cutoff=0.5)
    assert (strict["Adjusted P-value"] <= 0.5).all()
    assert len(strict) == int((a["Adjusted P-value"] <= 0.5).sum())


@settings(max_examples=25, deadline=None)
@given(
    n_bg=st.integers(20, 80),
    n_sets=st.integers(1, 8),
    n_query=st.integers(1, 15),
    seed=st.integers(0, 2**32 - 1),
)
def test_pvalues_match_scipy_on_random_libraries(n_bg, n_sets, n_query, seed):
    rng = np.random.default_rng(seed)
    universe = [f"g{i}" for i in range(n_bg)]
    sets = {
        f"set{j}": list(rng.choice(universe, size=rng.integers(3, n_bg // 2 + 1), replace=False))
        for j in range(n_sets)
    }
    # Some query genes may fall outside the background; they must be ignored.
    query = list(rng.choice(universe + ["outside1", "outside2"], size=n_query, replace=False))
    if not set(query) & set(universe):
        query.append(universe[0])
    res = enrich(query, gene_sets=sets, background=universe)
    _assert_matches_reference(res, _reference(query, sets, universe))
    assert res["Adjusted P-value"].between(0, 1).all()
    assert set(res.attrs["genes_not_in_background"]) == set(query) - set(universe)


# --- errors ---------------------------------------------------------------------------------


def test_error_messages():
    with pytest.raises(ValueError, match="gene_list is empty"):
        enrich([])
    with pytest.raises(ValueError, match="gene_list is empty"):
        enrich(["", "  "])
    with pytest.raises(TypeError, match="single string"):
        enrich("SHH")
    with pytest.raises(ValueError, match=r"organism 'mouse'.*supported: human"):
        enrich(["SHH"], organism="mouse")
    with pytest.raises(ValueError, match=r"none of the 2 genes.*'NOTAGENE'"):
        enrich(["NOTAGENE", "ALSONOT"], background=["SHH", "GLI1"])
    with pytest.raises(ValueError, match="background is empty"):
        enrich(["SHH"], background=[])
    with pytest.raises(ValueError, match="no gene set .* has 3-500 genes in the background"):
        enrich(["SHH", "GLI1"], background=["SHH", "GLI1"])
    with pytest.raises(ValueError, match="cutoff"):
        enrich(["SHH"], cutoff=0)
    with pytest.raises(ValueError, match="min_size"):
        enrich(["SHH"], min_size=10, max_size=5)
    with pytest.raises(TypeError, match="gene_sets"):
        enrich(["SHH"], gene_sets=42)


# --- no network -----------------------------------------------------------------------------


def test_enrich_runs_with_all_network_paths_refused(monkeypatch, go_sets):
    # conftest.py already refuses connect(); here socket creation and DNS are refused too.
    with pytest.raises(RuntimeError, match="network access is blocked"):
        socket.create_connection(("maayanlab.cloud", 443), timeout=1)

    real_socket = socket.socket

    class _NoInetSocket(real_socket):
        def __init__(self, family=socket.AF_INET, *args, **kwargs):
            if family in (socket.AF_INET, socket.AF_INET6):
                raise RuntimeError("network socket created during enrich")
            super().__init__(family, *args, **kwargs)

    def _no_dns(*args, **kwargs):
        raise RuntimeError("DNS lookup during enrich")

    monkeypatch.setattr(socket, "socket", _NoInetSocket)
    monkeypatch.setattr(socket, "getaddrinfo", _no_dns)
    shh = go_sets["smoothened signaling pathway (GO:0007224)"]
    res = enrich(shh[:20])
    assert res.loc[0, "Adjusted P-value"] < 1e-3
