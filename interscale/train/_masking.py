"""Which cells are hidden from the encoders."""

from __future__ import annotations

import math

import torch

__all__ = ["draw_mask", "fold_masks"]


def draw_mask(ptr: torch.Tensor, pct_mask_nodes: float, generator: torch.Generator) -> torch.Tensor:
    """Mask ``round(pct_mask_nodes * n_i)`` cells (at least one) of every graph of a batch.

    Parameters
    ----------
    ptr
        Offsets of the graphs in the batch, ``(B + 1,)``.
    pct_mask_nodes
        Fraction of each graph's cells to mask, in (0, 1).
    generator
        Seeded generator; every call draws a fresh mask from it.

    Returns
    -------
    Boolean tensor ``(N,)``.
    """
    sizes = (ptr[1:] - ptr[:-1]).tolist()
    mask = torch.zeros(int(ptr[-1]), dtype=torch.bool)
    for start, size in zip(ptr[:-1].tolist(), sizes, strict=True):
        n_mask = min(size, max(1, int(round(pct_mask_nodes * size))))
        chosen = torch.randperm(size, generator=generator)[:n_mask]
        mask[start + chosen] = True
    return mask


def fold_masks(
    n_cells: int, pct_mask_nodes: float, generator: torch.Generator
) -> list[torch.Tensor]:
    """Split the cells of one graph into ``ceil(1 / pct_mask_nodes)`` disjoint masks.

    Every cell is masked in exactly one fold, so a held-out prediction exists for each cell.
    """
    n_folds = max(1, min(n_cells, math.ceil(1.0 / pct_mask_nodes - 1e-9)))
    perm = torch.randperm(n_cells, generator=generator)
    masks = []
    for fold in range(n_folds):
        mask = torch.zeros(n_cells, dtype=torch.bool)
        mask[perm[fold::n_folds]] = True
        masks.append(mask)
    return masks
