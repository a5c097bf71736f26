"""Training loop, losses, masking and schedules."""

from interscale.train._distributed import STRATEGIES, resolve_strategy
from interscale.train._losses import LOSSES, make_loss
from interscale.train._masking import draw_mask, fold_masks
from interscale.train._trainer import (
    TrainResult,
    TrainSettings,
    evaluate_masked,
    fit,
    resolve_device,
)

__all__ = [
    "LOSSES",
    "STRATEGIES",
    "TrainResult",
    "TrainSettings",
    "draw_mask",
    "evaluate_masked",
    "fit",
    "fold_masks",
    "make_loss",
    "resolve_device",
    "resolve_strategy",
]
