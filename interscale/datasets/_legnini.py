"""Loader of the Legnini et al. (2023) molecular-cartography organoid data."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from interscale.datasets._split import SPLIT_CATEGORIES, assign_splits

ZENODO_RECORD = "8022726"
FILENAME = "legnini23_molecular_cartography_transcripts.csv.gz"
URL = f"https://zenodo.org/records/{ZENODO_RECORD}/files/{FILENAME}?download=1"
# Not pinned yet: the record could not be reached from the machines this package was written on.
# Pass ``sha256=`` to verify a download; once pinned here, every download is verified.
SHA256: str | None = None

CELL_COLUMNS = ["sample", "condition", "organoid", "Cell", "Area", "x", "y"]
REQUIRED_COLUMNS = [*CELL_COLUMNS, "gene"]


def default_cache_dir() -> Path:
    """Cache directory: ``$INTERSCALE_CACHE`` if set, else ``~/.cache/interscale``.

    Returns
    -------
    pathlib.Path
        The directory (not created).
    """
    env = os.environ.get("INTERSCALE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "interscale"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256(path: Path, expected: str | None) -> None:
    if expected is None:
        return
    got = _sha256(path)
    if got.lower() != expected.lower():
        raise ValueError(
            f"sha256 of {path} is {got}, expected {expected}; the file is corrupt or not the "
            "published one (delete it to download again)"
        )


def _download(url: str, dest: Path, sha256: str | None, timeout: float = 30.0) -> Path:
    """Stream ``url`` to ``dest`` atomically with a progress bar, then verify the checksum."""
    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        try:
            with (
                urllib.request.urlopen(url, timeout=timeout) as response,
                os.fdopen(fd, "wb") as out,
            ):
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        out.write(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, OSError, RuntimeError, ValueError) as err:
            # RuntimeError: sandboxes and test fixtures that forbid sockets raise it
            raise ConnectionError(
                f"could not download the Legnini et al. (2023) data from {url} ({err}). "
                "This machine looks offline. Download the file by hand from "
                f"https://zenodo.org/records/{ZENODO_RECORD} and call "
                f"interscale.datasets.legnini(path='/path/to/{FILENAME}'), or put it in "
                f"{dest.parent} (set INTERSCALE_CACHE to use another cache directory)."
            ) from None
        _check_sha256(tmp, sha256)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def read_transcripts(path: str | os.PathLike, seed: int = 0) -> ad.AnnData:
    """Aggregate a transcript-level table into a cell-by-gene AnnData.

    Expected columns: ``sample``, ``condition``, ``organoid``, ``Cell``, ``Area``, ``x``, ``y``
    (describing the cell a transcript was assigned to), ``gene`` and, optionally, ``count``. Each
    row is one transcript (or, with ``count``, that many transcripts of ``gene`` in the cell).
    A cell without transcripts is listed once with an empty ``gene``. Cells are identified by
    ``(sample, Cell)``.

    Parameters
    ----------
    path
        CSV file (``.csv`` or ``.csv.gz``).
    seed
        Seed of the whole-sample train / val / test split (stratified by condition).

    Returns
    -------
    anndata.AnnData
        Counts in ``X`` and ``layers["raw"]`` (CSR float32); ``obs`` with ``Cell``, ``Area``,
        ``x``, ``y``, ``sample``, ``condition``, ``organoid``, ``split``; ``obsm["spatial"]``
        (float64); obs names ``"{sample}_{Cell}"``; genes sorted by name.

    Raises
    ------
    ValueError
        If a required column is missing or a count is negative / not finite.
    """
    table = pd.read_csv(path, dtype={"sample": str, "Cell": str, "gene": str, "condition": str})
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"{path} lacks the column(s) {missing}; expected {REQUIRED_COLUMNS} (+ optional count)"
        )
    counts = (
        table["count"].to_numpy(dtype=np.float64)
        if "count" in table.columns
        else np.ones(len(table), dtype=np.float64)
    )
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise ValueError(f"{path}: the count column must hold finite, non-negative numbers")
    cell_key = table["sample"].astype(str) + "_" + table["Cell"].astype(str)
    cell_code, cell_names = pd.factorize(cell_key, sort=False)
    has_gene = table["gene"].notna().to_numpy() & (table["gene"].astype(str) != "")
    gene_code, gene_names = pd.factorize(table["gene"][has_gene], sort=True)
    x = sp.csr_matrix(
        (counts[has_gene].astype(np.float32), (cell_code[has_gene], gene_code)),
        shape=(len(cell_names), len(gene_names)),
        dtype=np.float32,
    )  # duplicates (several transcripts of one gene in one cell) are summed
    x.sum_duplicates()
    x.eliminate_zeros()
    first = pd.Series(np.arange(len(table))).groupby(cell_code).first().to_numpy()
    obs = table.iloc[first][["Cell", "Area", "x", "y", "sample", "condition", "organoid"]]
    obs = obs.reset_index(drop=True)
    obs.index = pd.Index(np.asarray(cell_names, dtype=str))
    obs["Cell"] = obs["Cell"].astype(str)
    obs["Area"] = obs["Area"].astype(np.float64)
    obs["x"] = obs["x"].astype(np.float64)
    obs["y"] = obs["y"].astype(np.float64)
    obs["sample"] = pd.Categorical(obs["sample"].astype(str))
    obs["condition"] = pd.Categorical(obs["condition"].astype(str))
    samples = obs.groupby("sample", observed=True)["condition"].first()
    labels = assign_splits(samples.astype(str).to_numpy(), np.random.default_rng(seed))
    split_of = dict(zip(samples.index.astype(str), labels, strict=True))
    obs["split"] = pd.Categorical(
        obs["sample"].astype(str).map(split_of).to_numpy(), categories=SPLIT_CATEGORIES
    )
    adata = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=pd.Index(np.asarray(gene_names, str))))
    adata.layers["raw"] = x.copy()
    adata.obsm["spatial"] = obs[["x", "y"]].to_numpy(dtype=np.float64)
    return adata


def legnini(
    path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    sha256: str | None = SHA256,
    seed: int = 0,
) -> ad.AnnData:
    """Load the Legnini et al. (2023) neural-tube organoid data (Zenodo record 8022726).

    Parameters
    ----------
    path
        A local copy of the transcript table (see :func:`read_transcripts` for the columns). If
        None, the file is taken from the cache directory, or downloaded there first (with a
        progress bar, written atomically).
    cache_dir
        Where downloads are kept; default :func:`default_cache_dir`.
    sha256
        Expected checksum of the file (checked for downloads and cached copies; also for
        ``path`` when given explicitly). ``None`` skips the check.
    seed
        Seed of the whole-sample train / val / test split.

    Returns
    -------
    anndata.AnnData
        As returned by :func:`read_transcripts`.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ConnectionError
        If the file has to be downloaded and the download fails (e.g. offline); the message says
        how to pass ``path=`` instead.
    ValueError
        If the checksum does not match or the table lacks required columns.
    """
    if path is not None:
        file = Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"no such file: {file}")
        if sha256 is not None and sha256 != SHA256:
            _check_sha256(file, sha256)
        return read_transcripts(file, seed=seed)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    file = cache / FILENAME
    if file.is_file():
        _check_sha256(file, sha256)
    else:
        _download(URL, file, sha256)
    return read_transcripts(file, seed=seed)
