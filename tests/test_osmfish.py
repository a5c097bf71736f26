"""The bundled osmFISH section: shape, checksum, units, counts, no network."""

from __future__ import annotations

import fnmatch
import hashlib
import re
import shutil
import socket
import tomllib
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.spatial import cKDTree

import interscale as isc
from interscale.cli import _parser
from interscale.datasets import _osmfish

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def kept():
    return isc.datasets.osmfish()


@pytest.fixture(scope="module")
def everything():
    return isc.datasets.osmfish(include_excluded=True)


@pytest.fixture(scope="module")
def raw():
    """The loom read directly with h5py: the reference the loader is checked against."""
    with h5py.File(_osmfish._DATA_PATH, "r") as f:
        col = f["col_attrs"]
        return {
            "matrix": f["matrix"][()].T,
            "genes": [g.decode() for g in f["row_attrs/Gene"][()]],
            "ids": [c.decode() for c in col["CellID"][()]],
            "valid": col["Valid"][()] == 1,
            "xy": np.column_stack([col["X"][()], col["Y"][()]]),
            "region": [r.decode() for r in col["Region"][()]],
            "cluster": [c.decode() for c in col["ClusterName"][()]],
            "cluster_id": col["ClusterID"][()],
            "total": col["Total_molecules"][()],
            "size_um2": col["size_um2"][()],
        }


def test_shape_default_and_with_excluded(kept, everything):
    assert kept.shape == (4839, 33)
    assert everything.shape == (6471, 33)
    assert kept.obs["valid"].all()
    assert (~everything.obs["valid"]).sum() == 1632
    assert (everything.obs.loc[~everything.obs["valid"], "region"] == "Excluded").all()
    assert "Excluded" not in kept.obs["region"].cat.categories
    assert kept.obs["cell_type"].nunique() == 31


def test_matches_the_file(kept, everything, raw):
    assert list(everything.var_names) == raw["genes"]
    assert "Rorb" in kept.var_names and "Plp1" in kept.var_names
    assert list(everything.obs_names) == raw["ids"]
    assert everything.obs_names.is_unique and kept.obs_names.is_unique
    assert all(isinstance(name, str) for name in kept.obs_names)
    np.testing.assert_array_equal(everything.X.toarray(), raw["matrix"])
    np.testing.assert_array_equal(kept.X.toarray(), raw["matrix"][raw["valid"]])
    np.testing.assert_array_equal(kept.layers["counts"].toarray(), kept.X.toarray())
    np.testing.assert_array_equal(
        np.asarray(kept.obs["region"], dtype=str), np.asarray(raw["region"])[raw["valid"]]
    )
    np.testing.assert_array_equal(
        np.asarray(kept.obs["cell_type"], dtype=str), np.asarray(raw["cluster"])[raw["valid"]]
    )
    np.testing.assert_array_equal(kept.obs["cluster_id"], raw["cluster_id"][raw["valid"]])
    np.testing.assert_array_equal(kept.obs["total_molecules"], raw["total"][raw["valid"]])
    np.testing.assert_array_equal(kept.obs["size_um2"], raw["size_um2"][raw["valid"]])
    # one cluster id per cell type
    assert kept.obs.groupby("cell_type", observed=True)["cluster_id"].nunique().max() == 1


def test_one_section(kept):
    section = kept.obs["section"]
    assert isinstance(section.dtype, type(kept.obs["region"].dtype))  # categorical
    assert list(section.cat.categories) == [_osmfish.SECTION]
    with pytest.raises(ValueError, match="pp.tile"):
        isc.pp.split_samples(kept.copy(), "section")


def test_units_are_micrometres(kept, everything, raw):
    xy = kept.obsm["spatial"]
    assert xy.shape == (4839, 2) and xy.dtype == np.float64
    np.testing.assert_allclose(everything.obsm["spatial"], raw["xy"] * 0.065, rtol=1e-12)
    dist, _ = cKDTree(xy).query(xy, k=2)
    assert 10.3 < np.median(dist[:, 1]) < 10.9
    extent = xy.max(axis=0) - xy.min(axis=0)
    np.testing.assert_allclose(extent, [1553.2, 3138.9], rtol=0.002)
    # the pixel size the coordinates are scaled by is the one the authors' areas imply
    np.testing.assert_allclose(kept.obs["size_um2"] / kept.obs["size_pix"], 0.065**2, rtol=1e-9)


def test_counts_are_integer_and_found_by_normalize(kept):
    adata = kept.copy()
    values = adata.layers["counts"].data
    assert sp.issparse(adata.layers["counts"])
    np.testing.assert_array_equal(values, np.round(values))
    assert values.min() >= 0
    np.testing.assert_array_equal(
        np.asarray(adata.X.sum(axis=1)).ravel(), adata.obs["total_molecules"]
    )
    isc.pp.normalize(adata)
    assert adata.uns["normalize"]["counts"] == "counts"
    dense = adata.layers["counts"].toarray().astype(np.float64)
    expected = np.log1p(dense / dense.sum(axis=1, keepdims=True) * 1e4)
    np.testing.assert_allclose(adata.layers["log1p_norm"].toarray(), expected, rtol=1e-6)


def test_tiles_then_split(kept):
    adata = kept.copy()
    tiles = isc.pp.tile(adata, max_cells=400, library_key="section")
    assert tiles.nunique() >= 12
    isc.pp.split_samples(adata, "tile", seed=0)
    assert set(adata.obs["split"]) == {"train", "val", "test"}


def test_reads_without_any_socket(monkeypatch):
    def _no_socket(*args, **kwargs):
        raise AssertionError("osmfish() tried to open a socket")

    monkeypatch.setattr(socket, "socket", _no_socket)
    monkeypatch.setattr(socket, "create_connection", _no_socket)
    monkeypatch.setattr(socket, "getaddrinfo", _no_socket)
    with pytest.raises(AssertionError):
        socket.create_connection(("example.org", 80))  # the guard is in place
    assert isc.datasets.osmfish().shape == (4839, 33)


def test_corrupted_copy_is_refused(tmp_path, monkeypatch):
    bundled = _osmfish._DATA_PATH
    bad = tmp_path / _osmfish.FILENAME
    shutil.copyfile(_osmfish._DATA_PATH, bad)
    content = bytearray(bad.read_bytes())
    content[len(content) // 2] ^= 0x01  # one bit in the middle of the matrix
    bad.write_bytes(bytes(content))
    monkeypatch.setattr(_osmfish, "_DATA_PATH", bad)
    with pytest.raises(ValueError) as err:
        isc.datasets.osmfish()
    message = str(err.value)
    assert str(bad) in message and _osmfish.SHA256 in message
    assert hashlib.sha256(bytes(content)).hexdigest() in message
    # the untouched bundled file still passes
    monkeypatch.setattr(_osmfish, "_DATA_PATH", bundled)
    assert isc.datasets.osmfish().n_obs == 4839


def test_missing_file_is_named(tmp_path, monkeypatch):
    missing = tmp_path / "nothing.loom"
    monkeypatch.setattr(_osmfish, "_DATA_PATH", missing)
    with pytest.raises(FileNotFoundError, match="nothing.loom"):
        isc.datasets.osmfish()


def test_bad_argument():
    with pytest.raises(TypeError, match="include_excluded"):
        isc.datasets.osmfish(include_excluded="yes")


def test_checksum_matches_the_provenance_note():
    note = (_osmfish._DATA_PATH.parent / "osmFISH.md").read_text()
    assert _osmfish.SHA256 in note
    assert "10.1038/s41592-018-0175-z" in note
    assert "10.1038/s41592-018-0175-z" in isc.datasets.osmfish.__doc__


def test_file_is_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["interscale"]
    assert _osmfish._DATA_PATH.parent.name == "data"
    relative = f"datasets/data/{_osmfish.FILENAME}"
    assert any(fnmatch.fnmatch(relative, p) for p in patterns)
    assert any(fnmatch.fnmatch("datasets/data/osmFISH.md", p) for p in patterns)


def _readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_readme_built_in_datasets_runs_as_written():
    section = _readme_section("Built-in datasets")
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    adata = namespace["adata"]
    assert adata.shape == (4839, 33) and adata.obs["tile"].nunique() == 16
    assert adata.uns["split_samples"]["n_samples"] == {"train": 8, "val": 4, "test": 4}
    assert adata.uns["normalize"]["counts"] == "counts"
    assert "10.1038/s41592-018-0175-z" in section
    # the command the section gives parses with the options it names
    (command,) = re.findall(r"`(interscale train [^`]*)`", section.replace("\n", " "))
    args = _parser().parse_args(command.split()[1:])
    assert (args.sample_key, args.tile_max_cells) == ("section", 400)
