"""Reconstruction losses on the masked cells."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["LOSSES", "make_loss"]

LOSSES = ("SmoothL1", "MSELoss", "GaussianNLL")


# Floor of the per-cell variance: an empty (zero-count) cell has a flat profile, and a tiny variance
# there would let one cell dominate the whole batch loss.
_MIN_VAR = 0.05


def _gaussian_nll(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # As published: the variance of each cell is the spread of its own true profile across genes,
    # floored (see _MIN_VAR).
    if target.shape[1] < 2:  # one gene: no spread across genes to estimate, use the floor
        var = torch.full_like(pred, _MIN_VAR)
    else:
        var = target.std(dim=1, keepdim=True).clamp_min(_MIN_VAR).expand_as(pred)
    return F.gaussian_nll_loss(pred, target, var, eps=1e-6)


def make_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Return the loss function called ``name``.

    Parameters
    ----------
    name
        One of ``"SmoothL1"``, ``"MSELoss"``, ``"GaussianNLL"``.

    Returns
    -------
    A function ``(prediction, target) -> scalar``, averaged over cells and genes.
    """
    if name == "SmoothL1":
        return F.smooth_l1_loss
    if name == "MSELoss":
        return F.mse_loss
    if name == "GaussianNLL":
        return _gaussian_nll
    raise ValueError(f"unknown loss {name!r}; choose one of {list(LOSSES)}")
