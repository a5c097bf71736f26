"""Reconstruction losses on the masked cells."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from interscale.names import REGRESSION_LOSSES

__all__ = ["LOSSES", "make_loss"]

#: The losses :func:`make_loss` builds, :data:`interscale.names.REGRESSION_LOSSES` (this name is
#: kept for imports).
LOSSES = REGRESSION_LOSSES


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


# One loss per name of ``interscale.names.REGRESSION_LOSSES`` (tests/test_names.py checks it).
_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "GaussianNLL": _gaussian_nll,
    "MSELoss": F.mse_loss,
    "SmoothL1": F.smooth_l1_loss,
}


def make_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Return the loss function called ``name``.

    Parameters
    ----------
    name
        One of :data:`interscale.names.REGRESSION_LOSSES`: ``"GaussianNLL"``, ``"MSELoss"``,
        ``"SmoothL1"``.

    Returns
    -------
    callable
        A function ``(prediction, target) -> scalar``, averaged over cells and genes.

    Raises
    ------
    ValueError
        If ``name`` is not a regression loss (the message lists them).
    """
    if name not in REGRESSION_LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {list(REGRESSION_LOSSES)}")
    return _LOSSES[name]
