"""Built-in datasets: a synthetic organoid generator with ground truth, the Legnini loader and
the osmFISH mouse-cortex section shipped with the package.

Gene-set files shipped with the package live in the ``gene_sets`` folder next to this module,
the osmFISH loom file in ``data``.
"""

from interscale.datasets._gene_sets import (
    gene_set_libraries,
    gene_set_release,
    load_gene_sets,
    read_gmt,
)
from interscale.datasets._legnini import default_cache_dir, legnini, read_transcripts
from interscale.datasets._osmfish import osmfish
from interscale.datasets._synthetic import synthetic_organoids
from interscale.datasets._user_shaped import user_shaped_organoids

__all__ = [
    "default_cache_dir",
    "gene_set_libraries",
    "gene_set_release",
    "legnini",
    "load_gene_sets",
    "osmfish",
    "read_gmt",
    "read_transcripts",
    "synthetic_organoids",
    "user_shaped_organoids",
]
