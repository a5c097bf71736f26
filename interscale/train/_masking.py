"""Which cells are hidden from the encoders."""

from __future__ import annotations

import math

import torch

__all__ = ["draw_mask", "fold_masks"]


def _check_eligible(eligible: torch.Tensor, n: int) -> torch.Tensor:
    if not isinstance(eligible, torch.Tensor) or eligible.dtype != torch.bool:
        raise TypeError("eligible must be a boolean torch.Tensor")
    if eligible.shape != (n,):
        raise ValueError(f"eligible must have shape ({n},), got {tuple(eligible.shape)}")
    return eligible.cpu()


def draw_mask(
    ptr: torch.Tensor,
    pct_mask_nodes: float,
    generator: torch.Generator,
    eligible: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mask ``round(pct_mask_nodes * n_i)`` cells (at least one) of every graph of a batch.

    Parameters
    ----------
    ptr
        Offsets of the graphs in the batch, ``(B + 1,)``.
    pct_mask_nodes
        Fraction of each graph's cells to mask, in (0, 1).
    generator
        Seeded generator; every call draws a fresh mask from it.
    eligible
        Boolean ``(N,)``: the only cells that may be masked (e.g. a batch's ``core``, so that halo
        cells are never masked). ``n_i`` then counts the eligible cells of graph ``i``, and a
        graph without eligible cells gets no masked cell. ``None``: every cell is eligible (the
        draws are then the same as with an all-true ``eligible``).

    Returns
    -------
    Boolean tensor ``(N,)``.

    Raises
    ------
    TypeError, ValueError
        If ``eligible`` is not a boolean tensor of shape ``(N,)``.
    """
    sizes = (ptr[1:] - ptr[:-1]).tolist()
    mask = torch.zeros(int(ptr[-1]), dtype=torch.bool)
    if eligible is None:
        for start, size in zip(ptr[:-1].tolist(), sizes, strict=True):
            n_mask = min(size, max(1, int(round(pct_mask_nodes * size))))
            chosen = torch.randperm(size, generator=generator)[:n_mask]
            mask[start + chosen] = True
        return mask
    eligible = _check_eligible(eligible, int(ptr[-1]))
    for start, size in zip(ptr[:-1].tolist(), sizes, strict=True):
        candidates = torch.nonzero(eligible[start : start + size]).flatten()
        n_eligible = int(candidates.numel())
        if n_eligible == 0:
            continue
        n_mask = min(n_eligible, max(1, int(round(pct_mask_nodes * n_eligible))))
        chosen = candidates[torch.randperm(n_eligible, generator=generator)[:n_mask]]
        mask[start + chosen] = True
    return mask


def fold_masks(
    n_cells: int,
    pct_mask_nodes: float,
    generator: torch.Generator,
    eligible: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Split the cells of one graph into ``ceil(1 / pct_mask_nodes)`` disjoint masks.

    Every cell is masked in exactly one fold, so a held-out prediction exists for each cell.

    Parameters
    ----------
    n_cells
        Cells of the graph.
    pct_mask_nodes
        Fraction masked per fold, in (0, 1).
    generator
        Seeded generator.
    eligible
        Boolean ``(n_cells,)``: fold only these cells (e.g. a graph's ``core``); the others are
        never masked. The number of folds is then bounded by the eligible cells. ``None``: all
        cells (same draws as an all-true ``eligible``).

    Returns
    -------
    Boolean masks ``(n_cells,)``, disjoint, together covering every eligible cell once.

    Raises
    ------
    TypeError, ValueError
        If ``eligible`` is not a boolean tensor of shape ``(n_cells,)``.
    """
    candidates = None
    n_pool = n_cells
    if eligible is not None:
        candidates = torch.nonzero(_check_eligible(eligible, n_cells)).flatten()
        n_pool = int(candidates.numel())
    n_folds = max(1, min(n_pool, math.ceil(1.0 / pct_mask_nodes - 1e-9)))
    perm = torch.randperm(n_pool, generator=generator)
    if candidates is not None:
        perm = candidates[perm]
    masks = []
    for fold in range(n_folds):
        mask = torch.zeros(n_cells, dtype=torch.bool)
        mask[perm[fold::n_folds]] = True
        masks.append(mask)
    return masks
