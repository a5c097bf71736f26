"""InterScale: local and global embeddings of spatial transcriptomics data."""

import importlib

from interscale._version import __version__

_SUBPACKAGES = ("config", "datasets", "evaluation", "model", "pl", "pp", "tl")

__all__ = ["__version__", *_SUBPACKAGES]


def __getattr__(name: str):
    # Subpackages load on first use: `import interscale` stays fast, and the evaluation and
    # preprocessing functions do not pay for importing torch.
    if name in _SUBPACKAGES:
        module = importlib.import_module(f"interscale.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'interscale' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SUBPACKAGES})
