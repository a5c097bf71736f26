"""InterScale: local and global embeddings of spatial transcriptomics data."""

from interscale._version import __version__
from interscale import config, datasets, evaluation, model, pl, pp, tl

__all__ = ["__version__", "config", "datasets", "evaluation", "model", "pl", "pp", "tl"]
