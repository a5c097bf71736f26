"""Spellings accepted beside InterScale's own (README, "Compatibility")."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import interscale as isc


@pytest.fixture()
def adata():
    return isc.datasets.synthetic_organoids(n_samples=4, cells_per_sample=(60, 80), seed=1)


def test_library_key_is_sample_key(adata):
    other = adata.copy()
    isc.pp.spatial_neighbors(adata, radius=150, sample_key="sample")
    isc.pp.spatial_neighbors(other, radius=150, library_key="sample")
    a, b = adata.obsp["spatial_connectivities"], other.obsp["spatial_connectivities"]
    assert (a != b).nnz == 0 and a.nnz > 0
    split = isc.pp.split_samples(adata.copy(), library_key="sample", seed=3)
    assert split.equals(isc.pp.split_samples(adata.copy(), "sample", seed=3))


def test_library_key_reaches_the_function_and_its_checks(adata):
    # the alias is not swallowed: a wrong column is named as the sample column
    with pytest.raises(KeyError, match="nope"):
        isc.pp.neighborhood_stats(adata, 150, library_key="nope")
    stats = isc.pp.neighborhood_stats(adata, 150, library_key=None)
    merged = isc.pp.neighborhood_stats(adata, 150, sample_key=None)
    assert np.allclose(stats.to_numpy(), merged.to_numpy())


def test_sample_column_given_twice_is_refused(adata):
    with pytest.raises(TypeError, match="not both"):
        isc.pp.spatial_neighbors(adata, radius=150, sample_key="sample", library_key="sample")
    assert "spatial_connectivities" not in adata.obsp


@pytest.mark.parametrize(
    "func",
    [
        isc.pp.spatial_neighbors,
        isc.pp.neighborhood_stats,
        isc.pp.tile,
        isc.pp.split_samples,
        isc.evaluation.linear_baselines,
        isc.evaluation.calculate_gene_ranks,
        isc.evaluation.heldout_program_metrics,
    ],
    ids=lambda f: f.__name__,
)
def test_public_signatures_name_the_sample_column_sample_key(func):
    params = inspect.signature(func).parameters
    assert "sample_key" in params and "library_key" not in params
    assert "library_key=" in inspect.getdoc(func), "the docstring names the accepted alias"
