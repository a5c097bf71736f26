"""InterScale: local and global embeddings of spatial transcriptomics data."""

from interscale import config, datasets, evaluation, model, pl, pp, tl
from interscale._version import __version__

__all__ = ["__version__", "config", "datasets", "evaluation", "model", "pl", "pp", "tl"]
