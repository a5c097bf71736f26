"""The osmFISH section of the mouse somatosensory cortex (Codeluppi et al. 2018), shipped inside
the package and read with h5py."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

FILENAME = "osmFISH_SScortex_mouse_all_cells.loom"
#: sha256 of the authors' loom file as distributed (see ``data/osmFISH.md``).
SHA256 = "6153b56b300280e0cbd2eb45377eea4a5e85606bed739c96eb02feee5f53bc63"
#: Side of one image pixel in micrometres: ``size_um2 / size_pix`` is 0.004225 for every cell.
PIXEL_SIZE_UM = 0.065
#: The value of ``obs["section"]``: the file holds one tissue section.
SECTION = "SScortex"

# The bundled file; tests point this at a corrupted copy to check the checksum.
_DATA_PATH = Path(__file__).resolve().parent / "data" / FILENAME

# The authors' regions from the pia to the white matter, then the structures outside the cortex.
_REGION_ORDER = (
    "Pia Layer 1",
    "Layer 2-3 lateral",
    "Layer 2-3 medial",
    "Layer 3-4",
    "Layer 4",
    "Layer 5",
    "Layer 6",
    "White matter",
    "Hippocampus",
    "Ventricle",
    "Internal Capsule Caudoputamen",
    "Excluded",
)


def _verified_bytes(path: Path, expected: str) -> bytes:
    """The file's content, after checking that its sha256 is ``expected``.

    The checked bytes are the ones parsed afterwards, so nothing can change between the two.
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"the bundled osmFISH file is missing: {path}; reinstall interscale"
        )
    content = path.read_bytes()
    got = hashlib.sha256(content).hexdigest()
    if got != expected:
        raise ValueError(
            f"sha256 of {path} is {got}, expected {expected}: the bundled osmFISH file is "
            "corrupt or not the authors' file; reinstall interscale"
        )
    return content


def _text(values: np.ndarray) -> np.ndarray:
    """Loom string attributes (fixed-width bytes) as Python strings."""
    return np.char.decode(np.asarray(values, dtype=bytes), "utf-8").astype(object)


def _categorical(values: np.ndarray, order: tuple[str, ...] | None = None) -> pd.Categorical:
    present = set(values.tolist())
    if order is None:
        categories = sorted(present)
    else:
        unknown = sorted(present.difference(order))
        categories = [c for c in order if c in present] + unknown
    return pd.Categorical(values, categories=categories)


def _read_loom(content: bytes, include_excluded: bool) -> ad.AnnData:
    import h5py

    with h5py.File(io.BytesIO(content), "r") as f:
        matrix = f["matrix"][()]  # genes x cells
        genes = _text(f["row_attrs/Gene"][()])
        var = pd.DataFrame(
            {
                "hybridization": f["row_attrs/Hybridization"][()].astype(np.int64),
                "fluorophore": _text(f["row_attrs/Fluorophore"][()]),
            },
            index=pd.Index(genes.astype(str), name=None),
        )
        col = f["col_attrs"]
        cell_ids = _text(col["CellID"][()]).astype(str)
        valid = col["Valid"][()].astype(np.int64)
        xy_px = np.column_stack([col["X"][()], col["Y"][()]]).astype(np.float64)
        tsne = np.column_stack([col["_tSNE_1"][()], col["_tSNE_2"][()]]).astype(np.float64)
        obs = pd.DataFrame(
            {
                "region": _text(col["Region"][()]),
                "cell_type": _text(col["ClusterName"][()]),
                "cluster_id": col["ClusterID"][()].astype(np.int64),
                "total_molecules": col["Total_molecules"][()].astype(np.int64),
                "size_um2": col["size_um2"][()].astype(np.float64),
                "size_pix": col["size_pix"][()].astype(np.float64),
                "valid": valid == 1,
            },
            index=pd.Index(cell_ids),
        )
    keep = np.ones(len(obs), dtype=bool) if include_excluded else obs["valid"].to_numpy()
    obs = obs.loc[keep].copy()
    obs["region"] = _categorical(obs["region"].to_numpy(), _REGION_ORDER)
    obs["cell_type"] = _categorical(obs["cell_type"].to_numpy())
    obs["section"] = pd.Categorical([SECTION] * len(obs), categories=[SECTION])
    obs.index = obs.index.astype(str)
    # counts < 2**24 are exact in float32, the dtype of the package's other loaders
    counts = sp.csr_matrix(matrix[:, keep].T.astype(np.float32))
    adata = ad.AnnData(X=counts, obs=obs, var=var)
    adata.layers["counts"] = counts.copy()
    adata.obsm["spatial"] = xy_px[keep] * PIXEL_SIZE_UM
    adata.obsm["X_tsne"] = tsne[keep]
    adata.uns["osmfish"] = {
        "citation": (
            "Codeluppi S. et al. Spatial organization of the somatosensory cortex revealed by "
            "osmFISH. Nature Methods 15, 932-935 (2018). doi:10.1038/s41592-018-0175-z"
        ),
        "file": FILENAME,
        "sha256": SHA256,
        "pixel_size_um": PIXEL_SIZE_UM,
        "include_excluded": bool(include_excluded),
    }
    return adata


def osmfish(include_excluded: bool = False) -> ad.AnnData:
    """The osmFISH section of the mouse somatosensory cortex, from the copy inside the package.

    33 genes measured by cyclic single-molecule FISH (osmFISH) in one coronal section of the
    mouse somatosensory cortex, with the hippocampus, ventricle and caudoputamen at its edge,
    segmented into 6,471 cells of which the authors kept 4,839. The file is the authors' loom,
    shipped unchanged; its sha256 is checked on every call, so no network is needed and a
    damaged installation is caught.

    The data hold **one section**. Whole-sample splits need several samples: cut the section
    into spatial tiles first, e.g. ``interscale.pp.tile(adata, max_cells=400,
    sample_key="section")``, then split the tiles with ``interscale.pp.split_samples(adata,
    "tile")`` (or ``interscale train --tile-max-cells``), so that train, validation and test
    are disjoint regions of the tissue.

    Cite the study wherever these data are shown: Codeluppi S., Borm L.E., Zeisel A.,
    La Manno G., van Lunteren J.A., Svensson C.I., Linnarsson S. "Spatial organization of the
    somatosensory cortex revealed by osmFISH." Nature Methods 15, 932-935 (2018).
    doi:10.1038/s41592-018-0175-z.

    Parameters
    ----------
    include_excluded
        Also return the 1,632 cells the authors excluded from their analysis (region and cell
        type ``"Excluded"``, ``valid`` False), giving 6,471 cells. Default: only the 4,839 kept
        cells.

    Returns
    -------
    anndata.AnnData
        Cells x 33 genes (var names: gene symbols, e.g. ``Rorb``, ``Syt6``, ``Plp1``).

        - ``X`` and ``layers["counts"]``: molecule counts per cell and gene, CSR float32 with
          whole-number values (where :func:`interscale.pp.normalize` finds them by default).
        - ``obsm["spatial"]``: cell centroids in micrometres (the authors' pixel coordinates
          times 0.065 um); the section spans about 1,550 x 3,140 um and the median distance
          from a cell to its nearest neighbour is about 10.6 um.
        - ``obsm["X_tsne"]``: the authors' t-SNE embedding.
        - ``obs`` (index: the authors' ``CellID`` as strings, unique):

          - ``region``: anatomical region assigned by the authors (cortical layers
            ``Pia Layer 1`` to ``Layer 6``, ``White matter``, ``Hippocampus``, ``Ventricle``,
            ``Internal Capsule Caudoputamen``; ``Excluded`` for excluded cells), categorical
            ordered from the pia inwards;
          - ``cell_type``: the authors' cell type (``ClusterName``, 31 types), categorical;
          - ``cluster_id``: the authors' numeric cluster id (``ClusterID``) of that type;
          - ``section``: the tissue section, a single category ``"SScortex"`` (the sample
            column to tile);
          - ``total_molecules``: molecules detected in the cell (the row sum of the counts);
          - ``size_um2``: segmented cell area in square micrometres; ``size_pix`` the same in
            pixels;
          - ``valid``: True for the cells the authors kept (``Valid == 1``).
        - ``var``: ``hybridization`` (round) and ``fluorophore`` of each gene's probe.
        - ``uns["osmfish"]``: the citation, file name, checksum and pixel size.

    Raises
    ------
    ValueError
        If the bundled file's sha256 differs from the published one (the message names the file
        and both digests).
    FileNotFoundError
        If the bundled file is missing from the installation.
    TypeError
        If ``include_excluded`` is not a bool.

    Examples
    --------
    >>> import interscale as isc
    >>> adata = isc.datasets.osmfish()
    >>> adata.shape
    (4839, 33)
    >>> _ = isc.pp.tile(adata, max_cells=400, sample_key="section")
    >>> _ = isc.pp.split_samples(adata, "tile", seed=0)
    """
    if not isinstance(include_excluded, bool | np.bool_):
        raise TypeError(f"include_excluded must be a bool, got {type(include_excluded).__name__}")
    content = _verified_bytes(_DATA_PATH, SHA256)
    return _read_loom(content, bool(include_excluded))
