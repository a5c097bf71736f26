"""Published spellings the config still accepts, and published names it refuses with a reason.

Key aliases map a published key to its canonical name within one section; value aliases map a
published value to the canonical one. Names the published package accepted but InterScale does
not implement get a note of their own after the "must be one of" error.
"""

from __future__ import annotations

__all__ = [
    "ACCELERATOR_ALIASES",
    "DATASET_KEY_ALIASES",
    "OPTIM_KEY_ALIASES",
    "UNSUPPORTED_LOCAL_COMPONENTS",
    "UNSUPPORTED_LOSSES",
]

#: ``optim``: published key -> canonical key.
OPTIM_KEY_ALIASES: dict[str, str] = {"wd": "weight_decay"}

#: ``dataset``: published key -> canonical key (``spatial_neigbors_kwargs`` is the published
#: misspelling; ``library_key`` is what early published versions called ``sample_key``).
DATASET_KEY_ALIASES: dict[str, str] = {
    "spatial_neigbors_kwargs": "spatial_neighbors_kwargs",
    "library_key": "sample_key",
}

#: ``optim.accelerator``: published value (lower-cased) -> canonical value.
ACCELERATOR_ALIASES: dict[str, str] = {"gpu": "cuda"}

#: Published local components that InterScale does not implement -> note for the error.
UNSUPPORTED_LOCAL_COMPONENTS: dict[str, str] = dict.fromkeys(
    ("SCVI", "Precomputed"),
    " (the published 'SCVI' and 'Precomputed' local components are not supported)",
)

#: Published losses that InterScale does not implement -> note for the error.
UNSUPPORTED_LOSSES: dict[str, str] = {
    name: f" ({name!r} is a published loss that InterScale does not support)"
    for name in ("BalancedPearsonCorrelationLoss", "SCELoss", "SCE_EntropyATT_Loss")
}
