"""Published spellings the config still accepts, and published names it refuses with a reason.

Key aliases map a published key to its canonical name within one section; value aliases map a
published value to the canonical one. Names the published package accepted but InterScale does
not implement get a message of their own instead of a bare "must be one of".
"""

from __future__ import annotations

__all__ = [
    "ACCELERATOR_ALIASES",
    "DATASET_KEY_ALIASES",
    "OPTIM_KEY_ALIASES",
    "UNSUPPORTED_LOCAL_COMPONENTS",
    "UNSUPPORTED_LOSSES",
    "local_component_note",
    "loss_note",
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

#: Published local components that InterScale does not implement.
UNSUPPORTED_LOCAL_COMPONENTS: tuple[str, ...] = ("SCVI", "Precomputed")

#: Published losses that InterScale does not implement.
UNSUPPORTED_LOSSES: tuple[str, ...] = (
    "BalancedPearsonCorrelationLoss",
    "SCELoss",
    "SCE_EntropyATT_Loss",
)


def local_component_note(name: object) -> str:
    """Return the note appended to the error for an unknown ``model.local_component.name``.

    Parameters
    ----------
    name
        The value given.

    Returns
    -------
    str
        An explanation for a published but unsupported component, else ``""``.
    """
    if name in UNSUPPORTED_LOCAL_COMPONENTS:
        return " (the published 'SCVI' and 'Precomputed' local components are not supported)"
    return ""


def loss_note(name: object) -> str:
    """Return the note appended to the error for an unknown ``optim.loss``.

    Parameters
    ----------
    name
        The value given.

    Returns
    -------
    str
        An explanation for a published but unsupported loss, else ``""``.
    """
    if name in UNSUPPORTED_LOSSES:
        return f" ({name!r} is a published loss that InterScale does not support)"
    return ""
