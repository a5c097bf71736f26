"""Reading the bundled osmFISH section (checksum, h5py parse, AnnData) and tiling it."""

from __future__ import annotations


class OsmFISH:
    """``datasets.osmfish()``: the 4,839 kept cells, or all 6,471 with the excluded ones."""

    params = ([False, True],)
    param_names = ["include_excluded"]

    def setup(self, include_excluded: bool) -> None:
        """Import the package and read once, so the first-call imports (h5py) are not timed."""
        import interscale as isc

        self.isc = isc
        isc.datasets.osmfish(include_excluded=include_excluded)

    def time_load(self, include_excluded: bool) -> None:
        """sha256 of the 1.1 MB file, the h5py read and the AnnData."""
        self.isc.datasets.osmfish(include_excluded=include_excluded)

    def peakmem_load(self, include_excluded: bool) -> None:
        """Peak RSS of the same read."""
        self.isc.datasets.osmfish(include_excluded=include_excluded)

    def time_tile_and_split(self, include_excluded: bool) -> None:
        """Read, cut into tiles of at most 400 cells (16) and split whole tiles, as the CLI does."""
        adata = self.isc.datasets.osmfish(include_excluded=include_excluded)
        self.isc.pp.tile(adata, max_cells=400, library_key="section")
        self.isc.pp.split_samples(adata, "tile", seed=0)
